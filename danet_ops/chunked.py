"""Memory-efficient attention in pure PyTorch: the ``chunked`` backend, any device.

PAM walks over blocks of query rows. Each block computes its full softmax rows at once
(``[B, block, N]``), so no online rescaling is needed, and backward recomputes P from the
saved log-sum-exp: attention memory is O(B·block·N), never O(N²). Statistics and
accumulation are fp32 for fp16/bf16/fp32 inputs and fp64 for fp64 inputs.

CAM's C x C matrix is small; here the point is precision: Gram and softmax in fp32 even
for half inputs (eager fp16 overflows the Gram), and ``gamma·out + x`` fused.

The functions follow the backend contract of ``danet_ops.backends``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Elements of one [B, block, N] attention chunk: 2**21 fp32 values = 8 MiB per buffer
# (backward holds two). Smaller blocks cost time on the CPU; larger ones memory
# (measured on the CPU at N = 8192: 2**20 ~12% slower than 2**21; 2**22 no faster).
CHUNK_ELEMENTS = 1 << 21


def unavailable_reason(device: torch.device) -> Optional[str]:
    return None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_rows(batch: int, n: int) -> int:
    """Rows (or columns) per block: CHUNK_ELEMENTS per buffer, a multiple of 64 when it can."""
    rows = max(1, CHUNK_ELEMENTS // max(1, batch * n))
    if rows >= 64:
        rows -= rows % 64
    return min(n, rows)


def _epilogue(o: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    """gamma·o + residual with one output allocation."""
    if gamma is not None and residual is not None:
        return torch.addcmul(residual.to(o.dtype), o, gamma.to(o.dtype))
    if gamma is not None:
        return o * gamma.to(o.dtype)
    if residual is not None:
        return o + residual.to(o.dtype)
    return o


def pam_forward(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor],
    scale: float, save_o: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Blocks of query rows, each a full softmax row at once: no online rescaling."""
    batch, _, n = q.shape
    acc = _acc_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    o = torch.empty(v.shape, dtype=acc, device=v.device)
    lse = torch.empty(batch, n, dtype=acc, device=q.device)
    rows = _block_rows(batch, n)
    for start in range(0, n, rows):
        blk = slice(start, min(n, start + rows))
        s = _energies(qa, ka, blk, scale)  # [B, rows, N]
        row_max, argmax = s.max(dim=-1, keepdim=True)
        p = torch.softmax(s, dim=-1)  # one fused pass: memory-bound passes dominate on the CPU
        # lse = max(s) - log(p at the max), as p there is 1/Σexp(s - max(s)) >= 1/N.
        lse[:, blk] = (row_max - p.gather(-1, argmax).log()).squeeze(-1)
        o[:, :, blk] = torch.bmm(va, p.transpose(1, 2))
        del s, p
    has_epilogue = gamma is not None or residual is not None
    out = _epilogue(o, gamma, residual).to(v.dtype)
    saved_o = o.to(v.dtype) if (save_o and has_epilogue) else v.new_empty(0)
    return out, lse, saved_o


def _energies(qa: Tensor, ka: Tensor, blk: slice, scale: float) -> Tensor:
    """scale · q[:, :, blk]ᵀ k, ``[B, rows, N]``: one expression for forward and backward, so
    the recomputed energies are bitwise those of the forward (matters at large logits)."""
    s = torch.bmm(qa[:, :, blk].transpose(1, 2), ka)
    return s.mul_(scale) if scale != 1.0 else s


