"""Where ``auto`` should switch from eager to chunked on the CPU (``CPU_EAGER_MAX_ELEMENTS``).

    python -m benchmarks.cpu_crossover [--sizes 1024,1536,2048,2560,3072] [--reps 5]

PAM at DANet's channels (B=1, C=512, Cqk=64, fp32), forward and forward+backward, eager
and chunked side by side at each N. Times are the process's CPU time (``time.process_time``)
on one torch thread, median of ``--reps`` calls after a warm-up call: on a shared machine
the wall clock of a multi-threaded op follows the other jobs (each parallel region waits for
its slowest thread, and chunked runs many more, smaller regions than eager), while one
thread's CPU time does not. Prints a table and the largest N at which eager still wins both
modes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from danet_ops import functional as F


def _cpu_ms(backend: str, n: int, mode: str, reps: int) -> float:
    torch.manual_seed(0)
    q, k = torch.randn(1, 64, n, requires_grad=True), torch.randn(1, 64, n, requires_grad=True)
    v, x = torch.randn(1, 512, n, requires_grad=True), torch.randn(1, 512, n, requires_grad=True)
    gamma = torch.tensor(0.5, requires_grad=True)

    def call():
        with torch.set_grad_enabled(mode == "fwdbwd"):
            out = F.position_attention(q, k, v, gamma=gamma, residual=x, backend=backend)
            if mode == "fwdbwd":
                torch.autograd.grad(out, (q, k, v, gamma, x), torch.ones_like(out))

    call()  # warm-up: allocator, first-call costs
    times = []
    for _ in range(reps):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_crossover", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,1536,2048,2560,3072",
                        help="positions N, comma-separated (default: 1024,1536,2048,2560,3072)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per row (default: 5)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.reps < 1:
        parser.error("--sizes needs positive integers and --reps at least 1")
    torch.set_num_threads(1)
    print(f"{'N':>6} {'mode':>7} {'eager ms':>9} {'chunked ms':>11} {'chunked vs eager':>17}")
    eager_wins = []
    for n in sizes:
        wins = True
        for mode in ("fwd", "fwdbwd"):
            eager, chunked = (_cpu_ms(b, n, mode, args.reps) for b in ("eager", "chunked"))
            wins &= eager <= chunked
            print(f"{n:6d} {mode:>7} {eager:9.1f} {chunked:11.1f} {eager / chunked:16.2f}×", flush=True)
        if wins:
            eager_wins.append(n)
    if eager_wins:
        print(f"eager is at least as fast in both modes up to N = {max(eager_wins)} "
              f"(B·N² = {max(eager_wins) ** 2} elements)")
    else:
        print("chunked is faster (in some mode) at every N measured")


if __name__ == "__main__":
    main()
