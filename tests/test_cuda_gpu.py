"""The CUDA extension's kernels on a GPU: against the float64 reference, the Triton backend
and (at large N) the chunked backend; outputs and gradients, fp32/fp16/bf16.

Skipped without a CUDA device (conftest). The first test builds the extension (about a
minute) unless it is cached or prebuilt.
"""
from __future__ import annotations

import pytest
import torch
from helpers import PAM_INPUTS, check_cam, check_pam, pam_inputs, rel_err, run_cam, run_pam, tolerance

from danet_ops import backends, ops
from danet_ops.reference import channel_attention_reference

pytestmark = pytest.mark.gpu

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# On sm_80+ PAM runs the mma.sync kernels for every dtype: fp32 as 3xTF32 under the
# default matmul precision "highest" (held to fp32's 1e-5 against float64), half types
# round their inputs/outputs. Before sm_80 (or with Cqk too large for the mma kernels'
# shared memory) the tile kernels: fp32 true fp32 on SIMT FMAs. CAM: tile kernels, fp32
# true fp32. Tolerances: helpers.TOLERANCES.


@pytest.fixture(scope="module", autouse=True)
def _cuda_backend():
    reason = backends.unavailable_reason("cuda", torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"cuda backend unavailable: {reason}")
    from danet_ops.cuda import build

    build.load()


