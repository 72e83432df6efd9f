"""The CUDA extension's kernels on a GPU: against the float64 reference, the Triton backend
and (at large N) the chunked backend; outputs and gradients, fp32/fp16/bf16.

Skipped without a CUDA device (conftest). The first test builds the extension (about a
minute) unless it is cached or prebuilt.
"""
from __future__ import annotations

import pytest
import torch

from danet_ops import backends, ops
from danet_ops.reference import channel_attention_reference, position_attention_reference
from helpers import pam_inputs, rel_err

pytestmark = pytest.mark.gpu

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# fp32 is true fp32 (no TF32) in these kernels; half types round their inputs/outputs.
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 4e-2}


@pytest.fixture(scope="module", autouse=True)
def _cuda_backend():
    reason = backends.unavailable_reason("cuda", torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"cuda backend unavailable: {reason}")
    from danet_ops.cuda import build

    build.load()


def _pam(q, k, v, gamma, residual, backend, scale=1.0):
    out, _, _ = ops.pam_forward(q, k, v, gamma, residual, scale, True, backend)
    return out


def _pam_grads(backend, q, k, v, gamma, residual, dout, scale=1.0):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, gamma, residual)]
    out = _pam(*leaves, backend, scale=scale)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


def _pam_reference_grads(q, k, v, gamma, residual, dout, scale=1.0):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, gamma, residual)]
    out = position_attention_reference(*leaves, scale=scale)
    out.backward(dout.double())
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 8, 24, 221), (1, 64, 512, 9409), (3, 5, 70, 13 * 17)])
def test_pam_matches_float64_reference(dtype, shape):
    batch, cqk, cv, n = shape
    q, k, v, gamma, residual = pam_inputs(batch, cqk, cv, n, dtype=dtype, device="cuda", magnitude=0.5)
    dout = torch.randn(batch, cv, n, device="cuda").to(dtype)
    out, grads = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    ref, ref_grads = _pam_reference_grads(q, k, v, gamma, residual, dout)
    assert rel_err(out, ref) <= TOL[dtype]
    for name, g, r in zip("q k v gamma residual".split(), grads, ref_grads):
        assert rel_err(g, r) <= GRAD_TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 16, 64, 64), (1, 8, 200, 9), (1, 130, 8, 40), (2, 16, 130, 136)])
def test_pam_half_backward_edges_match_float64_reference(dtype, shape):
    # The mma.sync backward's edges (as in test_cuda_build.py's emulated cases): N = 64
    # unpadded, N under one fragment with Cv over three dP chunks and one dV block, Cqk over
    # two dK/dQ channel blocks, N a multiple of 8 over two key tiles.
    batch, cqk, cv, n = shape
    q, k, v, gamma, residual = pam_inputs(batch, cqk, cv, n, dtype=dtype, device="cuda", magnitude=0.5)
    dout = torch.randn(batch, cv, n, device="cuda").to(dtype)
    out, grads = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    ref, ref_grads = _pam_reference_grads(q, k, v, gamma, residual, dout)
    assert rel_err(out, ref) <= TOL[dtype]
    for name, g, r in zip("q k v gamma residual".split(), grads, ref_grads):
        assert rel_err(g, r) <= GRAD_TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES)
def test_pam_without_epilogue_and_with_scale(dtype):
    q, k, v, _, _ = pam_inputs(2, 16, 40, 300, dtype=dtype, device="cuda")
    dout = torch.randn_like(v)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = _pam(*leaves, None, None, "cuda", scale=0.3)
    out.backward(dout)
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = position_attention_reference(*ref_leaves, scale=0.3)
    ref.backward(dout.double())
    assert rel_err(out, ref) <= TOL[dtype]
    for g, r in zip(leaves, ref_leaves):
        assert rel_err(g.grad, r.grad) <= GRAD_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pam_matches_triton(dtype):
    if backends.unavailable_reason("triton", torch.device("cuda")) is not None:
        pytest.skip("triton backend unavailable")
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 97 * 97, dtype=dtype, device="cuda", magnitude=0.3)
    dout = torch.randn_like(v)
    out, grads = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    tout, tgrads = _pam_grads("triton", q, k, v, gamma, residual, dout)
    assert rel_err(out, tout) <= TOL[dtype]
    for g, t in zip(grads, tgrads):
        assert rel_err(g, t) <= GRAD_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pam_large_n_matches_chunked(dtype):
    q, k, v, gamma, residual = pam_inputs(1, 64, 512, 32768, dtype=dtype, device="cuda", magnitude=0.2)
    dout = torch.randn_like(v)
    out, grads = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    # chunked in fp32 on the same (rounded) inputs is the reference here: fp64 N x N is too big.
    cout, cgrads = _pam_grads("chunked", *(t.float() for t in (q, k, v, gamma, residual)), dout.float())
    assert rel_err(out, cout) <= TOL[dtype]
    for g, c in zip(grads, cgrads):
        assert rel_err(g, c) <= GRAD_TOL[dtype]


def test_pam_large_logits_stay_finite():
    q, k, v, gamma, residual = pam_inputs(1, 8, 16, 500, device="cuda", magnitude=12.0)  # |logits| ~ 1e3
    dout = torch.randn_like(v)
    out, grads = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    ref, ref_grads = _pam_reference_grads(q, k, v, gamma, residual, dout)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-3  # fp32 energies of ~1e3 carry ~1e-4 absolute error
    for g in grads:
        assert torch.isfinite(g).all()


