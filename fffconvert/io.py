"""Saving and loading converted models, in the PEFT manner: `save_pretrained` / `from_pretrained`.

A converted folder is a transformers model folder of an FFF model type (modeling.py):
model.safetensors, config.json (with its `fff` section), the tokenizer, a model card with hub
metadata, and, for a sentence-transformers source, that library's module files. Folders are
written atomically (atomic.py). Loading reads safetensors only, and checks the folder before it
trusts it (folders.py): a damaged file or a config that no longer matches the weights is one
clear error, never a traceback or a silently random layer.
"""
from pathlib import Path

from .atomic import atomic_folder, recover
from .errors import UserError
from .folders import (check_finite, check_shapes, fetch, header_shapes, is_local, load_weights, meta_shapes,
                      read_config, weight_files)
from .modeling import CONFIGS, as_fff_model, register
from .quantize import is_quantized, quantize as apply_quantization
from .surgery import fff_shapes, source_type

MAX_SHARD_SIZE = "2GB"
MAX_DEPTH = 24  # deeper trees than this hold more leaves than any model has tokens to fit them
CARD_TAGS = ["fffconvert", "fast-feedforward"]


def model_card(model, command: str | None = None, source_card: dict | None = None, base_model: str | None = None,
               sentence_transformers: bool = False):
    """README.md of a converted model (huggingface_hub.ModelCard): hub metadata and the report."""
    from huggingface_hub import ModelCard, ModelCardData

    fff = model.config.fff
    source_card = source_card or {}
    library = "sentence-transformers" if sentence_transformers else "transformers"
    data = ModelCardData(base_model=base_model, license=source_card.get("license"), library_name=library,
                         tags=CARD_TAGS + [t for t in source_card.get("tags", []) if t not in CARD_TAGS],
                         language=source_card.get("language"), pipeline_tag=source_card.get("pipeline_tag"))
    shapes = sorted({(r["depth"], r["leaf_width"]) for r in fff["layers"]})
    lines = [
        f"# {base_model or model.config.architectures[0]} with fast feedforward layers", "",
        f"Converted by fffconvert {fff['version']}: every FFN replaced by a binary tree of routing hyperplanes over "
        f"small leaf FFNs ({fff['activation']}); tree shapes (depth, leaf width): "
        f"{', '.join(f'({d}, {w})' for d, w in shapes)}. A token uses **{fff['rows_per_token']:.1f} of the dense "
        f"FFN's {fff['dense_ffn_width']} neurons** per layer on average (routing rows + leaf neurons).", "",
        "```python\nimport fffconvert  # registers the model type with transformers\nimport transformers\n"
        "model = transformers.AutoModel.from_pretrained(\"path/to/this/folder\")\n```", "",
    ]
    if command:
        lines += ["Made with:", "", f"```\n{command}\n```", ""]
    lines += [f"## Conversion report ({fff['calibration_tokens']} calibration tokens)", "",
              "FVU = fraction of the variance of each layer's output (after its LayerNorm) that the FFF leaves "
              "unexplained, on held-out tokens, with the dense model's inputs.", "", report_table(fff["layers"]), ""]
    e2e = fff.get("end_to_end")
    if e2e:
        lines += ["## End-to-end distillation", "", f"{e2e['steps']} steps of {e2e['batch_size']} texts. On "
                  f"{e2e['heldout_texts']} held-out texts of the conversion text, against the dense model "
                  "(text of other kinds stays less close: measure yours with `fffconvert eval --data`):", "",
                  fidelity_table(e2e), ""]
    if fff.get("eval"):
        lines += ["## `fffconvert eval`", "", fff["eval"], ""]
    if fff.get("seconds"):
        lines += ["Seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in fff["seconds"].items()), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def report_table(rows) -> str:
    cols = [("layer", "layer", "{}"), ("depth", "depth", "{}"), ("leaf_width", "leaf width", "{}"),
            ("fvu_random", "random init", "{:.4f}"), ("fvu_init", "clustering init", "{:.4f}"),
            ("fvu_hard", "after layer-wise distillation", "{:.4f}"), ("fvu_oracle", "oracle top-k", "{:.4f}"),
            ("agreement", "hard/soft agreement", "{:.3f}")]
    cols = [c for c in cols if c[0] in rows[0]]
    out = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(f.format(r[k]) for k, _, f in cols) + " |" for r in rows]
    return "\n".join(out)


def fidelity_table(e2e: dict) -> str:
    """Layer-wise only vs after end-to-end distillation: hidden-state FVU per layer, cosines."""
    a, b = e2e.get("layerwise_only") or {}, e2e.get("after") or {}
    if not b:
        return ""
    rows = [("hidden-state FVU, layer " + str(i + 1), a.get("hidden_fvu", [None] * (i + 1))[i], v)
            for i, v in enumerate(b["hidden_fvu"])]
    rows += [(name, a.get(k), b[k]) for k, name in (("token_cosine", "cosine of final token states"),
                                                    ("embedding_cosine", "embedding cosine, mean"),
                                                    ("embedding_cosine_p5", "embedding cosine, 5th percentile"),
                                                    ("neighbour_agreement", "top-10 neighbour agreement")) if k in b]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    return "\n".join(["| | layer-wise only | after end-to-end |", "|---|---:|---:|"]
                     + [f"| {n} | {fmt(x)} | {fmt(y)} |" for n, x, y in rows])


