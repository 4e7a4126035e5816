"""Just-in-time build of the CUDA kernel, for installs that skipped it (torch.utils.cpp_extension)."""
from pathlib import Path

SOURCES = ["fff_cuda.cpp", "fff_cuda_kernel.cu"]


def jit_load():
    """The compiled module, or None when the sources, nvcc or a GPU toolchain are missing."""
    root = Path(__file__).resolve().parent.parent / "cuda"
    if not all((root / s).exists() for s in SOURCES):
        return None
    try:
        from torch.utils.cpp_extension import load

        return load("fffconvert_cuda_jit", [str(root / s) for s in SOURCES],
                    extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo"], verbose=False)  # flags as in setup.py
    except Exception:  # no nvcc, compiler error, ...: the caller falls back to the reference
        return None
