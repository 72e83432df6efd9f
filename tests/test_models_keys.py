"""models: DANet's parameter/buffer names and shapes are mmseg's, for every preset."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models.resnet import Bottleneck

DATA = Path(__file__).parent / "data"
CITYSCAPES = "danet_r50-d8_4xb2-40k_cityscapes-512x1024"


def reference_keys() -> dict[str, tuple[int, ...]]:
    """mmseg 1.2.2's DANet R-50-D8 state_dict, ``name (shape)`` per line, in its order."""
    keys = {}
    for line in (DATA / "mmseg_danet_r50-d8_cityscapes_state_dict_keys.txt").read_text().splitlines():
        name, shape = line.split(" (")
        keys[name] = tuple(int(s) for s in shape.rstrip(")").split(",") if s.strip())
    return keys


def meta_model(preset: str = CITYSCAPES, **kwargs) -> models.DANet:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return models.build_danet(preset, **kwargs)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_state_dict_matches_mmseg_key_list():
    ref = reference_keys()
    own = shapes(meta_model())
    assert len(ref) == 376
    assert sorted(set(own) - set(ref)) == [] and sorted(set(ref) - set(own)) == []
    assert {k: v for k, v in own.items() if v != ref[k]} == {}
    assert list(own) == list(ref)  # same order too


def test_parameter_counts_match_mmseg():
    model = meta_model()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == 23_527_264
    assert count(model.decode_head) == 23_954_619
    assert count(model.auxiliary_head) == 2_364_691
    assert count(model) == 49_846_574


def test_r101_differs_only_by_layer3_blocks():
    r50, r101 = shapes(meta_model()), shapes(meta_model("danet_r101-d8_4xb2-40k_cityscapes-512x1024"))
    extra = {k for k in r101 if k not in r50}
    assert {k.split(".")[2] for k in extra} == {str(i) for i in range(6, 23)}
    assert all(k.startswith("backbone.layer3.") for k in extra)
    assert all(r101[k] == v for k, v in r50.items())
    assert len(meta_model("danet_r101-d8_4xb2-40k_cityscapes-512x1024").backbone.layer3) == 23


def test_syncbn_has_the_same_keys():
    model = meta_model(norm="SyncBN")
    assert shapes(model) == shapes(meta_model())
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    with pytest.raises(ValueError, match="norm must be one of"):
        meta_model(norm="GN")


def test_dilated_resnet_layout():
    bb = meta_model().backbone
    assert [m.kernel_size for m in bb.stem if isinstance(m, nn.Conv2d)] == [(3, 3)] * 3
    assert [bb.stem[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    # stride on the 3x3 conv ("pytorch" style), only in stage 2
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer2[0].conv1.stride == (1, 1)
    assert bb.layer2[0].downsample[0].stride == (2, 2)
    assert all(b.conv2.stride == (1, 1) for b in [*bb.layer1, *bb.layer3, *bb.layer4])
    # contract_dilation: first block of a dilated stage uses half the dilation
    assert [b.conv2.dilation[0] for b in bb.layer3] == [1] + [2] * 5
    assert [b.conv2.dilation[0] for b in bb.layer4] == [2, 4, 4]
    assert [b.conv2.padding[0] for b in bb.layer4] == [2, 4, 4]
    assert all(isinstance(b, Bottleneck) for b in bb.layer4)


def test_backbone_output_stride_8():
    bb = models.ResNetV1c(depth=50, stem_channels=8, base_channels=4).eval()
    feats = bb(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 8, 12), (2, 128, 8, 12)
    ]


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_presets(name):
    p = models.get_preset(name)
    assert p.depth == (101 if "r101" in name else 50)
    expected = {
        "cityscapes-512x1024": (19, (512, 1024), False, "whole", None, None),
        "cityscapes-769x769": (19, (769, 769), True, "slide", (769, 769), (513, 513)),
        "ade20k-512x512": (150, (512, 512), False, "whole", None, None),
        "voc12aug-512x512": (21, (512, 512), False, "whole", None, None),
    }[name.split("_")[-1]]
    assert (p.num_classes, p.crop_size, p.align_corners, p.test_mode, p.test_crop, p.test_stride) == expected
    model = meta_model(name)
    assert model.decode_head.num_classes == model.auxiliary_head.num_classes == p.num_classes
    assert model.decode_head.align_corners is model.auxiliary_head.align_corners is p.align_corners
    assert model.decode_head.in_index == 3 and model.auxiliary_head.in_index == 2


def test_schedules_share_a_model_and_unknown_names_fail():
    a = models.get_preset("danet_r50-d8_4xb4-80k_ade20k-512x512")
    b = models.get_preset("danet_r50-d8_4xb4-160k_ade20k-512x512")
    assert (a.iters, b.iters) == (80_000, 160_000)
    assert shapes(meta_model(a.name)) == shapes(meta_model(b.name))
    with pytest.raises(ValueError, match="preset must be one of"):
        models.get_preset("danet_r50-d8_cityscapes")


def test_attention_backend_reaches_pam_and_cam():
    model = meta_model(attention_backend="chunked")
    assert model.decode_head.pam.backend == "chunked" and model.decode_head.cam.backend == "chunked"


def test_norm_accepts_mmseg_norm_cfg():
    frozen = models.ResNetV1c(depth=50, stem_channels=8, base_channels=4,
                              norm={"type": "SyncBN", "requires_grad": False})
    assert isinstance(frozen.layer1[0].bn1, nn.SyncBatchNorm)
    assert not any(p.requires_grad for m in frozen.modules()
                   if isinstance(m, nn.SyncBatchNorm) for p in m.parameters())
    assert frozen.stem[0].weight.requires_grad
