"""DANet: backbone + dual attention decode head (+ auxiliary FCN head for training).

mmseg's ``EncoderDecoder`` reduced to what DANet uses. The model takes normalised images
(see ``models.preprocess.normalize``).
"""
from __future__ import annotations

from torch import Tensor, nn

from models.da_head import DAHead
from models.fcn_head import FCNHead


class DANet(nn.Module):
    """Args:
        backbone: returns a list of features (``ResNetV1c``).
        decode_head: ``DAHead`` reading one of them.
        auxiliary_head: optional ``FCNHead``, only used by the training loss.
    """

    def __init__(
        self, backbone: nn.Module, decode_head: DAHead, auxiliary_head: FCNHead | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    @property
    def align_corners(self) -> bool:
        return self.decode_head.align_corners

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] normalised images -> backbone features."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """All logits at feature resolution (1/8 of H, W), for the training loss.

        Returns ``{"pam_cam", "pam", "cam"}`` from the decode head, plus ``"aux"`` when
        there is an auxiliary head; each [B, num_classes, h, w].
        """
        feats = self.extract_feat(images)
        pam_cam, pam, cam = self.decode_head(feats)
        out = {"pam_cam": pam_cam, "pam": pam, "cam": cam}
        if self.auxiliary_head is not None:
            out["aux"] = self.auxiliary_head(feats)
        return out

    def encode_decode(self, images: Tensor) -> Tensor:
        """Prediction logits [B, num_classes, H, W] at the input size (mmseg's encode_decode).

        Only the fused ``pam_cam`` output is used, as in mmseg's ``DAHead.predict``.
        """
        return self.decode_head.predict(self.extract_feat(images), images.shape[2:])
