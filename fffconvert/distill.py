"""Layer-wise distillation: each FFF learns to reproduce its dense FFN on the teacher's inputs.

Two phases per layer (fff-notes, section 3):
  soft  (first `soft_frac` of the steps): soft routing, temperature lowered geometrically from
        `t_start` to `t_end`, hardening loss weight raised linearly to `hardening`; routing
        hyperplanes and leaves both learn;
  hard  (the rest): hard routing, so the leaves are finetuned with exactly the forward the kernels
        run; the routing is frozen (hard decisions carry no gradient).
The loss is the MSE normalized by the target's variance, i.e. the FVU of the batch.
"""
from dataclasses import dataclass

import torch

from .layer import FFF
from .tree_init import fvu


@dataclass
class DistillConfig:
    steps: int = 200  # optimizer steps per layer (0: keep the clustering init)
    batch_tokens: int = 2048
    lr: float = 1e-3
    soft_frac: float = 0.5  # share of the steps with soft routing
    t_start: float = 0.3  # temperature, in units of each node's spread of w.x + c at init
    t_end: float = 0.03
    hardening: float = 0.05  # final weight of the hardening loss


def _schedule(cfg: DistillConfig, step: int, soft_steps: int):
    frac = step / max(soft_steps - 1, 1)
    return cfg.t_start * (cfg.t_end / cfg.t_start) ** frac, cfg.hardening * frac


def distill_layer(layer: FFF, X, Y, cfg: DistillConfig, seed: int, bar=None):
    """Train `layer` (in place) to map X -> Y. X, Y: [N, H] on the layer's device."""
    gen = torch.Generator().manual_seed(seed)
    var = (Y - Y.mean(0)).pow(2).mean(0).sum()
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
    soft_steps = int(cfg.steps * cfg.soft_frac)
    layer.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(X), (cfg.batch_tokens,), generator=gen).to(X.device)
        x, y = X[idx], Y[idx]
        if step < soft_steps:
            layer.soft, (layer.temperature, h) = True, _schedule(cfg, step, soft_steps)
            loss = (layer(x) - y).pow(2).mean(0).sum() / var + h * layer.last_hardening
        else:
            layer.soft = False
            loss = (layer(x) - y).pow(2).mean(0).sum() / var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    layer.soft = False
    layer.eval()
    return layer


@torch.no_grad()
def layer_report(layer: FFF, X, Y) -> dict:
    """Hard-forward FVU, soft-forward FVU at the layer's temperature, and hard/soft agreement."""
    return {"fvu_hard": fvu(layer.hard_forward(X), Y), "fvu_soft": fvu(layer.soft_forward(X), Y),
            "agreement": layer.agreement(X)}
