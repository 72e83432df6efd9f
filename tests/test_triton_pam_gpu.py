"""The Triton PAM kernels on a GPU: all dtypes (bf16 included), DANet's real shapes, large N,
determinism, torch.compile and CUDA graphs. Skipped without CUDA (conftest).

Tolerances: helpers.TOLERANCES (fp32 1e-5 under the default matmul precision "highest",
true fp32 products; fp16/bf16 1e-2).
"""
from __future__ import annotations

import pytest
import torch
from helpers import (
    PAM_INPUTS,
    assert_errors_within,
    check_pam,
    pam_gamma_terms,
    pam_inputs,
    rel_err,
    run_pam,
    tolerance,
)

import danet_ops

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


@pytest.fixture(autouse=True)
def _true_fp32():
    """fp32 products in true fp32 everywhere (ours, cuDNN's convolutions, the references)."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


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
    run = check_pam(
        "triton", batch, cqk, cv, n, dtype=dtype, device=DEVICE, gamma=epilogue, residual=epilogue
    )
    assert all(run.grads[name].dtype == dtype for name in ("dq", "dk", "dv"))


def test_4d_ragged_input():
    """[B, C, H, W] with H·W = 97·97, as DANet's 769x769 Cityscapes crop gives."""
    q, k, v, gamma, residual = pam_inputs(1, 64, 512, 97 * 97, dtype=torch.float16, device=DEVICE)
    view = lambda t: t.view(*t.shape[:2], 97, 97)  # noqa: E731
    out = danet_ops.position_attention(
        view(q), view(k), view(v), gamma=gamma, residual=view(residual), backend="triton"
    )
    assert out.shape == (1, 512, 97, 97)
    ref = danet_ops.position_attention_reference(*(t.double() for t in (q, k, v, gamma, residual)))
    assert rel_err(out.view(1, 512, -1), ref) <= tolerance(torch.float16)[0]


def test_fp32_high_precision():
    """With TF32 allowed, P·V and the backward products may use it; energies stay true fp32."""
    torch.set_float32_matmul_precision("high")  # the float64 reference is unaffected
    check_pam("triton", 2, 64, 512, 2048, device=DEVICE, magnitude=1.5, regime="pam-tf32")


@pytest.mark.parametrize("variant", ["online", "two_pass"])
def test_fp32_at_danet_shape_and_logit_magnitudes(variant, monkeypatch):
    """The Cityscapes training crop (N = 8192) in fp32 under "highest" (3xTF32 products),
    logits of about ±50: output and gradients within 1e-5 of float64, in each forward."""
    from danet_ops.triton import pam

    monkeypatch.setenv(pam.FWD_VARIANT_ENV, variant)
    run = check_pam("triton", 1, 64, 512, 8192, device=DEVICE, magnitude=1.0)
    logits = torch.einsum("bci,bcj->bij", run.inputs["q"].double(), run.inputs["k"].double())
    assert logits.abs().max() > 40


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_two_pass_forward_half_ragged(dtype, monkeypatch):
    """The two-pass forward at the 97x97 crop (odd N) in half precision, gradients included."""
    from danet_ops.triton import pam

    monkeypatch.setenv(pam.FWD_VARIANT_ENV, "two_pass")
    check_pam("triton", 2, 64, 512, 9409, dtype=dtype, device=DEVICE, hw=(97, 97))


@pytest.mark.parametrize("fwd", ["online", "two_pass"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tma_loads_at_danet_shape(dtype, fwd, monkeypatch):
    """Both forwards with TMA loads (DANET_OPS_TRITON_LOADS=tma) at the Cityscapes training
    crop (N = 8192: TMA-aligned in every dtype), gradients included, and the TMA kernels
    are the ones that ran (the descriptors' block shapes come from the autotuner's pre-hook)."""
    from danet_ops.triton import pam

    monkeypatch.setenv(pam.LOADS_VARIANT_ENV, "tma")
    monkeypatch.setenv(pam.FWD_VARIANT_ENV, fwd)
    kernel = pam._pam_fwd_tma_kernel if fwd == "online" else pam._pam_fwd_normalised_tma_kernel
    calls = []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a, **kw: calls.append(1) or run(*a, **kw))
    check_pam("triton", 2, 64, 512, 8192, dtype=dtype, device=DEVICE)
    assert calls


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_large_n_against_chunked(dtype):
    """Whole-image Cityscapes at test time: N = 128·256 = 32768, batch 8.

    The eager N x N reference would need 8 x 4.3 GB, so the fp32-accumulating chunked
    backend is the reference here.
    """
    check_pam("triton", 8, 64, 512, 128 * 256, dtype=dtype, device=DEVICE, reference="chunked")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_large_logits_half(dtype):
    """Unscaled logits of magnitude ~1e3 in half precision: no inf/NaN, right answer.

    The output is checked at the usual 1e-2. Gradients: with a near one-hot softmax,
    dS = P∘(dP - delta) cancels, and delta = rowsum(dO∘O) comes from the half-precision O
    that the contract saves, so the gradient error is that of any FA-style backward (the
    chunked backend's included); bf16's 8-bit mantissa gets 3e-2 (helpers.TOLERANCES,
    regime "large-logits").
    """
    run = check_pam(
        "triton", 2, 64, 512, 4096, dtype=dtype, device=DEVICE, magnitude=5.0, regime="large-logits"
    )
    logits = torch.einsum("bci,bcj->bij", run.inputs["q"][:1].double(), run.inputs["k"][:1].double())
    assert logits.abs().max() > 800


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_agrees_with_chunked(dtype):
    check_pam("triton", 2, 64, 512, 4096, dtype=dtype, device=DEVICE, reference="chunked")


def test_sum_backward_matches_explicit_ones():
    q, k, v, gamma, residual = pam_inputs(2, 64, 512, 1024, dtype=torch.float16, device=DEVICE)
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="triton")
    grads_sum = torch.autograd.grad(out.sum(), (q, k, v, gamma, residual))
    _, grads_ones = run_pam("triton", dict(zip(PAM_INPUTS, (q, k, v, gamma, residual))), torch.ones_like(out))
    for name, a, b in zip(PAM_INPUTS, grads_sum, grads_ones.values()):
        assert rel_err(a, b) <= 1e-3, name  # dQ is summed atomically: rounding order varies


