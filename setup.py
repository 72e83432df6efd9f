"""Packaging for danet_ops.

The build needs setuptools only. ``csrc/`` (the CUDA C++ sources) is copied into the
wheel as ``danet_ops/csrc`` and compiled on first use; ``models/``, ``benchmarks/`` and
``tests/`` stay in the checkout (DESIGN §2).
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
README = ROOT / "README.md"


class BuildPyWithSources(build_py):
    """build_py that also ships the top-level csrc/ inside the package."""

    def run(self):
        super().run()
        src = ROOT / "csrc"
        if src.is_dir():
            dst = Path(self.build_lib) / "danet_ops" / "csrc"
            shutil.copytree(src, dst, dirs_exist_ok=True)


def cuda_extension_build():
    """Opt-in ahead-of-time build of the CUDA extension as ``danet_ops._C``.

    Only with ``DANET_OPS_BUILD_CUDA=1`` and only as
    ``DANET_OPS_BUILD_CUDA=1 pip install --no-build-isolation .`` (torch must already be
    installed: the isolated build environment deliberately has no torch, DESIGN §5).
    Without a visible GPU set ``TORCH_CUDA_ARCH_LIST`` (default here: ``8.0;9.0``).
    Returns (ext_modules, cmdclass additions); without the variable nothing changes and
    the extension is compiled on first use instead (``danet_ops.cuda.build``).
    """
    if os.environ.get("DANET_OPS_BUILD_CUDA") != "1":
        return [], {}
    # The first-use builder's own toolkit discovery, so both builds find the same things
    # (torch is installed here: this path runs only without build isolation).
    sys.path.insert(0, str(ROOT))
    from danet_ops.cuda import build

    cuda_home = build.find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("DANET_OPS_BUILD_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
    os.environ["CUDA_HOME"] = cuda_home  # cpp_extension reads it when imported
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build.default_arch_list())
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    include_dirs = [str(ROOT / "csrc")]
    if not (Path(cuda_home) / "include" / "cublas_v2.h").is_file():
        include_dirs += build.nvidia_include_dirs()
    ext = CUDAExtension(
        name="danet_ops._C",
        sources=[f"csrc/{name}" for name in build.SOURCES],
        include_dirs=include_dirs,
        # No --use_fast_math: the fp32 softmax needs accurate exp/log.
        extra_compile_args={"cxx": list(build.CXX_FLAGS), "nvcc": list(build.NVCC_FLAGS)},
    )
    return [ext], {"build_ext": BuildExtension}


EXT_MODULES, EXTRA_CMDCLASS = cuda_extension_build()

setup(
    name="danet_ops",
    version="0.1.0",
    description="Fused, memory-efficient Triton and CUDA kernels for DANet's position and channel attention",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["danet_ops", "danet_ops.*"]),
    install_requires=[
        # Supported range (README "Supported versions"): oldest torch 2.11 / triton 3.6,
        # newest tested torch 2.13 / triton 3.9.
        "torch>=2.11",
        "numpy",
        "ninja",
        "triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        # The suite checks that the benchmarks draw their plots.
        "test": ["pytest>=7", "hypothesis>=6", "matplotlib"],
        # python -m benchmarks: the PNG plots (the tables need nothing beyond the package).
        "bench": ["matplotlib"],
        "plots": ["matplotlib"],  # the earlier name of "bench"
        # danet_ops.mmseg (the FusedDAHead plugin). mmcv itself is installed as mmseg's docs
        # say (`mim install mmcv`: prebuilt wheels per torch/CUDA); mmseg imports ftfy and
        # regex without declaring them.
        "mmseg": ["mmsegmentation>=1.0.0,<2", "mmengine>=0.5.0,<1", "ftfy", "regex"],
        # danet_ops.onnx_translation_table() (export), onnxruntime to run the result.
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
    },
    cmdclass={"build_py": BuildPyWithSources, **EXTRA_CMDCLASS},
    ext_modules=EXT_MODULES,
    zip_safe=False,
)
