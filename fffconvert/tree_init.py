"""Initialize an FFF from its dense FFN by clustering neuron activations (fff-notes, section 2).

Given calibration inputs X [N, H] of one FFN, its neuron activations A = act(W1 X + b1) [N, F]
and outputs Y [N, H]. Errors are measured where the model sees them: after the LayerNorm that
follows the FFN in post-LN blocks (BERT, RoBERTa, ELECTRA, DistilBERT: LN(X + Y)). That norm
divides each token by its spread, which a few outlier dimensions of Y dominate, and scales each
dimension by its gain; on all-MiniLM-L6-v2 an FFN error of 0.5% of Y's variance is 9% of the
block output's. So neurons are weighed by their output column scaled by the gain, and tokens by
the inverse of their variance before the norm:

1. at each node, split its tokens in two by which neurons carry their output: spherical 2-means
   on the contribution profile |A| * ||W2 column||, started from the top principal direction;
2. fit the node's hyperplane in input space to that split (shrunk LDA direction, threshold that
   best reproduces the split with both sides kept >= `min_side` of the tokens), then route the
   tokens by the hyperplane, so each child sees exactly the tokens that will reach it;
3. at each leaf, keep the L neurons with the largest mean contribution on its tokens (their W1 rows
   and b1), and refit the output rows and the leaf bias by ridge least squares against Y.

`random_init` routes by random hyperplanes (median splits) and picks random neurons, with the same
least-squares refit: the baseline that tells what the clustering itself buys.
"""
import torch

from .layer import ACTIVATIONS, FFF


class DenseFFN:
    """The dense FFN being replaced, y = W2 act(W1 x + b1) + b2, and the LayerNorm after it
    (`norm`: None where the block has none), weights in float32."""

    def __init__(self, fc1, fc2, activation: str, norm=None):
        self.W1, self.b1 = fc1.weight.detach().float(), fc1.bias.detach().float()
        self.W2, self.b2 = fc2.weight.detach().float(), fc2.bias.detach().float()
        self.act = ACTIVATIONS[activation]
        self.norm = None if norm is None else (norm.weight.detach().float(), norm.bias.detach().float(), norm.eps)
        gain = self.W2.new_ones(self.W2.shape[0]) if norm is None else self.norm[0]
        self.out_norm = (self.W2 * gain[:, None]).norm(dim=0)  # (F,) what each neuron writes, as the norm sees it

    def to(self, device):
        for k in ("W1", "b1", "W2", "b2", "out_norm"):
            setattr(self, k, getattr(self, k).to(device))
        if self.norm is not None:
            self.norm = (self.norm[0].to(device), self.norm[1].to(device), self.norm[2])
        return self

    def activations(self, X):
        return self.act(X @ self.W1.t() + self.b1)

    def outputs(self, X, chunk=8192):
        return torch.cat([self.activations(x) @ self.W2.t() + self.b2 for x in X.split(chunk)])

    def block(self, X, Y):
        """What the model sees of an FFN output Y on inputs X: LN(X + Y), or Y without a norm."""
        if self.norm is None:
            return Y
        return torch.nn.functional.layer_norm(X + Y, X.shape[-1:], *self.norm)

    def token_weights(self, X, Y):
        """Per-token weight of an output error as the norm sees it: 1 / variance of X + Y."""
        if self.norm is None:
            return X.new_ones(len(X))
        return 1 / ((X + Y).var(1, unbiased=False) + self.norm[2])

    def fvu(self, X, pred, target) -> float:
        """FVU of the block output when the FFN outputs `pred` instead of `target` on inputs X."""
        return fvu(self.block(X, pred), self.block(X, target))


