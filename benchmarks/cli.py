"""The command line every benchmark script shares (``python -m benchmarks`` takes the same
options plus ``--ops``), and the ``main`` of each script: a sweep, or (``--one-config``)
the fresh process that measures one CPU config of it."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from benchmarks.environment import environment, matmul_peak_tflops, pick_device
from benchmarks.measure import CPU_MIN_TIME_S, CPU_WARMUP_S, child_main
from benchmarks.plots import pyplot
from benchmarks.sweep import interrupt_on_sigterm


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        h, _, w = part.strip().lower().partition("x")
        sizes.append((int(h), int(w or h)))
    return sizes


def split_list(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", help="results root; files go to OUT/<device-slug>/ "
                   "(default: benchmarks/results)")
    p.add_argument("--full", action="store_true", help="the whole sweep (DANet shapes, all dtypes)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--batch", type=int, help="batch size B")
    p.add_argument("--channels", type=int, help="value / feature channels C (DANet: 512)")
    p.add_argument("--qk-channels", type=int, help="PAM query/key channels (DANet: 64)")
    p.add_argument("--sizes", help="feature-map sizes HxW, comma-separated, e.g. 64x128,97x97")
    p.add_argument("--dtypes", help="fp32,fp16,bf16 (model benchmark: fp32,amp)")
    p.add_argument("--modes", help="fwd,fwdbwd")
    p.add_argument("--backends", help="ops: subset of eager,compile,sdpa,chunked,triton,cuda; "
                   "model: eager,auto (or a backend name)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baseline")
    p.add_argument("--variants", action="store_true",
                   help="ops: after each triton row, one per Triton variant (triton[<variant>], "
                   "benchmarks/variants.py), timed side by side")
    p.add_argument("--warmup", type=int,
                   help=f"warm-up calls, CPU: at least this many and {CPU_WARMUP_S:g} s (default 1); "
                   "CUDA op benchmarks: do_bench warm-up ms (default 25)")
    p.add_argument("--rep", type=int,
                   help=f"timed calls, CPU: at least this many and {CPU_MIN_TIME_S:g} s (default 3, "
                   "--quick 2); CUDA op benchmarks: do_bench measurement ms (default 100)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per CPU config process (default 900)")
    p.add_argument("--no-isolate", action="store_true",
                   help="CPU: measure in this process (faster; memory less trustworthy)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--presets", help="model benchmark: comma-separated preset names")
    p.add_argument("--scale", type=float, help="model benchmark: input scale (CPU default 0.125)")
    p.add_argument("--one-config", help=argparse.SUPPRESS)


def script_main(argv: Optional[list[str]], doc: str, run: Callable, runner: Callable,
                needs_peak: bool = True) -> None:
    """The ``main`` of each bench_* script: parse the common arguments, then either run one
    isolated config (``--one-config``, the child process of a sweep) or the whole script:
    ``run(args, device, env, peak_tflops)``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.one_config:
        child_main(runner, args.one_config)
        return
    interrupt_on_sigterm()
    device = pick_device(args.device)
    pyplot()  # says now, not at the end, when no plots can be drawn
    peak = matmul_peak_tflops(device) if needs_peak else None
    try:
        run(args, device, environment(device), peak)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
