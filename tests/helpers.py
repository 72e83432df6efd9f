"""Shared test utilities: errors against a float64 reference, random inputs, and the PAM and
CAM runners (``check_pam``, ``check_cam``) with their one tolerance table (TOLERANCES).

Test files import from here as ``from helpers import ...``: pytest's default ("prepend")
import mode puts tests/ (no ``__init__.py``) first on sys.path, as conftest.py's
``import cuda_emulation`` relies on; ``from tests.helpers`` would load this file a second
time, as another module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

import danet_ops
from danet_ops.reference import relative_error

# --- errors -------------------------------------------------------------------------------------


# cond_err(got, ref, yardstick=None, floor=0.1): ‖got − ref‖ / max(‖ref‖, floor·‖yardstick‖),
# the package's own measure (the yardsticks of pam_yardsticks where a result cancels to ~0).
cond_err = relative_error


def rel_err(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (inf if out has NaN/inf where ref does not)."""
    return cond_err(out, ref)


def grad_errs(grads, ref_grads) -> list:
    """Max error of each gradient, relative to the largest entry of any reference gradient.

    PAM's key bias has an exactly-zero gradient in theory, so per-tensor relative error
    is meaningless there; the largest gradient is the yardstick (as for the mmseg fixtures).
    """
    biggest = max(g.detach().double().abs().max().item() for g in ref_grads)
    return [
        (a.detach().double() - b.detach().double()).abs().max().item() / biggest
        for a, b in zip(grads, ref_grads)
    ]


