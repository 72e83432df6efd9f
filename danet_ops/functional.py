"""The functional API: input validation, then dispatch to a backend.

``position_attention`` and ``channel_attention`` take channel-first tensors as
convolutions produce them (``[B, C, H, W]`` or ``[B, C, N]``) and return the same layout.
Bad input raises ``ValueError``/``TypeError`` naming the argument and the shapes before any
kernel runs.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from danet_ops import backends, ops
from danet_ops.reference import channel_attention_reference, position_attention_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (3, 4):
        raise ValueError(f"{name} must be [B, C, N] or [B, C, H, W], got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype} "
            f"(shape {tuple(t.shape)})"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def _check_same(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must match")


def _check_gamma(gamma: object, ref: Tensor) -> Optional[Tensor]:
    """gamma as a 0-dim tensor (mmseg's ``Scale`` is 0-dim, the official repo's shape (1,)).

    A Python float or int becomes a constant in float32 (float64 for float64 inputs)."""
    if gamma is None:
        return None
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        return torch.tensor(gamma, dtype=torch.promote_types(ref.dtype, torch.float32), device=ref.device)
    if not isinstance(gamma, Tensor):
        raise TypeError(
            f"gamma must be a float, a one-element tensor or None, got {type(gamma).__name__}"
        )
    if gamma.numel() != 1:
        raise ValueError(f"gamma must have exactly one element, got shape {tuple(gamma.shape)}")
    if not gamma.is_floating_point():
        raise TypeError(f"gamma must be a floating-point tensor, got {gamma.dtype}")
    if gamma.device != ref.device:
        raise ValueError(f"gamma is on {gamma.device} but the inputs are on {ref.device}")
    return gamma.reshape(())


class AttentionMemoryError(ValueError, torch.OutOfMemoryError):
    """An attention matrix cannot fit in the memory the device has free. A ``ValueError``
    (the input is too large for this machine) that ``except torch.OutOfMemoryError`` also
    catches, as it would the allocator's own error."""


# Matrices smaller than this are not checked: they fit anywhere DANet runs, and asking the
# device for its free memory on every call would cost more than they do.
MEMORY_CHECK_MIN_BYTES = 1 << 28


def _free_bytes(device: torch.device) -> Optional[int]:
    """Bytes a new allocation on ``device`` can get, or None where that is not known
    (CPU memory is read from Linux's /proc/meminfo MemAvailable; elsewhere unchecked)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory PyTorch's caching allocator holds but does not use is free to it too.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return None


def _bytes_text(n: int) -> str:
    return f"{n:,} bytes ({n / 2**30:.1f} GiB)"


def _check_matrix_memory(
    what: str, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, fix: str
) -> None:
    """Raise ``AttentionMemoryError`` before allocating a [B, R, R] matrix that cannot fit."""
    if torch.compiler.is_compiling():  # no guards on the size, no host calls in the graph
        return
    needed = math.prod(shape) * dtype.itemsize
    if needed < MEMORY_CHECK_MIN_BYTES:
        return
    free = _free_bytes(device)
    if free is not None and needed > free:
        raise AttentionMemoryError(
            f"{what} needs a {list(shape)} {str(dtype).replace('torch.', '')} attention matrix "
            f"of {_bytes_text(needed)}, but {device} has {_bytes_text(free)} free; {fix}"
        )


def _autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would cast ``t`` to for a matmul now, or None (autocast off on t's
    device type, or t float64, which autocast leaves alone)."""
    if t.dtype == torch.float64 or not torch.is_autocast_enabled(t.device.type):
        return None
    return torch.get_autocast_dtype(t.device.type)


