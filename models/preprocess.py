"""Input normalisation as mmseg's ``SegDataPreProcessor`` configures it for DANet."""
from __future__ import annotations

import torch
from torch import Tensor

#: ImageNet statistics on 0-255 RGB (mmseg: mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, 3, H, W] RGB images in 0..255 (uint8 or float) -> normalised ``dtype`` tensor.

    The backbone was trained on these statistics; images from a BGR reader (OpenCV) must be
    flipped to RGB first (mmseg's ``bgr_to_rgb=True``).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.to(dtype) - mean) / std
