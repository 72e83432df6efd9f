"""Test session setup: Triton's interpreter where no GPU exists, and the gpu marker.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates, so it is set here, before any
test module imports a kernel module.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def single_thread():
    """Tiny tensors: thread start-up costs more than it saves (5x slower on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def emulated_kernels(tmp_path_factory):
    """The CUDA kernels compiled for the CPU (tests/cuda_emulation.py), built once per session."""
    import cuda_emulation

    if cuda_emulation.gxx() is None:
        pytest.skip("g++ not found: the CPU emulation of the kernels needs a C++20 compiler")
    return cuda_emulation.build_library(tmp_path_factory.mktemp("emu"))
