"""The eager math of DANet's attention, exactly as mmsegmentation computes it, and the
error measure results are held to against it.

This is the ground truth every other backend is tested against. It materialises the
N x N (PAM) and C x C (CAM) matrices and lets autograd keep them for backward.
Inputs are channel-first ``[B, C, N]``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def position_attention_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    gamma: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    scale: float = 1.0,
) -> Tensor:
    """mmseg's ``SelfAttentionBlock`` as PAM uses it, then ``gamma * out + residual``.

    query, key: ``[B, Cqk, N]``; value, residual: ``[B, Cv, N]``; returns ``[B, Cv, N]``.
    """
    sim_map = torch.matmul(query.permute(0, 2, 1), key)  # [B, N, N], no 1/sqrt(d)
    if scale != 1.0:
        sim_map = sim_map * scale
    sim_map = F.softmax(sim_map, dim=-1)
    context = torch.matmul(sim_map, value.permute(0, 2, 1))  # [B, N, Cv]
    out = context.permute(0, 2, 1).contiguous()
    if gamma is not None:
        out = out * gamma
    if residual is not None:
        out = out + residual
    return out


def channel_attention_reference(x: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
    """mmseg's ``CAM.forward``: softmax(rowmax(E) - E) with E = X Xᵀ, times X.

    x: ``[B, C, N]``; returns ``[B, C, N]``: ``gamma * out + x``, or ``out`` when gamma is None.
    """
    energy = torch.bmm(x, x.permute(0, 2, 1))  # [B, C, C]
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    attention = F.softmax(energy_new, dim=-1)
    out = torch.bmm(attention, x)
    if gamma is None:
        return out
    return out * gamma + x


def relative_error(got: Tensor, ref: Tensor, yardstick: Optional[Tensor] = None, floor: float = 0.1) -> float:
    """‖got − ref‖ / max(‖ref‖, floor·‖yardstick‖) in float64 (inf if got has NaN/inf where
    ref does not); without a yardstick the plain relative error ‖got − ref‖ / ‖ref‖.

    The yardstick is what a result's rounding error scales with where the result itself cancels
    to ~0, or the terms of a cancelling sum: ``yardstick=terms, floor=1`` measures a sum (such
    as dgamma = Σ dout∘o) against the random-sign rounding error of its terms, ‖terms‖₂;
    ``yardstick=terms.abs().sum(), floor=1`` against their worst-case one, Σ|terms|.
    The measure of the tests, ``python -m danet_ops --check`` and the benchmarks' error column.
    """
    got, ref = got.detach().double(), ref.detach().double()
    if got.shape != ref.shape and got.numel() == ref.numel():
        got = got.reshape(ref.shape)
    if not torch.isfinite(got).all() and torch.isfinite(ref).all():
        return float("inf")
    denom = ref.norm().item()
    if yardstick is not None:
        denom = max(denom, floor * yardstick.detach().double().norm().item())
    return (got - ref).norm().item() / (denom if denom > 0 else 1.0)
