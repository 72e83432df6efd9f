"""DAHead: DANet's dual attention head (Fu et al., CVPR 2019), as mmseg builds it.

Two branches read the same backbone feature. The position branch reduces it with a 3x3
conv, lets every pixel attend to every other (PAM), and convolves again; the channel branch
does the same with attention between channel maps (CAM). Each branch has its own
classifier (auxiliary outputs for training), and the sum of the two branches' features
gives the main prediction. PAM and CAM come from ``danet_ops``; ``attention_backend``
picks their implementation ("eager" is mmseg's exact math).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

import danet_ops
from models.conv_module import ConvModule, NormSpec
from models.decode_head import BaseDecodeHead


class DAHead(BaseDecodeHead):
    """Args (as mmseg's DAHead, where they apply):
        in_channels: backbone feature channels (2048 for ResNet-50/101).
        channels: channels of both branches (512).
        pam_channels: query/key channels of PAM (64).
        num_classes, in_index, dropout_ratio, align_corners: see ``BaseDecodeHead``.
        norm: "BN", "SyncBN" or a callable ``num_features -> nn.Module``.
        attention_backend: passed to ``danet_ops.PAM``/``CAM``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        pam_channels: int,
        num_classes: int,
        in_index: int = -1,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        norm: NormSpec = "BN",
        attention_backend: str = "auto",
    ) -> None:
        super().__init__(in_channels, channels, num_classes, in_index, dropout_ratio, align_corners)
        self.pam_channels = pam_channels
        self.pam_in_conv = ConvModule(in_channels, channels, 3, padding=1, norm=norm)
        self.pam = danet_ops.PAM(channels, pam_channels, backend=attention_backend)
        self.pam_out_conv = ConvModule(channels, channels, 3, padding=1, norm=norm)
        self.pam_conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.cam_in_conv = ConvModule(in_channels, channels, 3, padding=1, norm=norm)
        self.cam = danet_ops.CAM(backend=attention_backend)
        self.cam_out_conv = ConvModule(channels, channels, 3, padding=1, norm=norm)
        self.cam_conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """inputs: the backbone features (list); reads ``inputs[in_index]`` [B, in_channels, h, w].

        Returns logits ``(pam_cam, pam, cam)``, each [B, num_classes, h, w]. Only
        ``pam_cam`` is the prediction; ``pam`` and ``cam`` are supervised in training.
        """
        x = self.select_input(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        pam_out = self.pam_conv_seg(self.dropout(pam_feat))
        cam_out = self.cam_conv_seg(self.dropout(cam_feat))
        pam_cam_out = self.cls_seg(pam_feat + cam_feat)
        return pam_cam_out, pam_out, cam_out
