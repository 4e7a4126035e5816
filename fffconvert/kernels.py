"""Which implementation runs an FFF layer's hard forward: the compiled kernels when they are built
and fit the input, else the PyTorch reference (`FFF.hard_forward`), with one warning.

The compiled extensions are optional, as in pytorch_scatter: `fffconvert._cpu` (Cython, cext/) is
built on every install, `fffconvert._cuda` (cuda/) only where torch has CUDA and nvcc is present.
`FFFCONVERT_KERNELS=torch` forces the reference everywhere (for debugging and for benchmarks).
"""
import importlib
import os
import warnings

import torch

CPU_DTYPES = (torch.float32,)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _load(name: str):
    try:
        return importlib.import_module(f"fffconvert.{name}")
    except ImportError as e:  # not built: the reference still works
        return e


_cpu = _load("_cpu")
_cuda = None  # loaded on first CUDA use, so CPU-only users never pay for it
_warned = set()


def _warn_once(key: str, msg: str):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _cuda_ext():
    global _cuda
    if _cuda is None:
        _cuda = _load("_cuda")
        if isinstance(_cuda, ImportError):
            from .cuda_build import jit_load  # fall back to a just-in-time build

            _cuda = jit_load() or _cuda
    return _cuda


def kernel_for(x: torch.Tensor):
    """The compiled module that will run a hard forward on x, or None for the reference."""
    if os.environ.get("FFFCONVERT_KERNELS", "auto") == "torch":
        return None
    if x.is_cuda:
        ext = _cuda_ext()
        if isinstance(ext, ImportError):
            _warn_once("cuda", f"fffconvert CUDA kernel not available ({ext}); using the PyTorch reference")
            return None
        return ext if x.dtype in CUDA_DTYPES else None
    if x.device.type == "cpu":
        if isinstance(_cpu, ImportError):
            _warn_once("cpu", f"fffconvert CPU kernel not built ({_cpu}); using the PyTorch reference")
            return None
        return _cpu if x.dtype in CPU_DTYPES else None
    return None


def hard_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Inference forward of `layer` on x [..., H]. Kernels produce no autograd graph, so an input
    that needs gradients takes the reference."""
    ext = kernel_for(x)
    if ext is None or (torch.is_grad_enabled() and x.requires_grad) or x.dtype != layer.w1.dtype:
        return layer.hard_forward(x)
    shape = x.shape
    x2 = x.reshape(-1, layer.hidden_size).contiguous()
    y = ext.fff_forward(x2, layer.node_weight.detach(), layer.node_bias.detach(), layer.w1.detach(),
                        layer.b1.detach(), layer.w2.detach(), layer.leaf_bias.detach(),
                        layer.out_bias.detach(), layer.activation)
    return y.reshape(shape)
