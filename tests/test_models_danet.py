"""models.DANet: the full R-50-D8 model and a tiny one run forward and backward."""
from __future__ import annotations

import pytest
import torch

import models

pytestmark = pytest.mark.usefixtures("single_thread")


def test_full_r50_forward_backward_small_input():
    torch.manual_seed(0)
    model = models.build_danet("danet_r50-d8_4xb2-40k_cityscapes-512x1024", attention_backend="chunked")
    with torch.no_grad():
        model.decode_head.pam.gamma.scale.fill_(0.5)
        model.decode_head.cam.gamma.scale.fill_(0.5)
    model.train()
    images = torch.randn(1, 3, 64, 64)
    labels = torch.randint(0, 19, (1, 64, 64))
    labels[:, :8] = 255
    outputs = model(images)
    assert set(outputs) == {"pam_cam", "pam", "cam", "aux"}
    assert all(o.shape == (1, 19, 8, 8) for o in outputs.values())
    losses = models.danet_loss(outputs, labels, model.align_corners)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    losses["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    head = model.decode_head
    for module in (head.pam.query_project, head.pam.key_project, head.pam.value_project,
                   head.pam_in_conv.conv, head.cam_in_conv.conv, model.backbone.stem[0],
                   model.auxiliary_head.convs[0].conv):
        assert module.weight.grad.abs().max() > 0
    assert head.pam.gamma.scale.grad != 0 and head.cam.gamma.scale.grad != 0


def test_tiny_danet_eval_logits_at_input_size():
    torch.manual_seed(0)
    model = models.build_tiny_danet(num_classes=5, attention_backend="eager").eval()
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        logits = model.encode_decode(images)
        feats = model.extract_feat(images)
        raw = model.decode_head(feats)[0]
    assert logits.shape == (2, 5, 40, 56)
    assert raw.shape == (2, 5, 5, 7)
    assert [f.shape[1] for f in feats] == model.backbone.out_channels == [16, 32, 64, 128]
    # the prediction is the pam_cam output, resized; not pam or cam alone
    expected = torch.nn.functional.interpolate(raw, size=(40, 56), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert logits.abs().max() > 0


def test_dropout_is_shared_and_off_in_eval():
    model = models.build_tiny_danet(attention_backend="eager")
    drops = [m for m in model.decode_head.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(drops) == 1 and drops[0].p == 0.1
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_decode(x), model.encode_decode(x))
