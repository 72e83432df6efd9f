"""CAM on the pure-PyTorch backends (eager, chunked) against the float64 reference."""
import pytest
import torch
from helpers import check_cam, rel_err

import danet_ops


@pytest.mark.parametrize("backend", ["eager", "chunked"])
@pytest.mark.parametrize("batch,channels,n", [(1, 16, 221), (3, 64, 221), (1, 512, 221), (1, 16, 9409)])
def test_cam_matches_float64_reference(backend, batch, channels, n):
    check_cam(backend, (batch, channels, n), gamma=0.75, magnitude=(1.0 / n) ** 0.5 * 3)


def test_cam_unscaled_inputs_one_hot_softmax():
    check_cam("chunked", (2, 24, 37), gamma=0.75, magnitude=1.0)


def test_cam_without_gamma_has_no_residual():
    run = check_cam("chunked", (2, 8, 30), gamma=None, magnitude=0.2)
    assert rel_err(run.out, run.inputs["x"]) > 0.1  # the residual was not added


def test_cam_half_gram_overflow_stays_right():
    """Σx² over 221 positions at |x|~20 passes 65504: eager fp16 gives inf/NaN, chunked not."""
    run = check_cam("chunked", (1, 16, 221), dtype=torch.float16, gamma=0.75, magnitude=20.0)
    eager = danet_ops.channel_attention(run.inputs["x"], gamma=run.inputs["gamma"], backend="eager")
    assert not torch.isfinite(eager).all(), "premise: eager fp16 overflows here"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cam_chunked_half_dtypes(dtype):
    check_cam("chunked", (2, 32, 221), dtype=dtype, gamma=0.75, magnitude=0.2)


def test_cam_gradcheck_float64():
    x = (torch.randn(2, 6, 9, dtype=torch.float64) * 0.5).requires_grad_()
    gamma = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, g: danet_ops.channel_attention(x, gamma=g, backend="chunked"), (x, gamma)
    )


def test_cam_expanded_grad_and_noncontiguous_input():
    base = torch.randn(2, 13, 11, 8) * 0.3
    x_view = base.transpose(2, 3).requires_grad_()
    x_dense = base.transpose(2, 3).contiguous().requires_grad_()
    gamma = torch.tensor(0.5)
    out_view = danet_ops.channel_attention(x_view, gamma=gamma, backend="chunked")
    out_view.sum().backward()
    out_dense = danet_ops.channel_attention(x_dense, gamma=gamma, backend="chunked")
    out_dense.backward(torch.ones_like(out_dense))
    assert torch.equal(out_view, out_dense)
    assert torch.allclose(x_view.grad, x_dense.grad, rtol=1e-6, atol=1e-6)


def test_cam_nan_propagates():
    x = torch.randn(1, 8, 20)
    x[0, 2, 3] = float("nan")
    assert torch.isnan(danet_ops.channel_attention(x, gamma=torch.tensor(0.5), backend="chunked")).any()
