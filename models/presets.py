"""Named configurations matching mmseg's DANet configs, and the builder that uses them.

Names are mmseg's config names (``danet_r50-d8_4xb2-40k_cityscapes-512x1024``, ...). The
schedule (20k/40k/80k/160k) changes only training length, so names differing in it build
the same model.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.conv_module import NormSpec
from models.da_head import DAHead
from models.fcn_head import FCNHead
from models.resnet import ResNetV1c
from models.segmentor import DANet


@dataclass(frozen=True)
class Preset:
    """What a config fixes about the model and its evaluation.

    crop_size, test_crop, test_stride: (H, W). test_scale: mmseg's test ``Resize`` scale
    (long, short) with keep_ratio. test_mode "whole" runs the full image at once, "slide"
    runs ``test_crop`` windows every ``test_stride`` and averages overlaps.
    """

    name: str
    depth: int
    dataset: str
    num_classes: int
    crop_size: tuple[int, int]
    align_corners: bool
    test_mode: str
    test_scale: tuple[int, int]
    test_crop: tuple[int, int] | None = None
    test_stride: tuple[int, int] | None = None
    iters: int = 0
    reduce_zero_label: bool = False


def _make_presets() -> dict[str, Preset]:
    # dataset, gpus x batch, crop, schedules, classes, align_corners, test mode, crop, stride,
    # test scale: from mmseg's configs/danet and configs/_base_/datasets.
    rows = [
        ("cityscapes", "4xb2", (512, 1024), (40_000, 80_000), 19, False,
         "whole", None, None, (2048, 1024)),
        ("cityscapes", "4xb2", (769, 769), (40_000, 80_000), 19, True,
         "slide", (769, 769), (513, 513), (2049, 1025)),
        ("ade20k", "4xb4", (512, 512), (80_000, 160_000), 150, False,
         "whole", None, None, (2048, 512)),
        ("voc12aug", "4xb4", (512, 512), (20_000, 40_000), 21, False,
         "whole", None, None, (2048, 512)),
    ]
    presets = {}
    for depth in (50, 101):
        for dataset, gpus, crop, schedules, classes, align, mode, tcrop, tstride, scale in rows:
            for iters in schedules:
                name = f"danet_r{depth}-d8_{gpus}-{iters // 1000}k_{dataset}-{crop[0]}x{crop[1]}"
                presets[name] = Preset(
                    name, depth, dataset, classes, crop, align, mode, scale, tcrop, tstride,
                    iters, reduce_zero_label=dataset == "ade20k",
                )
    return presets


PRESETS: dict[str, Preset] = _make_presets()


def get_preset(preset: str | Preset) -> Preset:
    """The ``Preset`` named ``preset`` (a ``Preset`` passes through)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        names = "\n  ".join(sorted(PRESETS))
        raise ValueError(f"preset must be one of:\n  {names}\ngot {preset!r}")
    return PRESETS[preset]


def build_danet(
    preset: str | Preset = "danet_r50-d8_4xb2-40k_cityscapes-512x1024",
    attention_backend: str = "auto",
    norm: NormSpec = "BN",
    num_classes: int | None = None,
) -> DANet:
    """DANet R-50/101-D8 exactly as mmseg's config builds it (random weights).

    norm: "BN" for one process; "SyncBN" as mmseg trains on several GPUs.
    num_classes: override the preset's (for fine-tuning on another dataset).
    """
    p = get_preset(preset)
    classes = p.num_classes if num_classes is None else num_classes
    backbone = ResNetV1c(depth=p.depth, norm=norm)
    decode_head = DAHead(
        in_channels=2048, channels=512, pam_channels=64, num_classes=classes, in_index=3,
        dropout_ratio=0.1, align_corners=p.align_corners, norm=norm,
        attention_backend=attention_backend,
    )
    auxiliary_head = FCNHead(
        in_channels=1024, channels=256, num_classes=classes, in_index=2, num_convs=1,
        concat_input=False, dropout_ratio=0.1, align_corners=p.align_corners, norm=norm,
    )
    return DANet(backbone, decode_head, auxiliary_head)


def build_tiny_danet(
    num_classes: int = 5,
    attention_backend: str = "auto",
    norm: NormSpec = "BN",
    align_corners: bool = False,
) -> DANet:
    """The DANet architecture at 1/16 of the width (ResNet-50 depth): for tests and smoke runs."""
    backbone = ResNetV1c(depth=50, norm=norm, stem_channels=8, base_channels=4)
    c3, c4 = backbone.out_channels[2], backbone.out_channels[3]
    decode_head = DAHead(
        in_channels=c4, channels=16, pam_channels=4, num_classes=num_classes, in_index=3,
        align_corners=align_corners, norm=norm, attention_backend=attention_backend,
    )
    auxiliary_head = FCNHead(
        in_channels=c3, channels=8, num_classes=num_classes, in_index=2,
        align_corners=align_corners, norm=norm,
    )
    return DANet(backbone, decode_head, auxiliary_head)