def save_pretrained(model, path, tokenizer=None, overwrite=False, command=None, extra_files=None,
                    source_card=None, base_model=None):
    """Write model.safetensors (sharded when large), config.json, tokenizer files, README.md and
    `extra_files` ({relative path: bytes}, e.g. sentence-transformers modules)."""
    if not getattr(model.config, "fff", None):
        raise UserError("this model has no FFF layers; convert it first")
    if is_quantized(model):
        raise UserError("save the float32 model (quantization is recorded with --quantize and redone on loading)")
    as_fff_model(model)
    with atomic_folder(path, overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for rel, data in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        model_card(model, command, source_card, base_model, "modules.json" in (extra_files or {})).save(tmp / "README.md")
    return Path(path)


def check_converted_config(config: dict, where) -> dict:
    """The `fff` section of a converted folder's config.json, checked for sane shapes."""
    fff = config.get("fff")
    if not fff or not isinstance(fff, dict):
        raise UserError(f"{where} is not a model converted by fffconvert (its config.json has no 'fff' section)")
    try:
        depths, widths = fff_shapes(fff)
        depths = depths if isinstance(depths, list) else [depths]
        widths = widths if isinstance(widths, list) else [widths]
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in depths + widths)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{where}/config.json: its 'fff' section has no valid per-layer depth and leaf_width")
    bad = [(d, w) for d, w in zip(depths, widths) if not (1 <= d <= MAX_DEPTH and w >= 1)]
    if bad:
        raise UserError(f"{where}/config.json: its 'fff' section names an impossible tree (depth {bad[0][0]}, "
                        f"leaf width {bad[0][1]}; depth must be 1..{MAX_DEPTH})")
    return fff


def from_pretrained(name_or_path, device="cpu", dtype=None, quantize: bool = True):
    """Load a converted model (a folder, or a hub id): its FFF transformers class, in eval mode,
    after checking that its files are sound and match its config. A folder that records int8
    (`fffconvert --quantize int8`) is quantized as it loads, unless `quantize=False`."""
    register()
    if is_local(str(name_or_path)):
        recover(Path(name_or_path))  # finish (or undo) a save that was killed halfway
    path = fetch(str(name_or_path), what="converted model")
    raw = read_config(path)
    check_converted_config(raw, path)
    model_type = source_type(raw.get("model_type"))
    if model_type not in CONFIGS:
        raise UserError(f"{path}/config.json: model type {raw.get('model_type')!r} is not one fffconvert converts")
    try:
        config = CONFIGS[model_type].from_dict({k: v for k, v in raw.items() if k != "model_type"})
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}/config.json is not a valid model config ({str(e).splitlines()[0]})")
    cls = _fff_class(config, path)
    files = weight_files(path)
    if not files:
        raise UserError(f"{path} has no model.safetensors")
    expected = meta_shapes(lambda: cls(config))
    check_shapes(expected, _renamed(header_shapes(files)), str(path), allowed_missing=_tied_keys(cls))
    model = cls(config)
    missing, _ = model.load_state_dict(_renamed(load_weights(files)), strict=False)
    if missing:
        model.tie_weights()
    check_finite(model, str(path))
    model = model.to(device=device, dtype=dtype).eval()
    if quantize and config.fff.get("quantize"):
        apply_quantization(model, config.fff["quantize"])
    return model


def _renamed(state: dict) -> dict:
    """fffconvert 0.1 named the leaf neurons' input weights w1 and b1 (now weight and bias)."""
    legacy = {"w1": "weight", "b1": "bias"}
    return {(k.rsplit(".", 1)[0] + "." + legacy[k.rsplit(".", 1)[1]] if k.rsplit(".", 1)[-1] in legacy else k): v
            for k, v in state.items()}


def _fff_class(config, path):
    from .modeling import MODELS

    arch = (config.architectures or [None])[0] or ""
    name = arch[3:] if arch.startswith("FFF") else arch
    for (model_type, head), cls in MODELS.items():
        if cls.__name__ == "FFF" + name and cls.config_class is type(config):
            return cls
    base = [cls for (t, head), cls in MODELS.items() if head == "Model" and cls.config_class is type(config)]
    if not arch and base:
        return base[0]
    raise UserError(f"{path}/config.json names a model class {arch!r} that fffconvert does not convert")


def _tied_keys(cls) -> list:
    keys = getattr(cls, "_tied_weights_keys", None) or []
    return list(keys.keys()) if isinstance(keys, dict) else list(keys)


def push_to_hub(model_or_folder, repo_id: str, tokenizer=None, private: bool | None = None, token=None,
                commit_message: str = "Upload a model converted by fffconvert"):
    """Upload a converted model to the Hugging Face hub: a folder written by `save_pretrained`
    (checked first, as `from_pretrained` would), or a model, saved into a temporary folder first."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_folder, (str, Path)):
            folder = Path(model_or_folder)
            check_converted_config(read_config(folder), folder)
        else:
            folder = save_pretrained(model_or_folder, Path(tmp) / "model", tokenizer)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