def test_non_contiguous_inputs():
    from danet_ops.triton import pam

    q, k, v, gamma, residual = (
        t.detach() for t in pam_inputs(2, 64, 512, 1024, dtype=torch.float16, device=DEVICE)
    )
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
    for name, a, b in zip(PAM_INPUTS, grads, grads_v):
        assert rel_err(a, b) <= 1e-3, name


def test_outputs_fully_written():
    """Poison the caching allocator's free blocks with NaN: every output element is written."""
    from danet_ops.triton import pam

    batch, cqk, cv, n = 2, 64, 512, 9409
    q, k, v, gamma, residual = (
        t.detach() for t in pam_inputs(batch, cqk, cv, n, dtype=torch.float16, device=DEVICE)
    )
    dout = torch.randn_like(v)

    def poison():
        blocks = [
            torch.full((batch, c, n), float("nan"), device=DEVICE, dtype=dt)
            for c, dt in (
                (cv, v.dtype),
                (cv, v.dtype),
                (cv, v.dtype),
                (cqk, q.dtype),
                (cqk, q.dtype),
                (cqk, torch.float32),
                (1, torch.float32),
                (1, torch.float32),
                (1, torch.float32),
            )
        ]
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
    inputs = dict(zip(PAM_INPUTS, pam_inputs(2, 64, 512, 4096, dtype=dtype, device=DEVICE)))
    dout = torch.randn(2, 512, 4096, device=DEVICE).to(dtype)
    _, fast_grads = run_pam("triton", inputs, dout)
    torch.use_deterministic_algorithms(True)
    try:
        out1, grads1 = run_pam("triton", inputs, dout)
        out2, grads2 = run_pam("triton", inputs, dout)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out1, out2)
    for name in grads1:
        assert torch.equal(grads1[name], grads2[name]), name
    # The atomic (default) and ordered dQ paths agree within helpers.TOLERANCES.
    assert_errors_within(
        grads1,
        fast_grads,
        tolerance(dtype),
        terms={"dgamma": pam_gamma_terms(inputs, dout)},
        context=f"deterministic vs atomic dQ, {dtype}",
    )


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

    def step():  # leaves that share the static inputs' storage
        return run_pam("triton", dict(zip(PAM_INPUTS, static)), dout)

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
    for name in grads:
        assert rel_err(graph_grads[name], grads[name]) <= tol, name


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two GPUs (tensors on cuda:1, cuda:0 current)"
)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_runs_on_the_tensors_device(backend):
    """Triton launches on the current device unless told otherwise: tensors on cuda:1 while
    cuda:0 is current must still be computed on cuda:1 (PAM and CAM, forward and backward)."""
    if danet_ops.backends.unavailable_reason(backend, torch.device("cuda")) is not None:
        pytest.skip(f"{backend} backend unavailable")
    with torch.cuda.device(0):
        run = check_pam(backend, 2, 64, 128, 257, device="cuda:1")
        x = torch.randn(2, 96, 257, device="cuda:1", requires_grad=True)
        cam = danet_ops.channel_attention(x, gamma=0.5, backend=backend)
        (dx,) = torch.autograd.grad(cam, x, torch.ones_like(cam))
    assert run.out.device == torch.device("cuda:1") and dx.device == torch.device("cuda:1")
    ref_cam = danet_ops.channel_attention(x.double(), gamma=0.5, backend="eager")
    assert rel_err(cam, ref_cam) <= tolerance(torch.float32)[0]
