"""How many Triton kernels one DANet training step compiles, and how long it takes.

    python -m benchmarks.compile_count [--dtype bf16] [--size 64x128] [--batch 2]

One PAM + CAM forward and backward at DANet's head (C = 512, Cqk = 64) on the ``triton``
backend, in this process. Compiles are counted as the kernel binaries (``*.cubin``) that
appear in Triton's cache directory (``TRITON_CACHE_DIR``): run it twice with the same
directory to see a cold first use and a second process that loads the cached binaries and
autotune choices.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch


def cache_dir() -> Path:
    from triton import knobs

    return Path(os.environ.get("TRITON_CACHE_DIR") or knobs.cache.dir)


def count_binaries(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.cubin")) if root.exists() else 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--size", default="64x128")
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    import danet_ops

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    h, w = (int(v) for v in args.size.split("x"))
    n, root = h * w, cache_dir()
    before = count_binaries(root)
    start = time.perf_counter()
    x = torch.randn(args.batch, 512, n, device="cuda", dtype=dtype, requires_grad=True)
    q, k = (torch.randn(args.batch, 64, n, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    gamma = torch.tensor(0.5, device="cuda", requires_grad=True)
    out = danet_ops.position_attention(q, k, x, gamma=gamma, residual=x, backend="triton")
    out = out + danet_ops.channel_attention(x, gamma=gamma, backend="triton")
    out.float().square().mean().backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"DANet step {args.size} B={args.batch} {args.dtype}: {count_binaries(root) - before} Triton "
          f"compiles in {seconds:.1f} s (cache {root})")


if __name__ == "__main__":
    main(sys.argv[1:])