def _flat(t: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, N]``: a view whenever the strides allow. Backends take
    any strides (the Triton kernels read them; the others copy only where they must)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def position_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    gamma: Optional[Union[Tensor, float]] = None,
    residual: Optional[Tensor] = None,
    scale: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """DANet's position attention: ``gamma · softmax(scale · qᵀk) · v + residual``.

    Args:
        query, key: ``[B, Cqk, H, W]`` or ``[B, Cqk, N]``, same shape.
        value: ``[B, Cv, H, W]`` or ``[B, Cv, N]``, same B and positions as query.
        gamma: float or one-element tensor multiplying the attention output (None: no scaling).
        residual: added to the output, shape of ``value`` (None: nothing added).
        scale: multiplies the energies; DANet uses 1.0 (no 1/sqrt(d)).
        backend: ``"auto" | "triton" | "cuda" | "chunked" | "eager"``.

    dtypes float32, float16, bfloat16 (float64 on ``chunked``/``eager``); all inputs share
    one dtype and device. Returns a tensor of ``value``'s shape and dtype.

    Under ``torch.autocast`` it behaves as the eager math does: q, k and v are cast to the
    autocast dtype (float64 stays), the output is in that dtype, and a residual of another
    dtype is added after, promoting (an fp32 residual gives an fp32 result, as mmseg's PAM).
    """
    query = _check_tensor("query", query)
    key = _check_tensor("key", key)
    value = _check_tensor("value", value)
    if key.shape != query.shape:
        raise ValueError(f"key must have query's shape {tuple(query.shape)}, got {tuple(key.shape)}")
    if value.dim() != query.dim() or value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"value must match query in batch and positions: query {tuple(query.shape)}, "
            f"value {tuple(value.shape)}"
        )
    # Under autocast, as for the eager math (mmseg's): its matmuls take q, k and v in the
    # autocast dtype, while `gamma * out + residual` adds the residual in its own dtype, so
    # an fp32 residual (PAM's x) promotes the result to fp32.
    cast = _autocast_dtype(query)
    if cast is not None:
        query, key, value = (t.to(cast) if t.dtype != torch.float64 else t for t in (query, key, value))
    _check_same("key", key, "query", query)
    _check_same("value", value, "query", query)
    late_residual = None
    if residual is not None:
        residual = _check_tensor("residual", residual)
        if residual.shape != value.shape:
            raise ValueError(
                f"residual must have value's shape {tuple(value.shape)}, got {tuple(residual.shape)}"
            )
        if cast is not None and residual.dtype != value.dtype and residual.device == value.device:
            late_residual, residual = residual, None  # added after the op, promoting
        else:
            _check_same("residual", residual, "value", value)
    gamma = _check_gamma(gamma, query)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float, got {scale!r}")

    batch, n = query.shape[0], math.prod(query.shape[2:])
    name = backends.resolve(backend, query.device, query.dtype, batch, n, n)
    if name == "eager":
        _check_matrix_memory(
            f"position_attention(backend='eager') with N = {n} positions", (batch, n, n),
            query.dtype, query.device,
            "backend='chunked' (or 'auto') needs O(N) memory instead of O(N²)",
        )
    q, k, v = _flat(query), _flat(key), _flat(value)
    res = _flat(residual) if residual is not None else None
    if name == "eager":
        out = position_attention_reference(q, k, v, gamma, res, float(scale))
    else:
        save_o = _needs_grad(q, k, v, gamma, res)
        out, _, _ = ops.pam_forward(q, k, v, gamma, res, float(scale), save_o, name)
    out = out.view(value.shape)
    return out if late_residual is None else out + late_residual


def channel_attention(
    x: Tensor, *, gamma: Optional[Union[Tensor, float]] = None, backend: str = "auto",
) -> Tensor:
    """DANet's channel attention: ``gamma · softmax(rowmax(E) - E) · X + x`` with ``E = X Xᵀ``.

    Args:
        x: ``[B, C, H, W]`` or ``[B, C, N]``.
        gamma: float or one-element tensor; None returns the attention output without the
            residual.
        backend: ``"auto" | "triton" | "cuda" | "chunked" | "eager"``.

    dtypes float32, float16, bfloat16 (float64 on ``chunked``/``eager``). Returns ``x``'s
    shape and dtype.

    Under ``torch.autocast`` it behaves as the eager math does: the attention runs on x cast
    to the autocast dtype and ``gamma · out + x`` adds the original x, so the result keeps
    x's dtype (float32 stays float32, as mmseg's CAM); without gamma it is in the autocast dtype.
    """
    x = _check_tensor("x", x)
    gamma = _check_gamma(gamma, x)
    # Under autocast, as for the eager math (mmseg's): its bmm's take x in the autocast
    # dtype, and `gamma * out + x` then adds the original x, promoting the result to x's
    # dtype. The op runs without its fused epilogue for that.
    late_x = late_gamma = None
    cast = _autocast_dtype(x)
    if cast is not None and x.dtype != cast:
        if gamma is not None:
            late_x, late_gamma, gamma = x, gamma, None
        x = x.to(cast)
    batch, channels = x.shape[0], x.shape[1]
    name = backends.resolve(backend, x.device, x.dtype, batch, channels, channels)
    # Every backend keeps the C x C softmax for backward, in float32 (float64 for float64).
    _check_matrix_memory(
        f"channel_attention with C = {channels} channels (x of shape {tuple(x.shape)})",
        (batch, channels, channels), torch.promote_types(x.dtype, torch.float32), x.device,
        "CAM's memory grows with C²: reduce the channels or the batch",
    )
    flat = _flat(x)
    if name == "eager":
        out = channel_attention_reference(flat, gamma)
    else:
        out, _ = ops.cam_forward(flat, gamma, name)
    out = out.view(x.shape)
    return out if late_x is None else out * late_gamma + late_x
