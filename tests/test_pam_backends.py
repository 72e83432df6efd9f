"""PAM on the pure-PyTorch backends (eager, chunked) against the float64 reference."""
import pytest
import torch

import danet_ops
from danet_ops import chunked
from helpers import cond_err, pam_inputs, pam_yardsticks, rel_err, sum_err

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


def test_pam_half_large_magnitude_stays_finite():
    """Logits beyond fp16 range (~±3e4): eager fp16 overflows the energies; chunked keeps them in fp32."""
    q, k, v, gamma, residual = pam_inputs(1, 8, 32, 221, dtype=torch.float16, magnitude=100.0)
    eager = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="eager")
    assert not torch.isfinite(eager).all(), "premise: eager fp16 overflows at this magnitude"
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="chunked")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, gamma, residual), dout)
    ref, ref_grads = _reference_and_grads(q, k, v, gamma, residual, dout)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2
    # The softmax is one-hot but for near ties: dq, dk are mostly cancellation, so their
    # errors are measured against the summed terms (a plain relative error of dq varied
    # from 1e-3 to 9e-2 with the random draw).
    sticks = pam_yardsticks(q, k, v, gamma, residual, dout)
    sticks = sticks[1:] + (dout.double().abs(),)
    for name, g, rg, stick in zip("q k v gamma residual".split(), grads, ref_grads, sticks):
        assert torch.isfinite(g).all(), name
        assert cond_err(g, rg, stick) < 1e-2, name


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