def test_pam_nan_propagates():
    q, k, v, gamma, residual = pam_inputs(1, 8, 16, 100, device="cuda")
    with torch.no_grad():
        q[0, 0, 7] = float("nan")
    out = _pam(q, k, v, gamma, residual, "cuda")
    assert torch.isnan(out[0, :, 7]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_pam_backward_is_deterministic(dtype):
    # fp16/bf16 take the mma.sync dV and dK/dQ kernels on sm_80+, fp32 the tile kernels.
    q, k, v, gamma, residual = pam_inputs(2, 64, 128, 1000, dtype=dtype, device="cuda")
    dout = torch.randn_like(v)
    _, first = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    _, second = _pam_grads("cuda", q, k, v, gamma, residual, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_pam_functional_api_noncontiguous_and_expanded_grad():
    import danet_ops

    def run(backend, layout):
        torch.manual_seed(1)
        base = torch.randn(2, 16, 9, 11, device="cuda")
        q = base[:, :8]  # a slice
        k = torch.randn(2, 8, 11, 9, device="cuda").transpose(2, 3)  # a transpose
        v = torch.randn(2, 32, 9, 11, device="cuda")
        if layout == "contiguous":
            q, k = q.contiguous(), k.contiguous()
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        gamma = torch.tensor(0.5, device="cuda", requires_grad=True)
        out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=v, backend=backend)
        out.sum().backward()  # a stride-0 expanded gradient
        return out.detach(), [t.grad for t in (q, k, v, gamma)]

    out, grads = run("cuda", "strided")
    ref, ref_grads = run("chunked", "contiguous")
    assert rel_err(out, ref) <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) <= 1e-4


# --- CAM ---------------------------------------------------------------------------------


def _cam_grads(backend, x, gamma, dout):
    leaves = [x.detach().clone().requires_grad_()]
    if gamma is not None:
        leaves.append(gamma.detach().clone().requires_grad_())
    out, _ = ops.cam_forward(leaves[0], leaves[1] if gamma is not None else None, backend)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 24, 221), (1, 512, 97 * 97), (3, 70, 13 * 17)])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_cam_matches_float64_reference(dtype, shape, with_gamma):
    batch, c, n = shape
    # Small magnitude keeps the softmax of -XX^T away from one-hot, so gradients are informative.
    x = (torch.randn(batch, c, n, device="cuda") * (2.0 / n ** 0.5)).to(dtype)
    gamma = torch.tensor(0.7, device="cuda") if with_gamma else None
    dout = torch.randn(batch, c, n, device="cuda").to(dtype)
    out, grads = _cam_grads("cuda", x, gamma, dout)
    leaves = [x.detach().double().requires_grad_()]
    if gamma is not None:
        leaves.append(gamma.double().requires_grad_())
    ref = channel_attention_reference(leaves[0], leaves[1] if gamma is not None else None)
    ref.backward(dout.double())
    assert rel_err(out, ref) <= TOL[dtype]
    for g, r in zip(grads, leaves):
        assert rel_err(g, r.grad) <= GRAD_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cam_matches_triton(dtype):
    if backends.unavailable_reason("triton", torch.device("cuda")) is not None:
        pytest.skip("triton backend unavailable")
    x = (torch.randn(2, 512, 4096, device="cuda") * 0.03).to(dtype)
    gamma = torch.tensor(0.5, device="cuda")
    dout = torch.randn_like(x)
    out, grads = _cam_grads("cuda", x, gamma, dout)
    tout, tgrads = _cam_grads("triton", x, gamma, dout)
    assert rel_err(out, tout) <= TOL[dtype]
    for g, t in zip(grads, tgrads):
        assert rel_err(g, t) <= GRAD_TOL[dtype]


def test_cam_large_n_matches_chunked():
    x = torch.randn(1, 512, 32768, device="cuda") * 0.01
    gamma = torch.tensor(0.5, device="cuda")
    dout = torch.randn_like(x)
    out, grads = _cam_grads("cuda", x, gamma, dout)
    cout, cgrads = _cam_grads("chunked", x, gamma, dout)
    assert rel_err(out, cout) <= 1e-5
    for g, c in zip(grads, cgrads):
        assert rel_err(g, c) <= 1e-4


def test_cam_half_does_not_overflow():
    # Gram entries of ~3e4..1e5 overflow an fp16 energy; the kernels keep them in fp32.
    x = (torch.randn(1, 32, 8192, device="cuda") * 3).half()
    out, attn = ops.cam_forward(x, torch.tensor(0.5, device="cuda"), "cuda")
    assert attn.dtype == torch.float32 and torch.isfinite(attn).all() and torch.isfinite(out).all()
    ref = channel_attention_reference(x.double(), torch.tensor(0.5, device="cuda", dtype=torch.float64))
    assert rel_err(out, ref) <= 2e-2


def test_cam_backward_is_deterministic():
    x = torch.randn(2, 256, 5000, device="cuda") * 0.02
    gamma = torch.tensor(0.5, device="cuda")
    dout = torch.randn_like(x)
    _, first = _cam_grads("cuda", x, gamma, dout)
    _, second = _cam_grads("cuda", x, gamma, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
