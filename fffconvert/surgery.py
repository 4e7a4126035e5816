"""Where the FFN blocks are in each supported architecture, and the module swap that replaces them.

To add an architecture, add one `FFNSpec` row to `ARCHITECTURES`: the pattern that names its
transformer blocks, and (relative to a block) where the FFN's input projection, activation and
output projection live. The swap puts the FFF in the input projection's place and an Identity in
the other two, so the block's own dropout, residual and LayerNorm stay exactly as they were.
"""
import re
from dataclasses import dataclass

import torch.nn as nn

from .errors import UserError
from .layer import FFF


@dataclass(frozen=True)
class FFNSpec:
    block: str  # regex, full match, for a transformer block's module name (any prefix: task heads)
    fc1: str  # input projection H -> F, relative to the block
    act: str  # activation module
    fc2: str  # output projection F -> H
    act_key: str  # config attribute naming the activation
    norm: str | None  # the LayerNorm applied to (FFN input + FFN output) in a post-LN block; None if none


_BERT_LIKE = FFNSpec(r"(.*\.)?encoder\.layer\.\d+", "intermediate.dense",
                     "intermediate.intermediate_act_fn", "output.dense", "hidden_act",
                     "output.LayerNorm")
ARCHITECTURES = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": FFNSpec(r"(.*\.)?transformer\.layer\.\d+", "ffn.lin1", "ffn.activation", "ffn.lin2", "activation",
                          "output_layer_norm"),
}

# transformers' activation names -> the layer's (fffconvert.layer.ACTIVATIONS)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu", "swish": "silu"}


# Converted models have their own model types: this prefix and the source's type (modeling.py).
CONVERTED_PREFIX = "fffconvert-"


def source_type(model_type: str | None) -> str | None:
    """The source architecture's model type, also for a converted model's type."""
    return model_type[len(CONVERTED_PREFIX):] if model_type and model_type.startswith(CONVERTED_PREFIX) else model_type


def max_positions(config) -> int | None:
    """The most tokens a text may have in this model: its position table's size (RoBERTa's
    positions start after its padding index)."""
    n = getattr(config, "max_position_embeddings", None)
    if n and source_type(config.model_type) == "roberta":
        n -= config.pad_token_id + 1
    return n


def spec_for(config) -> FFNSpec:
    model_type = source_type(getattr(config, "model_type", None))
    if model_type not in ARCHITECTURES:
        raise UserError(f"architecture {model_type!r} is not supported; supported: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def activation_of(config) -> str:
    spec = spec_for(config)
    name = getattr(config, spec.act_key)
    if name not in HF_ACTIVATIONS:
        raise UserError(f"activation {name!r} is not supported; supported: {', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[name]


@dataclass
class FFNBlock:
    """One dense FFN found in a model: its block's name, its two projections, the norm after it."""
    name: str
    block: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear
    norm: nn.LayerNorm | None


def find_ffns(model: nn.Module) -> list[FFNBlock]:
    """Every FFN of a supported model, in order; raises if the model has none."""
    spec = spec_for(model.config)
    if any(isinstance(m, FFF) for m in model.modules()):
        raise UserError("this model is converted already: its FFNs are FFF layers (convert the dense model)")
    found = []
    for name, module in model.named_modules():
        if re.fullmatch(spec.block, name):
            fc1, fc2 = module.get_submodule(spec.fc1), module.get_submodule(spec.fc2)
            norm = module.get_submodule(spec.norm) if spec.norm else None
            found.append(FFNBlock(name, module, fc1, fc2, norm))
    if not found:
        raise UserError(f"no FFN blocks matching {spec.block!r} in this {model.config.model_type} model")
    return found


def _set(root: nn.Module, path: str, module: nn.Module):
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def swap_ffns(model: nn.Module, layers: list[FFF]) -> nn.Module:
    """Put `layers[i]` in the place of the i-th FFN of `model`, in place."""
    spec, blocks = spec_for(model.config), find_ffns(model)
    if len(layers) != len(blocks):
        raise UserError(f"{len(layers)} FFF layers for {len(blocks)} FFN blocks")
    for b, layer in zip(blocks, layers):
        _set(b.block, spec.fc1, layer)
        _set(b.block, spec.act, nn.Identity())
        _set(b.block, spec.fc2, nn.Identity())
    return model


def fff_layers(model: nn.Module) -> list[FFF]:
    return [m for m in model.modules() if isinstance(m, FFF)]


def check_source(fff: nn.Module, dense: nn.Module):
    """Raise UserError unless `dense` could be `fff`'s source: its architecture, FFN count and
    widths, and vocabulary (a wrong source would fail deep inside a comparison, or time another model)."""
    def shape(model, widths):
        return source_type(model.config.model_type), widths, model.get_input_embeddings().num_embeddings

    want = shape(fff, [layer.hidden_size for layer in fff_layers(fff)])
    got = shape(dense, [block.fc1.in_features for block in find_ffns(dense)])
    if got != want:
        raise UserError(f"the dense model is not this converted model's source: {got[0]}, {len(got[1])} FFN layers of "
                        f"width {got[1][0]}, vocabulary {got[2]}, against {want[0]}, {len(want[1])} of {want[1][0]}, "
                        f"{want[2]}; give --dense the model it was converted from")


def empty_fff_model(model: nn.Module, depth, leaf_width) -> nn.Module:
    """Swap every FFN of `model` for an FFF of the given shape (weights to be loaded); `depth` and
    `leaf_width` are one value for all layers or a list with one per layer."""
    act = activation_of(model.config)
    blocks = find_ffns(model)
    depths = depth if isinstance(depth, (list, tuple)) else [depth] * len(blocks)
    widths = leaf_width if isinstance(leaf_width, (list, tuple)) else [leaf_width] * len(blocks)
    if len(depths) != len(blocks) or len(widths) != len(blocks):
        raise UserError(f"{len(depths)} depths and {len(widths)} leaf widths for {len(blocks)} FFN layers")
    layers = [FFF(b.fc1.in_features, d, w, act) for b, d, w in zip(blocks, depths, widths)]
    return swap_ffns(model, layers)


def fff_shapes(fff: dict) -> tuple[list[int], list[int]]:
    """(depths, leaf widths) of the layers, from a converted config's `fff` section."""
    rows = fff.get("layers") or []
    if rows and "depth" in rows[0]:
        return [r["depth"] for r in rows], [r["leaf_width"] for r in rows]
    return fff["depth"], fff["leaf_width"]  # fffconvert 0.1: one shape for all layers
