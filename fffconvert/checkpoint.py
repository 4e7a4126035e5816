"""Checkpoints in safetensors (never pickle): a training run's model, optimizer and scheduler state,
and a conversion's finished phases.

    model.safetensors      the model's weights
    optimizer.safetensors  every tensor of the optimizer state, keyed "<param index>.<name>"
    best.safetensors       the weights at the best evaluation so far (runs that evaluate)
    average.safetensors    the moving average of the weights (runs that average them)
    state.json             step, losses, the optimizer's param groups, the scheduler's state, extra

Written to a temporary folder and renamed, so a run killed while saving keeps the previous one.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .atomic import atomic_folder


def save_checkpoint(path, model, opt, sched, step: int, losses: list[float], extra: dict | None = None,
                    best: dict | None = None, average=None):
    """`extra`: more of the run's state (JSON); `best`: the weights of its best evaluation so far;
    `average`: its torch.optim.swa_utils.AveragedModel."""
    opt_state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    with atomic_folder(path, overwrite=True) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        if average is not None:
            save_model(average, str(tmp / "average.safetensors"))
        (tmp / "state.json").write_text(json.dumps({
            "step": step, "losses": losses, "param_groups": opt_state["param_groups"],
            "optimizer_scalars": scalars, "scheduler": sched.state_dict(), "extra": extra or {},
        }))


def load_checkpoint(path, model, opt, sched, average=None) -> tuple[int, list[float], dict, dict | None]:
    """Restore model, optimizer, scheduler (and the weights' average) in place; returns (step,
    losses, extra, best weights)."""
    path = Path(path)
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    if average is not None:
        if not (path / "average.safetensors").exists():
            raise ValueError(f"checkpoint {path} has no weight average: resume with the settings it started with")
        load_model(average, str(path / "average.safetensors"), device=str(device))
    meta = json.loads((path / "state.json").read_text())
    state: dict = {}
    for key, value in load_file(str(path / "optimizer.safetensors"), device=str(device)).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["optimizer_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, s in state.items():  # AdamW keeps its step count as a CPU tensor
        if "step" in s and torch.is_tensor(s["step"]):
            s["step"] = s["step"].cpu()
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").exists() else None
    return meta["step"], meta["losses"], meta.get("extra", {}), best


def save_stage(path, model, meta: dict):
    """A finished phase of a conversion: the model's weights and what is needed to rebuild it."""
    with atomic_folder(path, overwrite=True) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))


def load_stage(path, model, rebuild) -> dict:
    """Restore a phase saved by save_stage: `rebuild(model, meta["shapes"])` gives the model the
    saved structure, then the weights are loaded; returns the saved meta."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    rebuild(model, meta["shapes"])
    load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    return meta
