"""PAM on the pure-PyTorch backends (eager, chunked) against the float64 reference."""
import pytest
import torch

import danet_ops
from danet_ops import chunked
from helpers import pam_inputs, rel_err, sum_err

SHAPES = [  # (batch, in_channels, H, W): Cqk = C // 8
    (1, 16, 13, 17),
    (3, 64, 13, 17),
    (1, 512, 13, 17),
    (1, 16, 97, 97),
]


def _reference_and_grads(q, k, v, gamma, residual, dout, scale=1.0):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, gamma, residual)]
    out = danet_ops.position_attention_reference(*leaves, scale=scale)
    grads = torch.autograd.grad(out, leaves, dout.double())
    return out, grads


@pytest.mark.parametrize("backend", ["eager", "chunked"])
@pytest.mark.parametrize("batch,channels,h,w", SHAPES)
def test_pam_matches_float64_reference(backend, batch, channels, h, w):
    n = h * w
    q, k, v, gamma, residual = pam_inputs(batch, max(1, channels // 8), channels, n)
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend=backend)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, gamma, residual), dout)
    ref, ref_grads = _reference_and_grads(q, k, v, gamma, residual, dout)
    assert rel_err(out, ref) < 1e-5
    for name, g, rg in zip("q k v residual".split(), grads[:3] + grads[4:], ref_grads[:3] + ref_grads[4:]):
        assert rel_err(g, rg) < 1e-5, name
    raw = danet_ops.position_attention_reference(*(t.detach().double() for t in (q, k, v)))
    assert sum_err(grads[3], ref_grads[3], dout.double() * raw) < 1e-6