def pam_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], o: Tensor,
    lse: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``gamma * softmax(scale·qᵀk)·v + residual``; o is the raw attention output.

    Per block of query rows, with P recomputed (the saved lse is for the kernel backends):
    ``dS' = P ∘ (doutᵀV - rowdot)``; dV += dout·P, dK += q·dS', dQ = k·dS'ᵀ. gamma and scale
    are linear factors, applied once to the small results instead of to dout or dS.
    """
    batch, _, n = q.shape
    acc = _acc_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    dout_a = dout.to(acc)
    row_dot = torch.linalg.vecdot(dout_a, o.to(acc), dim=1)  # [B, N]: Σ_c dout·o
    neg_row_dot = row_dot.neg().unsqueeze(-1)  # [B, N, 1]
    dq = torch.empty_like(qa)
    dk = torch.zeros_like(ka)
    dv = torch.zeros_like(va)
    rows = _block_rows(batch, n)
    for start in range(0, n, rows):
        blk = slice(start, min(n, start + rows))
        # Recomputed with the forward's own expressions, so P is bitwise the forward's.
        p = torch.softmax(_energies(qa, ka, blk, scale), dim=-1)  # [B, rows, N]
        dout_blk = dout_a[:, :, blk]
        dv.baddbmm_(dout_blk, p)
        ds = torch.baddbmm(neg_row_dot[:, blk], dout_blk.transpose(1, 2), va).mul_(p)  # dS'
        dq[:, :, blk] = torch.bmm(ka, ds.transpose(1, 2))
        dk.baddbmm_(qa[:, :, blk], ds)
        del p, ds  # free before the next block allocates its own
    if gamma is None:
        g, dgamma = 1.0, dout.new_empty(0)
    else:
        g, dgamma = gamma.to(acc), row_dot.sum().to(gamma.dtype)
    dq, dk, dv = dq.mul_(g * scale), dk.mul_(g * scale), dv.mul_(g)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dgamma


def _cam_attention(xa: Tensor) -> Tensor:
    energy = torch.bmm(xa, xa.transpose(1, 2))  # [B, C, C]
    # exp(rowmin(E) - E). Adding (rowmax - rowmax), 0 or NaN, makes a row holding +inf all
    # NaN, as eager's softmax(rowmax(E) - E) does (rowmin alone gives +inf weight 0).
    row_max = energy.amax(dim=-1, keepdim=True)
    shift = energy.amin(dim=-1, keepdim=True) + (row_max - row_max)
    attn = (shift - energy).exp_()
    return attn.div_(attn.sum(dim=-1, keepdim=True))


def cam_forward(x: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    xa = x.to(_acc_dtype(x.dtype))
    attn = _cam_attention(xa)
    if gamma is None:
        out = torch.bmm(attn, xa)
    else:  # x + (gamma·A) X: gamma folds into the small C x C matrix, one [B, C, N] output
        out = torch.baddbmm(xa, attn * gamma.to(xa.dtype), xa)
    return out.to(x.dtype), attn


def cam_backward(
    dout: Tensor, x: Tensor, attn: Tensor, gamma: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """dX through the Gram, the product and the residual; dgamma = Σ dout ∘ (A X).

    gamma multiplies C x C matrices only, and dX accumulates into one [B, C, N] buffer.
    """
    acc = attn.dtype
    xa, da = x.to(acc), dout.to(acc)
    g = torch.bmm(da, xa.transpose(1, 2))  # dout Xᵀ, [B, C, C]
    if gamma is None:
        d_attn, attn_g, dgamma = g, attn, dout.new_empty(0)
    else:
        ga = gamma.to(acc)
        d_attn, attn_g, dgamma = g * ga, attn * ga, (attn * g).sum().to(gamma.dtype)
    # softmax of -E: dE = -A ∘ (dA - rowsum(dA ∘ A)); E = X Xᵀ sends dE + dEᵀ to X.
    d_energy = attn * ((d_attn * attn).sum(dim=-1, keepdim=True) - d_attn)
    d_sym = d_energy + d_energy.transpose(1, 2)
    if gamma is None:
        dx = torch.bmm(attn_g.transpose(1, 2), da)
    else:  # residual: dout + (gamma·A)ᵀ dout
        dx = torch.baddbmm(da, attn_g.transpose(1, 2), da)
    dx.baddbmm_(d_sym, xa)
    return dx.to(x.dtype), dgamma
