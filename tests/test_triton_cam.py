"""The Triton CAM kernels (danet_ops/triton/cam.py) against the float64 reference.

Runs through Triton's interpreter on CPU tensors where no GPU exists (tests/conftest.py),
so shapes stay small. bf16 is tested on a GPU only (tests/test_triton_cam_gpu.py): the
interpreter's bf16 dot is wrong.
"""
import pytest
import torch
from helpers import cam_reference, check_cam, rel_err, run_cam, tolerance

import danet_ops
from danet_ops import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.skipif(
    danet_ops.backends.unavailable_reason("triton", torch.device(DEVICE)) is not None,
    reason="the triton backend cannot run here",
)


# C = 8 and 24 fit one 32-wide tile (24 masked); C = 40 and 64 span two, so the Gram's
# symmetric mirror and masked edges both run. N = 37 and 13x17 are ragged. Several of
# these shapes split the Gram's reduction over N (see test_split_k_is_exercised).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("with_gamma", [True, False], ids=["gamma", "no_gamma"])
@pytest.mark.parametrize("shape", [(1, 8, 37), (2, 24, 13, 17), (1, 64, 13, 17), (2, 40, 37)], ids=str)
def test_matches_float64_reference(shape, dtype, with_gamma):
    run = check_cam(
        "triton", shape, dtype=dtype, device=DEVICE, gamma=0.7 if with_gamma else None, magnitude=0.2
    )
    for name, g in run.grads.items():
        assert g.dtype == (dtype if name == "dx" else run.inputs["gamma"].dtype), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_unscaled_inputs(dtype):
    """Unit-variance inputs: Gram entries in the hundreds, a near one-hot softmax."""
    check_cam("triton", (2, 24, 13, 17), dtype=dtype, device=DEVICE, magnitude=1.0)


def test_tf32_allowed():
    """With matmul precision "high", A·X and dx take the TF32 path (plain fp32 here in the
    interpreter); the Gram stays true fp32 either way."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        check_cam(
            "triton",
            (2, 24, 37),
            device=DEVICE,
            magnitude=0.3,
            regime="default" if DEVICE == "cpu" else "cam-tf32",
        )
    finally:
        torch.set_float32_matmul_precision(previous)


def test_fp16_gram_beyond_fp16_range():
    """Σx² > 65504: eager fp16 overflows to inf/NaN; the kernel keeps the Gram in fp32."""
    run = check_cam("triton", (1, 16, 13, 17), dtype=torch.float16, device=DEVICE, magnitude=20.0)
    x, gamma = run.inputs["x"], run.inputs["gamma"]
    assert (x.detach().float().flatten(2) ** 2).sum(-1).max() > 65504
    with torch.no_grad():
        eager = danet_ops.channel_attention(x, gamma=gamma, backend="eager")
    assert not torch.isfinite(eager).all()


def test_expanded_grad_output():
    """out.sum().backward() hands over a stride-0 gradient: same as an explicit ones dout."""
    x = (torch.randn(2, 24, 37, device=DEVICE) * 0.3).requires_grad_()
    gamma = torch.tensor(0.7, device=DEVICE, requires_grad=True)
    danet_ops.channel_attention(x, gamma=gamma, backend="triton").sum().backward()
    _, grads = run_cam("triton", x, gamma, torch.ones(x.shape, device=DEVICE))
    assert torch.equal(x.grad, grads["dx"]) and torch.equal(gamma.grad, grads["dgamma"])


def test_non_contiguous_input():
    """A transposed view and a channel slice give what their contiguous copies give."""
    base = torch.randn(2, 37, 48, device=DEVICE) * 0.3
    for view in (base.transpose(1, 2), base.transpose(1, 2)[:, ::2]):
        assert not view.is_contiguous()
        x = view.detach().requires_grad_()  # detach keeps the strides
        assert not x.is_contiguous()
        x_c = view.contiguous().requires_grad_()
        gamma = torch.tensor(0.7, device=DEVICE, requires_grad=True)
        dout = torch.randn(view.shape, device=DEVICE)
        out, grads = run_cam("triton", x, gamma, dout)
        out_c, grads_c = run_cam("triton", x_c, gamma, dout)
        assert torch.equal(out, out_c)
        assert all(torch.equal(grads[name], grads_c[name]) for name in grads)
        ref, ref_grads = cam_reference(x, gamma, dout)
        tol_out, tol_grad = tolerance(torch.float32)
        assert rel_err(out, ref) <= tol_out
        assert all(rel_err(grads[name], ref_grads[name]) <= tol_grad for name in grads)


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter split sizes; the GPU file checks its own")
def test_split_k_is_exercised():
    """The shapes above include ones whose Gram reduction over N is split."""
    from danet_ops.triton import cam

    device = torch.device(DEVICE)
    assert cam._num_splits(8, 221, 1, True, device)[0] > 1
    assert cam._num_splits(24, 221, 2, False, device)[0] > 1


def test_deterministic():
    """Split-K partials are summed in a fixed order: bitwise equal run to run."""
    x = torch.randn(1, 8, 13, 17, device=DEVICE) * 0.3
    gamma = torch.tensor(0.7, device=DEVICE)
    dout = torch.randn(x.shape, device=DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            first_out, first_grads = run_cam("triton", x, gamma, dout)
            out, grads = run_cam("triton", x, gamma, dout)
            assert torch.equal(out, first_out)
            assert all(torch.equal(grads[name], first_grads[name]) for name in grads)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_agrees_with_chunked(dtype):
    check_cam("triton", (2, 24, 13, 17), dtype=dtype, device=DEVICE, magnitude=0.3, reference="chunked")


def test_attention_matrix_saved_for_backward():
    """The op's second output is the fp32 softmax(-X Xᵀ), rows summing to one."""
    x = torch.randn(2, 24, 37, device=DEVICE) * 0.3
    _, attn = ops.cam_forward(x, None, "triton")
    x64 = x.double()
    ref = torch.softmax(-torch.bmm(x64, x64.transpose(1, 2)), dim=-1)
    assert attn.dtype == torch.float32 and attn.shape == (2, 24, 24)
    assert rel_err(attn, ref) <= tolerance(torch.float32)[0]


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter's numpy min
def test_nan_propagates():
    """A NaN in one batch item's input shows up in that item's output, not the other's."""
    x = torch.randn(2, 8, 37, device=DEVICE) * 0.3
    x[0, 3, 5] = float("nan")
    out = danet_ops.channel_attention(x, gamma=torch.tensor(0.5, device=DEVICE), backend="triton")
    assert torch.isnan(out[0]).any()
    assert torch.isfinite(out[1]).all()
