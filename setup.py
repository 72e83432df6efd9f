"""Packaging for danet_ops.

The build needs setuptools only. ``csrc/`` (the CUDA C++ sources) is copied into the
wheel as ``danet_ops/csrc`` and compiled on first use; ``models/``, ``benchmarks/`` and
``tests/`` stay in the checkout (DESIGN §2).
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithSources(build_py):
    """build_py that also ships the top-level csrc/ inside the package."""

    def run(self):
        super().run()
        src = ROOT / "csrc"
        if src.is_dir():
            dst = Path(self.build_lib) / "danet_ops" / "csrc"
            shutil.copytree(src, dst, dirs_exist_ok=True)


setup(
    name="danet_ops",
    version="0.1.0",
    description="Fused, memory-efficient Triton and CUDA kernels for DANet's position and channel attention",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["danet_ops", "danet_ops.*"]),
    install_requires=[
        "torch>=2.4",
        "numpy",
        "ninja",
        "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={"test": ["pytest>=7", "expecttest"], "plots": ["matplotlib"]},
    cmdclass={"build_py": BuildPyWithSources},
    zip_safe=False,
)
