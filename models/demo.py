"""Segment one image with DANet and save a colour-coded mask next to it.

    python -m models.demo IMAGE [--checkpoint CKPT] [--preset NAME] [--backend B] [--device D]

Writes ``<name>_danet_mask.png`` beside IMAGE. Without ``--checkpoint`` the weights are
random (the mask shows the pipeline runs, not a segmentation).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.image_io import colorize, read_image, write_png
from models.inference import segment
from models.presets import PRESETS, build_danet, get_preset

DEFAULT_PRESET = "danet_r50-d8_4xb2-40k_cityscapes-512x1024"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.demo", description=__doc__.split("\n")[0])
    parser.add_argument("image", help="PNG or PPM (any format if Pillow is installed)")
    parser.add_argument("--checkpoint", help="mmseg checkpoint: local path or URL")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                        metavar="NAME", help=f"mmseg config name (default {DEFAULT_PRESET})")
    parser.add_argument("--backend", default="auto",
                        help="attention backend: auto, eager, chunked, triton, cuda")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resize", action="store_true",
                        help="rescale to the preset's test scale first, as mmseg's test pipeline does")
    parser.add_argument("--flip", action="store_true", help="also average the horizontal flip")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time scales")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    torch.manual_seed(args.seed)
    model = build_danet(preset, attention_backend=args.backend)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, strict=True)
        print(f"weights: {args.checkpoint}")
    else:
        print("weights: RANDOM (no --checkpoint given): the mask is not a real segmentation")
    model.to(args.device).eval()

    rgb = read_image(args.image)
    images = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    start = time.perf_counter()
    mask = segment(model, images, preset, resize=args.resize, scales=args.scales, flip=args.flip)
    seconds = time.perf_counter() - start
    mask = mask[0].cpu().numpy().astype(np.int64)

    stem, _ = os.path.splitext(args.image)
    out_path = f"{stem}_danet_mask.png"
    write_png(out_path, colorize(mask, preset.num_classes))
    classes, counts = np.unique(mask, return_counts=True)
    largest = sorted(zip(classes, counts), key=lambda t: -t[1])[:5]
    top = ", ".join(f"{c}: {n / mask.size:.0%}" for c, n in largest)
    print(f"preset: {preset.name} ({preset.dataset}, {preset.num_classes} classes, "
          f"test {preset.test_mode})")
    print(f"image: {args.image} {rgb.shape[1]}x{rgb.shape[0]}, backend {args.backend}, "
          f"device {args.device}, {seconds:.2f} s")
    print(f"classes (share of pixels): {top}")
    print(f"mask: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
