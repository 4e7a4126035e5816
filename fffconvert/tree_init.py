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


# ---- group arithmetic: every node (or leaf) of a level at once -------------------------------
# The tree is built level by level: all nodes of a level, and all leaves, are fitted together with
# segment sums over their tokens (`seg`: each token's group), so the cost does not grow with the
# number of nodes (a Python loop over 2^D nodes paid ~1-40 ms of launches and syncs per node on a GPU).
def _seg_sum(V, seg, G):
    return V.new_zeros(G, *V.shape[1:]).index_add_(0, seg, V)


def _rowdot(U, V, seg, chunk=8192):
    """(U[t] . V[seg[t]]) for every row t, in chunks (V[seg] is as large as U)."""
    return torch.cat([(u * V[s]).sum(1) for u, s in zip(U.split(chunk), seg.split(chunk))])


def _two_means(C, seg, G, gen, iters: int = 4):
    """Spherical 2-means on the unit rows of C within each group; a bool label per row. Started
    from each group's top principal direction (power iteration)."""
    n = torch.bincount(seg, minlength=G).clamp_min(1)[:, None]
    mean = _seg_sum(C, seg, G) / n
    v = torch.randn(G, C.shape[1], generator=gen).to(C)
    for _ in range(6):
        u = _rowdot(C, v, seg) - (mean * v).sum(1)[seg]
        v = _seg_sum(C * u[:, None], seg, G) - mean * _seg_sum(u[:, None], seg, G)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    label = (_rowdot(C, v, seg) - (mean * v).sum(1)[seg]) > 0
    for _ in range(iters):
        n1 = _seg_sum(label.float()[:, None], seg, G)
        c1 = _seg_sum(C * label[:, None], seg, G) / n1.clamp_min(1)
        c0 = (mean * n - c1 * n1) / (n - n1).clamp_min(1)
        both = ((n1 > 0) & (n1 < n)).squeeze(1)
        direction = c1 / c1.norm(dim=1, keepdim=True).clamp_min(1e-12) - c0 / c0.norm(dim=1, keepdim=True).clamp_min(1e-12)
        label = torch.where(both[seg], _rowdot(C, direction, seg) > 0, label)
    return label


def _spd_solve(A, B):
    """Solve A x = B for a batch of symmetric positive definite A (the covariances and ridge Gram
    matrices here) by Cholesky. (Batched LU on the CPU, torch 2.13 with 2 threads, was seen to
    return garbage pivots for some batches; Cholesky is also the cheaper factorization.) A matrix
    that rounding left indefinite falls back to least squares."""
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(B, L)
    bad = (info > 0).nonzero().flatten()
    if len(bad):
        x[bad] = torch.linalg.lstsq(A[bad].cpu(), B[bad].cpu()).solution.to(x)
    return x


def _group_gram(R, seg, G, max_elems=2**26):
    """R_g^T R_g for every group g, [G, H, H], in chunks of groups padded to the same length."""
    H = R.shape[1]
    counts = torch.bincount(seg, minlength=G)
    order = seg.argsort(stable=True)
    starts = counts.cumsum(0) - counts
    pos = torch.empty_like(seg)
    pos[order] = torch.arange(len(seg), device=seg.device) - starts[seg[order]]
    grams, cl = [], counts.tolist()
    g0 = 0
    while g0 < G:
        g1, longest = g0 + 1, max(cl[g0], 1)
        while g1 < G and (g1 + 1 - g0) * max(longest, cl[g1]) * H <= max_elems:
            longest = max(longest, cl[g1])
            g1 += 1
        sel = (seg >= g0) & (seg < g1)
        padded = R.new_zeros(g1 - g0, longest, H)
        padded[seg[sel] - g0, pos[sel]] = R[sel]
        grams.append(padded.transpose(1, 2) @ padded)
        g0 = g1
    return torch.cat(grams)


