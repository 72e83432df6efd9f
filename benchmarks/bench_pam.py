"""PAM (position attention) op benchmark: every danet_ops backend on the device against
eager (mmseg's math), torch.compile of eager, and SDPA.

    python -m benchmarks.bench_pam [--sizes 64x128,97x97] [--dtypes fp32,bf16] [--modes fwd,fwdbwd] ...

Forward: ``gamma · softmax(qᵀk) · v + x``. Forward+backward: the same, then gradients
w.r.t. q, k, v, gamma and x for a random ``dout`` (``torch.autograd.grad``).
FLOPs: forward ``2·B·N²·(Cqk + C)``; forward+backward counted as 3× forward.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks.measure import timing_note
from benchmarks.ops import OpBenchmark
from benchmarks.rows import DTYPES

MODULE = "benchmarks.bench_pam"
TITLE = "PAM (position attention) op benchmark"
BASELINES = ("compile", "sdpa", "flex")


def plan(args: argparse.Namespace, device: torch.device) -> dict:
    """The default shapes, dtypes and modes of this run (--quick, the default, or --full);
    the command line's options override each (``OpBenchmark.configs``)."""
    if args.quick:
        return dict(batch=1, channels=32, qk=8, sizes="8x8,12x16", dtypes="fp32", modes="fwd,fwdbwd")
    if device.type == "cuda":
        return dict(batch=2, channels=512, qk=64,
                    sizes=("32x32,48x64," if args.full else "") + "64x64,64x128,97x97,128x256",
                    dtypes="fp32,fp16,bf16" if args.full else "fp32,bf16", modes="fwd,fwdbwd")
    if args.full:
        return dict(batch=2, channels=512, qk=64, sizes="32x32,48x64,64x64,64x128,97x97,128x256",
                    dtypes="fp32", modes="fwd,fwdbwd")
    # The issue-2 headline on CPU: B=1, 64x128 (N=8192), fp32, fwd+bwd, plus a curve.
    return dict(batch=1, channels=512, qk=64, sizes="32x32,48x64,64x128", dtypes="fp32",
                modes="fwdbwd")


def flops(cfg: dict) -> float:
    fwd = 2.0 * cfg["B"] * cfg["N"] ** 2 * (cfg["Cqk"] + cfg["C"])
    return fwd if cfg["mode"] == "fwd" else 3.0 * fwd


def _sdpa(q, k, v, gamma, x, cuda: bool):
    """What a user would write with SDPA: [B, 1, N, d] contiguous inputs, scale=1.0,
    then back to channel-first and the same ``gamma · out + x`` epilogue."""
    qs = q.transpose(1, 2).unsqueeze(1).contiguous()
    ks = k.transpose(1, 2).unsqueeze(1).contiguous()
    vs = v.transpose(1, 2).unsqueeze(1).contiguous()
    if cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            o = F.scaled_dot_product_attention(qs, ks, vs, scale=1.0)
    else:
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=1.0)
    return gamma * o.squeeze(1).transpose(1, 2) + x


# FlexAttention's default tiles do not fit a value head dim of 512 (on an H200, 2026-11-28,
# the defaults failed and the 32/16 tiles below ran); these are tried in order and the
# first that compiles and runs is used (the row names it).
FLEX_KERNEL_OPTIONS = [
    {"BLOCK_M": 32, "BLOCK_N": 32, "num_stages": 1, "num_warps": 4,
     "BLOCK_M1": 16, "BLOCK_N1": 32, "BLOCK_M2": 32, "BLOCK_N2": 16},
    {"BLOCK_M": 16, "BLOCK_N": 16, "num_stages": 1, "num_warps": 4,
     "BLOCK_M1": 16, "BLOCK_N1": 16, "BLOCK_M2": 16, "BLOCK_N2": 16},
]


