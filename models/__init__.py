"""DANet (Fu et al., CVPR 2019) on danet_ops' fused attention, mmseg-compatible.

Used from a checkout (not installed with the danet_ops wheel). Checkpoints from mmseg's
DANet configs load with ``load_checkpoint``; ``build_danet(preset)`` builds the matching model.
"""
from models.checkpoint import LoadResult, load_checkpoint, read_checkpoint
from models.conv_module import ConvModule, build_norm
from models.da_head import DAHead
from models.fcn_head import FCNHead
from models.inference import aug_inference, inference, segment, slide_inference, whole_inference
from models.losses import danet_loss, seg_cross_entropy
from models.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from models.presets import PRESETS, Preset, build_danet, build_tiny_danet, get_preset
from models.resnet import ResNetV1c
from models.segmentor import DANet
from models.training import train_step

__all__ = [
    "ConvModule", "DAHead", "DANet", "FCNHead", "IMAGENET_MEAN", "IMAGENET_STD", "LoadResult",
    "PRESETS", "Preset", "ResNetV1c", "aug_inference", "build_danet", "build_norm",
    "build_tiny_danet", "danet_loss", "get_preset", "inference", "load_checkpoint", "normalize",
    "read_checkpoint", "seg_cross_entropy", "segment", "slide_inference", "train_step",
    "whole_inference",
]
