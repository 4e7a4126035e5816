"""Which implementation runs an FFF layer's hard forward: the compiled kernels when they are built
and fit the input, else the PyTorch reference (`FFF.hard_forward`), with one warning.

The compiled extensions are optional, as in pytorch_scatter: `fffconvert._cpu` (Cython, cext/) is
built on every install, `fffconvert._cuda` (cuda/) only where torch has CUDA and nvcc is present.
`FFFCONVERT_KERNELS=torch` forces the reference everywhere (for debugging and for benchmarks).

Under `torch.compile` the kernels enter the graph as one operator, `torch.ops.fffconvert.fff_forward`
(registered with `torch.library`, as torchao does for its kernels); eager calls skip the operator's
dispatch and call the extension directly, since at one token that dispatch costs more than the kernel
(CPU, H=768, depth 11: 42 us per call through the operator, 16 us direct).
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
    if os.environ.get("FFFCONVERT_KERNELS") == "torch":
        return None
    if x.is_cpu:  # (is_cpu and is_cuda: a fifth of the time of x.device.type)
        if isinstance(_cpu, ImportError):
            _warn_once("cpu", f"fffconvert CPU kernel not built ({_cpu}); using the PyTorch reference")
            return None
        return _cpu if x.dtype in CPU_DTYPES else None
    if x.is_cuda:
        ext = _cuda_ext()
        if isinstance(ext, ImportError):
            _warn_once("cuda", f"fffconvert CUDA kernel not available ({ext}); using the PyTorch reference")
            return None
        return ext if x.dtype in CUDA_DTYPES else None
    return None


@torch.compiler.assume_constant_result
def _has_kernel(device: str, dtype: torch.dtype) -> bool:
    """kernel_for, answered once at trace time (the compiler cannot trace an import)."""
    return kernel_for(torch.empty(0, device=device, dtype=dtype)) is not None


@torch.library.custom_op("fffconvert::fff_forward", mutates_args=())
def fff_forward_op(x: torch.Tensor, node_weight: torch.Tensor, node_bias: torch.Tensor, w1: torch.Tensor,
                   b1: torch.Tensor, w2: torch.Tensor, leaf_bias: torch.Tensor, out_bias: torch.Tensor,
                   activation: str) -> torch.Tensor:
    """The compiled kernel's hard forward of x [..., H] (contiguous) as a PyTorch operator."""
    return kernel_for(x).fff_forward(x, node_weight, node_bias, w1, b1, w2, leaf_bias, out_bias, activation)


@fff_forward_op.register_fake
def _(x, node_weight, node_bias, w1, b1, w2, leaf_bias, out_bias, activation):
    return torch.empty_like(x)


def hard_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Inference forward of `layer` on x [..., H]. Kernels produce no autograd graph, so an input
    that needs gradients takes the reference. (This runs once per layer per forward: kept lean.)"""
    if (torch.is_grad_enabled() and x.requires_grad) or torch.onnx.is_in_onnx_export():
        return layer.hard_forward(x)  # ONNX export: the reference's graph of standard operators
    p = layer._parameters  # direct dict access: nn.Module.__getattr__ costs a microsecond a name
    compiling = torch.compiler.is_compiling()
    if x.is_cpu and x.dtype in HALF_DTYPES and not compiling and not isinstance(_cpu, ImportError):
        return _half_on_cpu(layer, x)
    ext = _has_kernel(x.device.type, x.dtype) if compiling else kernel_for(x)
    if not ext or x.dtype != p["weight"].dtype:
        return layer.hard_forward(x)
    x = x.contiguous()  # the kernels take [..., H] as it is: no reshaping around them
    weights = (p["node_weight"], p["node_bias"], p["weight"], p["bias"], p["w2"], p["leaf_bias"], p["out_bias"])
    if compiling:  # one opaque operator in the traced graph
        return fff_forward_op(x, *weights, layer.activation)
    return ext.fff_forward(x, *weights, layer.activation, out=_output_for(layer, x))


HALF_DTYPES = (torch.bfloat16, torch.float16)


def _half_on_cpu(layer, x):
    """bf16/fp16 on the CPU: the float32 kernel on float32 copies of the layer's weights (kept
    until the weights change), the output cast back. The reference in bf16 was 3x slower than
    the float32 kernel on 8 x 128 tokens of BERT-base (2640 vs 877 ms)."""
    _warn_once("half-cpu", f"fffconvert's CPU kernel computes in float32: {x.dtype} FFF layers run it on float32 "
                           "copies of their weights (the output is cast back)")
    p = layer._parameters
    names = ("node_weight", "node_bias", "weight", "bias", "w2", "leaf_bias", "out_bias")
    key = tuple((p[n].data_ptr(), p[n]._version, p[n].dtype) for n in names)
    cached = layer.__dict__.get("_fp32_weights")
    if cached is None or cached[0] != key:
        cached = layer.__dict__["_fp32_weights"] = (key, tuple(p[n].detach().float().contiguous() for n in names))
    y = _cpu.fff_forward(x.float().contiguous(), *cached[1], layer.activation, out=None)
    return y.to(x.dtype)


_use_count = getattr(torch._C, "_storage_Use_Count", None)
REUSE_BYTES = 4 << 20  # below this, malloc serves from its heap and a new tensor is cheap


def _output_for(layer, x):
    """An output tensor for the kernel: for large CPU outputs, the memory of the layer's previous
    output when nothing else holds it any more.

    A fresh CPU output of tens of MB costs more in page faults than the kernel itself takes
    (glibc maps large blocks anew on every allocation). The view is made before the kernel runs,
    so a second thread calling the same layer sees the buffer in use and allocates its own.
    """
    if not x.is_cpu or _use_count is None or x.numel() * x.element_size() < REUSE_BYTES:
        return torch.empty_like(x)
    buf = layer.__dict__.get("_out_buf")
    if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or _use_count(buf.untyped_storage()._cdata) != 2:
        buf = layer.__dict__["_out_buf"] = torch.empty_like(x)  # 2 above: buf + the storage object of the check
    return buf.view_as(buf)
