"""PAM on the pure-PyTorch backends (eager, chunked) against the float64 reference."""
import pytest
import torch
from helpers import (
    PAM_INPUTS,
    check_pam,
    cond_err,
    pam_gamma_terms,
    pam_inputs,
    pam_reference,
    pam_yardsticks,
    rel_err,
    run_pam,
)

import danet_ops
from danet_ops import chunked

SHAPES = [  # (batch, in_channels, H, W): Cqk = C // 8
    (1, 16, 13, 17),
    (3, 64, 13, 17),
    (1, 512, 13, 17),
    (1, 16, 97, 97),
]


@pytest.mark.parametrize("backend", ["eager", "chunked"])
@pytest.mark.parametrize("batch,channels,h,w", SHAPES)
def test_pam_matches_float64_reference(backend, batch, channels, h, w):
    check_pam(backend, batch, max(1, channels // 8), channels, h * w)


def test_pam_chunked_uses_several_blocks(monkeypatch):
    """Force tiny query blocks so the block loop, ragged last block included, is exercised."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * 221 * 5)  # 10 rows per block at B=2
    check_pam("chunked", 2, 8, 24, 221, scale=0.3)


@pytest.mark.parametrize("with_gamma,with_residual", [(False, False), (True, False), (False, True)])
def test_pam_optional_epilogue(with_gamma, with_residual):
    check_pam("chunked", 2, 8, 32, 37, gamma=with_gamma, residual=with_residual)


FP16_U = 2.0**-11  # fp16 unit roundoff


def test_pam_half_large_magnitude_stays_finite():
    """Logits beyond fp16 range (~±1e5): eager fp16 overflows the energies; chunked keeps them
    in fp32 and is accurate to a few fp16 roundings.

    Every error is max|err| over a float64 yardstick, against 4u (u = 2^-11): one rounding of
    the fp16 result, one of the saved fp16 attention output (it enters dq, dk and dgamma),
    and ~2u for the fp32 energies: past the fp16 limit (|E| > 6.5e4) their absolute error is
    ~2^-24·|E| ≈ 4e-3, which moves a softmax weight by P(1−P)·4e-3 ≤ 1e-3 in a near-tie row.
    Measured worst over 200 seeds, torch 2.11 and 2.13: 1.6u (out), 1.0u (v), 0.2u (q).

    Not check_pam: in one-hot softmax rows dq and dk cancel to ~0 (down to 1e-40 here), so
    their relative error measures nothing; the yardsticks here are pam_yardsticks'.
    """
    inputs = dict(zip(PAM_INPUTS, pam_inputs(1, 8, 32, 221, dtype=torch.float16, magnitude=100.0)))
    eager = danet_ops.position_attention(*(inputs[name] for name in ("q", "k", "v")), gamma=inputs["gamma"],
                                         residual=inputs["residual"], backend="eager")
    assert not torch.isfinite(eager).all(), "premise: eager fp16 overflows at this magnitude"
    dout = torch.randn_like(eager)
    out, grads = run_pam("chunked", inputs, dout)
    ref, ref_grads = pam_reference(inputs, dout)
    assert torch.isfinite(out).all()
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name

    def max_err(a, b, yardstick):
        return (a.detach().double() - b.detach().double()).abs().max().item() / yardstick

    # out, dv, dresidual: their own largest element is the yardstick.
    for name, a, b in (("out", out, ref), ("dv", grads["dv"], ref_grads["dv"]),
                       ("dresidual", grads["dresidual"], ref_grads["dresidual"])):
        assert max_err(a, b, b.detach().abs().max().item()) < 4 * FP16_U, name
    # dq, dk: the magnitude of their terms (they cancel to ~0 in one-hot softmax rows).
    _, dq_stick, dk_stick, _, _ = pam_yardsticks(*(inputs[name] for name in PAM_INPUTS), dout)
    for name, stick in (("dq", dq_stick), ("dk", dk_stick)):
        assert max_err(grads[name], ref_grads[name], stick.max().item()) < 4 * FP16_U, name
    # dgamma = Σ dout∘o, a cancelling sum: Σ|terms| is the yardstick.
    abs_sum = pam_gamma_terms(inputs, dout).abs().sum()
    assert cond_err(grads["dgamma"], ref_grads["dgamma"], abs_sum, floor=1.0) < 4 * FP16_U, "dgamma"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pam_chunked_half_dtypes(dtype):
    run = check_pam("chunked", 2, 8, 64, 221, dtype=dtype)
    for name, g in run.grads.items():
        assert g.dtype == (torch.float32 if g.dim() == 0 else dtype), name


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
        return danet_ops.position_attention(
            q, k, v, gamma=gamma, residual=residual, scale=0.7, backend="chunked"
        )

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
