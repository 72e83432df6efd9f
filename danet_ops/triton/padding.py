"""Row padding for the Triton kernels: ``[B, C, N]`` inputs with N a multiple of 16.

Triton vectorises a load (and pipelines it through ``cp.async``) only where it can prove
16-byte alignment and a mask constant over the vector, which it reads off the strides and
the load bound being divisible by 16. At N = 9409 (DANet's 97x97 crop) neither holds: the
sm_90 PAM forward compiled to 192 two-byte loads and no ``cp.async`` per tile (bf16, M64
N64 DV128) instead of 12 128-bit loads and 36 16-byte ``cp.async``, and the 2026-11-28 H200
run measured that forward at 5x its N = 8192 time for 1.3x the FLOPs. Padded copies cost
one read and write of each input; the kernels keep the true N for their masks and stores.
"""
from __future__ import annotations

from torch import Tensor

ALIGN = 16  # elements: 16-byte vectors of fp32 need 4, of half types 8; Triton's divisibility is 16


def pad_rows(*tensors: Tensor) -> tuple:
    """``(*tensors, n_load)``: the tensors ``[B, C, N]`` as they are when N is a multiple of
    ALIGN (``n_load = N``), else as contiguous copies zero-padded along N to ``n_load``."""
    n = tensors[0].shape[2]
    if n % ALIGN == 0:
        return (*tensors, n)
    n_load = (n + ALIGN - 1) // ALIGN * ALIGN
    padded = []
    for t in tensors:
        buf = t.new_empty((*t.shape[:2], n_load))
        buf[..., :n].copy_(t)
        buf[..., n:].zero_()
        padded.append(buf)
    return (*padded, n_load)