def worst_element(got: Tensor, ref: Tensor) -> str:
    """'index (i, j, ...): got x, expected y' for the element farthest from ref (NaN/inf first)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape and got.numel() == ref.numel():
        got = got.reshape(ref.shape)
    diff = (got - ref).abs()
    diff[~torch.isfinite(diff)] = float("inf")
    flat = int(diff.flatten().argmax()) if diff.numel() else 0
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ref.shape)) if ref.dim() else ()
    return f"index {index}: got {got.flatten()[flat].item():.6g}, expected {ref.flatten()[flat].item():.6g}"


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


# --- the tolerance table ------------------------------------------------------------------------
# Bounds on the relative error ‖got − ref‖/‖ref‖ of the output and of every gradient, against
# the float64 reference on the same (rounded) inputs, or against another backend where
# float64 N x N does not fit. dgamma = Σ dout∘o sums up to millions of terms of random sign,
# so it can be far smaller than its terms: its ‖ref‖ is floored at ‖dout∘o‖₂, the size of
# their random rounding error (cond_err with yardstick=dout∘o, floor=1).
# Keys: (regime, dtype) -> (output, gradients). fp32 is true fp32 products (matmul precision
# "highest"); fp16/bf16 round inputs and outputs, accumulate in fp32.
TOLERANCES = {
    ("default", torch.float32): (1e-5, 1e-5),
    ("default", torch.float16): (1e-2, 1e-2),
    ("default", torch.bfloat16): (1e-2, 1e-2),
    # fp32 under matmul precision "high" on a GPU: TF32 allowed in PAM's P·V and backward
    # products, in CAM's A·X and dx (energies and the Gram stay true fp32).
    ("pam-tf32", torch.float32): (1e-2, 1e-2),
    ("cam-tf32", torch.float32): (5e-3, 5e-3),
    # PAM logits of ~1e3, a near one-hot softmax. fp32 energies that large carry ~1e-4 absolute
    # error (output 1e-3; gradients only finite). Half: dS = P∘(dP − delta) cancels and delta
    # comes from the saved half-precision o, as in any FlashAttention-style backward; bf16's
    # 8-bit mantissa gets 3e-2 on the gradients.
    ("large-logits", torch.float32): (1e-3, None),
    ("large-logits", torch.float16): (1e-2, 1e-2),
    ("large-logits", torch.bfloat16): (1e-2, 3e-2),
}
HALF = (torch.float16, torch.bfloat16)


def tolerance(dtype: torch.dtype, regime: str = "default") -> tuple:
    """(output, gradients) bounds of TOLERANCES; a gradient bound None means "finite only"."""
    return TOLERANCES[(regime, dtype)]


# --- checks -------------------------------------------------------------------------------------


def assert_errors_within(
    got: dict,
    ref: dict,
    tol: tuple,
    *,
    terms: Optional[dict] = None,
    eager: Optional[dict] = None,
    context: str = "",
) -> dict:
    """Every quantity of ``got`` ({"out": ..., "dq": ..., ...}) against ``ref``.

    The fixed bound: ``tol[0]`` on "out", ``tol[1]`` on the rest (None: finite only), relative
    error as cond_err with the yardstick ``terms[name]`` (floor 1) where given (dgamma).
    FlashAttention's bound beside it where ``eager`` holds the same math run in the low
    dtype: for every tensor quantity, max|got − ref| <= 2·max|eager − ref| + atol, atol the
    largest rounding error of ref stored in got's dtype; skipped where eager is not finite
    (it overflowed) and for 0-dim results (dgamma: one sum, where two rounding errors of
    random sign compare by chance). Returns {name: relative error}; one AssertionError naming,
    for each failing quantity, its error, the bound, and the worst element.
    """
    terms, eager = terms or {}, eager or {}
    errors, failures = {}, []
    for name, g in got.items():
        r = ref[name]
        bound = tol[0] if name == "out" else tol[1]
        if not torch.isfinite(g).all():
            failures.append(f"{name}: not finite; worst element {worst_element(g, r)}")
            continue
        errors[name] = err = cond_err(g, r, terms.get(name), floor=1.0)
        if bound is not None and not err <= bound:
            failures.append(
                f"{name}: relative error {err:.3g} > tolerance {bound:.3g}; "
                f"worst element {worst_element(g, r)}"
            )
        e = eager.get(name)
        if e is None or g.dim() == 0 or not torch.isfinite(e).all():
            continue
        g64, r64, e64 = (t.detach().double().reshape(r.shape) for t in (g, r, e))
        atol = (r64.to(g.dtype).double() - r64).abs().max().item()
        ours, theirs = (g64 - r64).abs().max().item(), (e64 - r64).abs().max().item()
        if not ours <= 2 * theirs + atol:
            failures.append(
                f"{name}: max error {ours:.3g} > 2 x eager's {theirs:.3g} + atol {atol:.3g} "
                f"(FlashAttention's bound); worst element {worst_element(g, r)}"
            )
    assert not failures, f"{context}\n  " + "\n  ".join(failures)
    return errors


@dataclass
class Run:
    """One runner call: inputs, output and gradients of the backend and of the reference."""

    inputs: dict  # name -> the backend's input leaf (None where absent)
    dout: Tensor
    out: Tensor
    grads: dict  # "d" + name -> gradient, for every input present
    ref_out: Tensor
    ref_grads: dict
    errors: dict = field(default_factory=dict)


def _leaves(inputs: dict, dtype: Optional[torch.dtype] = None) -> dict:
    """Fresh leaves requiring grad (detach keeps strides), in ``dtype`` when given."""
    return {
        name: None if t is None else (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
        for name, t in inputs.items()
    }


def _grads(out: Tensor, leaves: dict, dout: Tensor) -> dict:
    present = {name: t for name, t in leaves.items() if t is not None}
    grads = torch.autograd.grad(out, list(present.values()), dout)
    return {"d" + name: g for name, g in zip(present, grads)}


def _context(op, backend, dtype, shape, reference, **kwargs) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None)
    return f"{op} backend={backend} dtype={str(dtype)[6:]} shape={tuple(shape)} vs {reference}" + (
        f" ({extra})" if extra else ""
    )


# --- PAM ----------------------------------------------------------------------------------------

PAM_INPUTS = ("q", "k", "v", "gamma", "residual")


def pam_inputs(batch: int, cqk: int, cv: int, n: int, dtype=torch.float32, device="cpu", magnitude=1.0):
    """Random q, k, v, residual ``[B, C, N]`` and a non-zero gamma, all requiring grad."""

    def make(*shape, mag=1.0):
        return (torch.randn(*shape, device=device) * mag).to(dtype).requires_grad_()

    q, k = make(batch, cqk, n, mag=magnitude), make(batch, cqk, n, mag=magnitude)
    v, residual = make(batch, cv, n), make(batch, cv, n)
    gamma = torch.tensor(0.75, device=device, requires_grad=True)
    return q, k, v, gamma, residual


def run_pam(backend: str, inputs: dict, dout: Tensor, scale: float = 1.0, hw=None):
    """(out ``[B, Cv, N]``, {"dq": ..., ...}) of ``position_attention`` on fresh leaves of
    ``inputs`` ({"q", "k", "v", "gamma", "residual"}, ``[B, C, N]``; None where absent);
    ``hw = (H, W)`` hands the op 4-D views."""
    leaves = _leaves(inputs)
    shape4 = (lambda t: t) if hw is None else (lambda t: None if t is None else t.view(*t.shape[:2], *hw))
    out = danet_ops.position_attention(
        shape4(leaves["q"]),
        shape4(leaves["k"]),
        shape4(leaves["v"]),
        gamma=leaves["gamma"],
        residual=shape4(leaves["residual"]),
        scale=scale,
        backend=backend,
    ).reshape(dout.shape)
    return out.detach(), _grads(out, leaves, dout)


def pam_reference(
    inputs: dict, dout: Tensor, scale: float = 1.0, dtype: Optional[torch.dtype] = torch.float64
):
    """The same through the eager reference (mmseg's math), on copies in ``dtype`` (None: as
    they are, gamma included: eager in the inputs' own dtype)."""
    leaves = _leaves(inputs, dtype)
    out = danet_ops.position_attention_reference(*(leaves[name] for name in PAM_INPUTS), scale=scale)
    return out.detach(), _grads(out, leaves, dout if dtype is None else dout.to(dtype))


def pam_gamma_terms(inputs: dict, dout: Tensor, scale: float = 1.0) -> Tensor:
    """dout∘o in float64, o the exact raw attention output (chunked in float64: no N x N):
    the terms dgamma sums, its yardstick in assert_errors_within."""
    with torch.no_grad():
        o = danet_ops.position_attention(
            *(inputs[name].detach().double() for name in ("q", "k", "v")), scale=scale, backend="chunked"
        )
    return dout.detach().double().reshape(o.shape) * o


def check_pam(
    backend: str,
    batch: int,
    cqk: int,
    cv: int,
    n: int,
    *,
    dtype=torch.float32,
    device="cpu",
    gamma: bool = True,
    residual: bool = True,
    scale: float = 1.0,
    magnitude: float = 1.0,
    hw=None,
    regime: str = "default",
    reference: str = "float64",
    reference_dtype: Optional[torch.dtype] = None,
) -> Run:
    """PAM on ``backend`` and the float64 reference, same fresh random inputs (pam_inputs, q and
    k times ``magnitude``) and output gradient: output and every gradient within
    ``tolerance(dtype, regime)``; for fp16/bf16 also within FlashAttention's bound (see
    assert_errors_within). ``reference`` another backend name: that backend instead, on the
    inputs in ``reference_dtype`` (None: the same dtype), and no FlashAttention bound.
    """
    q, k, v, g, res = pam_inputs(batch, cqk, cv, n, dtype=dtype, device=device, magnitude=magnitude)
    inputs = {"q": q, "k": k, "v": v, "gamma": g if gamma else None, "residual": res if residual else None}
    dout = torch.randn(batch, cv, n, device=device).to(dtype)
    out, grads = run_pam(backend, inputs, dout, scale=scale, hw=hw)
    assert out.dtype == dtype and out.shape == (batch, cv, n), (out.dtype, out.shape)
    eager = {}
    if reference == "float64":
        ref_out, ref_grads = pam_reference(inputs, dout, scale)
        if dtype in HALF:
            eager_out, eager_grads = pam_reference(inputs, dout, scale, dtype=None)
            eager = {"out": eager_out, **eager_grads}
    else:
        cast = (lambda t: t) if reference_dtype is None else (lambda t: t.to(reference_dtype))
        rin = {name: t if t is None or name == "gamma" else cast(t.detach()) for name, t in inputs.items()}
        ref_out, ref_grads = run_pam(reference, rin, cast(dout), scale=scale)
    terms = {"dgamma": pam_gamma_terms(inputs, dout, scale)} if gamma else {}
    context = _context(
        "PAM",
        backend,
        dtype,
        (batch, cqk, cv, n),
        reference,
        scale=scale if scale != 1.0 else None,
        gamma=None if gamma else "none",
        residual=None if residual else "none",
        regime=regime,
    )
    errors = assert_errors_within(
        {"out": out, **grads},
        {"out": ref_out, **ref_grads},
        tolerance(dtype, regime),
        terms=terms,
        eager=eager,
        context=context,
    )
    return Run(inputs, dout, out, grads, ref_out, ref_grads, errors)


# --- CAM ----------------------------------------------------------------------------------------


def run_cam(backend: str, x: Tensor, gamma: Optional[Tensor], dout: Tensor):
    """(out, {"dx": ..., "dgamma": ...}) of ``channel_attention`` on fresh leaves (dgamma where
    gamma is given); x ``[B, C, N]`` or 4-D."""
    leaves = _leaves({"x": x, "gamma": gamma})
    out = danet_ops.channel_attention(leaves["x"], gamma=leaves["gamma"], backend=backend)
    return out.detach(), _grads(out, leaves, dout)


def cam_reference(
    x: Tensor, gamma: Optional[Tensor], dout: Tensor, dtype: Optional[torch.dtype] = torch.float64
):
    """The same through the eager reference, on copies in ``dtype`` (None: as they are)."""
    leaves = _leaves({"x": x, "gamma": gamma}, dtype)
    out = danet_ops.channel_attention_reference(leaves["x"].flatten(2), leaves["gamma"]).view(x.shape)
    return out.detach(), _grads(out, leaves, dout if dtype is None else dout.to(dtype))


def cam_gamma_terms(x: Tensor, dout: Tensor) -> Tensor:
    """dout∘(A X) in float64: the terms CAM's dgamma sums (as pam_gamma_terms)."""
    with torch.no_grad():
        ax = danet_ops.channel_attention(x.detach().double(), backend="chunked")
    return dout.detach().double().reshape(ax.shape) * ax


def check_cam(
    backend: str,
    shape,
    *,
    dtype=torch.float32,
    device="cpu",
    gamma: Optional[float] = 0.7,
    magnitude: float = 1.0,
    regime: str = "default",
    reference: str = "float64",
) -> Run:
    """CAM on ``backend`` and the float64 reference, same fresh random x (``shape``, times
    ``magnitude``) and output gradient, checked as check_pam checks PAM. gamma None: no
    residual, no dgamma. ``reference`` another backend name: that backend instead, same dtype.
    """
    x = (torch.randn(*shape, device=device) * magnitude).to(dtype).requires_grad_()
    g = None if gamma is None else torch.tensor(gamma, device=device, requires_grad=True)
    dout = torch.randn(*shape, device=device).to(dtype)
    out, grads = run_cam(backend, x, g, dout)
    assert out.dtype == dtype and out.shape == x.shape, (out.dtype, out.shape)
    eager = {}
    if reference == "float64":
        ref_out, ref_grads = cam_reference(x, g, dout)
        if dtype in HALF:
            eager_out, eager_grads = cam_reference(x, g, dout, dtype=None)
            eager = {"out": eager_out, **eager_grads}
    else:
        ref_out, ref_grads = run_cam(reference, x, g, dout)
    terms = {"dgamma": cam_gamma_terms(x, dout)} if g is not None else {}
    context = _context("CAM", backend, dtype, shape, reference, gamma=gamma, regime=regime)
    errors = assert_errors_within(
        {"out": out, **grads},
        {"out": ref_out, **ref_grads},
        tolerance(dtype, regime),
        terms=terms,
        eager=eager,
        context=context,
    )
    return Run({"x": x, "gamma": g}, dout, out, grads, ref_out, ref_grads, errors)
