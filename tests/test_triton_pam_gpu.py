"""The Triton PAM kernels on a GPU: all dtypes (bf16 included), DANet's real shapes, large N,
determinism, torch.compile and CUDA graphs. Skipped without CUDA (conftest).

Tolerances (relative error against float64): fp32 1e-5 under the default matmul
precision "highest" (true fp32 products), fp16/bf16 1e-2.
"""
from __future__ import annotations

import pytest
import torch

import danet_ops
from tests.helpers import pam_inputs, rel_err

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
NAMES = ("q", "k", "v", "gamma", "residual")


@pytest.fixture(autouse=True)
def _true_fp32():
    """fp32 products in true fp32 everywhere (ours, cuDNN's convolutions, the references)."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


def _pam(backend, q, k, v, gamma, residual, dout, scale=1.0):
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, scale=scale, backend=backend)
    inputs = [t for t in (q, k, v, gamma, residual) if t is not None]
    grads = iter(torch.autograd.grad(out, inputs, dout))
    return out, [next(grads) if t is not None else None for t in (q, k, v, gamma, residual)]


def _reference(q, k, v, gamma, residual, dout, scale=1.0):
    up = [None if t is None else t.detach().double().requires_grad_() for t in (q, k, v, gamma, residual)]
    return _pam("eager", *up, dout.double(), scale=scale)


def _gamma_scale(q, k, v, dout, scale=1.0):
    """‖dout ∘ o‖ (o the exact raw attention output): the size of dgamma's rounding error.

    dgamma = Σ dout·o sums millions of terms of random sign, so it can be far smaller than
    its terms; its error is measured against this scale rather than against itself.
    """
    with torch.no_grad():
        o = danet_ops.position_attention(q.double(), k.double(), v.double(), scale=scale, backend="chunked")
        return (dout.double() * o).norm().item()


def _errors(out, grads, ref_out, ref_grads, gamma_scale=0.0):
    errs = {"out": rel_err(out, ref_out)}
    for name, g, rg in zip(NAMES, grads, ref_grads):
        if rg is None:
            continue
        if name == "gamma":
            errs[name] = abs(g.double() - rg.double()).item() / max(abs(rg.double()).item(), gamma_scale)
        else:
            errs[name] = rel_err(g, rg)
    return errs


def _check(out, grads, ref_out, ref_grads, tol, gamma_scale=0.0):
    assert torch.isfinite(out).all()
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    errs = _errors(out, grads, ref_out, ref_grads, gamma_scale)
    assert all(e <= tol for e in errs.values()), errs


SHAPES = [
    pytest.param(1, 8, 8, 221, id="b1-cqk8-cv8-n221"),
    pytest.param(2, 12, 96, 37, id="b2-cqk12-cv96-n37"),
    pytest.param(2, 64, 512, 4096, id="b2-danet-64x64"),
    pytest.param(2, 64, 512, 9409, id="b2-danet-97x97"),
    pytest.param(1, 256, 2048, 1000, id="b1-cqk256-cv2048-n1000"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("epilogue", [True, False], ids=["gamma+residual", "plain"])
@pytest.mark.parametrize("batch,cqk,cv,n", SHAPES)
def test_matches_reference(batch, cqk, cv, n, epilogue, dtype):
    q, k, v, gamma, residual = pam_inputs(batch, cqk, cv, n, dtype=dtype, device=DEVICE)
    if not epilogue:
        gamma = residual = None
    dout = torch.randn(batch, cv, n, device=DEVICE).to(dtype)
    out, grads = _pam("triton", q, k, v, gamma, residual, dout)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads[:3])
    _check(out, grads, *_reference(q, k, v, gamma, residual, dout), TOL[dtype], _gamma_scale(q, k, v, dout))


def test_4d_ragged_input():
    """[B, C, H, W] with H·W = 97·97, as DANet's 769x769 Cityscapes crop gives."""
    q, k, v, gamma, residual = pam_inputs(1, 64, 512, 97 * 97, dtype=torch.float16, device=DEVICE)
    view = lambda t: t.view(*t.shape[:2], 97, 97)  # noqa: E731
    out = danet_ops.position_attention(view(q), view(k), view(v), gamma=gamma, residual=view(residual),
                                       backend="triton")
    assert out.shape == (1, 512, 97, 97)
    ref = danet_ops.position_attention_reference(*(t.double() for t in (q, k, v, gamma, residual)))
    assert rel_err(out.view(1, 512, -1), ref) <= 1e-2


