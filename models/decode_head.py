"""What every mmseg decode head shares: picking its input level and the final classifier.

Names as in mmseg's ``BaseDecodeHead`` (``conv_seg``, one ``dropout``), so checkpoints load.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class BaseDecodeHead(nn.Module):
    """Args:
        in_channels: channels of the backbone feature this head reads.
        channels: channels of the head's own features (input of ``conv_seg``).
        num_classes: output logits per pixel.
        in_index: which backbone level to read.
        dropout_ratio: ``Dropout2d`` before each classifier (0 disables it).
        align_corners: for every bilinear resize of this head's logits.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        in_index: int = -1,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def select_input(self, inputs: Sequence[Tensor]) -> Tensor:
        """The backbone level this head reads: ``inputs[in_index]``."""
        return inputs[self.in_index]

    def cls_seg(self, feat: Tensor) -> Tensor:
        """[B, channels, h, w] features -> [B, num_classes, h, w] logits."""
        return self.conv_seg(self.dropout(feat))

    def predict(self, inputs: Sequence[Tensor], img_shape: Sequence[int]) -> Tensor:
        """Test-time logits resized to ``img_shape`` (H, W), as mmseg's ``predict``."""
        logits = self(inputs)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return F.interpolate(
            logits, size=tuple(img_shape), mode="bilinear", align_corners=self.align_corners
        )
