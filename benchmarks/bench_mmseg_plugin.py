"""Training memory of mmseg's DANet, stock ``DAHead`` vs the plugin's ``FusedDAHead``.

    python -m benchmarks.bench_mmseg_plugin [--crop 512x1024] [--batch 2] [--device cpu]

Needs mmsegmentation (``pip install ".[mmseg]"``). Builds mmseg's own
``danet_r50-d8_4xb2-40k_cityscapes-512x1024`` config twice, stock and with the plugin's two
lines, each in a fresh process, and measures one training step (``model.loss`` on the
config's crop, backward) at the config's batch: peak memory above what was live before the
model was built (CUDA: ``max_memory_allocated``; CPU: VmHWM − VmRSS). Random weights and
labels. With mmcv-lite (no compiled ops) ``mmcv.ops`` is stubbed as in
tests/test_mmseg_plugin.py: mmseg imports it in files DANet never uses.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types

CONFIG = "danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py"
PLUGIN_LINES = """
custom_imports = dict(imports=["danet_ops.mmseg"], allow_failed_imports=False)
model = dict(decode_head=dict(type="FusedDAHead"))
"""


def _stub_mmcv_ops() -> None:
    try:
        import mmcv.ops  # noqa: F401
        return
    except ImportError:
        pass

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None  # never called: DANet uses no mmcv op

    stub = types.ModuleType("mmcv.ops")
    stub.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = stub


def measure(config: str, crop: tuple[int, int], batch: int, device: str) -> None:
    """One training step in this process; prints ``peak_bytes seconds head_type``."""
    _stub_mmcv_ops()
    import torch
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    from benchmarks.measure import live_bytes, peak_bytes

    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None
    device = torch.device(device)
    base = live_bytes(device)
    model = MODELS.build(cfg.model).to(device).train()
    images = torch.randn(batch, 3, *crop, device=device)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=crop, pad_shape=crop, ori_shape=crop))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, *crop), device=device))
        samples.append(sample)

    def step():
        losses = model.loss(images, samples)
        sum(v for k, v in losses.items() if "loss" in k).backward()

    start = time.perf_counter()
    peak, _ = peak_bytes(step, device, base)
    print(peak, time.perf_counter() - start, type(model.decode_head).__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", default="512x1024", help="training crop HxW (the config's)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (the config's per GPU)")
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    crop = tuple(int(s) for s in args.crop.split("x"))
    if args._measure:
        measure(args._measure, crop, args.batch, args.device)
        return

    import mmseg

    stock = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        fused = os.path.join(tmp, "danet_fused.py")
        with open(fused, "w") as f:
            f.write(f"_base_ = {stock!r}\n{PLUGIN_LINES}")
        rows = []
        for config in (stock, fused):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_mmseg_plugin", "--_measure", config,
                 "--crop", args.crop, "--batch", str(args.batch), "--device", args.device],
                check=True, capture_output=True, text=True,
            ).stdout.split()
            rows.append((out[2], int(out[0]), float(out[1])))
    print(f"mmseg {CONFIG}, training step, batch {args.batch}, crop {args.crop}, {args.device}, fp32")
    print("| decode head | peak memory (GB) | step (s) |\n|---|---|---|")
    for head, peak, seconds in rows:
        print(f"| {head} | {peak / 1e9:.2f} | {seconds:.1f} |")
    print(f"saved: {(rows[0][1] - rows[1][1]) / 1e9:.2f} GB ({1 - rows[1][1] / rows[0][1]:.0%})")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
