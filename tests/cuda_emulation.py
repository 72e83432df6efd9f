"""The CUDA kernels on the CPU: build csrc/emulation/emulate.cpp and call its entry points.

csrc/emulation/ compiles the real kernel code as C++ with a thin CUDA shim (a thread per
CUDA thread, barriers for __syncthreads and shuffles), launched with the host wrappers'
grids. The entry points take dense ``[B, C, N]`` buffers, as the ``cuda`` backend's Python
side hands the extension (it makes every input contiguous). Used by tests/test_cuda_build.py
and tests/test_property_equivalence.py.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from danet_ops.cuda import build

EMULATION = build.source_dir() / "emulation"
# dtype -> suffix of the entry points (emu_pam_forward, emu_pam_forward_f16, ...).
SUFFIX = {torch.float32: "", torch.float16: "_f16", torch.bfloat16: "_bf16"}


def gxx() -> Optional[str]:
    return shutil.which("g++")


def build_library(directory: Path) -> ctypes.CDLL:
    """Compile the emulation into ``directory`` and load it (g++ must exist)."""
    lib = Path(directory) / "emulate.so"
    cmd = [gxx(), "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-Wno-unknown-pragmas",
           str(EMULATION / "emulate.cpp"), "-o", str(lib)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return ctypes.CDLL(str(lib))


def _ptr(t: Optional[Tensor]):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def _entry(lib, name: str, dtype: torch.dtype):
    return getattr(lib, name + SUFFIX[dtype])


def pam_forward(lib, q, k, v, gamma, residual, scale, legacy=False, tf32=False, whole_cv=False):
    """-> (out, o, lse) from NaN-poisoned buffers; o the raw attention output (always written).

    q, k ``[B, Cqk, N]``, v and residual ``[B, Cv, N]`` contiguous, one dtype; gamma a 0-dim
    float32 tensor or None. Every dtype runs the mma.sync kernel as the extension does on
    sm_80+ (fp32 as 3xTF32; with ``tf32`` its P·V as one TF32 product, as under matmul
    precision "high"); ``legacy`` runs the 64x64 tile kernel instead (what every dtype
    takes on older GPUs or with too large a Cqk); ``whole_cv`` the whole-v-width kernel where
    the extension would (fp16/bf16, Cqk <= 64, Cv <= 512), asserting that it ran."""
    b, cqk, n = q.shape
    cv = v.shape[1]
    out, o = torch.full_like(v, float("nan")), torch.full_like(v, float("nan"))
    lse = torch.full((b, n), float("nan"))
    i = ctypes.c_int
    args = (_ptr(q), _ptr(k), _ptr(v), _ptr(residual), _ptr(gamma), _ptr(out), _ptr(o), _ptr(lse),
            i(b), i(cqk), i(cv), i(n), ctypes.c_float(scale))
    if legacy:
        _entry(lib, "emu_pam_forward_legacy", q.dtype)(*args)
    else:
        path = _entry(lib, "emu_pam_forward", q.dtype)(*args, i(int(tf32)), i(int(whole_cv)))
        _check_path(path, whole_cv, q.dtype, cqk, cv)
    return out, o, lse


# The reach of the variant kernels, whole_cv forward and fused backward (csrc/pam_kernels.cuh,
# pam_wide::fits): fp16/bf16 with Cqk <= 64 and Cv <= 512.
VARIANT_MAX_CQK, VARIANT_MAX_CV = 64, 512
# emu_pam_forward's and emu_pam_backward's return: which kernels ran (PamForwardPath,
# PamBackwardPath in emulate.cpp): the default mma kernels, or the variant's.
DEFAULT_MMA, VARIANT_MMA = 1, 2


def variant_fits(dtype: torch.dtype, cqk: int, cv: int) -> bool:
    half = dtype in (torch.float16, torch.bfloat16)
    return half and 0 < cqk <= VARIANT_MAX_CQK and 0 < cv <= VARIANT_MAX_CV


def _check_path(path: int, variant: bool, dtype: torch.dtype, cqk: int, cv: int) -> None:
    expected = VARIANT_MMA if variant and variant_fits(dtype, cqk, cv) else DEFAULT_MMA
    assert path == expected or cqk == 0 or cv == 0, (path, expected)


def pam_backward(lib, dout, q, k, v, gamma, o, lse, scale, legacy=False, tf32=False, fused=False):
    """-> (dq, dk, dv, dgamma); o and lse as ``pam_forward`` returned them.

    Every dtype runs the mma.sync dV and dK/dQ kernels as the extension does on sm_80+
    (``tf32`` as for ``pam_forward``: all but the energies as one TF32 product);
    ``legacy`` runs the 64x64 tile kernels instead; ``fused`` the one-kernel backward
    where the extension would (fp16/bf16, Cqk <= 64, Cv <= 512), asserting that it ran."""
    b, cqk, n = q.shape
    cv = v.shape[1]
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
    rowdot, delta, dgamma = torch.empty(b, n), torch.empty(b, n), torch.full((), float("nan"))
    i = ctypes.c_int
    args = (_ptr(dout), _ptr(q), _ptr(k), _ptr(v), _ptr(gamma), _ptr(o), _ptr(lse), _ptr(dq), _ptr(dk),
            _ptr(dv), _ptr(rowdot), _ptr(delta), _ptr(dgamma), i(b), i(cqk), i(cv), i(n),
            ctypes.c_float(scale))
    if legacy:
        _entry(lib, "emu_pam_backward_legacy", q.dtype)(*args)
    else:
        path = _entry(lib, "emu_pam_backward", q.dtype)(*args, i(int(tf32)), i(int(fused)))
        _check_path(path, fused, q.dtype, cqk, cv)
    return dq, dk, dv, dgamma


def cam_forward(lib, x, gamma, splits, legacy=False, tf32=False):
    """-> (out, attn fp32 ``[B, C, C]``); ``splits`` > 1 splits the Gram's reduction over N
    (into at most ``splits`` parts, each a whole number of the kernel's reduction chunks).

    Every dtype runs the mma.sync kernels as the extension does on sm_80+ (fp32 as 3xTF32;
    with ``tf32`` its A·X as one TF32 product, as under matmul precision "high"; the Gram
    stays 3xTF32); ``legacy`` runs the 64x64 tile kernel instead (GPUs before sm_80)."""
    b, c, n = x.shape
    out, attn = torch.full_like(x, float("nan")), torch.full((b, c, c), float("nan"))
    ws = torch.empty(splits * b * c * c)
    i = ctypes.c_int
    _entry(lib, "emu_cam_forward", x.dtype)(
        _ptr(x), _ptr(gamma), _ptr(out), _ptr(attn), _ptr(ws), i(b), i(c), i(n), i(splits), i(legacy),
        i(int(tf32)))
    return out, attn


def cam_backward(lib, dout, x, attn, gamma, splits, legacy=False, tf32=False):
    """-> (dx, dgamma); ``splits``, ``legacy`` and ``tf32`` (dx's product; G = dout·Xᵀ stays
    3xTF32) as for ``cam_forward``."""
    b, c, n = x.shape
    dx, de = torch.full_like(x, float("nan")), torch.empty(b, c, c)
    rowpart, dgamma = torch.empty(b * c), torch.full((), float("nan"))
    ws = torch.empty(splits * b * c * c)
    i = ctypes.c_int
    _entry(lib, "emu_cam_backward", x.dtype)(
        _ptr(dout), _ptr(x), _ptr(attn), _ptr(gamma), _ptr(dx), _ptr(de), _ptr(rowpart),
        _ptr(dgamma), _ptr(ws), i(b), i(c), i(n), i(splits), i(legacy), i(int(tf32)))
    return dx, dgamma
