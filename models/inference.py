"""Test-time inference as mmseg runs it: whole image or sliding window, with optional
multi-scale + flip augmentation.

``model`` here is anything with ``encode_decode(images) -> [B, K, H, W]`` logits at the
input size and ``num_classes`` / ``align_corners`` attributes (``DANet``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.preprocess import normalize
from models.presets import Preset, get_preset


def slide_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """The (y1, y2, x1, x2) windows mmseg's slide inference visits.

    A regular grid of ``stride`` steps; the last window in each direction is shifted back so
    it ends at the border, and windows are clipped to images smaller than ``crop``.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


@torch.no_grad()
def whole_inference(model: nn.Module, images: Tensor) -> Tensor:
    """[B, 3, H, W] normalised images -> [B, K, H, W] logits, in one pass."""
    return model.encode_decode(images)


@torch.no_grad()
def slide_inference(
    model: nn.Module, images: Tensor, crop: Sequence[int], stride: Sequence[int]
) -> Tensor:
    """[B, 3, H, W] -> [B, K, H, W] logits, averaging overlapping ``crop`` windows.

    Bounds memory for large images (Cityscapes 769x769 models are evaluated this way).
    """
    b, _, h, w = images.shape
    logits = images.new_zeros((b, model.num_classes, h, w))
    count = images.new_zeros((1, 1, h, w))
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        logits[:, :, y1:y2, x1:x2] += model.encode_decode(images[:, :, y1:y2, x1:x2])
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def inference(
    model: nn.Module,
    images: Tensor,
    mode: str = "whole",
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> Tensor:
    """Logits [B, K, H, W] for normalised images, by ``mode`` "whole" or "slide"."""
    if mode == "whole":
        return whole_inference(model, images)
    if mode == "slide":
        if crop is None or stride is None:
            raise ValueError(f"mode 'slide' needs crop and stride, got crop={crop}, stride={stride}")
        return slide_inference(model, images, crop, stride)
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def _resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


@torch.no_grad()
def aug_inference(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    out_size: Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities [B, K, H, W]: the mean of the softmax over every scale (and its
    horizontal flip), as mmseg's test-time augmentation merges them.

    mmseg's "ms+flip" numbers use scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) with flip.
    out_size: (H, W) of the result (default: the input's); each scale's logits are resized
    to it before the softmax.
    """
    in_h, in_w = images.shape[-2:]
    h, w = (in_h, in_w) if out_size is None else out_size
    probs = images.new_zeros((images.shape[0], model.num_classes, h, w))
    n = 0
    for scale in scales:
        size = (int(in_h * scale + 0.5), int(in_w * scale + 0.5))
        scaled = _resize(images, size, align_corners=False)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = inference(model, x, mode, crop, stride)
            logits = logits.flip(-1) if flipped else logits
            probs += _resize(logits, (h, w), model.align_corners).softmax(dim=1)
            n += 1
    return probs / n


def keep_ratio_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmseg's keep-ratio ``Resize``: the largest size with long side <= max(scale) and
    short side <= min(scale)."""
    ratio = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * ratio + 0.5), int(width * ratio + 0.5)


@torch.no_grad()
def segment(
    model: nn.Module,
    images: Tensor,
    preset: str | Preset,
    resize: bool = True,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Class indices [B, H, W] for [B, 3, H, W] RGB 0..255 images, by the preset's test setup.

    The preset gives the test mode (whole/slide, crop, stride) and test scale; resizes of
    logits use the model's own ``align_corners``.
    resize: first rescale to the preset's test scale (keep ratio), as mmseg's test pipeline
    does; the prediction is resized back to the input size either way.
    """
    p = get_preset(preset)
    param = next(model.parameters())
    x = normalize(images.to(param.device), dtype=param.dtype)
    h, w = x.shape[-2:]
    if resize:
        x = _resize(x, keep_ratio_size(h, w, p.test_scale), align_corners=False)
    probs = aug_inference(
        model, x, scales, flip, p.test_mode, p.test_crop, p.test_stride, out_size=(h, w)
    )
    return probs.argmax(dim=1)
