"""Where the FFN blocks are in each supported architecture, and the module swap that replaces them.

To add an architecture, add one `FFNSpec` row to `ARCHITECTURES`: the pattern that names its
transformer blocks, and (relative to a block) where the FFN's input projection, activation and
output projection live. The swap puts the FFF in the input projection's place and an Identity in
the other two, so the block's own dropout, residual and LayerNorm stay exactly as they were.
"""
import re
from dataclasses import dataclass

import torch.nn as nn

from .layer import FFF


@dataclass(frozen=True)
class FFNSpec:
    block: str  # regex, full match, for a transformer block's module name (any prefix: task heads)
    fc1: str  # input projection H -> F, relative to the block
    act: str  # activation module
    fc2: str  # output projection F -> H
    act_key: str  # config attribute naming the activation


_BERT_LIKE = FFNSpec(r"(.*\.)?encoder\.layer\.\d+", "intermediate.dense",
                     "intermediate.intermediate_act_fn", "output.dense", "hidden_act")
ARCHITECTURES = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": FFNSpec(r"(.*\.)?transformer\.layer\.\d+", "ffn.lin1", "ffn.activation", "ffn.lin2", "activation"),
}

# transformers' activation names -> the layer's (fffconvert.layer.ACTIVATIONS)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu", "swish": "silu"}


class ConversionError(ValueError):
    """A model or setting fffconvert cannot convert; the message says why and what would work."""


def spec_for(config) -> FFNSpec:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConversionError(f"architecture {model_type!r} is not supported; supported: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def activation_of(config) -> str:
    spec = spec_for(config)
    name = getattr(config, spec.act_key)
    if name not in HF_ACTIVATIONS:
        raise ConversionError(f"activation {name!r} is not supported; supported: {', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[name]


@dataclass
class FFNBlock:
    """One dense FFN found in a model: its block's name and its three modules."""
    name: str
    block: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear


def find_ffns(model: nn.Module) -> list[FFNBlock]:
    """Every FFN of a supported model, in order; raises if the model has none."""
    spec = spec_for(model.config)
    found = []
    for name, module in model.named_modules():
        if re.fullmatch(spec.block, name):
            fc1, fc2 = module.get_submodule(spec.fc1), module.get_submodule(spec.fc2)
            found.append(FFNBlock(name, module, fc1, fc2))
    if not found:
        raise ConversionError(f"no FFN blocks matching {spec.block!r} in this {model.config.model_type} model")
    return found


def _set(root: nn.Module, path: str, module: nn.Module):
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def swap_ffns(model: nn.Module, layers: list[FFF]) -> nn.Module:
    """Put `layers[i]` in the place of the i-th FFN of `model`, in place."""
    spec, blocks = spec_for(model.config), find_ffns(model)
    if len(layers) != len(blocks):
        raise ConversionError(f"{len(layers)} FFF layers for {len(blocks)} FFN blocks")
    for b, layer in zip(blocks, layers):
        _set(b.block, spec.fc1, layer)
        _set(b.block, spec.act, nn.Identity())
        _set(b.block, spec.fc2, nn.Identity())
    return model


def fff_layers(model: nn.Module) -> list[FFF]:
    return [m for m in model.modules() if isinstance(m, FFF)]


def empty_fff_model(model: nn.Module, depth: int, leaf_width: int) -> nn.Module:
    """Swap every FFN of `model` for an FFF of the given shape (weights to be loaded)."""
    act = activation_of(model.config)
    blocks = find_ffns(model)
    layers = [FFF(b.fc1.in_features, depth, leaf_width, act) for b in blocks]
    return swap_ffns(model, layers)
