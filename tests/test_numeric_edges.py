"""Numerics at the edges, on every backend that runs here.

Backends: ``chunked``, ``triton`` (through the interpreter on the CPU; the GPU test files
repeat the large-logit checks with bf16) and the CUDA kernels, through the CPU emulation
(``cuda-emulated``, tests/cuda_emulation.py) or, on a GPU, the ``cuda`` backend itself.

- fp32 logits of magnitude 1e4 (PAM and CAM) give finite outputs close to float64.
- fp16 inputs whose energies or Gram pass 65504, where eager fp16 gives inf/NaN, give
  finite, correct results (fp32 accumulation). Here for the backends the other files do
  not cover: chunked has both in test_pam_backends.py / test_cam_backends.py, Triton the
  CAM one in test_triton_cam.py.
- A NaN or ±inf in one position gives non-finite values in exactly the positions eager
  gives them (output and gradients), and never in another batch item.
- N = 1 and C = 1 (and Cqk = Cv = 1) work.

Errors are measured with helpers.cond_err (relative to the size of the summed terms):
at large logits the softmax is one-hot and dq, dk are near zero in theory.
"""
from __future__ import annotations

import pytest
import torch
from helpers import cam_yardsticks, cond_err, pam_yardsticks

import danet_ops
from danet_ops.backends import unavailable_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ("chunked", "triton", "cuda") if unavailable_reason(b, torch.device(DEVICE)) is None]
if DEVICE == "cpu":
    BACKENDS.append("cuda-emulated")

pytestmark = pytest.mark.usefixtures("single_thread")


def run_pam(backend, lib, q, k, v, gamma, residual, dout, scale=1.0):
    """(out, dq, dk, dv, dgamma): the op and its gradients for ``dout``; q, k, v, residual
    ``[B, C, N]`` on DEVICE, gamma a 0-dim float32 tensor."""
    if backend == "cuda-emulated":
        import cuda_emulation

        out, o, lse = cuda_emulation.pam_forward(lib, q, k, v, gamma, residual, scale)
        return (out, *cuda_emulation.pam_backward(lib, dout, q, k, v, gamma, o, lse, scale))
    leaves = [t.detach().requires_grad_() for t in (q, k, v, gamma)]
    out = danet_ops.position_attention(*leaves[:3], gamma=leaves[3], residual=residual, scale=scale,
                                       backend=backend)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout))


def run_cam(backend, lib, x, gamma, dout):
    """(out, dx, dgamma) of CAM, as ``run_pam``."""
    if backend == "cuda-emulated":
        import cuda_emulation

        out, attn = cuda_emulation.cam_forward(lib, x, gamma, 1)
        return (out, *cuda_emulation.cam_backward(lib, dout, x, attn, gamma, 1))
    leaves = [x.detach().requires_grad_(), gamma.detach().requires_grad_()]
    out = danet_ops.channel_attention(leaves[0], gamma=leaves[1], backend=backend)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout))


def _lib(backend, request):
    # The emulated kernels' library (conftest: built once per session) only where used.
    return request.getfixturevalue("emulated_kernels") if backend == "cuda-emulated" else None


def _pam_reference(q, k, v, gamma, residual, dout, scale=1.0):
    up = [t.detach().double().requires_grad_() for t in (q, k, v, gamma)]
    res = None if residual is None else residual.double()
    out = danet_ops.position_attention_reference(*up, res, scale)
    return (out.detach(), *torch.autograd.grad(out, up, dout.double()))


def _cam_reference(x, gamma, dout):
    up = [t.detach().double().requires_grad_() for t in (x, gamma)]
    out = danet_ops.channel_attention_reference(*up)
    return (out.detach(), *torch.autograd.grad(out, up, dout.double()))


def _check_pam(got, ref, sticks, tol_out, tol_grad):
    errs = {
        name: cond_err(g, r, s)
        for name, g, r, s in zip(("out", "dq", "dk", "dv", "dgamma"), got, ref, sticks)
    }
    for name, g in zip(("out", "dq", "dk", "dv", "dgamma"), got):
        assert torch.isfinite(g).all(), name
    assert errs["out"] <= tol_out and all(e <= tol_grad for e in errs.values()), errs


