"""benchmarks/static_cuda.py: reading nvcc's ptxas -v lines into the CUDA table (no nvcc needed)."""
from __future__ import annotations

import shutil

import pytest

from benchmarks import static_cuda

LOG = """\
ptxas info    : 28 bytes gmem
ptxas info : Compiling entry function '_ZN5danet17pam_dv_mma_kernelIN3c104HalfEEEvNS_7PamArgsIT_EEPS4_' for 'sm_90'
ptxas info    : Function properties for _ZN5danet17pam_dv_mma_kernelIN3c104HalfEEEvNS_7PamArgsIT_EEPS4_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers
ptxas info : Compiling entry function '_ZN5danet18pam_forward_kernelIN3c104HalfEEEvNS_7PamArgsIT_EEPS4_' for 'sm_90'
ptxas info    : Function properties for _ZN5danet18pam_forward_kernelIN3c104HalfEEEvNS_7PamArgsIT_EEPS4_
    24 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 40704 bytes smem
"""  # noqa: E501 (ptxas's lines as it prints them)


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) is not installed")
def test_ptxas_rows_name_registers_spills_and_smem():
    assert static_cuda.ptxas_rows("pam.cu", LOG) == [
        ("pam.cu", "void pam_dv_mma_kernel<Half>", 128, "0/0", 0),
        ("pam.cu", "void pam_forward_kernel<Half>", 80, "24/16", 40704),
    ]