def _flex(q, k, v, gamma, x, grad: bool, dout):
    """FlexAttention under torch.compile on [B, 1, N, d] copies, scale=1.0; returns the
    forward to time and the kernel options that ran (the first of FLEX_KERNEL_OPTIONS that
    works for this shape, dtype and mode)."""
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)
    errors = []
    for options in FLEX_KERNEL_OPTIONS:
        def forward(options=options):
            qs, ks, vs = (t.transpose(1, 2).unsqueeze(1).contiguous() for t in (q, k, v))
            o = compiled(qs, ks, vs, scale=1.0, kernel_options=options)
            return gamma * o.squeeze(1).transpose(1, 2) + x
        try:
            out = forward()
            if grad:
                torch.autograd.grad(out, (q, k, v, gamma, x), dout)
            return forward, options
        except Exception as exc:  # out of shared memory etc.: try smaller tiles
            errors.append(f"{options}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    raise RuntimeError("flex_attention ran with none of the kernel options: " + " | ".join(errors))


def setup(cfg: dict, device: torch.device):
    """Inputs and the function to time for one config; returns (fn, extra row fields:
    FlexAttention's kernel options where it ran)."""
    import danet_ops
    from danet_ops.reference import position_attention_reference

    dtype = DTYPES[cfg["dtype"]]
    grad = cfg["mode"] == "fwdbwd"
    b, c, cqk, n = cfg["B"], cfg["C"], cfg["Cqk"], cfg["N"]
    extra = {}

    def make(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)

    q, k, v, x = make(b, cqk, n), make(b, cqk, n), make(b, c, n), make(b, c, n)
    gamma = torch.tensor(0.5, device=device, dtype=dtype).requires_grad_(grad)
    backend = cfg["backend"]
    if backend == "sdpa":
        cuda = device.type == "cuda"

        def forward():
            return _sdpa(q, k, v, gamma, x, cuda)
    elif backend == "compile":
        torch._dynamo.reset()
        compiled = torch.compile(position_attention_reference, dynamic=False)

        def forward():
            return compiled(q, k, v, gamma, x)
    elif backend == "flex":
        dout_probe = torch.randn(b, c, n, device=device, dtype=dtype)
        forward, options = _flex(q, k, v, gamma, x, grad, dout_probe)
        extra["flex_kernel_options"] = "default" if options is None else str(options)
    else:
        def forward():
            return danet_ops.position_attention(q, k, v, gamma=gamma, residual=x, backend=backend)

    if grad:
        dout = torch.randn(b, c, n, device=device, dtype=dtype)
        inputs = (q, k, v, gamma, x)

        def fn():
            out = forward()
            torch.autograd.grad(out, inputs, dout)
    else:
        def fn():
            with torch.no_grad():
                forward()
    return fn, extra


def notes(device: torch.device) -> list[str]:
    timing = timing_note(device)
    sdpa = ("sdpa: F.scaled_dot_product_attention(q, k, v, scale=1.0) on [B, 1, N, d] contiguous "
            "copies of the channel-first inputs (the copies and the `gamma·out + x` epilogue are "
            "inside the timed call), "
            + ("restricted to SDPBackend.EFFICIENT_ATTENTION." if device.type == "cuda"
               else "whatever CPU backend PyTorch picks."))
    return [
        "Op: out = gamma · softmax(qᵀk) · v + x (no 1/sqrt(d) scale); q, k [B, Cqk, N], v, x [B, C, N].",
        "fwd: under torch.no_grad. fwdbwd: forward + torch.autograd.grad w.r.t. q, k, v, gamma, x "
        "with a random dout.",
        "FLOPs: fwd 2·B·N²·(Cqk+C); fwdbwd counted as 3× fwd. % of mm peak: TFLOP/s over the "
        "measured dense bf16 matmul rate (CUDA only).",
        "eager: danet_ops backend 'eager' (mmseg's math); compile: torch.compile(reference, "
        "dynamic=False); chunked/triton/cuda: danet_ops backends.",
        sdpa, timing,
        "speedup vs eager = eager ms / ms; memory vs eager = peak / eager peak (same shape, dtype, mode).",
    ]


BENCH = OpBenchmark(name="pam", title=TITLE, module=MODULE, doc=__doc__, baselines=BASELINES,
                    plan=plan, setup=setup, flops=flops, notes=notes)
main = BENCH.main

if __name__ == "__main__":
    main(sys.argv[1:])
