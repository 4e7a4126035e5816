"""Capacity where it is needed: leaf widths per layer for a budget of neurons per token.

The budget B is the mean over the layers of D + L, the rows a token touches in each FFF (its D
routing rows and its leaf's L neurons). The rule: give each layer the leaf width at which its
measured error is lowest for the budget in total. Per layer, the tree is built once and its leaves
are fitted at a few widths (cheap: least squares per leaf); the held-out FVU of the block output
at each width, interpolated between them, is the layer's curve. Then, starting from width 1
everywhere, one neuron at a time goes to the layer whose FVU it lowers most, until the budget is
spent. Every layer's FVU is a share of the same kind of quantity (the variance of what its block
writes after its LayerNorm), so they are added as they are.
"""
import torch

from .layer import FFF
from .tree_init import fit_leaves


def candidate_widths(budget: float, depth: int, widest: int) -> list[int]:
    """Leaf widths to measure: 1, 2, 3, 4, 6, 8, 12, ... up to 3 times the mean leaf width, and `widest`."""
    top = max(1, min(widest, max(2, int(3 * (budget - depth)))))
    widths, w = [], 1
    while w < top:
        widths.append(w)
        w = w + 1 if w < 4 else int(w * 1.5)
    return widths + [top]


@torch.no_grad()
def width_curve(router: FFF, X_fit, A_fit, Y_fit, X_val, Y_val, leaf, dense, seed: int, widths) -> dict:
    """{leaf width: held-out FVU} of leaves fitted under `router`'s tree (tokens' leaves: `leaf`)."""
    curve = {}
    for width in widths:
        layer = FFF(router.hidden_size, router.depth, width, router.activation).to(X_fit.device)
        layer.node_weight.copy_(router.node_weight)
        layer.node_bias.copy_(router.node_bias)
        fit_leaves(layer, X_fit, A_fit, Y_fit, leaf, dense, seed)
        curve[width] = dense.fvu(X_val, layer.hard_forward(X_val), Y_val)
    return curve


def _interpolate(curve: dict, width: int) -> float:
    ws = sorted(curve)
    if width >= ws[-1]:
        return curve[ws[-1]]
    hi = next(w for w in ws if w >= width)
    lo = max(w for w in ws if w <= width)
    if hi == lo:
        return curve[lo]
    return curve[lo] + (curve[hi] - curve[lo]) * (width - lo) / (hi - lo)


def allocate(curves: list[dict], neurons: int) -> list[int]:
    """Leaf widths (>= 1) summing to at most `neurons`, greedily where the FVU falls most."""
    widths = [1] * len(curves)
    caps = [max(c) for c in curves]
    for _ in range(neurons - len(curves)):
        gains = [(_interpolate(c, w) - _interpolate(c, w + 1)) if w < cap else -1.0
                 for c, w, cap in zip(curves, widths, caps)]
        best = max(range(len(gains)), key=gains.__getitem__)
        if gains[best] <= 0:  # no layer measures better with one more neuron
            break
        widths[best] += 1
    return widths
