"""Layer-wise distillation: each FFF learns to reproduce its dense FFN on the teacher's inputs
(end-to-end distillation of the whole model is e2e.py).

Two phases per layer (fff-notes, section 3):
  soft  (first `soft_frac` of the steps): soft routing, temperature lowered geometrically from
        `t_start` to `t_end`, hardening loss weight raised linearly to `hardening`; routing
        hyperplanes and leaves both learn;
  hard  (the rest): hard routing, so the leaves are finetuned with exactly the forward the kernels
        run; the routing is frozen (hard decisions carry no gradient).
The loss is the FVU of the batch, measured on the block output that the FFN feeds (`DenseFFN.block`:
after the LayerNorm that follows it), where the model sees the error.
"""
from dataclasses import dataclass

import torch

from .layer import FFF
from .tree_init import DenseFFN


@dataclass
class DistillConfig:
    steps: int = 200  # optimizer steps per layer (0: keep the clustering init)
    batch_tokens: int = 2048
    lr: float = 1e-3
    soft_frac: float = 0.5  # share of the steps with soft routing
    t_start: float = 0.3  # temperature, in units of each node's spread of w.x + c at init
    t_end: float = 0.03
    hardening: float = 0.05  # final weight of the hardening loss


def routing_schedule(cfg, step: int, steps: int) -> tuple[bool, float, float]:
    """(soft routing?, temperature, hardening loss weight) at `step` of `steps`, for a config with
    soft_frac, t_start, t_end and hardening (DistillConfig or e2e.E2EConfig): soft for the first
    soft_frac of the steps, temperature lowered geometrically and hardening raised linearly."""
    soft_steps = int(cfg.soft_frac * steps)
    if step >= soft_steps:
        return False, cfg.t_end, 0.0
    frac = step / max(soft_steps - 1, 1)
    return True, cfg.t_start * (cfg.t_end / cfg.t_start) ** frac, cfg.hardening * frac


def distill_layer(layer: FFF, X, Y, dense: DenseFFN, cfg: DistillConfig, seed: int, bar=None):
    """Train `layer` (in place) to map X -> Y as `dense`'s block sees it. X, Y: [N, H] on the layer's device."""
    gen = torch.Generator().manual_seed(seed)
    T = dense.block(X, Y)
    var = (T - T.mean(0)).pow(2).mean(0).sum()
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
    layer.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(X), (cfg.batch_tokens,), generator=gen).to(X.device)
        x, t = X[idx], T[idx]
        layer.soft, layer.temperature, h = routing_schedule(cfg, step, cfg.steps)
        loss = (dense.block(x, layer(x)) - t).pow(2).mean(0).sum() / var
        if layer.soft:
            loss = loss + h * layer.last_hardening
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    layer.soft = False
    layer.eval()
    return layer


@torch.no_grad()
def layer_report(layer: FFF, X, Y, dense: DenseFFN) -> dict:
    """Hard-forward FVU, soft-forward FVU at the layer's temperature, and hard/soft agreement."""
    return {"fvu_hard": dense.fvu(X, layer.hard_forward(X), Y), "fvu_soft": dense.fvu(X, layer.soft_forward(X), Y),
            "agreement": layer.agreement(X)}