# --- large logits -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_pam_fp32_logits_of_1e4(backend, request):
    """fp32 energies of ~1e4 carry up to ε·Σ|q||k| ≈ 1e-3 absolute error whatever computes
    them, which would move near-tied softmax entries by ~1e-3; away from ties the softmax is
    one-hot and exact. Measured (fixed draw): out 2e-7, gradients up to 1.5e-5 (Triton's dv),
    so the bounds are fp32's 1e-5 for the output and 1e-4 for gradients."""
    gen = torch.Generator().manual_seed(0)
    b, cqk, cv, n = 2, 8, 24, 45
    q, k = ((torch.randn(b, cqk, n, generator=gen) * 40).to(DEVICE) for _ in range(2))
    v, res, dout = (torch.randn(b, cv, n, generator=gen).to(DEVICE) for _ in range(3))
    gamma = torch.tensor(0.75, device=DEVICE)
    logits = torch.einsum("bci,bcj->bij", q.double(), k.double())
    assert 5e3 < logits.abs().max() < 3e4
    got = run_pam(backend, _lib(backend, request), q, k, v, gamma, res, dout)
    ref = _pam_reference(q, k, v, gamma, res, dout)
    _check_pam(got, ref, pam_yardsticks(q, k, v, gamma, res, dout), 1e-5, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cam_fp32_gram_of_1e4(backend, request):
    """Gram entries of ~1e4 in fp32: a one-hot softmax(-E), finite and exact."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 24, 45, generator=gen) * 15).to(DEVICE)  # E_ii ~ 1e4
    dout = torch.randn(2, 24, 45, generator=gen).to(DEVICE)
    gamma = torch.tensor(0.75, device=DEVICE)
    assert (x.double() ** 2).sum(-1).max() > 5e3
    got = run_cam(backend, _lib(backend, request), x, gamma, dout)
    ref = _cam_reference(x, gamma, dout)
    errs = [cond_err(g, r, s) for g, r, s in zip(got, ref, cam_yardsticks(x, gamma, dout))]
    assert all(torch.isfinite(g).all() for g in got)
    assert max(errs) <= 1e-5, errs  # measured: 1.3e-7 at most


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "chunked"])
def test_pam_fp16_energies_beyond_fp16_range(backend, request):
    """|qᵀk| up to ~1e5: eager fp16 overflows (inf/NaN); the backends keep energies in fp32."""
    gen = torch.Generator().manual_seed(0)
    b, cqk, cv, n = 1, 8, 32, 45
    q, k = ((torch.randn(b, cqk, n, generator=gen) * 100).to(DEVICE, torch.float16) for _ in range(2))
    v, res, dout = (torch.randn(b, cv, n, generator=gen).to(DEVICE, torch.float16) for _ in range(3))
    gamma = torch.tensor(0.75, device=DEVICE)
    with torch.no_grad():
        eager = danet_ops.position_attention(q, k, v, gamma=gamma, residual=res, backend="eager")
    assert not torch.isfinite(eager).all(), "premise: eager fp16 overflows here"
    got = run_pam(backend, _lib(backend, request), q, k, v, gamma, res, dout)
    ref = _pam_reference(q, k, v, gamma, res, dout)
    _check_pam(got, ref, pam_yardsticks(q, k, v, gamma, res, dout), 1e-2, 1e-2)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in ("chunked", "triton")])
def test_cam_fp16_gram_beyond_fp16_range(backend, request):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 16, 221, generator=gen) * 20).to(DEVICE, torch.float16)
    dout = torch.randn(1, 16, 221, generator=gen).to(DEVICE, torch.float16)
    gamma = torch.tensor(0.75, device=DEVICE)
    with torch.no_grad():
        eager = danet_ops.channel_attention(x, gamma=gamma, backend="eager")
    assert not torch.isfinite(eager).all(), "premise: eager fp16 overflows here"
    got = run_cam(backend, _lib(backend, request), x, gamma, dout)
    ref = _cam_reference(x, gamma, dout)
    errs = [cond_err(g, r, s) for g, r, s in zip(got, ref, cam_yardsticks(x, gamma, dout))]
    assert all(torch.isfinite(g).all() for g in got)
    assert max(errs) <= 1e-2, errs


# --- NaN and inf ---------------------------------------------------------------------------------

VALUES = [
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
]


def _same_non_finite(name, got, ref):
    got, ref = got.detach().cpu().reshape(ref.shape), ref.detach().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), f"{name}: NaN positions differ from eager's"
    assert torch.equal(torch.isinf(got), torch.isinf(ref)), f"{name}: inf positions differ from eager's"


@pytest.mark.filterwarnings(
    "ignore:All-NaN slice:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)  # the interpreter runs numpy on NaN/inf
@pytest.mark.parametrize("where", ["q", "k", "v", "residual"])
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pam_non_finite_input_propagates_as_eager(backend, value, where, request):
    """One NaN/±inf at batch item 0: output and gradients are non-finite exactly where
    eager's (fp32) are, and batch item 1 stays finite (dgamma sums over the batch)."""
    gen = torch.Generator().manual_seed(1)
    b, cqk, cv, n = 2, 4, 6, 37
    q, k = (torch.randn(b, cqk, n, generator=gen).to(DEVICE) for _ in range(2))
    v, res, dout = (torch.randn(b, cv, n, generator=gen).to(DEVICE) for _ in range(3))
    {"q": q, "k": k, "v": v, "residual": res}[where][0, 1, 5] = value
    gamma = torch.tensor(0.5, device=DEVICE)
    got = run_pam(backend, _lib(backend, request), q, k, v, gamma, res, dout)
    eager = run_pam("eager", None, q, k, v, gamma, res, dout)
    for name, g, e in zip(("out", "dq", "dk", "dv", "dgamma"), got, eager):
        _same_non_finite(name, g, e)
        if name != "dgamma":
            assert torch.isfinite(g[1]).all(), f"{name}: batch item 1 poisoned"
    assert not torch.isfinite(eager[0]).all()  # premise: the value reaches the output


@pytest.mark.filterwarnings(
    "ignore:All-NaN slice:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cam_non_finite_input_propagates_as_eager(backend, value, request):
    """As for PAM. Regression: an inf made the Gram rows holding +inf finite here (weight 0
    from exp(rowmin(E) - E)) where eager's softmax(rowmax(E) - E) makes them NaN."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 8, 37, generator=gen) * 0.3).to(DEVICE)
    dout = torch.randn(2, 8, 37, generator=gen).to(DEVICE)
    x[0, 1, 5] = value
    gamma = torch.tensor(0.5, device=DEVICE)
    got = run_cam(backend, _lib(backend, request), x, gamma, dout)
    eager = run_cam("eager", None, x, gamma, dout)
    for name, g, e in zip(("out", "dx", "dgamma"), got, eager):
        _same_non_finite(name, g, e)
        if name != "dgamma":
            assert torch.isfinite(g[1]).all(), f"{name}: batch item 1 poisoned"


# --- N = 1, C = 1 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cqk,cv,spatial",
    [(8, 16, (1, 1)), (1, 1, (5, 7)), (1, 1, (1, 1)), (3, 5, (1, 9))],
    ids=["N1", "Cqk1-Cv1", "N1-C1", "1x9"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pam_single_position_or_channel(backend, cqk, cv, spatial, request):
    """N = 1: the softmax is 1, out = gamma·v + residual, dq = dk = 0 exactly in theory."""
    gen = torch.Generator().manual_seed(2)
    b, n = 2, spatial[0] * spatial[1]
    q, k = (torch.randn(b, cqk, n, generator=gen).to(DEVICE) for _ in range(2))
    v, res, dout = (torch.randn(b, cv, n, generator=gen).to(DEVICE) for _ in range(3))
    gamma = torch.tensor(0.75, device=DEVICE)
    got = run_pam(backend, _lib(backend, request), q, k, v, gamma, res, dout)
    ref = _pam_reference(q, k, v, gamma, res, dout)
    _check_pam(got, ref, pam_yardsticks(q, k, v, gamma, res, dout), 1e-5, 1e-5)
    if n == 1:
        torch.testing.assert_close(got[0].cpu(), (0.75 * v + res).cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c,n", [(1, 37), (1, 1), (8, 1)], ids=["C1", "C1-N1", "N1"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cam_single_channel_or_position(backend, c, n, request):
    """C = 1: the softmax is 1, out = (gamma + 1)·x."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(2, c, n, generator=gen) * 0.5).to(DEVICE)
    dout = torch.randn(2, c, n, generator=gen).to(DEVICE)
    gamma = torch.tensor(0.75, device=DEVICE)
    got = run_cam(backend, _lib(backend, request), x, gamma, dout)
    ref = _cam_reference(x, gamma, dout)
    errs = [cond_err(g, r, s) for g, r, s in zip(got, ref, cam_yardsticks(x, gamma, dout))]
    assert all(torch.isfinite(g).all() for g in got)
    assert max(errs) <= 1e-5, errs
    if c == 1:
        torch.testing.assert_close(got[0].cpu(), (1.75 * x).cpu(), rtol=1e-6, atol=1e-6)
