"""CAM (channel attention) op benchmark: every danet_ops backend on the device against
eager (mmseg's math) and torch.compile of eager.

    python -m benchmarks.bench_cam [--sizes 64x128,97x97] [--dtypes fp32,bf16] [--modes fwd,fwdbwd] ...

Forward: ``gamma · softmax(rowmax(E) − E) · X + x`` with ``E = X Xᵀ``. Forward+backward:
the same, then gradients w.r.t. x and gamma for a random ``dout``.
FLOPs: forward ``4·B·C²·N``; forward+backward counted as 3× forward.
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import common

MODULE = "benchmarks.bench_cam"
TITLE = "CAM (channel attention) op benchmark"
BASELINES = ["compile"]
# Input magnitude: Gram entries Σ_n x² stay well inside fp16's range at N = 32768.
INPUT_STD = 0.5


def plan(args: argparse.Namespace, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    if args.quick:
        p = dict(batch=1, channels=32, sizes="8x8,12x16", dtypes="fp32", modes="fwd,fwdbwd")
    elif cuda:
        p = dict(batch=2, channels=512, sizes="64x64,64x128,97x97,128x256",
                 dtypes="fp32,fp16,bf16" if args.full else "fp32,bf16", modes="fwd,fwdbwd")
    elif args.full:
        p = dict(batch=2, channels=512, sizes="32x32,48x64,64x64,64x128,97x97,128x256",
                 dtypes="fp32", modes="fwd,fwdbwd")
    else:
        p = dict(batch=2, channels=512, sizes="32x32,64x64,64x128", dtypes="fp32", modes="fwdbwd")
    return dict(
        batch=args.batch or p["batch"], channels=args.channels or p["channels"],
        sizes=common.parse_sizes(args.sizes or p["sizes"]),
        dtypes=common.split_list(args.dtypes or p["dtypes"]),
        modes=common.split_list(args.modes or p["modes"]),
    )


def build_configs(args: argparse.Namespace, device: torch.device) -> list[dict]:
    p = plan(args, device)
    backends = common.op_backends(device, args, BASELINES, not_default_compile=True)
    timing = common.timing_args(args, device, cpu_warmup=1, cpu_rep=2 if args.quick else 3)
    configs = []
    for h, w in p["sizes"]:
        for dtype in p["dtypes"]:
            for mode in p["modes"]:
                for backend in backends:
                    configs.append(dict(
                        op="cam", shape=f"{h}x{w}", H=h, W=w, N=h * w, B=p["batch"],
                        C=p["channels"], Cqk=None, dtype=dtype, mode=mode, backend=backend,
                        device=str(device), threads=args.threads, **timing,
                    ))
    return configs


def flops(cfg: dict) -> float:
    fwd = 4.0 * cfg["B"] * cfg["C"] ** 2 * cfg["N"]
    return fwd if cfg["mode"] == "fwd" else 3.0 * fwd


def setup(cfg: dict, device: torch.device):
    """Inputs and the function to time for one config; returns (fn, extra row fields)."""
    import danet_ops
    from danet_ops.reference import channel_attention_reference

    dtype = common.DTYPES[cfg["dtype"]]
    grad = cfg["mode"] == "fwdbwd"
    b, c, n = cfg["B"], cfg["C"], cfg["N"]
    x = (INPUT_STD * torch.randn(b, c, n, device=device)).to(dtype).requires_grad_(grad)
    gamma = torch.tensor(0.5, device=device, dtype=dtype).requires_grad_(grad)
    backend = cfg["backend"]
    if backend == "compile":
        torch._dynamo.reset()
        compiled = torch.compile(channel_attention_reference, dynamic=False)

        def forward():
            return compiled(x, gamma)
    else:
        def forward():
            return danet_ops.channel_attention(x, gamma=gamma, backend=backend)

    if grad:
        dout = torch.randn(b, c, n, device=device, dtype=dtype)

        def fn():
            torch.autograd.grad(forward(), (x, gamma), dout)
    else:
        def fn():
            with torch.no_grad():
                forward()
    return fn, {"flops": flops(cfg)}


def runner(cfg: dict, device: torch.device) -> dict:
    return common.run_one(setup, cfg, device)


def describe(cfg: dict) -> str:
    return f"cam {cfg['shape']} B={cfg['B']} C={cfg['C']} {cfg['dtype']} {cfg['mode']} {cfg['backend']}"


def notes(device: torch.device) -> list[str]:
    timing = common.timing_note(device)
    return [
        "Op: out = gamma · softmax(rowmax(E) − E) · X + x, E = X Xᵀ; x [B, C, N] "
        f"(inputs {INPUT_STD}·randn).",
        "fwd: under torch.no_grad. fwdbwd: forward + torch.autograd.grad w.r.t. x and gamma "
        "with a random dout.",
        "FLOPs: fwd 4·B·C²·N; fwdbwd counted as 3× fwd. % of mm peak: TFLOP/s over the "
        "measured dense bf16 matmul rate (CUDA only).",
        "eager: danet_ops backend 'eager' (mmseg's math); compile: torch.compile(reference, "
        "dynamic=False); chunked/triton/cuda: danet_ops backends. (No SDPA baseline: CAM has "
        "softmax(-E) over a Gram matrix, not an SDPA shape.)",
        timing,
        *(["The default CPU run leaves out the torch.compile baseline (compile time on a few "
           "cores); --full or --backends eager,compile,chunked brings it back."]
          if device.type == "cpu" else []),
        "speedup vs eager = eager ms / ms; memory vs eager = peak / eager peak (same shape, dtype, mode).",
    ]


def run(args: argparse.Namespace, device: torch.device, env: dict, peak_tflops) -> list[dict]:
    configs = build_configs(args, device)
    print(f"CAM: {len(configs)} configs on {env['device']}", flush=True)
    return common.run_op("cam", TITLE, MODULE, runner, configs, describe, notes(device), args,
                         device, env, peak_tflops)


def main(argv=None) -> None:
    common.script_main(argv, __doc__, run, runner)


if __name__ == "__main__":
    main(sys.argv[1:])
