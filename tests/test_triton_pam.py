"""The Triton PAM kernels (``backend="triton"``) against the float64 eager reference.

Without a GPU these run under Triton's interpreter (set up by conftest), on CPU tensors:
small shapes only (the interpreter costs milliseconds per program and key block). The
interpreter's fixed config uses 64-wide tiles, so N = 221 spans four ragged query/key
blocks and Cv = 96 or 160 spans two or three v-channel blocks. bf16 ``tl.dot`` is wrong in
the interpreter: bf16 is covered by tests/test_triton_pam_gpu.py.
"""
from __future__ import annotations

import pytest
import torch
from helpers import PAM_INPUTS, check_pam, pam_inputs, rel_err, run_pam, tolerance

import danet_ops
from danet_ops.triton import unavailable_reason

pytestmark = pytest.mark.skipif(
    unavailable_reason(torch.device("cuda" if torch.cuda.is_available() else "cpu")) is not None,
    reason="Triton cannot run here (neither CUDA nor TRITON_INTERPRET=1)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# (batch, Cqk, Cv, N, (H, W) or None): ragged N, Cqk not a power of two, Cv over several v tiles.
SHAPES = [
    pytest.param(2, 12, 96, 221, (13, 17), id="b2-cqk12-cv96-13x17"),
    pytest.param(1, 8, 160, 37, None, id="b1-cqk8-cv160-n37"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("epilogue", [True, False], ids=["gamma+residual", "plain"])
@pytest.mark.parametrize("batch,cqk,cv,n,hw", SHAPES)
def test_matches_reference(batch, cqk, cv, n, hw, epilogue, dtype):
    run = check_pam("triton", batch, cqk, cv, n, dtype=dtype, device=DEVICE, gamma=epilogue,
                    residual=epilogue, hw=hw)
    assert [run.grads[name].dtype for name in ("dq", "dk", "dv")] == [dtype] * 3
    if epilogue:
        assert run.grads["dgamma"].shape == () and run.grads["dgamma"].dtype == run.inputs["gamma"].dtype


@pytest.mark.parametrize("which", ["gamma", "residual"])
def test_partial_epilogue(which):
    check_pam("triton", 2, 16, 40, 50, device=DEVICE, gamma=which == "gamma", residual=which == "residual")


def test_scale():
    check_pam("triton", 1, 16, 32, 70, device=DEVICE, scale=0.125)


def test_large_logits_fp16():
    """Unscaled logits of magnitude ~1e3: energies and statistics stay fp32, nothing overflows."""
    run = check_pam("triton", 1, 16, 32, 100, dtype=torch.float16, device=DEVICE, magnitude=8.0,
                    regime="large-logits")
    logits = torch.einsum("bci,bcj->bij", run.inputs["q"].double(), run.inputs["k"].double())
    assert logits.abs().max() > 500


def test_sum_backward_matches_explicit_ones():
    """``out.sum().backward()`` hands the op an expanded, stride-0 gradient."""
    q, k, v, gamma, residual = pam_inputs(2, 8, 24, 45, device=DEVICE)
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="triton")
    grads_sum = torch.autograd.grad(out.sum(), (q, k, v, gamma, residual))
    _, grads_ones = run_pam("triton", dict(zip(PAM_INPUTS, (q, k, v, gamma, residual))), torch.ones_like(out))
    for name, a, b in zip(PAM_INPUTS, grads_sum, grads_ones.values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_backward_reads_dout_strides():
    """The launch code itself takes a stride-0 dout and non-contiguous inputs, no copies."""
    from danet_ops.triton import pam

    q, k, v, gamma, _ = pam_inputs(2, 8, 24, 45, device=DEVICE)
    q, k, v, gamma = (t.detach() for t in (q, k, v, gamma))
    _, lse, o = pam.pam_forward(q, k, v, gamma, None, 1.0, True)
    ones = torch.ones(1, 1, 1, device=DEVICE).expand(2, 24, 45)
    assert ones.stride() == (0, 0, 0)
    expanded = pam.pam_backward(ones, q, k, v, gamma, o, lse, 1.0)
    dense = pam.pam_backward(ones.contiguous(), q, k, v, gamma, o, lse, 1.0)
    for name, a, b in zip(PAM_INPUTS, expanded, dense):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def _transposed_copy(t):
    """Same values as t, but stored [B, N, C] and viewed back as [B, C, N] (non-contiguous)."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2)


def test_non_contiguous_inputs():
    from danet_ops.triton import pam

    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(2, 12, 40, 60, device=DEVICE))
    # A channel slice of a wider tensor and transposed storage.
    wide = torch.randn(2, 20, 60, device=DEVICE)
    wide[:, 3:15] = q
    q_view = wide[:, 3:15]
    k_view, v_view, res_view = _transposed_copy(k), _transposed_copy(v), _transposed_copy(residual)
    assert not any(t.is_contiguous() for t in (q_view, k_view, v_view, res_view))
    dout = torch.randn(2, 40, 60, device=DEVICE)

    out, lse, o = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    out_v, lse_v, o_v = pam.pam_forward(q_view, k_view, v_view, gamma, res_view, 1.0, True)
    for a, b in ((out, out_v), (lse, lse_v), (o, o_v)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    grads = pam.pam_backward(dout, q, k, v, gamma, o, lse, 1.0)
    grads_v = pam.pam_backward(_transposed_copy(dout), q_view, k_view, v_view, gamma,
                               _transposed_copy(o), lse, 1.0)
    for a, b in zip(grads, grads_v):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)

    # And through the public API, gradients flowing back into the views' bases.
    leaves = [t.clone().requires_grad_() for t in (wide, k, v, residual)]
    wide_l, k_l, v_l, res_l = leaves
    out_api = danet_ops.position_attention(
        wide_l[:, 3:15], k_l.transpose(1, 2).contiguous().transpose(1, 2), v_l, gamma=gamma,
        residual=res_l, backend="triton",
    )
    torch.testing.assert_close(out_api, out, rtol=1e-6, atol=1e-6)
    dwide = torch.autograd.grad(out_api, wide_l, dout)[0]
    torch.testing.assert_close(dwide[:, 3:15], grads[0], rtol=1e-6, atol=1e-6)
    assert (dwide[:, :3] == 0).all() and (dwide[:, 15:] == 0).all()


def test_deterministic_bitwise_and_correct():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        run = check_pam("triton", 2, 12, 96, 130, device=DEVICE, scale=0.5)  # against float64
        out2, grads2 = run_pam("triton", run.inputs, run.dout, scale=0.5)
    finally:
        torch.use_deterministic_algorithms(was)
    _, default_grads = run_pam("triton", run.inputs, run.dout, scale=0.5)
    assert torch.equal(run.out, out2)
    for name in run.grads:
        assert torch.equal(run.grads[name], grads2[name]), name
    # The atomic (default) and ordered dQ paths agree to rounding.
    for name in run.grads:
        assert rel_err(run.grads[name], default_grads[name]) <= 1e-6, name


def test_agrees_with_chunked():
    check_pam("triton", 2, 16, 64, 90, device=DEVICE, reference="chunked")


def test_forward_contract_matches_chunked():
    """lse (float32, natural log) and the saved raw output, as the backend contract says."""
    from danet_ops import chunked
    from danet_ops.triton import pam

    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(2, 16, 48, 77, device=DEVICE))
    out, lse, o = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    out_c, lse_c, o_c = chunked.pam_forward(q, k, v, gamma, residual, 1.0, True)
    assert lse.dtype == torch.float32 and lse.shape == (2, 77)
    assert rel_err(lse, lse_c) <= 1e-6 and rel_err(o, o_c) <= 1e-6 and rel_err(out, out_c) <= 1e-6
    # No save_o, or no epilogue: no o.
    assert pam.pam_forward(q, k, v, gamma, residual, 1.0, False)[2].numel() == 0
    out_plain, _, o_plain = pam.pam_forward(q, k, v, None, None, 1.0, True)
    assert o_plain.numel() == 0 and rel_err(out_plain, o_c) <= 1e-6


def test_no_grad_forward():
    q, k, v, gamma, residual = pam_inputs(1, 8, 32, 40, device=DEVICE)
    with torch.no_grad():
        out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="triton")
        ref = danet_ops.position_attention_reference(
            *(t.double() for t in (q, k, v, gamma, residual))
        )
    assert rel_err(out, ref) <= tolerance(torch.float32)[0]


def test_nan_in_value_propagates():
    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(1, 8, 24, 40, device=DEVICE))
    v[0, 5, 17] = float("nan")
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="triton")
    assert torch.isnan(out[0, 5]).all()
    assert torch.isfinite(out[0, :5]).all() and torch.isfinite(out[0, 6:]).all()


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "ordered-dq"])
@pytest.mark.parametrize("batch,cqk,cv,n,hw", SHAPES)
def test_fused_backward_matches_reference(batch, cqk, cv, n, hw, deterministic, monkeypatch):
    """The fused backward variant (DANET_OPS_TRITON_PAM_BWD=fused, fp16/bf16; bf16 dots are
    wrong in the interpreter, so fp16 here): every gradient against float64, both dQ paths;
    Cv = 96 and 160 are not powers of two (masked v channels)."""
    from danet_ops.triton import pam

    dtype = torch.float16
    monkeypatch.setenv(pam.BWD_VARIANT_ENV, "fused")
    assert pam.backward_variant(cv, dtype) == "fused"
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        check_pam("triton", batch, cqk, cv, n, dtype=dtype, device=DEVICE, scale=0.75, hw=hw)
    finally:
        torch.use_deterministic_algorithms(was)


def test_backward_variant_choice(monkeypatch):
    from danet_ops.triton import pam

    monkeypatch.delenv(pam.BWD_VARIANT_ENV, raising=False)
    assert pam.backward_variant(512) == "split"
    monkeypatch.setenv(pam.BWD_VARIANT_ENV, "fused")
    assert pam.backward_variant(512) == "fused"
    assert pam.backward_variant(pam.FUSED_MAX_CV + 1) == "split"  # too wide for one accumulator
    assert pam.backward_variant(512, torch.float32) == "split"  # fp32 spills kilobytes there
    monkeypatch.setenv(pam.BWD_VARIANT_ENV, "bogus")
    with pytest.raises(ValueError, match="DANET_OPS_TRITON_PAM_BWD"):
        pam.backward_variant(512)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch,cqk,cv,n,hw", SHAPES)
def test_two_pass_forward_matches_reference(batch, cqk, cv, n, hw, dtype, monkeypatch):
    """The two-pass forward (DANET_OPS_TRITON_PAM_FWD=two_pass): output against float64, and
    every gradient, which the backward computes from pass 1's lse."""
    from danet_ops.triton import pam

    monkeypatch.setenv(pam.FWD_VARIANT_ENV, "two_pass")
    assert pam.forward_variant() == "two_pass"
    check_pam("triton", batch, cqk, cv, n, dtype=dtype, device=DEVICE, scale=0.75, hw=hw)


def test_two_pass_forward_contract_matches_one_pass(monkeypatch):
    """Same lse, o and out as the one-pass kernel (both fp32-accurate), o saved or not."""
    from danet_ops.triton import pam

    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(2, 16, 48, 77, device=DEVICE))
    monkeypatch.setenv(pam.FWD_VARIANT_ENV, "online")
    out_1, lse_1, o_1 = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    monkeypatch.setenv(pam.FWD_VARIANT_ENV, "two_pass")
    out_2, lse_2, o_2 = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    assert rel_err(lse_2, lse_1) <= 1e-6 and rel_err(o_2, o_1) <= 1e-6 and rel_err(out_2, out_1) <= 1e-6
    out_plain, _, o_plain = pam.pam_forward(q, k, v, None, None, 1.0, True)
    assert o_plain.numel() == 0 and rel_err(out_plain, o_1) <= 1e-6


def test_two_pass_forward_as_accurate_as_one_pass_at_large_logits(monkeypatch):
    """At logits of ~100 (|lse| ~ 100) the two-pass output stays as close to float64 as the
    one-pass one. Pass 2 once used a single fp32 lse, whose rounding (ε·|lse|) scaled whole
    rows of P: 7-20x the one-pass error, found by the property test with random variants."""
    from danet_ops.triton import pam

    torch.manual_seed(0)
    q, k, v, _, _ = (t.detach() for t in pam_inputs(2, 16, 24, 150, device=DEVICE, magnitude=2.5))
    ref = danet_ops.position_attention_reference(q.double(), k.double(), v.double())
    assert 60 < torch.einsum("bci,bcj->bij", q.double(), k.double()).amax(-1).abs().max() < 400
    errors = {}
    for variant in ("online", "two_pass"):
        monkeypatch.setenv(pam.FWD_VARIANT_ENV, variant)
        out, lse, _ = pam.pam_forward(q, k, v, None, None, 1.0, False)
        errors[variant] = rel_err(out, ref)
    assert errors["two_pass"] <= max(2 * errors["online"], 3e-7), errors


@pytest.mark.parametrize("env,read,default,other", [
    ("FWD_VARIANT_ENV", "forward_variant", "online", "two_pass"),
    ("LOADS_VARIANT_ENV", "load_variant", "pointer", "tma"),
])
def test_forward_variant_choice(env, read, default, other, monkeypatch):
    """The forward's switches: a default when unset, any case and spacing, and a
    ValueError naming the variable for anything else."""
    from danet_ops.triton import pam

    name, read = getattr(pam, env), getattr(pam, read)
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, f" {other.title()} ")
    assert read() == other
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(ValueError, match=name):
        read()


@pytest.mark.parametrize("variant", ["online", "two_pass"])
def test_fp32_at_danet_logit_magnitudes(variant, monkeypatch):
    """fp32 under the default "highest" precision (3xTF32 products) with logits of about ±50,
    as DANet's unscaled energies are: output and gradients within 1e-5 of float64."""
    from danet_ops.triton import pam

    monkeypatch.setenv(pam.FWD_VARIANT_ENV, variant)
    run = check_pam("triton", 1, 16, 96, 221, device=DEVICE, magnitude=2.0, hw=(13, 17))
    logits = torch.einsum("bci,bcj->bij", run.inputs["q"].double(), run.inputs["k"].double())
    assert 40 < logits.abs().max() < 200


# --- TMA loads (DANET_OPS_TRITON_LOADS=tma) --------------------------------------------------

# N = 200 and 72: rows of 800/400 and 288/144 bytes (fp32/fp16), 16-byte aligned, so TMA can
# read them; N = 221 (13x17) cannot, and runs the pointer kernels.
TMA_SHAPES = [
    pytest.param(2, 12, 96, 200, None, id="b2-cqk12-cv96-n200"),
    pytest.param(1, 8, 160, 72, (8, 9), id="b1-cqk8-cv160-8x9"),
]
_FORWARD_KERNELS = ["_pam_fwd_kernel", "_pam_lse_kernel", "_pam_fwd_normalised_kernel"]


def _launched_forward_kernels(monkeypatch) -> list:
    """Names of the forward kernels launched from now on ("..._tma_kernel" for TMA loads)."""
    from danet_ops.triton import pam

    launched = []
    for name in _FORWARD_KERNELS + [n.replace("_kernel", "_tma_kernel") for n in _FORWARD_KERNELS]:
        tuner = getattr(pam, name)

        def run(*args, _run=tuner.run, _name=name, **kwargs):
            launched.append(_name)
            return _run(*args, **kwargs)

        monkeypatch.setattr(tuner, "run", run)
    return launched


@pytest.mark.parametrize("fwd", ["online", "two_pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch,cqk,cv,n,hw", TMA_SHAPES)
def test_tma_loads_match_reference(batch, cqk, cv, n, hw, dtype, fwd, monkeypatch):
    """Both forwards reading q, k, v through tensor descriptors: output and every gradient
    against float64. Cqk = 12 and 8 pad to 16 channels and N to whole tiles: the descriptors'
    zero fill must stand in for the pointer kernels' masks."""
    from danet_ops.triton import pam

    monkeypatch.setenv(pam.LOADS_VARIANT_ENV, "tma")
    monkeypatch.setenv(pam.FWD_VARIANT_ENV, fwd)
    launched = _launched_forward_kernels(monkeypatch)
    check_pam("triton", batch, cqk, cv, n, dtype=dtype, device=DEVICE, scale=0.75, hw=hw)
    two_pass = ["_pam_lse_tma_kernel", "_pam_fwd_normalised_tma_kernel"]
    assert launched == (["_pam_fwd_tma_kernel"] if fwd == "online" else two_pass)


def test_tma_loads_of_views_match_pointer_loads(monkeypatch):
    """A channel slice of a wider tensor (its own batch stride and start, both 16-byte
    aligned): the descriptors must not read the neighbouring channels into the padding."""
    from danet_ops.triton import pam

    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(2, 12, 40, 60, device=DEVICE))
    wide = torch.randn(2, 20, 60, device=DEVICE) * 30  # large neighbours: any leak shows
    wide[:, 3:15] = q
    q_view = wide[:, 3:15]
    assert pam.tma_fits(q_view, k, v) and not q_view.is_contiguous()
    monkeypatch.setenv(pam.LOADS_VARIANT_ENV, "pointer")
    expected = pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    monkeypatch.setenv(pam.LOADS_VARIANT_ENV, "tma")
    launched = _launched_forward_kernels(monkeypatch)
    got = pam.pam_forward(q_view, k, v, gamma, residual, 1.0, True)
    assert launched == ["_pam_fwd_tma_kernel"]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_tma_loads_fall_back_to_pointers(monkeypatch):
    """Where TMA cannot read the tensors (N not the unit-stride dimension, a start off 16
    bytes) or with exact FMA dots, the pointer kernels run. An N that is not a multiple of
    16 is no reason: the forward pads it (``pad_rows``), and TMA reads the copies."""
    from danet_ops.triton import pam
    from danet_ops.triton.padding import pad_rows

    monkeypatch.setenv(pam.LOADS_VARIANT_ENV, "tma")
    launched = _launched_forward_kernels(monkeypatch)
    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(1, 8, 40, 221, device=DEVICE))
    assert not pam.tma_fits(q, k, v)  # 221 fp32 values: 884-byte rows
    assert pam.tma_fits(*pad_rows(q, k, v)[:3])
    pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    q, k, v, gamma, residual = (t.detach() for t in pam_inputs(1, 8, 40, 64, device=DEVICE))
    assert pam.tma_fits(q, k, v)
    assert not pam.tma_fits(q, k, _transposed_copy(v))
    pam.pam_forward(q, k, _transposed_copy(v), gamma, residual, 1.0, True)
    assert not pam.tma_fits(q[..., 1:], k[..., 1:], v[..., 1:])  # a start off 16 bytes
    monkeypatch.setenv("DANET_OPS_TRITON_FP32", "ieee")
    pam.pam_forward(q, k, v, gamma, residual, 1.0, True)
    assert launched == ["_pam_fwd_tma_kernel"] + ["_pam_fwd_kernel"] * 2


def test_pad_rows_to_multiples_of_16():
    """``pad_rows``: N = 221 becomes 224 with the inputs in front and zeros behind, in
    fresh contiguous buffers (so also for a transposed input); N = 64 is left alone."""
    from danet_ops.triton.padding import pad_rows

    q, k, v, _, _ = (t.detach() for t in pam_inputs(2, 8, 40, 221, device=DEVICE))
    v = _transposed_copy(v)
    *padded, n_load = pad_rows(q, k, v)
    assert n_load == 224
    for t, p in zip((q, k, v), padded):
        assert p.shape == (*t.shape[:2], 224) and p.is_contiguous()
        assert torch.equal(p[..., :221], t) and (p[..., 221:] == 0).all()
    q, k, v, _, _ = (t.detach() for t in pam_inputs(2, 8, 40, 64, device=DEVICE))
    *same, n_load = pad_rows(q, k, v)
    assert n_load == 64 and all(a is b for a, b in zip(same, (q, k, v)))
