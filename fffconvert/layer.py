"""The fast feedforward (FFF) layer: a balanced binary tree of hyperplanes over small leaf FFNs.

Math (../shared/docs/fff-notes.md, section 1; Belcak & Wattenhofer 2023): routing node n holds a
hyperplane (w_n, c_n) and sends x right iff w_n.x + c_n > 0; its children are 2n+1 and 2n+2.
After `depth` decisions a token reaches one of 2^depth leaves; leaf k is the FFN
V2_k act(V1_k x + a1_k) + a2_k of width `leaf_width`, and the dense output bias b2 is added on top.

Parameter layout (the C, Cython and CUDA kernels read exactly this; all row-major, contiguous):

    node_weight  [2^D - 1, H]   routing hyperplanes, breadth-first (root = row 0)
    node_bias    [2^D - 1]
    weight       [2^D, L, H]    leaf k, neuron j: input row V1_k[j, :] (the kernels' w1)
    bias         [2^D, L]       its input bias a1_k[j] (the kernels' b1)
    w2           [2^D, L, H]    leaf k, neuron j: output column V2_k[:, j], stored as a row so that
                                both of a neuron's weight vectors are contiguous H-vectors
    leaf_bias    [2^D, H]       per-leaf output bias a2_k
    out_bias     [H]            the dense layer's output bias b2

A token reads D node rows, L rows of w1, L rows of w2 and two bias rows.

The leaf neurons' input weights and biases are named `weight` and `bias`, as the dense input
projection's are at the same place in the model: a dense class that loads a converted checkpoint
then meets a shape it does not expect and refuses, where other names would be skipped with a
warning and the FFN left random.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels

# Activations the layer (and every kernel) implements, by fffconvert's own names.
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def default_leaf_width(ffn_width: int, depth: int) -> int:
    """Smallest leaf width whose leaves together hold at least as many neurons as the dense FFN."""
    return max(1, math.ceil(ffn_width / 2**depth))


class FFF(nn.Module):
    """Drop-in replacement for a dense FFN `W2 act(W1 x + b1) + b2` with input and output size H.

    `soft` selects the training forward: True = sigmoid routing at `temperature` over all leaves,
    False = hard routing (one leaf per token). In eval mode the forward is always hard and runs on
    a compiled kernel when one is available for the input's device and dtype.
    """

    def __init__(self, hidden_size: int, depth: int, leaf_width: int, activation: str = "gelu"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if leaf_width < 1:
            raise ValueError(f"leaf width must be >= 1, got {leaf_width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.hidden_size, self.depth, self.leaf_width, self.activation = hidden_size, depth, leaf_width, activation
        n_nodes, n_leaves, H, L = 2**depth - 1, 2**depth, hidden_size, leaf_width
        self.node_weight = nn.Parameter(torch.empty(n_nodes, H))
        self.node_bias = nn.Parameter(torch.zeros(n_nodes))
        self.weight = nn.Parameter(torch.empty(n_leaves, L, H))
        self.bias = nn.Parameter(torch.zeros(n_leaves, L))
        self.w2 = nn.Parameter(torch.empty(n_leaves, L, H))
        self.leaf_bias = nn.Parameter(torch.zeros(n_leaves, H))
        self.out_bias = nn.Parameter(torch.zeros(H))
        self.soft = False
        self.temperature = 1.0
        self.last_hardening = None  # hardening loss of the last soft forward
        self.reset_parameters()

    def reset_parameters(self):
        """Plain random init (what training from scratch starts from); conversion overwrites it."""
        bound = 1 / math.sqrt(self.hidden_size)
        for p in (self.node_weight, self.weight, self.w2):
            nn.init.uniform_(p, -bound, bound)

    @property
    def n_leaves(self) -> int:
        return 2**self.depth

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, depth={self.depth}, leaf_width={self.leaf_width}, "
                f"activation={self.activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return kernels.hard_forward(self, x)
        if self.soft:
            return self.soft_forward(x)
        # Training on a GPU, every leaf's matmuls masked to each token's own leaf beat gathering each
        # token's rows and scatter-adding their gradients (a MiniLM depth-8 distillation step on an
        # H200: 44-46 against 56-60 ms), and sum deterministically; while the leaves hold no more
        # neurons than about twice a dense FFN (8 H), whose activations they then cost.
        if x.is_cuda and self.n_leaves * self.leaf_width <= 8 * self.hidden_size:
            return self.masked_forward(x)
        return self.hard_forward(x)

    # ---- routing -------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Hard tree descent for x [N, H]: the leaf index of every token, [N] (int64)."""
        node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for _ in range(self.depth):  # D gathers; no loop over tokens
            z = torch.einsum("nh,nh->n", x, self.node_weight[node]) + self.node_bias[node]
            node = 2 * node + 1 + (z > 0).long()
        return node - (self.n_leaves - 1)

    def leaf_probs(self, x: torch.Tensor, temperature: float):
        """Soft routing for x [N, H]: the mixture weight of each leaf [N, 2^D], and the hardening
        loss of these tokens (see `hardening_loss`)."""
        p = torch.sigmoid((x @ self.node_weight.t() + self.node_bias) / temperature)  # (N, nodes)
        turn = torch.stack((1 - p, p), dim=-1)  # (N, nodes, 2): probability of going left, right
        # reach[d]: probability of reaching each node of level d (nodes 2^d - 1 .. 2^(d+1) - 2, left
        # to right). One multiply per level: the training forward is bound by kernel launches.
        reach = [x.new_ones(x.shape[0], 1)]
        for d in range(self.depth):
            reach.append((reach[-1].unsqueeze(-1) * turn[:, 2**d - 1: 2 ** (d + 1) - 1]).flatten(1))
        weight = reach.pop()
        q = p.clamp(1e-6, 1 - 1e-6)
        h = -(q * q.log() + (1 - q) * (1 - q).log())
        entropy = (torch.cat(reach, 1).detach() * h).sum(1).mean()
        return weight, entropy / self.depth

    # ---- forwards ------------------------------------------------------------------------
    def _flat(self, x):
        return x.reshape(-1, self.hidden_size)

    def hard_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pure-PyTorch reference of the inference forward: one leaf per token. Differentiable in
        the leaves (the routing decisions themselves have no gradient)."""
        if self.n_leaves <= 32:  # few, wide leaves: a one-hot mixture is cheaper than gathering N x L x H
            return self.masked_forward(x)
        shape, x = x.shape, self._flat(x)
        leaf = self.route(x)
        act = ACTIVATIONS[self.activation]
        h = act(torch.einsum("nh,nlh->nl", x, self.weight[leaf]) + self.bias[leaf])  # (N, L)
        y = torch.einsum("nl,nlh->nh", h, self.w2[leaf]) + self.leaf_bias[leaf] + self.out_bias
        return y.reshape(shape)

    def masked_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The hard forward computed over every leaf, each token's output masked to its own leaf:
        dense matmuls, the same values and gradients as `hard_forward`."""
        shape, x = x.shape, self._flat(x)
        return self._mixture(x, F.one_hot(self.route(x), self.n_leaves).to(x.dtype)).reshape(shape)

    def soft_forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Training forward: every leaf, weighted by its soft routing probability. Dense matmuls.
        Leaves the batch's hardening loss in `self.last_hardening` for the distillation loss."""
        shape, x = x.shape, self._flat(x)
        weight, self.last_hardening = self.leaf_probs(x, temperature or self.temperature)  # (N, K)
        return self._mixture(x, weight).reshape(shape)

    def _mixture(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Output of every leaf on x [N, H], mixed with weights [N, K]."""
        act = ACTIVATIONS[self.activation]
        K, L, H = self.n_leaves, self.leaf_width, self.hidden_size
        h = act(x @ self.weight.reshape(K * L, H).t() + self.bias.reshape(K * L))  # (N, K*L)
        h = (h.reshape(-1, K, L) * weight.unsqueeze(-1)).reshape(-1, K * L)
        return h @ self.w2.reshape(K * L, H) + weight @ self.leaf_bias + self.out_bias

    def hardening_loss(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Mean Bernoulli entropy of the decisions a token faces on its way down the soft tree.

        Each node's entropy is weighted by the (detached) probability that the token reaches it, so
        that nodes a token never visits neither count nor pull on it; divided by D it is the mean
        over the D decisions of a path. 0 when every decision is hard, log(2) when all are coin flips.
        """
        return self.leaf_probs(self._flat(x), temperature or self.temperature)[1]

    def agreement(self, x: torch.Tensor, temperature: float | None = None) -> float:
        """Fraction of tokens whose hard leaf is also the leaf of largest soft weight."""
        x = self._flat(x)
        weight = self.leaf_probs(x, temperature or self.temperature)[0]
        return (weight.argmax(1) == self.route(x)).float().mean().item()
