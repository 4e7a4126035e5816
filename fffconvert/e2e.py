"""End-to-end distillation: the converted model learns from its dense teacher, as a whole.

Layer-wise fitting (distill.py) makes each FFF close to its FFN, but small errors compound over
the layers. Here the student learns, on real text, what users consume of the teacher:
  - every layer's hidden states (FVU over real tokens, each layer against the teacher's variance);
  - for an embedding model (`pooling` given, as for a sentence-transformers model), its pooled,
    normalized embedding (1 - cosine);
  - for a model with a head, its logits: KL at `kd_temperature` (per real token for a masked-LM
    head), MSE for a regression head.
Schedule (fff-notes, section 3): soft routing with the hardening loss for the first `soft_frac`
of the steps, then hard routing, where the routing is frozen and the leaves and the rest of the
model learn with exactly the forward the kernels run; what is saved is that hard model.
The whole student learns (attention, norms, embeddings too: they can make up for what a tree
cannot hold), with dropout off: the aim is to reproduce the teacher, not to regularize.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .distill import routing_schedule
from .measures import Pooling, hidden_fvu
from .surgery import fff_layers
from .train import TrainConfig, fit, rank_and_world


@dataclass
class E2EConfig:
    steps: int = 2000  # optimizer steps (0: layer-wise fitting only)
    minutes: float | None = None  # a time budget instead: as many steps as fit, timed on a few probe steps
    batch_size: int = 256  # texts per step, over all GPUs
    lr: float = 1e-3  # everything but the FFF layers (docs/results: 3e-5 / 3e-4 / 6e-4 / 1e-3 on MiniLM)
    fff_lr: float = 2e-3  # the FFF layers
    warmup: float = 0.06  # share of steps with a linear warm-up (then linear decay)
    soft_frac: float = 0.5  # share of the steps with soft routing; the rest is hard (what is saved)
    t_start: float = 0.3  # routing temperature at the start and the end of the soft phase
    t_end: float = 0.03
    hardening: float = 0.1  # weight of the hardening loss at the end of the soft phase
    hidden_weight: float = 1.0  # every layer's hidden states
    embedding_weight: float = 1.0  # the pooled embedding (embedding models only)
    logits_weight: float = 1.0  # the head's logits (models with a head only)
    kd_temperature: float = 2.0
    weight_decay: float = 0.01  # AdamW's, on every trained parameter
    average_steps: int = 0  # horizon of the weights' moving average that is scored and saved (train.py); 0: off
    augment: float = 0.0  # per token, the chance of its deletion and, again, of its replacement (see `perturbed`)
    checkpoint_every: int = 500

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1 or self.average_steps < 0:
            raise ValueError("end-to-end steps and averaging steps must be >= 0, batch size and checkpoint interval >= 1")
        if self.lr <= 0 or self.fff_lr <= 0:
            raise ValueError("end-to-end learning rates must be > 0")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError("end-to-end minutes must be > 0")
        for name, value in vars(self).items():  # nan passes every comparison above
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"end-to-end {name} must be a finite number, got {value}")


def set_phase(model, cfg: E2EConfig, step: int, steps: int) -> float:
    """Routing of every FFF layer for `step`; returns the hardening loss weight."""
    soft, temperature, hardening = routing_schedule(cfg, step, steps)
    for layer in fff_layers(model):
        layer.soft, layer.temperature = soft, temperature
    return hardening


def _logits_loss(s: torch.Tensor, t: torch.Tensor, mask, T: float, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(s, t)
    if s.dim() == 3:  # one distribution per token (masked-LM head): real tokens only
        s, t = s[mask.bool()], t[mask.bool()]
    return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean") * T * T


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(t)
    return t


def distillation_loss(student_out, teacher_out, mask, cfg: E2EConfig, pooling: Pooling | None = None,
                      regression: bool = False) -> torch.Tensor:
    """The weighted sum of the terms above that this model has (in a distributed run, the hidden
    states' FVU is that of the global batch: measures.hidden_fvu)."""
    reduce = _all_reduce if rank_and_world()[1] > 1 else None
    pairs = list(zip(student_out.hidden_states[1:], teacher_out.hidden_states[1:]))
    loss = cfg.hidden_weight * sum(hidden_fvu(s, t, mask, reduce) for s, t in pairs) / len(pairs)
    if pooling is not None and cfg.embedding_weight:
        es, et = pooling(pairs[-1][0], mask), pooling(pairs[-1][1], mask)
        loss = loss + cfg.embedding_weight * (1 - F.cosine_similarity(es, et, dim=-1)).mean()
    s, t = getattr(student_out, "logits", None), getattr(teacher_out, "logits", None)
    if s is not None and cfg.logits_weight:
        loss = loss + cfg.logits_weight * _logits_loss(s, t, mask, cfg.kd_temperature, regression)
    return loss


def is_regression(model) -> bool:
    return getattr(model.config, "num_labels", 0) == 1 and hasattr(model, "classifier")


PROBE_STEPS = 12


def steps_for_minutes(student, teacher, examples, collate, cfg: E2EConfig, device="cpu", pooling=None, seed=0) -> int:
    """Steps that fit in cfg.minutes on this machine, timed on PROBE_STEPS steps (soft and hard,
    as the schedule mixes them) of a copy of the student."""
    import copy

    probe = replace(cfg, steps=PROBE_STEPS, minutes=None)
    stats = distill_model(copy.deepcopy(student), teacher, examples, collate, probe, device, pooling, seed, progress=False)
    return max(1, int(cfg.minutes * 60 * PROBE_STEPS / stats["seconds"]))


def distill_model(student, teacher, examples, collate, cfg: E2EConfig, device="cpu", pooling: Pooling | None = None,
                  seed: int = 0, checkpoint_dir=None, resume=False, stop_after=None, progress=True,
                  evaluate=None, eval_every: int = 0, patience: int = 0):
    """Distill `student` (converted) from `teacher` (dense) on `examples`, batched by
    `collate(list) -> dict of tensors` (a "labels" entry is ignored), for cfg.steps steps;
    ends with hard routing. With `evaluate`, keeps the best-scoring weights (train.fit).
    Returns the training loop's stats."""
    teacher = teacher.to(device).eval()
    regression = is_regression(teacher)
    weight = {"hardening": 0.0}

    def on_step(step):
        weight["hardening"] = set_phase(student, cfg, step, cfg.steps)

    def loss_fn(model, batch, step):
        batch = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            t = teacher(**batch, output_hidden_states=True)
        s = model(**batch, output_hidden_states=True)
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        loss = distillation_loss(s, t, mask, cfg, pooling, regression)
        if weight["hardening"]:
            layers = fff_layers(student)
            loss = loss + weight["hardening"] * sum(layer.last_hardening for layer in layers) / len(layers)
        return loss

    train = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, fff_lr=cfg.fff_lr, warmup=cfg.warmup,
                        weight_decay=cfg.weight_decay, average_steps=cfg.average_steps,
                        seed=seed, checkpoint_every=cfg.checkpoint_every, dropout=False, eval_every=eval_every,
                        patience=patience)
    stats = fit(student, examples, collate, loss_fn, train, device=device, checkpoint_dir=checkpoint_dir,
                resume=resume, on_step=on_step, desc="end-to-end distillation", stop_after=stop_after,
                progress=progress, evaluate=evaluate)
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