def test_pam_chunked_uses_several_blocks(monkeypatch):
    """Force tiny query blocks so the block loop, ragged last block included, is exercised."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * 221 * 5)  # 10 rows per block at B=2
    q, k, v, gamma, residual = pam_inputs(2, 8, 24, 221)
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, scale=0.3, backend="chunked")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, gamma, residual), dout)
    ref, ref_grads = _reference_and_grads(q, k, v, gamma, residual, dout, scale=0.3)
    assert rel_err(out, ref) < 1e-5
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) < 1e-5


@pytest.mark.parametrize("with_gamma,with_residual", [(False, False), (True, False), (False, True)])
def test_pam_optional_epilogue(with_gamma, with_residual):
    q, k, v, gamma, residual = pam_inputs(2, 8, 32, 37)
    inputs = [q, k, v, gamma if with_gamma else None, residual if with_residual else None]
    leaves = [t for t in inputs if t is not None]
    out = danet_ops.position_attention(*inputs[:3], gamma=inputs[3], residual=inputs[4], backend="chunked")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    inputs64 = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    ref = danet_ops.position_attention_reference(*inputs64)
    ref_grads = torch.autograd.grad(ref, [t for t in inputs64 if t is not None], dout.double())
    assert rel_err(out, ref) < 1e-5
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) < 1e-5


FP16_U = 2.0**-11  # fp16 unit roundoff


def _qk_grad_scales(q, k, v, gamma, dout):
    """Σ|terms| of dq and dk, float64: the yardstick for their rounding error.

    dq_i = γ Σ_j P_ij (dP_ij − rowdot_i) k_j with dP_ij = Σ_c dout_ci v_cj and
    rowdot_i = Σ_c dout_ci o_ci (dk alike, summed over i with q_i). When a softmax row is
    one-hot, dP_ij − rowdot_i cancels to ~0 and so do dq and dk: their own magnitude (down to
    1e-40 here) measures nothing, while fp16 rounding of o still perturbs them in proportion
    to these terms.
    """
    q64, k64, v64, d64 = (t.detach().double() for t in (q, k, v, dout))
    p = torch.softmax(q64.transpose(1, 2) @ k64, dim=-1)  # [B, N(i), N(j)]
    o = v64 @ p.transpose(1, 2)  # [B, C, N(i)]
    terms = d64.abs().transpose(1, 2) @ v64.abs() + (d64.abs() * o.abs()).sum(1)[:, :, None]
    weights = gamma.detach().double().abs() * p * terms  # [B, N(i), N(j)]
    return k64.abs() @ weights.transpose(1, 2), q64.abs() @ weights  # [B, D, N] each


def test_pam_half_large_magnitude_stays_finite():
    """Logits beyond fp16 range (~±1e5): eager fp16 overflows the energies; chunked keeps them
    in fp32 and is accurate to a few fp16 roundings.

    Every error is max|err| over a float64 yardstick, against 4u (u = 2^-11): one rounding of
    the fp16 result, one of the saved fp16 attention output (it enters dq, dk and dgamma),
    and ~2u for the fp32 energies: past the fp16 limit (|E| > 6.5e4) their absolute error is
    ~2^-24·|E| ≈ 4e-3, which moves a softmax weight by P(1−P)·4e-3 ≤ 1e-3 in a near-tie row.
    Measured worst over 200 seeds, torch 2.11 and 2.13: 1.6u (out), 1.0u (v), 0.2u (q).
    """
    q, k, v, gamma, residual = pam_inputs(1, 8, 32, 221, dtype=torch.float16, magnitude=100.0)
    eager = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="eager")
    assert not torch.isfinite(eager).all(), "premise: eager fp16 overflows at this magnitude"
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="chunked")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, gamma, residual), dout)
    ref, ref_grads = _reference_and_grads(q, k, v, gamma, residual, dout)
    assert torch.isfinite(out).all()
    for name, g in zip("q k v gamma residual".split(), grads):
        assert torch.isfinite(g).all(), name

    def max_err(a, b, yardstick):
        return (a.detach().double() - b.detach().double()).abs().max().item() / yardstick

    # out, dv, dresidual: their own largest element is the yardstick.
    for name, a, b in (("out", out, ref), ("v", grads[2], ref_grads[2]), ("residual", grads[4], ref_grads[4])):
        assert max_err(a, b, b.detach().abs().max().item()) < 4 * FP16_U, name
    # dq, dk: the magnitude of their terms (they cancel to ~0 in one-hot softmax rows).
    for name, a, b, scale in zip("qk", grads[:2], ref_grads[:2], _qk_grad_scales(q, k, v, gamma, dout)):
        assert max_err(a, b, scale.max().item()) < 4 * FP16_U, name
    # dgamma = Σ dout∘o, a cancelling sum: Σ|terms| is the yardstick.
    raw = danet_ops.position_attention_reference(*(t.detach().double() for t in (q, k, v)))
    assert sum_err(grads[3], ref_grads[3], dout.double() * raw) < 4 * FP16_U, "gamma"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pam_chunked_half_dtypes(dtype):
    q, k, v, gamma, residual = pam_inputs(2, 8, 64, 221, dtype=dtype)
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="chunked")
    assert out.dtype == dtype
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, gamma, residual), dout)
    ref, ref_grads = _reference_and_grads(q, k, v, gamma, residual, dout)
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    assert rel_err(out, ref) < tol
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == (torch.float32 if g.dim() == 0 else dtype)
        assert rel_err(g, rg) < tol


def test_pam_nan_propagates():
    q, k, v, gamma, residual = pam_inputs(1, 8, 16, 37)
    with torch.no_grad():
        v[0, 3, 5] = float("nan")
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="chunked")
    assert torch.isnan(out).any()


def test_pam_gradcheck_float64():
    q, k, v, _, residual = pam_inputs(2, 3, 5, 11, dtype=torch.float64)
    gamma = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, gamma, residual):
        return danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, scale=0.7, backend="chunked")

    assert torch.autograd.gradcheck(fn, (q, k, v, gamma, residual))


def test_pam_layouts_noncontiguous_and_expanded_grad():
    """A transposed-view query and a stride-0 grad (from .sum()) match the contiguous run."""
    base = torch.randn(2, 8, 13, 13)
    q_view = base.transpose(2, 3).requires_grad_()  # non-contiguous [2, 8, 13, 13]
    q_dense = base.transpose(2, 3).contiguous().requires_grad_()
    k = torch.randn(2, 8, 13, 13, requires_grad=True)
    v = torch.randn(2, 24, 13, 13, requires_grad=True)
    out_view = danet_ops.position_attention(q_view, k, v, backend="chunked")
    out_view.sum().backward()  # expanded grad_output
    grads_view = (q_view.grad, k.grad.clone(), v.grad.clone())
    k.grad, v.grad = None, None
    out_dense = danet_ops.position_attention(q_dense, k, v, backend="chunked")
    out_dense.backward(torch.ones_like(out_dense))
    assert torch.equal(out_view, out_dense)
    for a, b in zip(grads_view, (q_dense.grad, k.grad, v.grad)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    ref = danet_ops.position_attention_reference(
        *(t.detach().reshape(2, t.shape[1], -1).double() for t in (q_dense, k, v))
    )
    assert rel_err(out_view.reshape(2, 24, -1), ref) < 1e-5