@pytest.fixture(autouse=True)
def _highest_fp32_matmul():
    """Matmul precision "highest" (fp32 PAM as 3xTF32, true fp32 torch products in the
    references) unless a test says otherwise."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def _pam(q, k, v, gamma, residual, backend, scale=1.0):
    out, _, _ = ops.pam_forward(q, k, v, gamma, residual, scale, True, backend)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (2, 8, 24, 221), (1, 64, 512, 9409), (3, 5, 70, 13 * 17),
    # The mma.sync backward's edges (as in test_cuda_build.py's emulated cases): N = 64
    # unpadded, N under one fragment with Cv over three dP chunks and one dV block, Cqk over
    # two dK/dQ channel blocks, N a multiple of 8 over two key tiles.
    (1, 16, 64, 64), (1, 8, 200, 9), (1, 130, 8, 40), (2, 16, 130, 136),
])
def test_pam_matches_float64_reference(dtype, shape):
    check_pam("cuda", *shape, dtype=dtype, device="cuda", magnitude=0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [
    # DANet's widths at the 97x97 crop; ragged N over key tiles of 32 with Cv under one
    # warp's 128 channels; N under one fragment; Cqk 40, Cv 300 (the emulated cases).
    (1, 64, 512, 9409), (3, 5, 70, 13 * 17), (1, 8, 200, 9), (1, 40, 300, 64), (2, 16, 130, 136),
])
def test_pam_fused_backward_matches_float64_reference(dtype, shape, monkeypatch):
    from danet_ops import cuda

    monkeypatch.setenv(cuda.BWD_VARIANT_ENV, "fused")
    assert cuda.backward_variant() == "fused"
    check_pam("cuda", *shape, dtype=dtype, device="cuda", magnitude=0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 512, 9409), (3, 5, 70, 13 * 17), (1, 8, 200, 9), (1, 40, 300, 64)])
def test_pam_whole_cv_forward_matches_float64_reference(dtype, shape, monkeypatch):
    from danet_ops import cuda

    monkeypatch.setenv(cuda.FWD_VARIANT_ENV, "whole_cv")
    assert cuda.forward_variant() == "whole_cv"
    check_pam("cuda", *shape, dtype=dtype, device="cuda", magnitude=0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pam_without_epilogue_and_with_scale(dtype):
    check_pam("cuda", 2, 16, 40, 300, dtype=dtype, device="cuda", gamma=False, residual=False, scale=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pam_matches_triton(dtype):
    if backends.unavailable_reason("triton", torch.device("cuda")) is not None:
        pytest.skip("triton backend unavailable")
    check_pam("cuda", 2, 64, 512, 97 * 97, dtype=dtype, device="cuda", magnitude=0.3, reference="triton")


def test_pam_fp32_high_precision():
    # Matmul precision "high": the products other than the energies as one TF32 MMA.
    torch.set_float32_matmul_precision("high")  # the float64 reference is unaffected
    check_pam("cuda", 2, 64, 512, 2048, device="cuda", magnitude=1.5, regime="pam-tf32")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pam_large_n_matches_chunked(dtype):
    # chunked in fp32 on the same (rounded) inputs is the reference here: fp64 N x N is too big.
    check_pam("cuda", 1, 64, 512, 32768, dtype=dtype, device="cuda", magnitude=0.2, reference="chunked",
              reference_dtype=torch.float32)


def test_pam_large_logits_stay_finite():
    # |logits| ~ 1e3; fp32 energies that large carry ~1e-4 absolute error (regime "large-logits").
    check_pam("cuda", 1, 8, 16, 500, device="cuda", magnitude=12.0, regime="large-logits")


def test_pam_nan_propagates():
    q, k, v, gamma, residual = pam_inputs(1, 8, 16, 100, device="cuda")
    with torch.no_grad():
        q[0, 0, 7] = float("nan")
    out = _pam(q, k, v, gamma, residual, "cuda")
    assert torch.isnan(out[0, :, 7]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_pam_backward_is_deterministic(dtype):
    # Every dtype takes the mma.sync dV and dK/dQ kernels on sm_80+ (no atomics).
    inputs = dict(zip(PAM_INPUTS, pam_inputs(2, 64, 128, 1000, dtype=dtype, device="cuda")))
    dout = torch.randn_like(inputs["v"])
    _, first = run_pam("cuda", inputs, dout)
    _, second = run_pam("cuda", inputs, dout)
    for name in first:
        assert torch.equal(first[name], second[name]), name


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 24, 221), (1, 512, 97 * 97), (3, 70, 13 * 17)])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_cam_matches_float64_reference(dtype, shape, with_gamma):
    # Small magnitude keeps the softmax of -XX^T away from one-hot, so gradients are informative.
    check_cam("cuda", shape, dtype=dtype, device="cuda", gamma=0.7 if with_gamma else None,
              magnitude=2.0 / shape[-1] ** 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cam_matches_triton(dtype):
    if backends.unavailable_reason("triton", torch.device("cuda")) is not None:
        pytest.skip("triton backend unavailable")
    check_cam("cuda", (2, 512, 4096), dtype=dtype, device="cuda", gamma=0.5, magnitude=0.03,
              reference="triton")


def test_cam_fp32_high_precision():
    # Matmul precision "high": A·X and dx as one TF32 MMA; the Gram and dout·Xᵀ stay 3xTF32.
    torch.set_float32_matmul_precision("high")  # the float64 reference is unaffected
    check_cam("cuda", (2, 512, 64, 64), device="cuda", magnitude=0.05, regime="cam-tf32")


def test_cam_large_n_matches_chunked():
    check_cam("cuda", (1, 512, 32768), device="cuda", gamma=0.5, magnitude=0.01, reference="chunked")


def test_cam_half_does_not_overflow():
    # Gram entries of ~3e4..1e5 overflow an fp16 energy; the kernels keep them in fp32.
    x = (torch.randn(1, 32, 8192, device="cuda") * 3).half()
    out, attn = ops.cam_forward(x, torch.tensor(0.5, device="cuda"), "cuda")
    assert attn.dtype == torch.float32 and torch.isfinite(attn).all() and torch.isfinite(out).all()
    ref = channel_attention_reference(x.double(), torch.tensor(0.5, device="cuda", dtype=torch.float64))
    assert rel_err(out, ref) <= tolerance(torch.float16)[0]


def test_cam_backward_is_deterministic():
    x = torch.randn(2, 256, 5000, device="cuda") * 0.02
    gamma = torch.tensor(0.5, device="cuda")
    dout = torch.randn_like(x)
    _, first = run_cam("cuda", x, gamma, dout)
    _, second = run_cam("cuda", x, gamma, dout)
    for name in first:
        assert torch.equal(first[name], second[name]), name