def perturbed(ids: list[list[int]], rows: list[list[int]], p: float) -> list[list[int]]:
    """Copies of `rows` (token ids with their special first and last tokens) in which each inner
    token is deleted with probability p, or replaced with probability p by a token drawn from the
    corpus `ids`. The teacher labels whatever it is shown, so perturbed text widens what the student
    learns from beyond the few texts it has (TinyBERT's augmentation, without its word vectors).
    Drawn from torch's generator, which the training loop seeds per step."""
    out = []
    for r in rows:
        inner = r[1:-1]
        u = torch.rand(len(inner)).tolist()
        keep = []
        for token, x in zip(inner, u):
            if x < p:
                continue
            if x < 2 * p:
                src = ids[int(torch.randint(len(ids), ()))]
                token = src[int(torch.randint(1, max(2, len(src) - 1), ()))] if len(src) > 2 else token
            keep.append(token)
        out.append([r[0], *(keep or inner), r[-1]])
    return out


def text_collate(pad_id: int, augment: float = 0.0, corpus=None):
    """collate for token-id lists: padded input_ids and attention_mask; with `augment`, the texts
    perturbed first (`perturbed`, drawing replacements from `corpus`)."""
    def collate(rows):
        if augment:
            rows = perturbed(corpus, rows, augment)
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": input_ids, "attention_mask": mask}
    return collate