def fvu(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of variance unexplained: ||pred - target||^2 / ||target - mean(target)||^2."""
    return ((pred - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()).item()


def oracle_outputs(dense: DenseFFN, X, k: int, chunk=2048):
    """FFN outputs when every token keeps only its k neurons of largest |a_j| * ||g * W2[:, j]||."""
    out = []
    for x in X.split(chunk):
        a = dense.activations(x)
        top = (a.abs() * dense.out_norm).topk(k, dim=1).indices  # (n, k)
        out.append(torch.einsum("nk,nkh->nh", a.gather(1, top), dense.W2.t()[top]) + dense.b2)
    return torch.cat(out)


# ---- routing ---------------------------------------------------------------------------------
def _two_means(C: torch.Tensor, gen: torch.Generator, iters: int = 4) -> torch.Tensor:
    """Spherical 2-means on rows of C (unit norm); returns a bool label per row."""
    v = torch.randn(C.shape[1], generator=gen, device="cpu").to(C)
    Cc = C - C.mean(0)
    for _ in range(6):  # power iteration: top principal direction
        v = Cc.t() @ (Cc @ v)
        v = v / v.norm().clamp_min(1e-12)
    label = (Cc @ v) > 0
    for _ in range(iters):
        if label.all() or not label.any():
            break
        c1, c0 = C[label].mean(0), C[~label].mean(0)
        label = (C @ (c1 / c1.norm() - c0 / c0.norm())) > 0
    return label


def _hyperplane(X, label, cov_root, min_side: float):
    """Hyperplane (w, c) in input space reproducing `label` (True = right), z = x.w + c scaled to
    unit spread over these tokens. Shrinks the node's within-class covariance toward the root's."""
    n, H = X.shape
    if label.all() or not label.any():  # nothing to separate: split on the leading direction
        label = (X - X.mean(0)) @ torch.linalg.eigh(cov_root)[1][:, -1] > 0
    if label.all() or not label.any():  # identical tokens (repeated text): send them all left
        return torch.zeros_like(X[0]), X.new_tensor(-1.0)
    m1, m0 = X[label].mean(0), X[~label].mean(0)
    R = torch.where(label[:, None], X - m1, X - m0)
    cov = (R.t() @ R + H * cov_root) / (n + H)
    cov = cov + 1e-5 * cov.diagonal().mean() * torch.eye(H, device=X.device)
    w = torch.linalg.solve(cov, m1 - m0)
    s = X @ w
    # threshold: fewest disagreements with the clustering, each side keeping >= min_side of tokens
    order = s.argsort()
    lab = label[order].float()
    # cutting after position i: left = order[:i+1]; errors = right-labelled on the left + left-labelled on the right
    err = lab.cumsum(0) + ((1 - lab).sum() - (1 - lab).cumsum(0))
    lo, hi = max(int(min_side * n), 1) - 1, min(int((1 - min_side) * n), n - 1) - 1
    cut = lo + int(err[lo: hi + 1].argmin()) if hi >= lo else (n - 1) // 2
    thr = (s[order[cut]] + s[order[min(cut + 1, n - 1)]]) / 2
    z_scale = (s - thr).std()
    if not z_scale > 1e-6 * s.abs().max():  # tokens too alike to scale a split: all left, as above
        return torch.zeros_like(X[0]), X.new_tensor(-1.0)
    return w / z_scale, -thr / z_scale


def build_tree(layer: FFF, X, A, dense: DenseFFN, seed: int, random: bool = False, min_side: float = 0.25):
    """Set `layer`'s routing nodes from calibration data; returns the leaf of every token [N]."""
    gen = torch.Generator().manual_seed(seed)
    N, H = X.shape
    Xc = X - X.mean(0)
    cov_root = Xc.t() @ Xc / N
    node_of = torch.zeros(N, dtype=torch.long, device=X.device)  # current node of each token
    W = torch.zeros(layer.node_weight.shape, device=X.device)
    c = torch.zeros(layer.node_bias.shape, device=X.device)
    for d in range(layer.depth):
        order = node_of.argsort()
        counts = torch.bincount(node_of, minlength=2 ** (d + 1) - 1)[2**d - 1:].tolist()
        for i, idx in enumerate(order.split(counts)):  # tokens of each node of level d
            n = 2**d - 1 + i
            if len(idx) < 2:  # a starved node routes everything left
                continue
            x = X[idx]
            if random:
                w = torch.randn(H, generator=gen).to(X)
                s = x @ w
                thr = s.median()
                scale = (s - thr).std().clamp_min(1e-12)
                W[n], c[n] = w / scale, -thr / scale
            else:
                C = A[idx].abs() * dense.out_norm
                C = C / C.norm(dim=1, keepdim=True).clamp_min(1e-12)
                W[n], c[n] = _hyperplane(x, _two_means(C, gen), cov_root, min_side)
        z = torch.einsum("nh,nh->n", X, W[node_of]) + c[node_of]
        node_of = 2 * node_of + 1 + (z > 0).long()
    with torch.no_grad():
        layer.node_weight.copy_(W)
        layer.node_bias.copy_(c)
    return node_of - (layer.n_leaves - 1)


# ---- leaves ----------------------------------------------------------------------------------
def fit_leaves(layer: FFF, X, A, Y, leaf, dense: DenseFFN, seed: int, random: bool = False, ridge: float = 1e-3):
    """Choose each leaf's neurons and refit its output rows and bias by ridge least squares.
    A leaf that no calibration token reaches borrows the tokens of its nearest ancestor."""
    gen = torch.Generator().manual_seed(seed + 1)
    K, L, H = layer.n_leaves, layer.leaf_width, layer.hidden_size
    order = leaf.argsort()
    groups = list(order.split(torch.bincount(leaf, minlength=K).tolist()))
    w1, b1 = torch.empty(K, L, H), torch.empty(K, L)
    w2, lb = torch.empty(K, L, H), torch.empty(K, H)
    T = Y - dense.b2
    weight = dense.token_weights(X, Y)
    for k in range(K):
        idx, span = groups[k], 1
        while len(idx) < L + 1 and span < K:  # borrow from the enclosing subtree
            span *= 2
            first = (k // span) * span
            idx = torch.cat(groups[first: first + span])
        if len(idx) == 0:
            idx = order
        a = A[idx]
        if random:
            top = torch.randperm(A.shape[1], generator=gen)[:L].to(X.device)
        else:
            top = ((a.abs() * weight[idx, None].sqrt()).mean(0) * dense.out_norm).topk(L).indices
        phi = torch.cat([a[:, top], torch.ones(len(idx), 1, device=X.device)], 1)  # (n, L+1)
        phi_w = phi * weight[idx, None]  # weighted least squares: tokens as the norm weighs them
        G = phi_w.t() @ phi
        reg = ridge * G.diagonal()[:L].mean().clamp_min(1e-12)
        G[range(L), range(L)] += reg  # no penalty on the bias
        beta = torch.linalg.solve(G, phi_w.t() @ T[idx])  # (L+1, H)
        w1[k], b1[k] = dense.W1[top].cpu(), dense.b1[top].cpu()
        w2[k], lb[k] = beta[:L].cpu(), beta[L].cpu()
    with torch.no_grad():
        for p, v in ((layer.weight, w1), (layer.bias, b1), (layer.w2, w2), (layer.leaf_bias, lb), (layer.out_bias, dense.b2)):
            p.copy_(v)


def init_from_dense(layer: FFF, X, dense: DenseFFN, seed: int, random: bool = False):
    """Cluster (or, with random=True, randomly split) and fit `layer` to the dense FFN on X."""
    A = dense.activations(X)
    Y = A @ dense.W2.t() + dense.b2
    leaf = build_tree(layer, X, A, dense, seed, random=random)
    fit_leaves(layer, X, A, Y, leaf, dense, seed, random=random)
    return layer
