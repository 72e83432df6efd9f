"""Shared test utilities: relative error against a float64 reference, random inputs."""
from __future__ import annotations

import torch
from torch import Tensor


def rel_err(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (inf if out has NaN/inf where ref does not)."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out64).all() and torch.isfinite(ref64).all():
        return float("inf")
    denom = ref64.norm().item()
    return (out64 - ref64).norm().item() / (denom if denom > 0 else 1.0)


def pam_inputs(batch: int, cqk: int, cv: int, n: int, dtype=torch.float32, device="cpu", magnitude=1.0):
    """Random q, k, v, residual ``[B, C, N]`` and a non-zero gamma, all requiring grad."""
    def make(*shape, mag=1.0):
        return (torch.randn(*shape, device=device) * mag).to(dtype).requires_grad_()

    q, k = make(batch, cqk, n, mag=magnitude), make(batch, cqk, n, mag=magnitude)
    v, residual = make(batch, cv, n), make(batch, cv, n)
    gamma = torch.tensor(0.75, device=device, requires_grad=True)
    return q, k, v, gamma, residual


def sum_err(out: Tensor, ref: Tensor, terms: Tensor) -> float:
    """Error of a reduced value (e.g. dgamma = Σ dout∘o) relative to Σ|terms|.

    A sum of many signed terms cancels, so its own magnitude is no yardstick: rounding
    error scales with Σ|terms|, the condition of the sum.
    """
    return (out.detach().double() - ref.detach().double()).abs().sum().item() / terms.double().abs().sum().item()


def grad_errs(grads, ref_grads) -> list:
    """Max error of each gradient, relative to the largest entry of any reference gradient.

    PAM's key bias has an exactly-zero gradient in theory, so per-tensor relative error
    is meaningless there; the largest gradient is the yardstick (as for the mmseg fixtures).
    """
    biggest = max(g.detach().double().abs().max().item() for g in ref_grads)
    return [(a.detach().double() - b.detach().double()).abs().max().item() / biggest for a, b in zip(grads, ref_grads)]


# --- errors that stay meaningful where a result cancels to ~0 ----------------------------------
# Rounding errors scale with the terms a result sums, not with the result: where terms cancel
# (N = 1 or a one-hot softmax make PAM's dq and dk zero in theory) a plain relative error
# means nothing. The yardsticks below are the reference formulas with every term replaced by
# its magnitude, and cond_err is the relative error with ‖ref‖ floored at a tenth of the
# yardstick's norm. Measured over random shapes (N <= 81, Cv <= 80), chunked and Triton:
# ‖ref‖/‖yardstick‖ is ~0.03 for dq/dk (median), ~0.5 for out/dv, ~0 where theory says 0;
# fp32 errors stay under 6e-7 by this measure, fp16 under 8e-4 (tolerances 1e-5, 1e-2).
# A wrong gradient shows: a relative error δ shows as at least δ·min(1, 10·‖ref‖/‖yardstick‖).


def _gamma_magnitude(gamma) -> float:
    if gamma is None:
        return 1.0
    return abs(float(gamma.detach() if isinstance(gamma, Tensor) else gamma))


def pam_yardsticks(q, k, v, gamma, residual, dout, scale=1.0):
    """Float64 magnitudes matching PAM's output and gradients: (out, dq, dk, dv, dgamma).

    ``|out| <= gamma·P|v| + |residual|``; ``|dS| <= P∘(|dP| + Σ_j P|dP|)`` with
    ``|dP| = |gamma·dout|ᵀ|v|``; then ``|dq| <= |scale|·|k|·|dS|ᵀ``, ``|dk| <= |scale|·|q|·|dS|``,
    ``|dv| <= |gamma·dout|·P``, ``|dgamma| <= Σ|dout|∘P|v|``. Inputs ``[B, C, N]`` or 4-D.
    """
    q, k, v, dout = (t.detach().double().flatten(2) for t in (q, k, v, dout))
    g = _gamma_magnitude(gamma)
    p = torch.softmax(scale * q.transpose(1, 2) @ k, dim=-1)  # [B, N, N]
    pv = v.abs() @ p.transpose(1, 2)  # [B, Cv, N]
    out = g * pv + (0 if residual is None else residual.detach().double().flatten(2).abs())
    do = g * dout.abs()
    dp = do.transpose(1, 2) @ v.abs()  # [B, N, N]
    ds = p * (dp + (p * dp).sum(-1, keepdim=True))
    dq = abs(scale) * k.abs() @ ds.transpose(1, 2)
    dk = abs(scale) * q.abs() @ ds
    dv = do @ p
    dgamma = (dout.abs() * pv).sum()
    return out, dq, dk, dv, dgamma


def cam_yardsticks(x, gamma, dout):
    """The same for CAM: (out, dx, dgamma); gamma None means no residual."""
    x, dout = (t.detach().double().flatten(2) for t in (x, dout))
    g = _gamma_magnitude(gamma)
    e = x @ x.transpose(1, 2)
    attn = torch.softmax(e.amin(-1, keepdim=True) - e, dim=-1)
    ax = attn @ x.abs()
    out = g * ax + (0 if gamma is None else x.abs())
    da = g * dout.abs() @ x.abs().transpose(1, 2)  # [B, C, C]
    de = attn * (da + (attn * da).sum(-1, keepdim=True))
    dx = g * attn.transpose(1, 2) @ dout.abs() + (de + de.transpose(1, 2)) @ x.abs()
    if gamma is not None:
        dx = dx + dout.abs()
    return out, dx, (dout.abs() * ax).sum()


def cond_err(got: Tensor, ref: Tensor, yardstick: Tensor, floor: float = 0.1) -> float:
    """‖got − ref‖ / max(‖ref‖, floor·‖yardstick‖) in float64 (inf if got has NaN/inf where
    ref does not)."""
    got, ref = got.detach().double().reshape(ref.shape), ref.detach().double()
    if not torch.isfinite(got).all() and torch.isfinite(ref).all():
        return float("inf")
    denom = max(ref.norm().item(), floor * yardstick.double().norm().item())
    return (got - ref).norm().item() / (denom if denom > 0 else 1.0)