def _cut(s, label, seg, G, min_side: float):
    """Per group, the threshold on s that best reproduces `label` (fewest tokens on the wrong side),
    each side keeping >= min_side of the group's tokens; the median where no cut is allowed."""
    N = len(s)
    order = s.argsort()
    order = order[seg[order].argsort(stable=True)]  # grouped, s ascending within each group
    sg, lab = seg[order], label[order].float()
    counts = torch.bincount(seg, minlength=G)
    starts = counts.cumsum(0) - counts
    pos = torch.arange(N, device=s.device) - starts[sg]
    c1 = lab.cumsum(0)
    c1 = c1 - (c1 - lab)[starts.clamp(max=N - 1)][sg]  # right-labelled tokens up to here, in the group
    n, n1 = counts[sg], _seg_sum(lab, sg, G)[sg]
    err = c1 + ((n - n1) - (pos + 1 - c1))  # cutting after here: right-labelled left + left-labelled right
    lo = (min_side * n).long().clamp_min(1) - 1
    hi = torch.minimum((1 - min_side) * n, n - 1.0).long() - 1
    valid = (pos >= lo) & (pos <= hi)
    err = torch.where(valid, err, torch.full_like(err, float("inf")))
    best = torch.full((G,), float("inf"), device=s.device).scatter_reduce(0, sg, err, "amin")
    first = torch.where(valid & (err == best[sg]), pos, torch.full_like(pos, N))
    cut = torch.full((G,), N, device=s.device, dtype=torch.long).scatter_reduce(0, sg, first, "amin")
    cut = torch.where(cut == N, (counts - 1).clamp_min(0) // 2, cut)
    ss = s[order]
    a = ss[(starts + cut).clamp(max=N - 1)]
    b = ss[(starts + torch.minimum(cut + 1, (counts - 1).clamp_min(0))).clamp(max=N - 1)]
    return (a + b) / 2


def _hyperplanes(X, label, seg, G, cov_root, min_side: float):
    """Per group, the hyperplane (w, c) reproducing `label` (True = right), z = x.w + c scaled to
    unit spread over the group's tokens: shrunk LDA direction (the group's within-class covariance
    shrunk toward the root's), then the best threshold. Groups with nothing to separate split on
    the leading direction; groups of identical tokens (repeated text) send everything left."""
    N, H = X.shape
    counts = torch.bincount(seg, minlength=G)
    n = counts.clamp_min(1)[:, None].to(X)
    mean = _seg_sum(X, seg, G) / n
    n1 = _seg_sum(label.float()[:, None], seg, G)
    flat = ((n1 == 0) | (n1 == n)).squeeze(1)
    lead = torch.linalg.eigh(cov_root)[1][:, -1]
    label = torch.where(flat[seg], ((X - mean[seg]) @ lead) > 0, label)
    n1 = _seg_sum(label.float()[:, None], seg, G)
    m1 = _seg_sum(X * label[:, None], seg, G) / n1.clamp_min(1)
    m0 = (mean * n - m1 * n1) / (n - n1).clamp_min(1)
    R = X - torch.where(label[:, None], m1[seg], m0[seg])
    cov = (_group_gram(R, seg, G) + H * cov_root) / (n[:, :, None] + H)
    cov = cov + 1e-5 * cov.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * torch.eye(H, device=X.device)
    w = _spd_solve(cov, (m1 - m0)[:, :, None])[:, :, 0]
    s = _rowdot(X, w, seg)
    thr = _cut(s, label, seg, G, min_side)
    return _scaled(w, thr, s, seg, G, separable=((n1 > 0) & (n1 < n)).squeeze(1))


def _scaled(w, thr, s, seg, G, separable):
    """(w, c) = (w, -thr) / spread of s - thr per group; (0, -1), all left, where it cannot split."""
    counts = torch.bincount(seg, minlength=G)
    z = s - thr[seg]
    zm = _seg_sum(z, seg, G) / counts.clamp_min(1)
    spread = (_seg_sum((z - zm[seg]) ** 2, seg, G) / (counts - 1).clamp_min(1)).sqrt()
    top = torch.zeros(G, device=s.device).scatter_reduce(0, seg, s.abs(), "amax")
    ok = separable & (spread > 1e-6 * top) & (counts >= 2)
    scale = torch.where(ok, spread, torch.ones_like(spread))
    return torch.where(ok[:, None], w / scale[:, None], 0.0), torch.where(ok, -thr / scale, -1.0)


# The 2-means of step 1 runs on a random projection of the profiles: every level passes over all
# tokens' profiles a dozen times, and N x F (F = 3072 on BERT-base) made that the bulk of the time.
PROFILE_DIMS = 256


def build_tree(layer: FFF, X, A, dense: DenseFFN, seed: int, random: bool = False, min_side: float = 0.25):
    """Set `layer`'s routing nodes from calibration data, a level at a time; returns the leaf of
    every token [N]."""
    gen = torch.Generator().manual_seed(seed)
    N, H = X.shape
    Xc = X - X.mean(0)
    cov_root = Xc.t() @ Xc / N
    if not random:  # contribution profiles, randomly projected to PROFILE_DIMS (angles kept to a few %)
        C = A.abs() * dense.out_norm
        if C.shape[1] > PROFILE_DIMS:
            P = torch.randn(C.shape[1], PROFILE_DIMS, generator=gen).to(C) / PROFILE_DIMS**0.5
            C = C @ P
        C = C / C.norm(dim=1, keepdim=True).clamp_min(1e-12)
    node_of = torch.zeros(N, dtype=torch.long, device=X.device)  # current node of each token
    W = torch.zeros(layer.node_weight.shape, device=X.device)
    c = torch.zeros(layer.node_bias.shape, device=X.device)
    for d in range(layer.depth):
        G, first = 2**d, 2**d - 1
        seg = node_of - first
        if random:  # random directions, median splits
            w = torch.randn(G, H, generator=gen).to(X)
            s = _rowdot(X, w, seg)
            thr = _cut(s, torch.zeros_like(seg, dtype=torch.bool), seg, G, min_side=0.5)  # the median
            W[first:first + G], c[first:first + G] = _scaled(w, thr, s, seg, G, torch.ones(G, dtype=torch.bool, device=X.device))
        else:
            W[first:first + G], c[first:first + G] = _hyperplanes(X, _two_means(C, seg, G, gen), seg, G, cov_root, min_side)
        z = _rowdot(X, W, node_of) + c[node_of]
        node_of = 2 * node_of + 1 + (z > 0).long()
    with torch.no_grad():
        layer.node_weight.copy_(W)
        layer.node_bias.copy_(c)
    return node_of - (layer.n_leaves - 1)


# ---- leaves ----------------------------------------------------------------------------------
def fit_leaves(layer: FFF, X, A, Y, leaf, dense: DenseFFN, seed: int, random: bool = False, ridge: float = 1e-3):
    """Choose each leaf's neurons and refit its output rows and bias by ridge least squares, all
    leaves at once. A leaf with fewer than L + 1 tokens borrows those of its nearest ancestor."""
    gen = torch.Generator().manual_seed(seed + 1)
    K, L = layer.n_leaves, layer.leaf_width
    N, F = A.shape
    T = Y - dense.b2
    weight = dense.token_weights(X, Y)
    counts = torch.bincount(leaf, minlength=K)
    if random:
        top = torch.rand(K, F, generator=gen).argsort(1)[:, :L].to(X.device)
    else:
        score = _seg_sum(A.abs() * weight.sqrt()[:, None], leaf, K) / counts.clamp_min(1)[:, None].to(A)
        top = (score * dense.out_norm).topk(L, dim=1).indices  # (K, L)
    phi = torch.cat([A.gather(1, top[leaf]), torch.ones(N, 1, device=X.device)], 1)  # (N, L+1): own leaf's neurons
    phi_w = phi * weight[:, None]  # weighted least squares: tokens as the norm weighs them
    G = _seg_sum(phi_w[:, :, None] * phi[:, None, :], leaf, K)  # (K, L+1, L+1)
    rhs = sum(_seg_sum(p[:, :, None] * t[:, None, :], i, K)
              for p, t, i in zip(phi_w.split(4096), T.split(4096), leaf.split(4096)))  # (K, L+1, H)
    starved = (counts < L + 1).nonzero().flatten().tolist()
    if starved:  # few: each borrows the tokens of the smallest enclosing subtree that has enough
        order = leaf.argsort()
        groups = list(order.split(counts.tolist()))
        for k in starved:
            idx, span = groups[k], 1
            while len(idx) < L + 1 and span < K:
                span *= 2
                idx = torch.cat(groups[(k // span) * span: (k // span) * span + span])
            if len(idx) == 0:
                idx = order
            if not random:
                sc = (A[idx].abs() * weight[idx, None].sqrt()).mean(0) * dense.out_norm
                top[k] = sc.topk(L).indices
            p = torch.cat([A[idx][:, top[k]], torch.ones(len(idx), 1, device=X.device)], 1)
            G[k], rhs[k] = (p * weight[idx, None]).t() @ p, (p * weight[idx, None]).t() @ T[idx]
    reg = ridge * G.diagonal(dim1=1, dim2=2)[:, :L].mean(1).clamp_min(1e-12)
    G[:, range(L), range(L)] += reg[:, None]  # no penalty on the bias
    beta = _spd_solve(G, rhs)  # (K, L+1, H)
    with torch.no_grad():
        for p, v in ((layer.weight, dense.W1[top]), (layer.bias, dense.b1[top]), (layer.w2, beta[:, :L]),
                     (layer.leaf_bias, beta[:, L]), (layer.out_bias, dense.b2)):
            p.copy_(v)


def init_from_dense(layer: FFF, X, dense: DenseFFN, seed: int, random: bool = False):
    """Cluster (or, with random=True, randomly split) and fit `layer` to the dense FFN on X."""
    A = dense.activations(X)
    Y = A @ dense.W2.t() + dense.b2
    leaf = build_tree(layer, X, A, dense, seed, random=random)
    fit_leaves(layer, X, A, Y, leaf, dense, seed, random=random)
    return layer
