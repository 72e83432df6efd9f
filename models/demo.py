"""Segment one image with DANet and save a colour-coded mask and its legend.

    python -m models.demo IMAGE [--checkpoint CKPT] [--preset NAME] [--backend B] [--device D]
                                [--out MASK]

Writes the mask to ``--out`` (default ``<image name>_danet_mask.png`` beside IMAGE) and a
legend of the classes it shows (colour, name, share of pixels) beside it as
``<mask name>_legend.png``. Without ``--checkpoint`` the weights are random (the mask shows
the pipeline runs, not a segmentation). Bad arguments end in a one-line error (exit code 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

import danet_ops
from models.checkpoint import load_checkpoint
from models.classes import class_names
from models.image_io import check_writable, colorize, palette_for, read_image, write_image
from models.inference import segment
from models.legend import legend
from models.presets import PRESETS, build_danet, get_preset

DEFAULT_PRESET = "danet_r50-d8_4xb2-40k_cityscapes-512x1024"
# Rows in the legend and the printout; the rest of the classes are summed in one more row.
SHOWN_CLASSES = 12


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.demo", description=__doc__.split("\n")[0],
    )
    parser.add_argument("image", help="PNG or PPM (other formats if Pillow is installed)")
    parser.add_argument("--checkpoint", help="mmseg checkpoint: local path or URL (default: random weights)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                        metavar="NAME", help="mmseg config name (default %(default)s)")
    parser.add_argument("--backend", default="auto", choices=danet_ops.BACKENDS,
                        help="attention backend (default %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device: cpu, cuda, cuda:1, ... (default %(default)s)")
    parser.add_argument("--out", metavar="MASK",
                        help="mask file, .png (other formats need Pillow); the legend goes "
                        "beside it as <MASK name>_legend.png (default <image name>_danet_mask.png "
                        "beside the image)")
    parser.add_argument("--resize", action="store_true",
                        help="rescale to the preset's test scale first, as mmseg's test pipeline does")
    parser.add_argument("--flip", action="store_true", help="also average the horizontal flip")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="test-time scales (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights (default %(default)s)")
    return parser


def _device_problem(name: str) -> str | None:
    """None if tensors can be made on device ``name``, else why not."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: no CUDA device is available here; use --device cpu"
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        return f"--device {name}: {str(err).splitlines()[0]}"
    return None


def _backend_problem(backend: str, device: str) -> str | None:
    """None if ``backend`` runs on ``device``: the op itself is asked, on a tiny input."""
    try:
        danet_ops.channel_attention(torch.randn(1, 2, 3, device=device), backend=backend)
    except (ValueError, TypeError, danet_ops.BackendUnavailableError) as err:
        return f"--backend {backend} cannot run on --device {device}: {err}"
    return None


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, checked before any model is built, or None."""
    if not os.path.isfile(args.image):
        kind = "is a directory, not an image file" if os.path.isdir(args.image) else "not found"
        return f"image {args.image}: {kind}"
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        return f"--out {args.out}: folder {folder} does not exist"
    try:
        check_writable(args.out)
    except ValueError as err:
        return f"--out: {err}"
    return _device_problem(args.device) or _backend_problem(args.backend, args.device)


def legend_path(mask_path: str) -> str:
    stem, ext = os.path.splitext(mask_path)
    return f"{stem}_legend{ext}"


def class_shares(mask: np.ndarray, names: list[str]) -> list[tuple[int, str, float]]:
    """(class, name, share of pixels) for the classes in ``mask``, largest first."""
    classes, counts = np.unique(mask, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(int(classes[i]), names[classes[i]], counts[i] / mask.size) for i in order]


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.005 else "<1%"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = f"{os.path.splitext(args.image)[0]}_danet_mask.png"
    problem = _argument_problem(args)
    if problem is not None:
        parser.error(problem)
    try:
        rgb = read_image(args.image)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    preset = get_preset(args.preset)
    torch.manual_seed(args.seed)
    model = build_danet(preset, attention_backend=args.backend)
    if args.checkpoint:
        try:
            load_checkpoint(model, args.checkpoint, strict=True)
        except ValueError as err:
            parser.error(f"--checkpoint: {err}")
        print(f"weights: {args.checkpoint}")
    else:
        print("weights: RANDOM (no --checkpoint given): the mask is not a real segmentation")
    model.to(args.device).eval()

    images = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    start = time.perf_counter()
    mask = segment(model, images, preset, resize=args.resize, scales=args.scales, flip=args.flip)
    seconds = time.perf_counter() - start
    mask = mask[0].cpu().numpy().astype(np.int64)

    write_image(args.out, colorize(mask, preset.num_classes))
    shares = class_shares(mask, class_names(preset.dataset, preset.num_classes))
    shown, rest = shares[:SHOWN_CLASSES], shares[SHOWN_CLASSES:]
    colours = palette_for(preset.num_classes)
    rows = [(f"{name} {_percent(share)}", tuple(int(c) for c in colours[k])) for k, name, share in shown]
    if rest:
        rows.append((f"+{len(rest)} more {_percent(sum(s for _, _, s in rest))}", (255, 255, 255)))
    write_image(legend_path(args.out), legend(rows))

    print(f"preset: {preset.name} ({preset.dataset}, {preset.num_classes} classes, "
          f"test {preset.test_mode})")
    print(f"image: {args.image} {rgb.shape[1]}x{rgb.shape[0]}, backend {args.backend}, "
          f"device {args.device}, {seconds:.2f} s")
    top = ", ".join(f"{name} {_percent(share)}" for _, name, share in shown)
    print(f"classes (share of pixels): {top}" + (f", and {len(rest)} more" if rest else ""))
    print(f"mask: {args.out}")
    print(f"legend: {legend_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
