"""The one place backends are registered, and how ``backend="auto"`` picks one.

A backend is a module exposing the contract below; it is imported only when first used,
so a missing Triton or CUDA toolchain costs nothing until asked for. Every function gets
validated, channel-first ``[B, C, N]`` tensors of one dtype and device, with any strides
(``dout`` may be expanded, stride 0), and returns new tensors (never views of its inputs):

``unavailable_reason(device) -> str | None``
    None when the backend can run on ``device``; else why not and how to get it.
``pam_forward(q, k, v, gamma, residual, scale, save_o) -> (out, lse, o)``
    q, k ``[B, Cqk, N]``; v, residual ``[B, Cv, N]``; gamma 0-dim or None.
    out = gamma·softmax(scale·qᵀk)·v + residual, dtype of v; lse ``[B, N]`` the per-row
    log-sum-exp of scale·qᵀk (float32; float64 for float64 inputs); o the raw attention
    output (dtype of v) when ``save_o`` and an epilogue (gamma or residual) is given, else
    an empty tensor (without an epilogue, out is o).
``pam_backward(dout, q, k, v, gamma, o, lse, scale) -> (dq, dk, dv, dgamma)``
    o the raw attention output; dgamma 0-dim (empty when gamma is None).
``cam_forward(x, gamma) -> (out, attn)``
    out = gamma·softmax(-xxᵀ)·x + x (or softmax(-xxᵀ)·x when gamma is None); attn the
    ``[B, C, C]`` softmax in float32 (float64 for float64 inputs), kept for backward.
``cam_backward(dout, x, attn, gamma) -> (dx, dgamma)``
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import torch

# name -> module implementing the contract. "eager" is the reference, run through
# plain autograd rather than these functions.
_MODULES = {
    "triton": "danet_ops.triton",
    "cuda": "danet_ops.cuda",
    "chunked": "danet_ops.chunked",
}
BACKENDS = ("auto", "triton", "cuda", "chunked", "eager")
# Backends that run float64 (the pure-PyTorch ones).
FLOAT64_BACKENDS = ("chunked", "eager")
# On the CPU, PAM at C = 512, Cqk = 64, B = 1, fp32 (``python -m benchmarks.cpu_crossover``,
# one thread's CPU time, median of 7; AMD EPYC, 2026-11-28): up to N = 2048 eager is as fast
# or faster (chunked 0.88-1.26x eager's speed forward, 0.90-0.92x forward+backward); at
# N = 2560 and 3072 chunked is faster forward (1.30x, 1.34x) and level forward+backward
# (0.98x) with a fraction of the memory. Runs differ by about 15% per row, so the switch
# sits where the two cross in the middle of that band: auto takes eager while one
# B x N x N matrix has at most 2**22 elements (N = 2048 at B = 1), chunked beyond.
CPU_EAGER_MAX_ELEMENTS = 1 << 22


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and cannot run here; the message says why."""


def _load(name: str) -> ModuleType:
    return importlib.import_module(_MODULES[name])


@torch.compiler.assume_constant_result
def _unavailable_reason(name: str, device_type: str) -> Optional[str]:
    # Constant for torch.compile: traced code sees the answer, not the imports behind it.
    try:
        module = _load(name)
    except ImportError as exc:  # e.g. triton not installed
        return f"importing it failed ({exc})"
    return module.unavailable_reason(torch.device(device_type))


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None if backend ``name`` can run on ``device``, else a sentence saying why not."""
    if name == "eager":
        return None
    return _unavailable_reason(name, torch.device(device).type)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device`` (``auto`` excluded)."""
    device = torch.device(device)
    return [b for b in BACKENDS[1:] if unavailable_reason(b, device) is None]


def check_name(backend: object) -> str:
    """``backend`` if it names a backend (available here or not); else TypeError/ValueError.

    Modules call it at construction, so a typo fails there and not at the first forward.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, one of {BACKENDS}, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(name: str, device: torch.device, dtype: torch.dtype, batch: int, rows: int, cols: int) -> str:
    """The backend that runs a call: ``name`` itself after checks, or auto's pick.

    ``rows x cols`` is the attention matrix per batch item (N x N for PAM, C x C for CAM).
    """
    check_name(name)
    if name == "auto":
        if device.type == "cuda":
            if dtype == torch.float64:
                return "chunked"
            for candidate in ("triton", "cuda"):
                if unavailable_reason(candidate, device) is None:
                    return candidate
            return "chunked"
        return "eager" if batch * rows * cols <= CPU_EAGER_MAX_ELEMENTS else "chunked"
    if dtype == torch.float64 and name not in FLOAT64_BACKENDS:
        raise TypeError(
            f"float64 inputs run on the {' and '.join(FLOAT64_BACKENDS)} backends only, "
            f"not {name!r}"
        )
    reason = unavailable_reason(name, device)
    if reason is not None and device.type != "cuda" and name in ("triton", "cuda"):
        raise ValueError(
            f"backend {name!r} cannot take tensors on {device}: {reason}; move them with "
            f".cuda(), or use backend='chunked' or 'eager' on the CPU"
        )
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return name


def get(name: str) -> ModuleType:
    """The module implementing backend ``name`` (not ``eager``); called inside the ops."""
    return _load(name)