def test_fp32_high_precision():
    """With TF32 allowed, P·V and the backward products may use it; energies stay true fp32."""
    torch.set_float32_matmul_precision("high")
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 2048, device=DEVICE, magnitude=1.5)
    dout = torch.randn(2, 512, 2048, device=DEVICE)
    out, grads = _pam("triton", q, k, v, gamma, residual, dout)
    torch.set_float32_matmul_precision("highest")
    _check(out, grads, *_reference(q, k, v, gamma, residual, dout), 1e-2, _gamma_scale(q, k, v, dout))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_large_n_against_chunked(dtype):
    """Whole-image Cityscapes at test time: N = 128·256 = 32768, batch 8.

    The eager N x N reference would need 8 x 4.3 GB, so the fp32-accumulating chunked
    backend is the reference here.
    """
    batch, n = 8, 128 * 256
    q, k, v, gamma, residual = pam_inputs(batch, 64, 512, n, dtype=dtype, device=DEVICE)
    dout = torch.randn(batch, 512, n, device=DEVICE).to(dtype)
    out, grads = _pam("triton", q, k, v, gamma, residual, dout)
    out_c, grads_c = _pam("chunked", q, k, v, gamma, residual, dout)
    _check(out, grads, out_c, grads_c, 1e-5 if dtype == torch.float32 else 1e-2, _gamma_scale(q, k, v, dout))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_large_logits_half(dtype):
    """Unscaled logits of magnitude ~1e3 in half precision: no inf/NaN, right answer.

    The output is checked at the usual 1e-2. Gradients: with a near one-hot softmax,
    dS = P∘(dP - delta) cancels, and delta = rowsum(dO∘O) comes from the half-precision O
    that the contract saves, so the gradient error is that of any FA-style backward (the
    chunked backend's included); bf16's 8-bit mantissa gets 3e-2.
    """
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 4096, dtype=dtype, device=DEVICE, magnitude=5.0)
    logits = torch.einsum("bci,bcj->bij", q[:1].double(), k[:1].double())
    assert logits.abs().max() > 800
    dout = torch.randn(2, 512, 4096, device=DEVICE).to(dtype)
    out, grads = _pam("triton", q, k, v, gamma, residual, dout)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    ref_out, ref_grads = _reference(q, k, v, gamma, residual, dout)
    assert rel_err(out, ref_out) <= 1e-2
    grad_tol = 1e-2 if dtype == torch.float16 else 3e-2
    errs = _errors(out, grads, ref_out, ref_grads, _gamma_scale(q, k, v, dout))
    assert all(e <= grad_tol for e in errs.values()), errs


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_agrees_with_chunked(dtype):
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 4096, dtype=dtype, device=DEVICE)
    dout = torch.randn(2, 512, 4096, device=DEVICE).to(dtype)
    out, grads = _pam("triton", q, k, v, gamma, residual, dout)
    out_c, grads_c = _pam("chunked", q, k, v, gamma, residual, dout)
    _check(out, grads, out_c, grads_c, TOL[dtype], _gamma_scale(q, k, v, dout))


def test_sum_backward_matches_explicit_ones():
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 1024, dtype=torch.float16, device=DEVICE)
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="triton")
    grads_sum = torch.autograd.grad(out.sum(), (q, k, v, gamma, residual))
    _, grads_ones = _pam("triton", q, k, v, gamma, residual, torch.ones_like(out))
    for name, a, b in zip(NAMES, grads_sum, grads_ones):
        assert rel_err(a, b) <= 1e-3, name  # dQ is summed atomically: rounding order varies


def test_non_contiguous_inputs():
    from danet_ops.triton import pam

    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(2, 64, 512, 1024, dtype=torch.float16,
                                                              device=DEVICE))
    as_nc = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    wide = torch.randn(2, 100, 1024, device=DEVICE, dtype=torch.float16)
    wide[:, 10:74] = q
    out, lse, o = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    out_v, lse_v, o_v = pam.pam_forward(wide[:, 10:74], as_nc(k), as_nc(v), gamma, as_nc(residual), 1.0, True)
    # Other strides compile to other kernel specialisations: equal up to output rounding.
    for a, b in ((out, out_v), (lse, lse_v), (o, o_v)):
        assert rel_err(a, b) <= 1e-3
    torch.use_deterministic_algorithms(True)
    try:
        dout = torch.randn_like(v)
        grads = pam.pam_backward(dout, q, k, v, gamma, o, lse, 1.0)
        grads_v = pam.pam_backward(as_nc(dout), wide[:, 10:74], as_nc(k), as_nc(v), gamma, as_nc(o), lse, 1.0)
    finally:
        torch.use_deterministic_algorithms(False)
    for name, a, b in zip(NAMES, grads, grads_v):
        assert rel_err(a, b) <= 1e-3, name


