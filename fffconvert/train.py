"""A small training loop shared by dense finetuning and end-to-end distillation.

- Resumable with nothing lost: the batch of every step and the dropout masks are functions of
  (seed, step), so a run resumed from a checkpoint takes exactly the steps it would have taken.
- Multi-GPU through torch.distributed (launch with torchrun): DistributedDataParallel, each rank
  takes its share of every global batch, so the result does not depend on the number of GPUs.
- Checkpoints (safetensors only) every `checkpoint_every` steps, written by rank 0.
- No host synchronization per step: losses stay on the device and are read (and checked for
  being finite) every `log_every` steps and at checkpoints.
- Selection on held-out data: with `evaluate` and `eval_every`, the model is scored every
  eval_every steps and at the end (higher is better); the best weights are kept (and
  checkpointed) and restored at the end; `patience` evaluations without a gain stop the run.
- Weight averaging (`average_steps`): an exponential moving average of the weights over about
  that many steps (torch.optim.swa_utils) is what is scored, kept and returned. On small tasks,
  where a held-out score moves by points between neighbouring steps, the average is a smoother
  thing to select and a flatter one to keep.
"""
import functools
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 32  # global batch, over all ranks
    lr: float = 5e-5
    fff_lr: float | None = None  # learning rate of FFF layers (default: lr)
    weight_decay: float = 0.01
    warmup: float = 0.06  # share of steps with a linear warm-up
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    dropout: bool = True  # False: dropout off (eval mode) everywhere but in the FFF layers, which train
    log_every: int = 50
    eval_every: int = 0  # steps between evaluations (with `evaluate`); 0: only at the end
    patience: int = 0  # evaluations without a gain before stopping; 0: never stop early
    average_steps: int = 0  # horizon of the weights' moving average that is scored and kept; 0: the last weights


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> str:
    """Join the process group when started by torchrun; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend)
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return device


def batch_indices(n: int, cfg: TrainConfig, step: int) -> list[int]:
    """Example indices of global batch `step`: epoch-wise seeded permutations of range(n)."""
    per_epoch = max(1, n // cfg.batch_size)
    epoch, i = divmod(step, per_epoch)
    return _permutation(n, cfg.seed * 7919 + epoch)[i * cfg.batch_size: (i + 1) * cfg.batch_size].tolist()


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int) -> torch.Tensor:
    # drawn once per epoch, not per step: 391k rows (MNLI) take 3 ms on a CPU, a finetuning step ~20
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _optimizer(model, cfg: TrainConfig):
    from .layer import FFF

    fff_ids = {id(p) for m in model.modules() if isinstance(m, FFF) for p in m.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in fff_ids and p.requires_grad], "lr": cfg.lr},
              {"params": [p for p in model.parameters() if id(p) in fff_ids], "lr": cfg.fff_lr or cfg.lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    return opt, sched


def _train_mode(model, dropout: bool):
    from .layer import FFF

    model.train(dropout)
    if not dropout:
        for m in model.modules():
            if isinstance(m, FFF):
                m.train()


def fit(model, examples, collate, loss_fn, cfg: TrainConfig, device="cpu", checkpoint_dir=None, resume=False,
        on_step=None, desc="training", stop_after=None, progress=True, evaluate=None):
    """Train `model` on `examples` for cfg.steps steps of loss_fn(model, batch, step).

    collate(list of examples) -> dict of tensors. on_step(step) runs before each step (schedules).
    evaluate(model) -> score on held-out data, higher is better (see the module's docstring).
    stop_after: leave the loop after this many steps of this call (to test resuming).
    Returns {"steps", "seconds", "examples_per_s", "losses"} and, with `evaluate`, "evaluations"
    ([step, score] pairs), "best_step" and "best_score".
    """
    rank, world = rank_and_world()
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if "cuda" in str(device) else None,
            find_unused_parameters=True)  # hard routing leaves the routing nodes without gradients
    opt, sched = _optimizer(model, cfg)
    average = _averaged(model, cfg.average_steps)
    start, losses, track, best = 0, [], {"evaluations": [], "best_step": None, "best_score": None}, None
    if resume and checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "state.json")):
        start, losses, extra, best = load_checkpoint(checkpoint_dir, model, opt, sched, average)
        track.update(extra)
    kept = model if average is None else average.module  # what is scored and returned
    _train_mode(model, cfg.dropout)
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, unit="step", disable=rank != 0 or not progress)
    t0, done, pending = time.perf_counter(), 0, []
    for step in range(start, cfg.steps):
        if stop_after is not None and done >= stop_after:
            break
        torch.manual_seed(cfg.seed * 1_000_003 + step * world + rank)  # dropout masks: f(seed, step, rank)
        idx = batch_indices(len(examples), cfg, step)[rank::world]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx]).items()}
        if on_step is not None:
            on_step(step)
        loss = loss_fn(trained, batch, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        if average is not None:
            average.update_parameters(model)
        pending.append(loss.detach())
        done += 1
        bar.update(1)
        save = checkpoint_dir and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps)
        if save or len(pending) >= cfg.log_every or step + 1 == cfg.steps:
            losses += _read_losses(pending, desc, step)
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        stop = False
        if evaluate is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps):
            best, stop = _evaluate(model, kept, evaluate, step + 1, track, best, cfg)
        if save:
            if rank == 0:
                save_checkpoint(checkpoint_dir, model, opt, sched, step + 1, losses, track, best, average)
            if world > 1:
                dist.barrier()
        if stop:
            break
    losses += _read_losses(pending, desc, start + done - 1)
    bar.close()
    seconds = time.perf_counter() - t0
    if best is not None:
        model.load_state_dict(best)
    elif average is not None:
        model.load_state_dict(average.module.state_dict())
    model.eval()
    stats = {"steps": done, "seconds": seconds, "examples_per_s": done * cfg.batch_size / max(seconds, 1e-9),
             "losses": losses}
    return {**stats, **track} if evaluate is not None else stats


def _averaged(model, steps: int):
    """The moving average of model's weights over about `steps` steps, or None for steps 0."""
    if not steps:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    # Parameters only: buffers (position ids, masks) are constants here, and an average of integers rounds.
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1 - 1 / steps), use_buffers=False)


def _evaluate(model, kept, evaluate, step: int, track: dict, best, cfg: TrainConfig):
    """Score `kept` (the model or its average); keep its weights if best so far. Returns (best
    weights, stop?)."""
    kept.eval()
    with torch.no_grad():
        score = float(evaluate(kept))
    _train_mode(model, cfg.dropout)
    track["evaluations"].append([step, score])
    if track["best_score"] is None or score > track["best_score"]:
        track["best_score"], track["best_step"] = score, step
        best = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
    since = sum(1 for s, _ in track["evaluations"] if s > track["best_step"])
    return best, bool(cfg.patience) and since >= cfg.patience


def _read_losses(pending: list, desc: str, step: int) -> list[float]:
    """The losses of the last steps as floats (one host synchronization); raises if one is not finite."""
    values = torch.stack(pending).float().cpu().tolist() if pending else []
    pending.clear()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise FloatingPointError(f"{desc}: loss became {v} at step {step - len(values) + 1 + i}")
    return values
