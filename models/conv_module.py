"""Conv + norm + ReLU, the building block mmseg calls ``ConvModule``.

Submodule names follow mmcv (``conv``, ``bn``) so mmseg checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Union

from torch import Tensor, nn

#: A norm layer: "BN", "SyncBN", mmseg's ``norm_cfg`` dict (``{"type": "SyncBN",
#: "requires_grad": True}``), or a callable ``num_features -> nn.Module``.
NormSpec = Union[str, Mapping[str, Any], Callable[[int], nn.Module]]

_NORMS = {"BN": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm}


def build_norm(norm: NormSpec, num_features: int) -> nn.Module:
    """The norm layer for ``num_features`` channels.

    "SyncBN" synchronises batch statistics across processes of a distributed job (mmseg's
    DANet configs train with it); outside ``torch.distributed`` it behaves like "BN", and
    the two have the same state_dict keys.
    """
    if isinstance(norm, Mapping):  # mmseg's norm_cfg
        layer = build_norm(norm.get("type", "BN"), num_features)
        layer.requires_grad_(bool(norm.get("requires_grad", True)))
        return layer
    if callable(norm):
        return norm(num_features)
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {sorted(_NORMS)}, a norm_cfg dict or a callable, got {norm!r}")
    return _NORMS[norm](num_features)


class ConvModule(nn.Module):
    """``conv -> bn -> relu``; the conv has no bias because the norm supplies one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        norm: NormSpec = "BN",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = build_norm(norm, out_channels)
        self.activate = nn.ReLU(inplace=True)
        # mmcv's ConvModule init: Kaiming (fan_out, ReLU) for the conv, ones/zeros for the norm.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in_channels, H, W] -> [B, out_channels, H', W']."""
        return self.activate(self.bn(self.conv(x)))
