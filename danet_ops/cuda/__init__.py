"""The ``cuda`` backend: the compiled extension from ``csrc/`` (contract: ``danet_ops.backends``).

The extension is built on first use (``danet_ops.cuda.build``; about a minute, then cached)
unless the install carries a prebuilt ``danet_ops._C``. Kernels: fp32 accumulation and
fp32 softmax statistics for float32/float16/bfloat16 inputs; no float64. PAM and CAM in
float32 run on TF32 tensor cores as 3xTF32 (fp32-accurate) on sm_80+; under
``torch.set_float32_matmul_precision("high")`` or ``"medium"`` their products other than the
energies (PAM's q·k, CAM's Gram X·Xᵀ and its gradient dout·Xᵀ) run as one TF32 product
(``_tf32``), as the Triton backend's do.

PAM's forward has two variants (``DANET_OPS_CUDA_PAM_FWD``, read at each call): ``cv_blocks``
(default: one block per 128 v channels, each computing q·k again) and ``whole_cv`` (one
block per 32 queries for all v channels, q·k once per pair; fp16/bf16 with Cqk <= 64 and
Cv <= 512, elsewhere ``cv_blocks``).
PAM's backward has two variants (``DANET_OPS_CUDA_PAM_BWD``, read at each call): ``split``
(default: separate dV and dK/dQ kernels, deterministic) and ``fused`` (one kernel computing
P and dS once per tile pair, dQ summed by fp32 atomics; fp16/bf16 with Cqk <= 64 and
Cv <= 512, elsewhere and under ``torch.use_deterministic_algorithms`` the split one).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from danet_ops import env
from danet_ops.cuda import build

FWD_VARIANT_ENV = "DANET_OPS_CUDA_PAM_FWD"
BWD_VARIANT_ENV = "DANET_OPS_CUDA_PAM_BWD"


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the extension can run (or be built to run) on ``device``, else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        # The caller (backends.resolve) says how to move on: .cuda(), or chunked/eager.
        return f"the CUDA extension runs on CUDA tensors only, not {device.type}"
    if build.load.cache_info().currsize or build.prebuilt() is not None:
        return None  # already loaded (the common case after the first call), or prebuilt
    return build.toolchain_problem()


def _ext():
    return build.load()


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    # The kernels index dense [B, C, N] buffers; expanded (stride-0) gradients and slices
    # are copied here (a no-op for contiguous tensors).
    return None if t is None else t.contiguous()


def _tf32() -> bool:
    # Whether fp32 PAM and CAM may run their non-energy products as plain TF32 (the user
    # allowed it the PyTorch way); the energies stay 3xTF32 whatever the setting.
    return torch.get_float32_matmul_precision() != "highest"


def forward_variant() -> str:
    """``cv_blocks`` (default) or ``whole_cv`` (``DANET_OPS_CUDA_PAM_FWD=whole_cv``). The
    extension runs ``whole_cv`` where it serves the dtype and widths (fp16/bf16, Cqk <= 64,
    Cv <= 512)."""
    return env.choice(FWD_VARIANT_ENV)


def backward_variant() -> str:
    """``split`` (default) or ``fused`` (``DANET_OPS_CUDA_PAM_BWD=fused``, not under torch's
    deterministic mode: its dQ atomics add in no fixed order). The extension runs ``fused``
    where it serves the dtype and widths (fp16/bf16, Cqk <= 64, Cv <= 512)."""
    value = env.choice(BWD_VARIANT_ENV)
    return "split" if torch.are_deterministic_algorithms_enabled() else value


def pam_forward(q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor],
                scale: float, save_o: bool) -> tuple[Tensor, Tensor, Tensor]:
    """q, k ``[B, Cqk, N]``, v/residual ``[B, Cv, N]`` -> (out, lse fp32 ``[B, N]``, raw o or empty)."""
    return tuple(_ext().pam_forward(_c(q), _c(k), _c(v), _c(gamma), _c(residual), float(scale), bool(save_o),
                                    _tf32(), forward_variant() == "whole_cv"))


def pam_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], o: Tensor,
                 lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv, dgamma); o the raw attention output, lse from ``pam_forward``."""
    return tuple(_ext().pam_backward(_c(dout), _c(q), _c(k), _c(v), _c(gamma), _c(o),
                                     _c(lse.float()), float(scale), _tf32(), backward_variant() == "fused"))


def cam_forward(x: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """x ``[B, C, N]`` -> (out, attn fp32 ``[B, C, C]``)."""
    return tuple(_ext().cam_forward(_c(x), _c(gamma), _tf32()))


def cam_backward(dout: Tensor, x: Tensor, attn: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """-> (dx, dgamma)."""
    return tuple(_ext().cam_backward(_c(dout), _c(x), _c(attn.float()), _c(gamma), _tf32()))
