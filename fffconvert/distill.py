"""Distillation. Layer-wise: each FFF learns to reproduce its dense FFN on the teacher's inputs.
End-to-end (`distill_model`): the converted model learns from the dense teacher's logits and
hidden states, soft then hard, as below.

Two phases per layer (fff-notes, section 3):
  soft  (first `soft_frac` of the steps): soft routing, temperature lowered geometrically from
        `t_start` to `t_end`, hardening loss weight raised linearly to `hardening`; routing
        hyperplanes and leaves both learn;
  hard  (the rest): hard routing, so the leaves are finetuned with exactly the forward the kernels
        run; the routing is frozen (hard decisions carry no gradient).
The loss is the MSE normalized by the target's variance, i.e. the FVU of the batch.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layer import FFF
from .surgery import fff_layers
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


def routing_schedule(cfg, step: int, steps: int) -> tuple[bool, float, float]:
    """(soft routing?, temperature, hardening loss weight) at `step` of `steps`, for a config with
    soft_frac, t_start, t_end and hardening (DistillConfig or E2EConfig): soft for the first
    soft_frac of the steps, temperature lowered geometrically and hardening raised linearly."""
    soft_steps = int(cfg.soft_frac * steps)
    if step >= soft_steps:
        return False, cfg.t_end, 0.0
    frac = step / max(soft_steps - 1, 1)
    return True, cfg.t_start * (cfg.t_end / cfg.t_start) ** frac, cfg.hardening * frac


def distill_layer(layer: FFF, X, Y, cfg: DistillConfig, seed: int, bar=None):
    """Train `layer` (in place) to map X -> Y. X, Y: [N, H] on the layer's device."""
    gen = torch.Generator().manual_seed(seed)
    var = (Y - Y.mean(0)).pow(2).mean(0).sum()
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
    layer.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(X), (cfg.batch_tokens,), generator=gen).to(X.device)
        x, y = X[idx], Y[idx]
        layer.soft, layer.temperature, h = routing_schedule(cfg, step, cfg.steps)
        loss = (layer(x) - y).pow(2).mean(0).sum() / var
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
def layer_report(layer: FFF, X, Y) -> dict:
    """Hard-forward FVU, soft-forward FVU at the layer's temperature, and hard/soft agreement."""
    return {"fvu_hard": fvu(layer.hard_forward(X), Y), "fvu_soft": fvu(layer.soft_forward(X), Y),
            "agreement": layer.agreement(X)}


# ---- end-to-end -------------------------------------------------------------------------------
@dataclass
class E2EConfig:
    """End-to-end distillation of a converted model against its dense teacher."""
    soft_frac: float = 0.5  # share of the steps with soft routing; the rest is hard (what is saved)
    t_start: float = 0.3  # routing temperature at the start and the end of the soft phase
    t_end: float = 0.03
    hardening: float = 0.1  # weight of the hardening loss at the end of the soft phase
    kd_temperature: float = 2.0  # softmax temperature of the logit distillation
    hidden_weight: float = 1.0  # weight of the MSE on every layer's hidden states


def set_phase(model, cfg: E2EConfig, step: int, steps: int) -> float:
    """Routing of every FFF layer for `step`; returns the hardening loss weight."""
    soft, temperature, hardening = routing_schedule(cfg, step, steps)
    for layer in fff_layers(model):
        layer.soft, layer.temperature = soft, temperature
    return hardening


def distillation_loss(student_out, teacher_out, cfg: E2EConfig, regression: bool):
    """KD on logits (KL at temperature T, or MSE for a regression head) + hidden-state MSE."""
    loss = 0.0
    s, t = getattr(student_out, "logits", None), getattr(teacher_out, "logits", None)
    if s is not None:
        if regression:
            loss = F.mse_loss(s, t)
        else:
            T = cfg.kd_temperature
            loss = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                            reduction="batchmean") * T * T
    if cfg.hidden_weight:
        pairs = list(zip(student_out.hidden_states[1:], teacher_out.hidden_states[1:]))
        hidden = sum(F.mse_loss(hs, ht) / ht.var() for hs, ht in pairs) / len(pairs)
        loss = loss + cfg.hidden_weight * hidden
    return loss


def distill_model(student, teacher, examples, collate, cfg: E2EConfig, train, device="cpu",
                  checkpoint_dir=None, resume=False, stop_after=None):
    """Distill `student` (converted) from `teacher` (dense) on `examples` for `train` (a
    fffconvert.train.TrainConfig) steps; ends with hard routing."""
    from .train import fit

    teacher = teacher.to(device).eval()
    regression = getattr(teacher.config, "num_labels", 0) == 1 and hasattr(teacher, "classifier")
    weight = {"hardening": 0.0}

    def on_step(step):
        weight["hardening"] = set_phase(student, cfg, step, train.steps)

    def loss_fn(model, batch, step):
        batch = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            t = teacher(**batch, output_hidden_states=True)
        s = model(**batch, output_hidden_states=True)
        loss = distillation_loss(s, t, cfg, regression)
        if weight["hardening"]:
            layers = fff_layers(student)
            loss = loss + weight["hardening"] * sum(layer.last_hardening for layer in layers) / len(layers)
        return loss

    stats = fit(student, examples, collate, loss_fn, train, device=device, checkpoint_dir=checkpoint_dir,
                resume=resume, on_step=on_step, desc="distillation", stop_after=stop_after)
    for layer in fff_layers(student):
        layer.soft, layer.last_hardening = False, None
    return stats


@contextmanager
def soft_routing(model):
    """Evaluate `model` with soft routing in its FFF layers (everything else stays in eval mode)."""
    layers = fff_layers(model)
    before = [(layer.training, layer.soft) for layer in layers]
    for layer in layers:
        layer.training, layer.soft = True, True
    try:
        yield model
    finally:
        for layer, (training, soft) in zip(layers, before):
            layer.training, layer.soft = training, soft


@torch.no_grad()
def routing_agreement(model, batches) -> float:
    """Share of tokens, over all FFF layers, whose hard leaf is the leaf of largest soft weight."""
    hits, total = [0.0], [0]

    def hook(layer, args, _out):
        x = args[0].reshape(-1, layer.hidden_size)
        hits[0] += layer.agreement(x) * len(x)
        total[0] += len(x)

    handles = [layer.register_forward_hook(hook) for layer in fff_layers(model)]
    try:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
    return hits[0] / max(total[0], 1)
