"""int8 for the rest of a converted model: `quantize(model, "int8")` quantizes every nn.Linear
left (attention, pooler, heads) to dynamic int8 activations and int8 weights, in place; the FFF
layers stay in float32 (their rows are read once per token: the kernel is bound by the rows'
memory traffic, not by arithmetic that int8 would speed up).

Backends: "torchao" (`torchao.quantization.quantize_` with Int8DynamicActivationInt8WeightConfig,
the maintained path) and "torch" (`torch.ao.quantization.quantize_dynamic`, fbgemm kernels,
deprecated by PyTorch in favour of torchao). "auto" takes torch's on the CPU, where it measured
faster in eager mode (docs/results), and torchao elsewhere. Both scale weights per output channel
(torch's default is one scale per tensor): as fast with fbgemm, and closer to the float model
(docs/results: int8 of a converted MiniLM).

A quantized model is saved as the float32 converted model with `"quantize": "int8"` recorded in
its `fff` section; loading quantizes again (deterministic), so the folder stays plain safetensors.
"""
import warnings

import torch
import torch.nn as nn

from .errors import UserError

SCHEMES = ("int8",)


def quantize(model, scheme: str = "int8", backend: str = "auto"):
    """Quantize `model`'s nn.Linear layers to int8 in place and record it in its config."""
    if scheme not in SCHEMES:
        raise UserError(f"quantization {scheme!r} is not one of {', '.join(SCHEMES)}")
    device = next(model.parameters()).device
    backend = resolve_backend(backend, device.type)
    if backend == "torch":
        if device.type != "cpu":
            raise UserError("torch's dynamic int8 quantization runs on the CPU only; use backend='torchao'")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the path's deprecation, stated above
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
            qmodel = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    elif backend == "torchao":
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            raise UserError("backend 'torchao' needs torchao: pip install torchao (or fffconvert[quant])")
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        qmodel = model
    else:
        raise UserError(f"unknown quantization backend {backend!r}; use auto, torch or torchao")
    fff = getattr(model.config, "fff", None)
    if fff is not None:
        fff["quantize"] = scheme
    return qmodel


def resolve_backend(backend: str, device_type: str) -> str:
    """The backend "auto" stands for on a device (see the module's notes)."""
    if backend == "auto":
        return "torch" if device_type == "cpu" else "torchao"
    return backend


def quantized_by_torchao(model) -> bool:
    return any(type(p).__module__.startswith("torchao") for p in model.parameters())


def is_quantized(model) -> bool:
    """Whether quantize() (either backend) has been applied to `model`."""
    return quantized_by_torchao(model) or any(type(m).__module__.startswith("torch.ao.nn.quantized")
                                              for m in model.modules())
