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

from benchmarks.measure import timing_note
from benchmarks.ops import OpBenchmark
from benchmarks.rows import DTYPES

MODULE = "benchmarks.bench_cam"
TITLE = "CAM (channel attention) op benchmark"
BASELINES = ("compile",)
# Input magnitude: Gram entries Σ_n x² stay well inside fp16's range at N = 32768.
INPUT_STD = 0.5


def plan(args: argparse.Namespace, device: torch.device) -> dict:
    """The default shapes, dtypes and modes of this run (--quick, the default, or --full);
    the command line's options override each (``OpBenchmark.configs``)."""
    if args.quick:
        return dict(batch=1, channels=32, sizes="8x8,12x16", dtypes="fp32", modes="fwd,fwdbwd")
    if device.type == "cuda":
        return dict(batch=2, channels=512, sizes="64x64,64x128,97x97,128x256",
                    dtypes="fp32,fp16,bf16" if args.full else "fp32,bf16", modes="fwd,fwdbwd")
    if args.full:
        return dict(batch=2, channels=512, sizes="32x32,48x64,64x64,64x128,97x97,128x256",
                    dtypes="fp32", modes="fwd,fwdbwd")
    return dict(batch=2, channels=512, sizes="32x32,64x64,64x128", dtypes="fp32", modes="fwdbwd")


def flops(cfg: dict) -> float:
    fwd = 4.0 * cfg["B"] * cfg["C"] ** 2 * cfg["N"]
    return fwd if cfg["mode"] == "fwd" else 3.0 * fwd


def setup(cfg: dict, device: torch.device):
    """Inputs and the function to time for one config; returns (fn, extra row fields)."""
    import danet_ops
    from danet_ops.reference import channel_attention_reference

    dtype = DTYPES[cfg["dtype"]]
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
    return fn, {}


def notes(device: torch.device) -> list[str]:
    timing = timing_note(device)
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


BENCH = OpBenchmark(name="cam", title=TITLE, module=MODULE, doc=__doc__, baselines=BASELINES,
                    plan=plan, setup=setup, flops=flops, notes=notes, compile_on_cpu=False)
main = BENCH.main

if __name__ == "__main__":
    main(sys.argv[1:])
