"""models inference: mmseg's sliding windows, whole vs slide, flip/multi-scale merging,
normalisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models.inference import keep_ratio_size, slide_windows

pytestmark = pytest.mark.usefixtures("single_thread")


class Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): its logits do not depend on how the image is cut."""

    num_classes = 4
    align_corners = False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, self.num_classes, 1)

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


def test_slide_windows_cityscapes_769():
    windows = slide_windows(1024, 2048, (769, 769), (513, 513))
    ys = sorted({(y1, y2) for y1, y2, _, _ in windows})
    xs = sorted({(x1, x2) for _, _, x1, x2 in windows})
    assert ys == [(0, 769), (255, 1024)]
    assert xs == [(0, 769), (513, 1282), (1026, 1795), (1279, 2048)]
    assert len(windows) == 8
    assert slide_windows(300, 500, (769, 769), (513, 513)) == [(0, 300, 0, 500)]


def test_slide_equals_whole_for_a_pointwise_model():
    model = Pointwise()
    images = torch.randn(2, 3, 13, 17)
    whole = models.whole_inference(model, images)
    slide = models.slide_inference(model, images, crop=(7, 9), stride=(4, 5))
    assert len(slide_windows(13, 17, (7, 9), (4, 5))) == 9  # overlapping windows
    assert whole.abs().max() > 0
    assert torch.allclose(slide, whole, atol=1e-6)


def test_slide_averages_overlaps():
    """A model whose logit is its window's mean: overlaps average the windows' values."""

    class WindowMean(Pointwise):
        def encode_decode(self, images):
            return images[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 4, *images.shape[2:])

    images = torch.randn(1, 3, 4, 6)
    out = models.slide_inference(WindowMean(), images, crop=(4, 4), stride=(2, 2))
    left, right = images[0, 0, :, :4].mean(), images[0, 0, :, 2:].mean()
    assert torch.allclose(out[0, 0, 0], torch.stack([left, left, (left + right) / 2,
                                                     (left + right) / 2, right, right]), atol=1e-6)


def test_slide_on_danet_with_crop_covering_the_image_equals_whole():
    torch.manual_seed(0)
    model = models.build_tiny_danet(attention_backend="eager").eval()
    images = torch.randn(1, 3, 40, 48)
    whole = models.inference(model, images, "whole")
    slide = models.inference(model, images, "slide", crop=(64, 64), stride=(32, 32))
    assert torch.equal(whole, slide)
    assert whole.shape == (1, 5, 40, 48)


def test_flip_and_scales_average_softmax():
    torch.manual_seed(0)
    model = models.build_tiny_danet(attention_backend="eager").eval()
    images = torch.randn(1, 3, 32, 40)
    probs = models.aug_inference(model, images, scales=(0.75, 1.0), flip=True)
    expected = torch.zeros_like(probs)
    with torch.no_grad():
        for size in [(24, 30), (32, 40)]:
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            for logits in (model.encode_decode(x), model.encode_decode(x.flip(-1)).flip(-1)):
                logits = F.interpolate(logits, size=(32, 40), mode="bilinear", align_corners=False)
                expected += logits.softmax(dim=1) / 4
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 32, 40), atol=1e-5)
    plain = models.aug_inference(model, images)
    assert torch.allclose(plain, models.whole_inference(model, images).softmax(dim=1), atol=1e-6)
    assert not torch.allclose(plain, probs, atol=1e-4)  # the augmentation did something


def test_aug_inference_out_size_resizes_only_the_logits():
    torch.manual_seed(0)
    model = models.build_tiny_danet(attention_backend="eager").eval()
    images = torch.randn(1, 3, 24, 32)
    probs = models.aug_inference(model, images, scales=(1.0,), out_size=(40, 56))
    with torch.no_grad():
        logits = F.interpolate(model.encode_decode(images), size=(40, 56), mode="bilinear",
                               align_corners=False)
    assert torch.allclose(probs, logits.softmax(dim=1), atol=1e-6)


def test_segment_resizes_to_the_test_scale_and_back():
    torch.manual_seed(0)
    model = models.build_tiny_danet(attention_backend="eager").eval()
    images = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8)
    preset = models.Preset("tiny-test", 50, "test", 5, (64, 64), False, "whole", (48, 32))
    mask = models.segment(model, images, preset, resize=True)
    x = F.interpolate(models.normalize(images), size=(32, 43), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = F.interpolate(model.encode_decode(x), size=(24, 32), mode="bilinear",
                               align_corners=False)
    assert mask.shape == (1, 24, 32)
    assert torch.equal(mask, logits.argmax(dim=1))


def test_normalize_uses_mmseg_imagenet_statistics():
    images = torch.tensor([255.0, 0.0, 128.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = models.normalize(images.to(torch.uint8))
    expected = torch.tensor([(255 - 123.675) / 58.395, (0 - 116.28) / 57.12, (128 - 103.53) / 57.375])
    assert torch.allclose(out[1, :, 1, 1], expected)
    assert out.dtype == torch.float32


def test_keep_ratio_test_size():
    assert keep_ratio_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert keep_ratio_size(300, 400, (2048, 1024)) == (1024, 1365)
    assert keep_ratio_size(512, 683, (2048, 512)) == (512, 683)


def test_segment_returns_class_indices_at_input_size():
    torch.manual_seed(0)
    model = models.build_tiny_danet(attention_backend="chunked", align_corners=True).eval()
    images = torch.randint(0, 256, (2, 3, 36, 44), dtype=torch.uint8)
    preset = "danet_r50-d8_4xb2-40k_cityscapes-769x769"  # slide mode, align_corners=True
    mask = models.segment(model, images, preset, resize=False)
    assert mask.shape == (2, 36, 44) and mask.dtype == torch.int64
    assert len(mask.unique()) > 1
    with torch.no_grad():
        expected = model.encode_decode(models.normalize(images)).argmax(dim=1)
    assert torch.equal(mask, expected)
