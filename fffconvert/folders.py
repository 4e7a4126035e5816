"""Reading model folders with checks: what a folder holds is checked before it is trusted.

A model named by a hub id is first downloaded (`fetch`), then read like a local folder.

config.json must parse; safetensors files must have readable headers, and the tensors they
declare must have the shapes the model built from config.json expects (compared on the meta
device, so a damaged config cannot make us allocate terabytes); loaded weights must be finite.
Every failure is one UserError naming the file and what is wrong.
"""
import json
import socket
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def hub_reachable(timeout=3.0) -> bool:
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


def is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~"))


def fetch(name: str, what: str = "model") -> Path:
    """A local folder for `name`: the folder itself, or the hub repository's files (downloaded, or
    from the local cache when the hub cannot be reached)."""
    if is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise UserError(f"{what} folder {name} {'is a file, not a folder' if path.exists() else 'does not exist'}")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = not hub_reachable()
    try:
        return Path(snapshot_download(name, local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "README.md",
                                                      "*/config.json", "*.bin"]))
    except LocalEntryNotFoundError:
        raise UserError(f"cannot load {name!r}: the Hugging Face hub cannot be reached and it is not in the local cache")
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"cannot load {name!r} from the Hugging Face hub: {str(e).splitlines()[0]}")


def read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise UserError(f"{path} has no config.json: not a transformers model folder")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} is not readable JSON ({e})")
    if not isinstance(config, dict):
        raise UserError(f"{file} is not a JSON object")
    return config


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a folder (one file, or the shards its index names)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is damaged ({e})")
        files = [path / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{index} names shards that are missing: {', '.join(missing[:3])}")
        return files
    return sorted(path.glob("*.safetensors"))


def header_shapes(files: list[Path]) -> dict[str, tuple]:
    """{tensor name: shape} from the files' headers, without reading the weights."""
    shapes = {}
    for f in files:
        if f.stat().st_size == 0:
            raise UserError(f"{f} is empty (an interrupted download or copy?)")
        try:
            with safe_open(f, framework="pt") as st:
                for name in st.keys():
                    shapes[name] = tuple(st.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f} is not a readable safetensors file ({str(e).splitlines()[0]})")
    return shapes


def check_shapes(expected: dict[str, tuple], found: dict[str, tuple], where: str, allowed_missing=()):
    """Raise unless the file's tensors are exactly what the model expects."""
    wrong = [f"{k}: {list(found[k])} in the file, {list(v)} expected" for k, v in expected.items()
             if k in found and tuple(found[k]) != tuple(v)]
    missing = [k for k in expected if k not in found and k not in allowed_missing]
    extra = [k for k in found if k not in expected]
    if wrong or missing or extra:
        what = wrong[:2] + [f"missing {', '.join(missing[:3])}"] * bool(missing) + [f"unexpected {', '.join(extra[:3])}"] * bool(extra)
        raise UserError(f"{where}: the weights do not match config.json ({'; '.join(what)})")


def meta_shapes(build) -> dict[str, tuple]:
    """{name: shape} of the state of the model `build()` makes, on the meta device (no memory)."""
    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_weights(files: list[Path]) -> dict:
    state = {}
    for f in files:
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f} could not be read ({str(e).splitlines()[0]})")
    return state


def check_finite(model, where: str):
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"{where}: the weight {name} holds NaN or infinite values")


def has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)
