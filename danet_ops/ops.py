"""The op layer: ``torch.library`` custom ops with fake implementations and autograd.

One forward and one backward op per attention, taking the backend name as an argument,
so every kernel backend runs behind the same registration: ``torch.compile(fullgraph=True)``
traces them (the fake implementations give output shapes), and autograd calls the
backward op, which is itself traceable. Inputs arrive validated by ``functional``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from danet_ops import backends


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _has_epilogue(gamma: Optional[Tensor], residual: Optional[Tensor]) -> bool:
    return gamma is not None or residual is not None


def _no_autocast(t: Tensor):
    """Backends compute in the dtypes they are handed. Autocast stays on inside a custom op's
    body, and would otherwise run the chunked backend's fp32 accumulation matmuls in half
    (the casts a caller wants under autocast happen in ``functional``, before the op)."""
    return torch.autocast(t.device.type, enabled=False)


# --- PAM ---------------------------------------------------------------------------------


@torch.library.custom_op("danet_ops::pam_forward", mutates_args=())
def pam_forward(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor],
    scale: float, save_o: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    with _no_autocast(q):
        return backends.get(backend).pam_forward(q, k, v, gamma, residual, scale, save_o)


@pam_forward.register_fake
def _(q, k, v, gamma, residual, scale, save_o, backend):
    batch, _, n = q.shape
    lse = q.new_empty((batch, n), dtype=_stat_dtype(q.dtype))
    o = v.new_empty(v.shape) if (save_o and _has_epilogue(gamma, residual)) else v.new_empty(0)
    return v.new_empty(v.shape), lse, o


@torch.library.custom_op("danet_ops::pam_backward", mutates_args=())
def pam_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], o: Tensor,
    lse: Tensor, scale: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with _no_autocast(q):
        return backends.get(backend).pam_backward(dout, q, k, v, gamma, o, lse, scale)


@pam_backward.register_fake
def _(dout, q, k, v, gamma, o, lse, scale, backend):
    dgamma = gamma.new_empty(()) if gamma is not None else dout.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dgamma


def _pam_setup_context(ctx, inputs, output):
    q, k, v, gamma, residual, scale, save_o, backend = inputs
    out, lse, o = output
    ctx.has_residual = residual is not None
    ctx.has_gamma = gamma is not None
    ctx.o_missing = _has_epilogue(gamma, residual) and not save_o
    ctx.scale, ctx.backend = scale, backend
    ctx.save_for_backward(q, k, v, gamma, out if not _has_epilogue(gamma, residual) else o, lse)


def _pam_backward(ctx, dout, _dlse, _do):
    if ctx.o_missing:
        raise RuntimeError(
            "danet_ops::pam_forward ran with save_o=False but a gradient was requested; "
            "call danet_ops.position_attention, which sets it"
        )
    q, k, v, gamma, o, lse = ctx.saved_tensors
    dq, dk, dv, dgamma = pam_backward(dout, q, k, v, gamma, o, lse, ctx.scale, ctx.backend)
    return (
        dq, dk, dv,
        dgamma if ctx.has_gamma else None,
        dout if ctx.has_residual else None,
        None, None, None,
    )


pam_forward.register_autograd(_pam_backward, setup_context=_pam_setup_context)


# --- CAM ---------------------------------------------------------------------------------


@torch.library.custom_op("danet_ops::cam_forward", mutates_args=())
def cam_forward(x: Tensor, gamma: Optional[Tensor], backend: str) -> tuple[Tensor, Tensor]:
    with _no_autocast(x):
        return backends.get(backend).cam_forward(x, gamma)


@cam_forward.register_fake
def _(x, gamma, backend):
    batch, channels, _ = x.shape
    return x.new_empty(x.shape), x.new_empty((batch, channels, channels), dtype=_stat_dtype(x.dtype))


@torch.library.custom_op("danet_ops::cam_backward", mutates_args=())
def cam_backward(
    dout: Tensor, x: Tensor, attn: Tensor, gamma: Optional[Tensor], backend: str
) -> tuple[Tensor, Tensor]:
    with _no_autocast(x):
        return backends.get(backend).cam_backward(dout, x, attn, gamma)


@cam_backward.register_fake
def _(dout, x, attn, gamma, backend):
    dgamma = gamma.new_empty(()) if gamma is not None else dout.new_empty(0)
    return x.new_empty(x.shape), dgamma


def _cam_setup_context(ctx, inputs, output):
    x, gamma, backend = inputs
    _, attn = output
    ctx.has_gamma = gamma is not None
    ctx.backend = backend
    ctx.save_for_backward(x, attn, gamma)


def _cam_backward(ctx, dout, _dattn):
    x, attn, gamma = ctx.saved_tensors
    dx, dgamma = cam_backward(dout, x, attn, gamma, ctx.backend)
    return dx, dgamma if ctx.has_gamma else None, None


cam_forward.register_autograd(_cam_backward, setup_context=_cam_setup_context)
