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
