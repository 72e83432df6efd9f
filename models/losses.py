"""DANet's training loss, as mmseg's config defines it.

Cross-entropy on each of DAHead's three outputs (pam_cam, pam, cam; weight 1 each) plus
0.4 x the auxiliary FCN head's. Every logit map is first resized bilinearly to the label
size, so the loss is computed at full resolution.
"""
from __future__ import annotations

from typing import Mapping

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255

#: output name -> (loss name, weight) as in mmseg's loss dict.
LOSS_TERMS = {
    "pam_cam": ("decode.pam_cam.loss_ce", 1.0),
    "pam": ("decode.pam.loss_ce", 1.0),
    "cam": ("decode.cam.loss_ce", 1.0),
    "aux": ("aux.loss_ce", 0.4),
}


def seg_cross_entropy(
    logits: Tensor, labels: Tensor, align_corners: bool, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Pixel-wise cross-entropy of [B, K, h, w] logits against [B, H, W] integer labels.

    As mmseg's ``CrossEntropyLoss`` with its default ``avg_non_ignore=False``: ignored
    pixels contribute 0 but still count in the mean (unlike ``F.cross_entropy``'s own
    mean, which divides by the non-ignored pixels only).
    """
    if labels.dim() == 4:
        labels = labels.squeeze(1)
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be [B, H, W] with B={logits.shape[0]}, got shape {tuple(labels.shape)}"
        )
    logits = F.interpolate(
        logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners
    )
    loss = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none")
    return loss.mean()


def danet_loss(
    outputs: Mapping[str, Tensor],
    labels: Tensor,
    align_corners: bool,
    ignore_index: int = IGNORE_INDEX,
    aux_weight: float = 0.4,
) -> dict[str, Tensor]:
    """The weighted loss terms of ``DANet.forward``'s outputs, and their sum as ``"loss"``.

    Keys as mmseg logs them: ``decode.pam_cam.loss_ce``, ``decode.pam.loss_ce``,
    ``decode.cam.loss_ce``, ``aux.loss_ce`` (already multiplied by ``aux_weight``).
    """
    losses: dict[str, Tensor] = {}
    for key, (name, weight) in LOSS_TERMS.items():
        if key not in outputs:
            continue
        if key == "aux":
            weight = aux_weight
        losses[name] = weight * seg_cross_entropy(outputs[key], labels, align_corners, ignore_index)
    if not losses:
        raise ValueError(f"outputs has none of {sorted(LOSS_TERMS)}, got {sorted(outputs)}")
    losses["loss"] = sum(losses.values())
    return losses
