"""ResNetV1c: the dilated ResNet backbone of mmseg's ``*-d8`` configs.

V1c differs from torchvision's ResNet in the stem: three 3x3 convs (3->32->32->64) instead
of one 7x7. With strides (1, 2, 1, 1) and dilations (1, 1, 2, 4) the last two stages keep
1/8 of the input resolution ("D8", output stride 8), which DANet's attention needs for
detail. ``contract_dilation``: the first block of a dilated stage uses half the dilation,
as mmseg's ``ResLayer`` does.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from models.conv_module import NormSpec, build_norm

#: depth -> number of Bottleneck blocks per stage.
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; "pytorch" style: the stride is on the 3x3 conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm: NormSpec = "BN",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = build_norm(norm, planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = build_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = build_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_res_layer(
    inplanes: int,
    planes: int,
    num_blocks: int,
    stride: int,
    dilation: int,
    contract_dilation: bool,
    norm: NormSpec,
) -> nn.Sequential:
    """One stage: ``num_blocks`` Bottlenecks, the first one changing stride/width."""
    out_planes = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out_planes, 1, stride=stride, bias=False),
            build_norm(norm, out_planes),
        )
    first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
    blocks = [Bottleneck(inplanes, planes, stride, first_dilation, downsample, norm)]
    for _ in range(1, num_blocks):
        blocks.append(Bottleneck(out_planes, planes, 1, dilation, None, norm))
    return nn.Sequential(*blocks)


class ResNetV1c(nn.Module):
    """Deep-stem ResNet returning the features of every stage.

    Args:
        depth: 50 or 101 (152 also works).
        strides, dilations: per stage; the defaults give output stride 8.
        contract_dilation: first block of a dilated stage uses ``dilation // 2``.
        out_indices: which stages' outputs ``forward`` returns.
        norm: "BN", "SyncBN" or a callable ``num_features -> nn.Module``.
        stem_channels, base_channels: widths (64, 64 in every mmseg config; smaller values
            make test-sized models).
        zero_init_residual: start each block's last BN at 0 (mmseg's default), so a fresh
            block is the identity.
    """

    def __init__(
        self,
        depth: int = 50,
        strides: Sequence[int] = (1, 2, 1, 1),
        dilations: Sequence[int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        norm: NormSpec = "BN",
        stem_channels: int = 64,
        base_channels: int = 64,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError(f"strides and dilations need 4 entries, got {strides}, {dilations}")
        self.depth = depth
        self.out_indices = tuple(out_indices)
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
            build_norm(norm, half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False),
            build_norm(norm, half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, stride=1, padding=1, bias=False),
            build_norm(norm, stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = base_channels * 2**i
            layer = make_res_layer(
                inplanes, planes, num_blocks, strides[i], dilations[i], contract_dilation, norm
            )
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * Bottleneck.expansion
            self.out_channels.append(inplanes)
        self.init_weights(zero_init_residual)

    def init_weights(self, zero_init_residual: bool = True) -> None:
        """mmseg's init without a pretrained checkpoint: Kaiming convs, unit norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] -> the features of the stages in ``out_indices``.

        With the defaults: channels 256, 512, 1024, 2048 at strides 4, 8, 8, 8.
        """
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
