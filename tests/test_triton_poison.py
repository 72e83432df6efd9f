"""Every output element of the Triton kernels is written: buffers come back NaN-poisoned.

Runs through the interpreter in CI (and on a GPU where there is one): torch.empty,
torch.empty_like and Tensor.new_empty fill floating-point buffers with NaN, so an element
a kernel forgets to store stays NaN and fails the comparison with the float64 reference.
"""
import pytest
import torch
from helpers import pam_inputs, rel_err

import danet_ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Yields the list of poisoned shapes, so a test can check the poison reached the op."""
    shapes = []

    def poisoned(make):
        def wrapper(*args, **kwargs):
            t = make(*args, **kwargs)
            if t.is_floating_point() and t.numel():
                t.fill_(float("nan"))
                shapes.append(tuple(t.shape))
            return t
        return wrapper

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))
    return shapes


@pytest.mark.parametrize("with_epilogue", [True, False])
def test_pam_writes_every_output(poisoned_allocations, with_epilogue):
    q, k, v, gamma, residual = pam_inputs(2, 12, 96, 221, device=DEVICE)
    if not with_epilogue:
        gamma = residual = None
    leaves = [t for t in (q, k, v, gamma, residual) if t is not None]
    out = danet_ops.position_attention(q, k, v, gamma=gamma, residual=residual, backend="triton")
    dout = torch.randn(out.shape, device=DEVICE)
    grads = torch.autograd.grad(out, leaves, dout)
    inputs64 = [
        t.detach().double().requires_grad_() if t is not None else None for t in (q, k, v, gamma, residual)
    ]
    ref = danet_ops.position_attention_reference(*inputs64)
    ref_grads = torch.autograd.grad(ref, [t for t in inputs64 if t is not None], dout.double())
    assert (2, 96, 221) in poisoned_allocations and (2, 221) in poisoned_allocations  # out, lse
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-5
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and rel_err(g, rg) < 1e-4


@pytest.mark.parametrize("with_gamma", [True, False])
def test_cam_writes_every_output(poisoned_allocations, with_gamma):
    x = (torch.randn(2, 40, 221, device=DEVICE) * 0.2).requires_grad_()
    gamma = torch.tensor(0.7, device=DEVICE, requires_grad=True) if with_gamma else None
    leaves = [t for t in (x, gamma) if t is not None]
    out = danet_ops.channel_attention(x, gamma=gamma, backend="triton")
    dout = torch.randn(out.shape, device=DEVICE)
    grads = torch.autograd.grad(out, leaves, dout)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = (
        danet_ops.channel_attention_reference(*leaves64)
        if with_gamma
        else danet_ops.channel_attention_reference(leaves64[0])
    )
    ref_grads = torch.autograd.grad(ref, leaves64, dout.double())
    assert (2, 40, 221) in poisoned_allocations  # out / dx
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-5
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and rel_err(g, rg) < 1e-4
