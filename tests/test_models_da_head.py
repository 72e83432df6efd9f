"""models.DAHead: drop-in for mmseg's DAHead (its real outputs), and its backends agree."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models

DATA = Path(__file__).parent / "data"
BACKENDS = ["eager", "chunked"]


pytestmark = pytest.mark.usefixtures("single_thread")


def load_fixture() -> dict:
    return torch.load(DATA / "dahead_small_B2_8x8.pt", weights_only=True)


def head_from_fixture(fix: dict, backend: str) -> models.DAHead:
    kw = dict(fix["init_kwargs"])
    kw["norm"] = kw.pop("norm_cfg")  # mmseg's {"type": "BN", "requires_grad": True}
    head = models.DAHead(**kw, attention_backend=backend)
    assert isinstance(head.pam_in_conv.bn, torch.nn.BatchNorm2d)
    head.load_state_dict(fix["state_dict"], strict=True)
    return head.eval()


def feature_list(fix: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone levels; DAHead reads only ``in_index``, the others are placeholders."""
    feats = [torch.full((x.shape[0], c, 1, 1), float("nan"), dtype=x.dtype) for c in fix["feat_channels"]]
    feats[fix["init_kwargs"]["in_index"]] = x
    return feats


def max_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest deviation relative to the reference's largest magnitude."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_mmseg_float32(backend):
    fix = load_fixture()
    head = head_from_fixture(fix, backend)
    with torch.no_grad():
        outs = head(feature_list(fix, fix["input"]))
        pred = head.predict(feature_list(fix, fix["input"]), fix["img_shape"])
    assert len(outs) == 3
    for out, ref in zip(outs, fix["output"]):
        assert out.shape == ref.shape and ref.abs().max() > 0
        assert max_rel(out, ref) < 1e-4
    assert pred.shape == fix["predict"].shape == (2, 5, 64, 64)
    assert max_rel(pred, fix["predict"]) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_mmseg_float64_with_gradients(backend):
    fix = load_fixture()
    head = head_from_fixture(fix, backend).double()
    x = fix["input"].double().requires_grad_()
    outs = head(feature_list(fix, x))
    for out, ref in zip(outs, fix["output_f64"]):
        assert max_rel(out, ref) < 1e-9
    loss = sum((o**2).sum() for o in outs)
    assert abs(loss.item() - fix["loss_f64"].item()) / fix["loss_f64"].item() < 1e-9
    loss.backward()
    assert max_rel(x.grad, fix["grad_input_f64"]) < 1e-9
    grads = dict(head.named_parameters())
    ref_grads = fix["grad_params_f64"]
    assert set(ref_grads) == set(grads)
    largest = max(g.abs().max().item() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        err = (grads[name].grad - ref).abs().max().item() / largest
        assert err < 1e-9, name


def random_head(backend: str, in_channels=24, channels=16, pam_channels=4, classes=3) -> models.DAHead:
    torch.manual_seed(1)
    head = models.DAHead(in_channels, channels, pam_channels, classes, in_index=0,
                         attention_backend=backend)
    with torch.no_grad():  # non-trivial BN statistics and attention weights
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        head.pam.gamma.scale.fill_(0.7)
        head.cam.gamma.scale.fill_(0.4)
    return head.eval()


def test_chunked_matches_eager_float64_reference():
    """fp32 chunked vs the fp64 eager head on a ragged 13x17 map: DESIGN §6's 1e-5."""
    eager = random_head("eager").double()
    chunked = random_head("chunked")
    x = torch.randn(2, 24, 13, 17, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    x64 = x.clone().requires_grad_()
    ref = eager([x64])
    out = chunked([x32])
    weights = [torch.randn_like(r) for r in ref]
    sum((o * w.float()).sum() for o, w in zip(out, weights)).backward()
    sum((r * w).sum() for r, w in zip(ref, weights)).backward()
    for o, r in zip(out, ref):
        assert r.norm() > 0 and ((o.double() - r).norm() / r.norm()).item() < 1e-5
    assert ((x32.grad.double() - x64.grad).norm() / x64.grad.norm()).item() < 1e-5
    ref_params = dict(eager.named_parameters())
    for name, p in chunked.named_parameters():
        r = ref_params[name].grad
        if name == "pam.key_project.bias":  # gradient is zero in theory (softmax shift)
            assert p.grad.abs().max() < 1e-4 * ref_params["pam.key_project.weight"].grad.abs().max()
            continue
        assert ((p.grad.double() - r).norm() / r.norm()).item() < 1e-5, name


def test_predict_resizes_with_align_corners():
    head = random_head("eager")
    head.align_corners = True
    feats = [torch.randn(1, 24, 5, 6)]
    with torch.no_grad():
        logits = head(feats)[0]
        pred = head.predict(feats, (33, 41))
    assert pred.shape == (1, 3, 33, 41)
    # align_corners=True keeps the corner values exactly
    assert torch.allclose(pred[..., 0, 0], logits[..., 0, 0], atol=1e-6)
    assert torch.allclose(pred[..., -1, -1], logits[..., -1, -1], atol=1e-6)
    expected = F.interpolate(logits, size=(33, 41), mode="bilinear", align_corners=True)
    assert torch.equal(pred, expected)


def _gpu_backends() -> list:
    if not torch.cuda.is_available():
        return [pytest.param("triton", marks=pytest.mark.gpu), pytest.param("cuda", marks=pytest.mark.gpu)]
    import danet_ops

    ready = danet_ops.available_backends("cuda")
    params = []
    for b in ("triton", "cuda"):
        marks = [pytest.mark.gpu]
        if b not in ready:
            marks.append(pytest.mark.skip(reason=f"{b} backend not available"))
        params.append(pytest.param(b, marks=marks))
    return params


@pytest.mark.parametrize("backend", _gpu_backends())
def test_fused_backend_matches_eager_float64_on_gpu(backend, monkeypatch):
    """DESIGN §6: fp32 within 1e-5 of the fp64 eager head, bf16 autocast within 1e-2."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # true fp32 convs
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager = random_head("eager", in_channels=64, channels=64, pam_channels=8).double()
    fused = random_head(backend, in_channels=64, channels=64, pam_channels=8).cuda()
    x = torch.randn(2, 64, 33, 29, dtype=torch.float64)
    with torch.no_grad():
        ref = eager([x])
    with torch.no_grad():
        out = fused([x.float().cuda()])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = fused([x.float().cuda()])
    for o, h, r in zip(out, half, ref):
        err = ((o.double().cpu() - r).norm() / r.norm()).item()
        assert err < 1e-5
        assert ((h.double().cpu() - r).norm() / r.norm()).item() < 1e-2
