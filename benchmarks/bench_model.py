"""Model-level benchmark in the mmseg model zoo's columns: training memory (GB) at batch 2
and the training crop, inference fps at batch 1 on the test-time input, for DANet
R-50-D8 / R-101-D8 with the attention on eager (mmseg's math) vs fused (backend "auto"),
in fp32 and AMP.

    python -m benchmarks.bench_model [--presets danet_r50-d8_4xb2-40k_cityscapes-512x1024,...]

Training step: forward of the full segmentor (decode + auxiliary heads), DANet's losses,
backward, SGD step (lr 0.01, momentum 0.9, weight decay 5e-4, as mmseg). Inference:
``models.inference`` on one image in the preset's test mode (whole 1024×2048 for the
Cityscapes 512×1024 configs, 769×769 sliding windows with stride 513 for the 769×769 ones).
On the CPU, real sizes are far too slow: inputs are scaled by ``--scale`` (default 0.125).
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.cli import script_main, split_list
from benchmarks.measure import (
    CUDA_MEMORY_METHOD,
    SPREAD_LIMIT,
    free_memory,
    live_bytes,
    short_error,
    spread_of,
    timed_calls,
)
from benchmarks.report import TableSet, output_dir
from benchmarks.rows import DTYPES, ModelRow
from benchmarks.sweep import sweep

MODULE = "benchmarks.bench_model"
TITLE = "DANet model benchmark (mmseg model-zoo columns)"
GPU_PRESETS = [
    "danet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "danet_r101-d8_4xb2-40k_cityscapes-512x1024",
    "danet_r50-d8_4xb2-40k_cityscapes-769x769",
    "danet_r101-d8_4xb2-40k_cityscapes-769x769",
]
FULL_EXTRA_PRESETS = [
    "danet_r50-d8_4xb4-80k_ade20k-512x512",
    "danet_r101-d8_4xb4-80k_ade20k-512x512",
    "danet_r50-d8_4xb4-20k_voc12aug-512x512",
    "danet_r101-d8_4xb4-20k_voc12aug-512x512",
]
CPU_PRESETS = ["danet_r50-d8_4xb2-40k_cityscapes-512x1024"]
# CPU default input scale: Cityscapes 512x1024 crop -> 64x128, whole test image -> 128x256.
CPU_SCALE = 0.125
TINY = "tiny"  # models.build_tiny_danet, for --quick
TRAIN_BATCH = 2
# Raw image size before the test Resize: Cityscapes images are 1024x2048; for ADE20K/VOC
# (images of varying size) a crop-sized image stands in.
CITYSCAPES_IMAGE = (1024, 2048)


def models_available() -> str | None:
    """None if ``models`` imports with what this script needs, else why not."""
    try:
        import models  # noqa: F401
        from models import build_danet, danet_loss, get_preset, inference  # noqa: F401
    except Exception as exc:  # ImportError, or a half-written package
        return f"{type(exc).__name__}: {exc}"
    return None


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


def shapes(preset_name: str, scale: float) -> dict:
    """Training crop, test image, test mode and slide windows, scaled by ``scale``."""
    if preset_name == TINY:
        s = _round8(64 * scale)
        return dict(crop=(s, s), test=(s, s), mode="whole", win=None, stride=None, classes=5)
    from models import get_preset
    from models.inference import keep_ratio_size

    p = get_preset(preset_name)
    raw = CITYSCAPES_IMAGE if p.dataset == "cityscapes" else p.crop_size
    test = keep_ratio_size(raw[0], raw[1], p.test_scale)
    out = dict(crop=tuple(_round8(c * scale) for c in p.crop_size), mode=p.test_mode,
               test=tuple(t if scale == 1 else _round8(t * scale) for t in test),
               win=None, stride=None, classes=p.num_classes)
    if p.test_mode == "slide":
        out["win"] = tuple(t if scale == 1 else _round8(t * scale) for t in p.test_crop)
        out["stride"] = tuple(t if scale == 1 else _round8(t * scale) for t in p.test_stride)
    return out


def build_configs(args: argparse.Namespace, device: torch.device) -> list[dict]:
    cuda = device.type == "cuda"
    if args.presets:
        presets = split_list(args.presets)
    elif args.quick:
        presets = [TINY]
    elif cuda:
        presets = GPU_PRESETS + (FULL_EXTRA_PRESETS if args.full else [])
    else:
        presets = GPU_PRESETS if args.full else CPU_PRESETS
    scale = args.scale if args.scale else (1.0 if cuda or args.quick else CPU_SCALE)
    # The fused side: what auto picks on a GPU; on the CPU auto would pick eager at these
    # reduced sizes, so the memory-efficient chunked backend is named instead.
    backends = split_list(args.backends) or ["eager", "auto" if cuda else "chunked"]
    backends = [b for b in backends if b in ("eager", "auto", "chunked", "triton", "cuda")]
    precisions = split_list(args.dtypes) or (["fp32", "amp"] if cuda else ["fp32"])
    precisions = ["amp" if p in ("bf16", "fp16", "amp") else p for p in dict.fromkeys(precisions)]
    configs = []
    for name in presets:
        s = shapes(name, scale)
        for precision in dict.fromkeys(precisions):
            for backend in backends:
                configs.append(dict(
                    op="model", preset=name, backend=backend, precision=precision, scale=scale,
                    crop=f"{s['crop'][0]}x{s['crop'][1]}", test=f"{s['test'][0]}x{s['test'][1]}",
                    test_mode=s["mode"] + (f" {s['win'][0]}x{s['win'][1]}/{s['stride'][0]}"
                                           if s["win"] else ""),
                    device=str(device), threads=args.threads,
                    amp_dtype="bf16", warmup=args.warmup if args.warmup is not None else (2 if cuda else 1),
                    rep=args.rep if args.rep is not None else (5 if cuda else 2 if args.quick else 3),
                ))
    return configs


def _build(cfg: dict, device: torch.device):
    from models import build_danet, build_tiny_danet

    if cfg["preset"] == TINY:
        model = build_tiny_danet(attention_backend=cfg["backend"])
    else:
        model = build_danet(cfg["preset"], attention_backend=cfg["backend"])
    return model.to(device)


def runner(cfg: dict, device: torch.device) -> dict:
    """Train-step memory/time and inference fps of one (preset, backend, precision)."""
    from models import danet_loss, inference

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as mmseg's default runtime
    s = shapes(cfg["preset"], cfg["scale"])
    amp = cfg["precision"] == "amp"
    amp_dtype = DTYPES[cfg["amp_dtype"]]
    result = {"status": "ok"}
    base = live_bytes(device)  # before the model: weights, grads, momenta count as in mmseg
    model = optimizer = None
    try:
        torch.manual_seed(0)
        model = _build(cfg, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        h, w = s["crop"]
        images = torch.randn(TRAIN_BATCH, 3, h, w, device=device)
        labels = torch.randint(0, s["classes"], (TRAIN_BATCH, h, w), device=device)
        labels[:, : h // 8] = 255  # some ignored pixels, as real labels have
        scaler = torch.amp.GradScaler(device.type) if (amp and amp_dtype == torch.float16) else None

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                losses = danet_loss(model(images), labels, model.align_corners)
            if scaler is None:
                losses["loss"].backward()
                optimizer.step()
            else:
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()

        model.train()
        # Peak of a whole step over everything the run owns (mmseg's "Mem (GB)").
        stats, peak_total, method = timed_calls(train_step, device, cfg["warmup"], cfg["rep"], base)
        result.update({"train_" + k: v for k, v in stats.items()})
        result.update(train_mem_gb=peak_total / 2**30, mem_method=method)
    except Exception as exc:
        result = {"status": "train " + short_error(exc)}
    optimizer = None
    if model is not None:
        model.zero_grad(set_to_none=True)
    free_memory(device)
    try:
        if model is None:
            raise RuntimeError("model not built")
        model.eval()
        th, tw = s["test"]
        image = torch.randn(1, 3, th, tw, device=device)

        def infer():
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                inference(model, image, s["mode"], s["win"], s["stride"])

        stats, peak, _ = timed_calls(infer, device, cfg["warmup"], cfg["rep"])
        result.update({"infer_" + k: v for k, v in stats.items()})
        result.update(fps=1000.0 / stats["ms"], infer_peak_gb=peak / 2**30)
    except Exception as exc:
        msg = "infer " + short_error(exc)
        result["status"] = msg if result["status"] == "ok" else result["status"] + "; " + msg
    model = None  # free the weights before the next config
    free_memory(device)
    return result


def describe(cfg: dict) -> str:
    return f"{cfg['preset']} {cfg['backend']} {cfg['precision']} (crop {cfg['crop']}, test {cfg['test']})"


def derive(rows: list[ModelRow]) -> None:
    """Ratios to the eager row of the same preset and precision, and the noise mark."""
    base = {}
    for r in rows:
        if r.backend == "eager":
            base[(r.preset, r.precision)] = r
    for r in rows:
        b = base.get((r.preset, r.precision))
        r.mem_vs_eager = (r.train_mem_gb / b.train_mem_gb
                          if b is not None and r.train_mem_gb and b.train_mem_gb else None)
        r.fps_vs_eager = r.fps / b.fps if b is not None and r.fps and b.fps else None
        known = [x for x in (spread_of(*t) for t in r.timings().values()) if x is not None]
        r.noisy = any(x > SPREAD_LIMIT for x in known) if known else None


def notes(device: torch.device, configs: list[dict]) -> list[str]:
    scale = configs[0]["scale"] if configs else 1.0
    out = [
        "attention: 'eager' = mmseg's math (danet_ops backend 'eager'); "
        + ("'auto' = the fused backend auto picks on a GPU (Triton, else the CUDA extension)."
           if device.type == "cuda" else "'chunked' = danet_ops' memory-efficient pure-PyTorch backend."),
        "Mem (GB): training step (forward, losses, backward, SGD momentum step) at batch 2 on "
        "the training crop; peak over everything the run allocated since before the model "
        "was built (weights, gradients, momenta, activations), as mmseg's max_memory_allocated.",
        "Inf time (fps): batch 1, one test image in the preset's test mode "
        "(whole, or slide with window/stride), median of the timed repeats after warm-up.",
        "p20–p80: 20th and 80th percentiles of the timed repeats (the first of them is the "
        "memory-measuring call); spread = (p80 − p20)/median, above "
        f"{100 * SPREAD_LIMIT:.0f}% marked ⚠ (noisy: compare with care).",
        "precision 'amp': torch.autocast bf16 (weights fp32).",
        "Random weights and inputs; the numbers measure cost, not accuracy.",
    ]
    if scale != 1.0:
        out.insert(0, f"**Reduced inputs**: every crop, test image and slide window is scaled "
                      f"by {scale} (rounded to multiples of 8) — real sizes are far too slow on "
                      f"this device. Compare rows with each other, not with the model zoo.")
    if device.type == "cuda":
        out.append("Timing: CUDA-synchronised wall clock per call, median. " + CUDA_MEMORY_METHOD)
    else:
        out.append("Timing: time.perf_counter per call, median. CPU memory: each config runs in "
                   "a fresh process; train Mem = VmHWM during one step (peak mark reset just "
                   "before it) − VmRSS before the model was built.")
    return out


def run(args: argparse.Namespace, device: torch.device, env: dict, peak_tflops=None) -> list[ModelRow]:
    why = models_available()
    if why is not None:
        print(f"model benchmark skipped: the models package does not import ({why})")
        return []
    configs = build_configs(args, device)
    print(f"model: {len(configs)} configs on {env['device']}", flush=True)
    table = TableSet(output_dir(args.out, device), "model", TITLE, env, notes(device, configs),
                     ModelRow, derive=derive, expected=len(configs))
    rows = sweep(MODULE, runner, configs, device, not args.no_isolate, args.timeout, describe, table)
    table.finish()
    return rows


def main(argv=None) -> None:
    script_main(argv, __doc__, run, runner, needs_peak=False)


if __name__ == "__main__":
    main(sys.argv[1:])