def test_outputs_fully_written():
    """Poison the caching allocator's free blocks with NaN: every output element is written."""
    from danet_ops.triton import pam

    batch, cqk, cv, n = 2, 64, 512, 9409
    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(batch, cqk, cv, n, dtype=torch.float16,
                                                              device=DEVICE))
    dout = torch.randn_like(v)

    def poison():
        blocks = [torch.full((batch, c, n), float("nan"), device=DEVICE, dtype=dt)
                  for c, dt in ((cv, v.dtype), (cv, v.dtype), (cv, v.dtype), (cqk, q.dtype),
                                (cqk, q.dtype), (cqk, torch.float32), (1, torch.float32),
                                (1, torch.float32), (1, torch.float32))]
        del blocks

    poison()
    out, lse, o = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all() and torch.isfinite(o).all()
    for deterministic in (False, True):
        poison()
        torch.use_deterministic_algorithms(deterministic)
        try:
            grads = pam.pam_backward(dout, q, k, v, gamma, o, lse, 1.0)
        finally:
            torch.use_deterministic_algorithms(False)
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_deterministic_bitwise(dtype):
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 4096, dtype=dtype, device=DEVICE)
    dout = torch.randn(2, 512, 4096, device=DEVICE).to(dtype)
    _, fast_grads = _pam("triton", q, k, v, gamma, residual, dout)
    torch.use_deterministic_algorithms(True)
    try:
        out1, grads1 = _pam("triton", q, k, v, gamma, residual, dout)
        out2, grads2 = _pam("triton", q, k, v, gamma, residual, dout)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out1, out2)
    for name, a, b in zip(NAMES, grads1, grads2):
        assert torch.equal(a, b), name
    gamma_scale = _gamma_scale(q, k, v, dout)
    errs = _errors(out1, grads1, out1, fast_grads, gamma_scale)
    assert all(e <= TOL[dtype] for e in errs.values()), errs


def _module_grads(module, x, dout, params_of=None):
    """out, and {name: gradient} for x and every parameter (of ``params_of``, the
    uncompiled module, whose names carry no ``_orig_mod.`` prefix)."""
    out = module(x)
    names, params = zip(*(params_of or module).named_parameters())
    grads = torch.autograd.grad(out, [x, *params], dout)
    return out, dict(zip(("x", *names), grads))


def test_torch_compile_fullgraph():
    module = danet_ops.PAM(512, 64, backend="triton").to(DEVICE)
    with torch.no_grad():
        module.gamma.scale.fill_(0.5)  # 0 at init would hide the attention branch
    x = torch.randn(2, 512, 32, 48, device=DEVICE, requires_grad=True)
    dout = torch.randn(2, 512, 32, 48, device=DEVICE)
    out, grads = _module_grads(module, x, dout)
    compiled = torch.compile(module, fullgraph=True)
    out_c, grads_c = _module_grads(compiled, x, dout, params_of=module)
    assert rel_err(out_c, out) <= 1e-5
    biggest = max(g.abs().max().item() for g in grads.values())
    for name, g in grads.items():
        if name == "key_project.bias":
            # Exactly zero in exact arithmetic (q·b_k is constant along each softmax row),
            # so what both runs hold is rounding noise (~1e-5 against gradients of ~10,
            # seen on an H200): bounded against the largest gradient, not against itself.
            assert (grads_c[name] - g).abs().max().item() <= 1e-5 * biggest, name
        else:
            assert rel_err(grads_c[name], g) <= 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_cuda_graph_capture_and_replay(dtype):
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 4096, dtype=dtype, device=DEVICE)
    dout = torch.randn(2, 512, 4096, device=DEVICE).to(dtype)
    static = (q, k, v, gamma, residual)

    def step():
        return _pam("triton", q, k, v, gamma, residual, dout)

    # Warm up on a side stream: autotuning and compilation happen outside the capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_grads = step()

    # New values in the captured inputs, then replay.
    with torch.no_grad():
        for t in static:
            t.copy_(torch.randn_like(t, dtype=torch.float32).to(t.dtype))
    graph.replay()
    torch.cuda.synchronize()
    out, grads = step()
    assert torch.equal(graph_out, out)  # the forward has no atomics
    tol = 1e-5 if dtype == torch.float32 else 1e-3  # dQ is summed atomically
    for name, a, b in zip(NAMES, graph_grads, grads):
        assert rel_err(a, b) <= tol, name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (tensors on cuda:1, cuda:0 current)")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_runs_on_the_tensors_device(backend):
    """Triton launches on the current device unless told otherwise: tensors on cuda:1 while
    cuda:0 is current must still be computed on cuda:1 (PAM and CAM, forward and backward)."""
    if danet_ops.backends.unavailable_reason(backend, torch.device("cuda")) is not None:
        pytest.skip(f"{backend} backend unavailable")
    with torch.cuda.device(0):
        q, k, v, gamma, residual = pam_inputs(2, 64, 128, 257, device="cuda:1")
        dout = torch.randn(2, 128, 257, device="cuda:1")
        out, grads = _pam(backend, q, k, v, gamma, residual, dout)
        ref_out, ref_grads = _reference(q, k, v, gamma, residual, dout)
        x = torch.randn(2, 96, 257, device="cuda:1", requires_grad=True)
        cam = danet_ops.channel_attention(x, gamma=0.5, backend=backend)
        (dx,) = torch.autograd.grad(cam, x, torch.ones_like(cam))
    assert out.device == torch.device("cuda:1") and dx.device == torch.device("cuda:1")
    _check(out, grads, ref_out, ref_grads, 1e-5)
    ref_cam = danet_ops.channel_attention(x.double(), gamma=0.5, backend="eager")
    assert rel_err(cam, ref_cam) <= 1e-5
