"""models training: mmseg's loss, and 20 SGD steps where eager and chunked attention agree."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models

pytestmark = pytest.mark.usefixtures("single_thread")


def manual_ce(logits: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """mmseg's CE by hand: -log p[label] summed over labelled pixels / all pixels."""
    logp = logits.log_softmax(dim=1)
    valid = labels != ignore
    picked = logp.gather(1, labels.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    return -(picked * valid).sum() / labels.numel()


def test_cross_entropy_counts_ignored_pixels_in_the_mean():
    logits = torch.randn(2, 5, 6, 7)
    labels = torch.randint(0, 5, (2, 6, 7))
    labels[0, :2] = 255
    loss = models.seg_cross_entropy(logits, labels, align_corners=False)
    assert torch.allclose(loss, manual_ce(logits, labels), atol=1e-6)
    # differs from torch's own mean over non-ignored pixels
    assert not torch.allclose(loss, F.cross_entropy(logits, labels, ignore_index=255))


@pytest.mark.parametrize("align_corners", [False, True])
def test_cross_entropy_resizes_logits_to_the_labels(align_corners):
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 1, 20, 24))  # [B, 1, H, W] is accepted too
    labels[1, 0, 3:9, 4:10] = 255
    big = F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=align_corners)
    loss = models.seg_cross_entropy(logits, labels, align_corners=align_corners)
    assert torch.allclose(loss, manual_ce(big, labels[:, 0]), atol=1e-6)


def test_danet_loss_terms_and_weights():
    outputs = {k: torch.randn(2, 3, 4, 4) for k in ("pam_cam", "pam", "cam", "aux")}
    labels = torch.randint(0, 3, (2, 16, 16))
    losses = models.danet_loss(outputs, labels, align_corners=False)
    ce = {k: models.seg_cross_entropy(v, labels, False) for k, v in outputs.items()}
    assert set(losses) == {"decode.pam_cam.loss_ce", "decode.pam.loss_ce", "decode.cam.loss_ce",
                           "aux.loss_ce", "loss"}
    assert torch.allclose(losses["aux.loss_ce"], 0.4 * ce["aux"])
    assert torch.allclose(losses["decode.pam.loss_ce"], ce["pam"])
    total = ce["pam_cam"] + ce["pam"] + ce["cam"] + 0.4 * ce["aux"]
    assert torch.allclose(losses["loss"], total)


def synthetic_batch(seed: int = 0, classes: int = 5, h: int = 32, w: int = 48):
    """Images of 16x16 blocks, each the colour of its class plus noise; border unlabelled."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, generator=g) * 255
    block = torch.randint(0, classes, (2, h // 16, w // 16), generator=g)
    labels = block.repeat_interleave(16, 1).repeat_interleave(16, 2)
    rgb = colours[labels].permute(0, 3, 1, 2) + 20 * torch.randn(2, 3, h, w, generator=g)
    labels[:, :2] = 255
    return models.normalize(rgb.clamp(0, 255)), labels


def train(backend: str, steps: int = 20) -> list[float]:
    """Losses of ``steps`` SGD steps (mmseg's optimiser settings), in float64.

    float64 because training amplifies rounding: unscaled attention logits make the
    softmax nearly one-hot, so fp32 runs that differ by 1e-7 at step 7 differ by 1e-2 at
    step 15 whichever backend is right; in float64 a backend error shows, rounding does not.
    """
    torch.manual_seed(0)
    model = models.build_tiny_danet(num_classes=5, attention_backend=backend).double()
    with torch.no_grad():  # let attention matter from the first step
        model.decode_head.pam.gamma.scale.fill_(0.5)
        model.decode_head.cam.gamma.scale.fill_(0.5)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = synthetic_batch()
    images = images.double()
    torch.manual_seed(1)  # same dropout masks for every backend
    return [models.train_step(model, optimizer, images, labels)["loss"] for _ in range(steps)]


def test_eager_and_chunked_train_the_same():
    eager, chunked = train("eager"), train("chunked")
    assert len(eager) == 20
    for step, (a, b) in enumerate(zip(eager, chunked)):
        assert abs(a - b) <= 1e-9 * abs(a), (step, a, b)
    assert eager[-1] < 0.8 * eager[0]  # it learns the colour -> class mapping
