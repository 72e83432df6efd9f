"""FCNHead: the auxiliary head mmseg puts on ResNet stage 3 to help train the backbone."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from models.conv_module import ConvModule, NormSpec
from models.decode_head import BaseDecodeHead


class FCNHead(BaseDecodeHead):
    """``num_convs`` 3x3 ConvModules then the classifier (mmseg's FCNHead).

    Args: as ``BaseDecodeHead`` plus
        num_convs: 3x3 convs before the classifier (DANet's auxiliary head: 1).
        concat_input: concatenate the input with the conv output (then a 3x3 ``conv_cat``).
        norm: "BN", "SyncBN" or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        in_index: int = -1,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        norm: NormSpec = "BN",
    ) -> None:
        super().__init__(in_channels, channels, num_classes, in_index, dropout_ratio, align_corners)
        self.concat_input = concat_input
        self.convs = nn.Sequential(
            *[
                ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1, norm=norm)
                for i in range(num_convs)
            ]
        )
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, 3, padding=1, norm=norm)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """inputs: backbone features; returns [B, num_classes, h, w] logits."""
        x = self.select_input(inputs)
        feat = self.convs(x)
        if self.concat_input:
            feat = self.conv_cat(torch.cat([x, feat], dim=1))
        return self.cls_seg(feat)
