"""Under torch.autocast, danet_ops' PAM/CAM and models' DAHead behave as mmseg's modules do.

mmseg's modules are transcribed below from mmsegmentation 1.2.2
(``mmseg/models/utils/self_attention_block.py`` and ``mmseg/models/decode_heads/da_head.py``,
with mmcv's ``Scale``), line for line in the operations that decide dtypes: the 1x1
projections and matmuls run in the autocast dtype, ``F.softmax`` keeps its input's dtype on
the CPU (and autocasts to fp32 on CUDA), and ``self.gamma(out) + x`` adds x in its own
dtype, so an fp32 x gives an fp32 result. Each check runs both under the same autocast and
compares dtypes, then compares danet_ops' values with the mmseg math in float64.

CPU: bf16 autocast on the eager and chunked backends, fp16 on those and on Triton (through
the interpreter, whose bf16 dot is wrong). GPU (``gpu`` marker): fp16 and bf16 on every
backend.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import grad_errs, rel_err
from torch import nn

import danet_ops
import models

TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


# --- mmseg's modules, transcribed ------------------------------------------------------------


class Scale(nn.Module):  # mmcv.cnn.Scale
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


class MmsegPAM(nn.Module):
    """mmseg's PAM: ``_SelfAttentionBlock(x, x)`` with plain 1x1 convs, no out projection,
    no matmul norm; then ``self.gamma(out) + x``."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.key_project = nn.Conv2d(in_channels, channels, 1)
        self.query_project = nn.Conv2d(in_channels, channels, 1)
        self.value_project = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0)

    def attention(self, query_feats, key_feats):  # SelfAttentionBlock.forward
        batch_size = query_feats.size(0)
        query = self.query_project(query_feats)
        query = query.reshape(*query.shape[:2], -1)
        query = query.permute(0, 2, 1).contiguous()
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        key = key.reshape(*key.shape[:2], -1)
        value = value.reshape(*value.shape[:2], -1)
        value = value.permute(0, 2, 1).contiguous()
        sim_map = torch.matmul(query, key)
        sim_map = F.softmax(sim_map, dim=-1)
        context = torch.matmul(sim_map, value)
        context = context.permute(0, 2, 1).contiguous()
        context = context.reshape(batch_size, -1, *query_feats.shape[2:])
        return context

    def forward(self, x):
        out = self.attention(x, x)
        out = self.gamma(out) + x
        return out


class MmsegCAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = Scale(0)

    def forward(self, x):
        batch_size, channels, height, width = x.size()
        proj_query = x.view(batch_size, channels, -1)
        proj_key = x.view(batch_size, channels, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = F.softmax(energy_new, dim=-1)
        proj_value = x.view(batch_size, channels, -1)
        out = torch.bmm(attention, proj_value)
        out = out.view(batch_size, channels, height, width)
        out = self.gamma(out) + x
        return out


# --- what runs where ---------------------------------------------------------------------------


def _cases():
    """(device, autocast dtype, backend) triples; GPU ones carry the gpu marker."""
    cases = []
    for backend in ("eager", "chunked"):
        cases.append(pytest.param("cpu", torch.bfloat16, backend, id=f"cpu-bf16-{backend}"))
        cases.append(pytest.param("cpu", torch.float16, backend, id=f"cpu-fp16-{backend}"))
    if danet_ops.backends.unavailable_reason("triton", torch.device("cpu")) is None:
        cases.append(pytest.param("cpu", torch.float16, "triton", id="cpu-fp16-triton"))
    for backend in ("eager", "chunked", "triton", "cuda"):
        for dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
            cases.append(
                pytest.param("cuda", dtype, backend, id=f"cuda-{name}-{backend}", marks=pytest.mark.gpu)
            )
    return cases


def _skip_unavailable(device, backend):
    reason = danet_ops.backends.unavailable_reason(backend, torch.device(device))
    if reason is not None:
        pytest.skip(f"{backend} on {device}: {reason}")


def _mmseg_module(kind, device):
    """mmseg's PAM(32, 4) or CAM, random weights, gamma 0.5."""
    mmseg = MmsegPAM(32, 4) if kind == "PAM" else MmsegCAM()
    mmseg.gamma.scale.data.fill_(0.5)
    return mmseg.to(device)


def _input(kind, device, dtype):
    # CAM: inputs scaled so the Gram's softmax is not one-hot (half rounding of a one-hot
    # softmax's logits is a coin toss); PAM: the projections keep logits moderate.
    scale = 0.2 if kind == "CAM" else 1.0
    return (torch.randn(2, 32, 7, 9, device=device) * scale).to(dtype)


@pytest.mark.parametrize("x_dtype", [torch.float32, "autocast"], ids=["x-fp32", "x-half"])
@pytest.mark.parametrize("kind", ["PAM", "CAM"])
@pytest.mark.parametrize("device,amp,backend", _cases())
def test_module_dtypes_and_values_match_mmseg(device, amp, backend, kind, x_dtype):
    _skip_unavailable(device, backend)
    mmseg = _mmseg_module(kind, device)
    ours = (danet_ops.PAM(32, 4, backend=backend) if kind == "PAM" else danet_ops.CAM(backend=backend)).to(
        device
    )
    ours.load_state_dict(mmseg.state_dict(), strict=True)
    x = _input(kind, device, amp if x_dtype == "autocast" else x_dtype).requires_grad_()
    x_mm = x.detach().clone().requires_grad_()

    with torch.autocast(device, dtype=amp):
        out = ours(x)
        out_mm = mmseg(x_mm)
    expected = torch.promote_types(amp, x.dtype)  # gamma(half out) + x
    assert out.dtype == out_mm.dtype == expected, (out.dtype, out_mm.dtype)

    dout = torch.randn(out.shape, device=device).to(out.dtype)
    params = [p for _, p in sorted(ours.named_parameters())]
    params_mm = [p for _, p in sorted(mmseg.named_parameters())]
    grads = torch.autograd.grad(out, [x] + params, dout)
    grads_mm = torch.autograd.grad(out_mm, [x_mm] + params_mm, dout)
    assert [g.dtype for g in grads] == [g.dtype for g in grads_mm]

    # Values: mmseg's math in float64 on the same (rounded) input.
    mm64 = copy.deepcopy(mmseg).double()
    x64 = x.detach().double().requires_grad_()
    ref = mm64(x64)
    ref_grads = torch.autograd.grad(
        ref, [x64] + [p for _, p in sorted(mm64.named_parameters())], dout.double()
    )
    tol = TOL[amp]
    assert rel_err(out, ref) <= tol, rel_err(out, ref)
    assert rel_err(grads[0], ref_grads[0]) <= tol, rel_err(grads[0], ref_grads[0])
    # Parameter gradients relative to the largest one: PAM's key bias has a gradient that is
    # zero in theory (q·b_k is constant along the softmax axis).
    assert max(grad_errs(grads[1:], ref_grads[1:])) <= tol, grad_errs(grads[1:], ref_grads[1:])


def _mmseg_head(head: models.DAHead) -> models.DAHead:
    """A copy of ``head`` with mmseg's own PAM and CAM (transcribed above) in place of
    danet_ops': the rest of models.DAHead is mmseg's structure (tests/test_models_da_head.py)."""
    twin = copy.deepcopy(head)
    twin.pam = MmsegPAM(head.pam.in_channels, head.pam.channels).to(head.pam.gamma.scale.device)
    twin.pam.load_state_dict(head.pam.state_dict(), strict=True)
    twin.cam = MmsegCAM().to(head.cam.gamma.scale.device)
    twin.cam.load_state_dict(head.cam.state_dict(), strict=True)
    return twin


@pytest.mark.parametrize("device,amp,backend", _cases())
def test_da_head_dtypes_and_values_match_mmseg(device, amp, backend):
    _skip_unavailable(device, backend)
    head = models.DAHead(24, 16, 4, num_classes=3, attention_backend=backend)
    with torch.no_grad():
        head.pam.gamma.scale.fill_(0.5)
        head.cam.gamma.scale.fill_(0.75)
        for bn in (m for m in head.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    head = head.to(device).eval()
    mmseg = _mmseg_head(head)
    x = torch.randn(2, 24, 7, 9, device=device)

    with torch.no_grad(), torch.autocast(device, dtype=amp):
        outs = head([x])
        outs_mm = mmseg([x])
    assert [o.dtype for o in outs] == [o.dtype for o in outs_mm]

    with torch.no_grad():
        refs = copy.deepcopy(mmseg).double()([x.double()])
    for name, out, ref in zip(("pam_cam", "pam", "cam"), outs, refs):
        assert rel_err(out, ref) <= TOL[amp], (name, rel_err(out, ref))


# --- the op's own arithmetic is not autocast -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_keeps_fp32_accumulation_under_autocast(dtype):
    """Half inputs, which autocast does not cast: the chunked backend's results are bitwise
    the same under autocast. Regression: autocast stayed on inside the custom ops, so the
    backend's fp32 matmuls (energies, P·V, the CAM Gram) ran in half under autocast."""
    q, k = (torch.randn(2, 8, 50) * 2).to(dtype), (torch.randn(2, 8, 50) * 2).to(dtype)
    v, res = torch.randn(2, 16, 50).to(dtype), torch.randn(2, 16, 50).to(dtype)
    x = (torch.randn(2, 16, 50) * 0.3).to(dtype)
    gamma = torch.tensor(0.5)
    leaves = [t.requires_grad_() for t in (q, k, v, res, x, gamma)]

    def run():
        pam = danet_ops.position_attention(q, k, v, gamma=gamma, residual=res, backend="chunked")
        cam = danet_ops.channel_attention(x, gamma=gamma, backend="chunked")
        dout = torch.ones_like(pam)
        return [pam, cam, *torch.autograd.grad((pam * dout).sum() + cam.sum(), leaves)]

    plain = run()
    with torch.autocast("cpu", dtype=dtype):
        amp = run()
    for a, b in zip(plain, amp):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("backend", ["eager", "chunked"])
def test_functional_dtype_under_autocast_does_not_depend_on_backend(backend):
    """fp32 q, k, v under autocast: the autocast dtype from every backend (as the eager
    matmuls give), so backend='auto' cannot change the dtype with the size; an fp32
    residual promotes the result to fp32."""
    q, k, v, res = (torch.randn(1, c, 40) for c in (4, 4, 12, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = danet_ops.position_attention(q, k, v, gamma=0.5, backend=backend)
        with_res = danet_ops.position_attention(q, k, v, gamma=0.5, residual=res, backend=backend)
        cam_plain = danet_ops.channel_attention(v * 0.2, backend=backend)
        cam = danet_ops.channel_attention(v * 0.2, gamma=0.5, backend=backend)
    assert plain.dtype == torch.bfloat16 and cam_plain.dtype == torch.bfloat16
    assert with_res.dtype == torch.float32 and cam.dtype == torch.float32
    ref = danet_ops.position_attention_reference(q.double(), k.double(), v.double(), 0.5, res.double())
    assert rel_err(with_res, ref) <= TOL[torch.bfloat16]


def test_mixed_residual_dtype_outside_autocast_is_still_an_error():
    q, k, v = (torch.randn(1, c, 10) for c in (4, 4, 8))
    with pytest.raises(TypeError, match="residual"):
        danet_ops.position_attention(q, k, v, residual=torch.randn(1, 8, 10).half(), backend="chunked")
