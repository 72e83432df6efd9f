"""What the op benchmarks (PAM, CAM) share beyond measuring: an op script only says how to
set up one config, its FLOPs, its default plan and its notes (an ``OpBenchmark``); the
configs, backends, derived columns (TFLOP/s, spread, ratios to eager), tables and plots
are the same for every op, so they are here."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from benchmarks import variants
from benchmarks.cli import parse_sizes, script_main, split_list
from benchmarks.measure import (
    CPU_MEMORY_METHOD,
    CUDA_MEMORY_METHOD,
    SPREAD_LIMIT,
    run_one,
    spread_note,
    spread_of,
)
from benchmarks.plots import plot_op
from benchmarks.report import TableSet, output_dir
from benchmarks.rows import OpRow
from benchmarks.sweep import sweep


@dataclass(frozen=True)
class OpBenchmark:
    """One op benchmark.

    plan(args, device): the default shapes of this run (--quick, the default, or --full):
    ``batch``, ``channels``, ``qk`` (PAM only), and comma-separated ``sizes``, ``dtypes``,
    ``modes``; the command line's options override each.
    setup(cfg, device): the inputs and the function to time, ``(fn, extra row fields)``.
    """

    name: str  # "pam": the row's op, the files' names
    title: str
    module: str  # ``python -m`` target of the fresh process per CPU config
    doc: str  # --help
    baselines: tuple[str, ...]  # what a user would use instead, beside eager
    plan: Callable[[argparse.Namespace, torch.device], dict]
    setup: Callable[[dict, torch.device], tuple]
    flops: Callable[[dict], float]
    notes: Callable[[torch.device], list[str]]
    # False: torch.compile is left out of the default CPU run (its compile time on a few
    # cores would dominate); --full or --backends brings it back.
    compile_on_cpu: bool = True

    def configs(self, args: argparse.Namespace, device: torch.device) -> list[dict]:
        """Every (size, dtype, mode, backend) of this run, in that nesting (with --variants,
        each triton row followed by its variants' rows)."""
        p = self.plan(args, device)
        batch, channels = args.batch or p["batch"], args.channels or p["channels"]
        qk = (args.qk_channels or p["qk"]) if "qk" in p else None
        backends = op_backends(device, args, self.baselines, not_default_compile=not self.compile_on_cpu)
        timing = timing_args(args, device, cpu_warmup=1, cpu_rep=2 if args.quick else 3)
        configs = []
        for h, w in parse_sizes(args.sizes or p["sizes"]):
            for dtype in split_list(args.dtypes or p["dtypes"]):
                for mode in split_list(args.modes or p["modes"]):
                    for backend in backends:
                        configs.append(dict(
                            op=self.name, shape=f"{h}x{w}", H=h, W=w, N=h * w, B=batch,
                            C=channels, Cqk=qk, dtype=dtype, mode=mode, backend=backend,
                            device=str(device), threads=args.threads, **timing,
                        ))
        return variants.with_variants(configs) if args.variants else configs

    def _setup_with_flops(self, cfg: dict, device: torch.device) -> tuple:
        fn, extra = self.setup(cfg, device)
        return fn, dict(extra, flops=self.flops(cfg))

    def measure(self, cfg: dict, device: torch.device) -> dict:
        """One config's result (the sweep's runner): time, memory, FLOPs or the error."""
        with variants.backend_of(cfg) as call:
            return run_one(self._setup_with_flops, call, device)

    def run(self, args: argparse.Namespace, device: torch.device, env: dict,
            peak_tflops: Optional[float]) -> list[OpRow]:
        """Sweep the configs, each row written as it is measured, then the final tables
        and plots (see ``TableSet``)."""
        configs = self.configs(args, device)
        print(f"{self.name.upper()}: {len(configs)} configs on {env['device']}", flush=True)
        table = op_table(self.name, self.title, device, env, self.notes(device), args.out,
                         peak_tflops, expected=len(configs))
        rows = sweep(self.module, self.measure, configs, device, not args.no_isolate,
                     args.timeout, describe, table)
        table.finish()
        return rows

    def main(self, argv: Optional[list[str]] = None) -> None:
        script_main(argv, self.doc, self.run, self.measure)


def describe(cfg: dict) -> str:
    """A config in the progress lines: ``pam 64x128 B=2 C=512 bf16 fwdbwd triton``."""
    return (f"{cfg['op']} {cfg['shape']} B={cfg['B']} C={cfg['C']} {cfg['dtype']} {cfg['mode']} "
            f"{cfg['backend']}")


def op_backends(device: torch.device, args: argparse.Namespace, baselines: tuple[str, ...],
                not_default_compile: bool = False) -> list[str]:
    """eager and the baselines first, then every danet_ops backend available on ``device``
    (the Triton interpreter on the CPU is no benchmark, so triton needs CUDA).

    not_default_compile: leave torch.compile out of the default CPU run; --full or
    --backends brings it back.
    """
    import danet_ops

    # FlexAttention compiles Triton kernels: a GPU baseline only.
    names = ["eager"] + [b for b in baselines if b != "flex" or device.type == "cuda"]
    for b in danet_ops.available_backends(device):
        if b == "eager" or (b == "triton" and device.type != "cuda"):
            continue
        names.append(b)
    if args.no_compile or (args.quick and not args.backends):
        names = [n for n in names if n != "compile"]
    elif not_default_compile and device.type == "cpu" and not args.full and not args.backends:
        names = [n for n in names if n != "compile"]
    wanted = split_list(args.backends)
    if wanted:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            print(f"  note: backends {unknown} are not available here or unknown "
                  f"(available: {names}); skipped")
        names = [n for n in names if n in wanted]
    return names


def timing_args(args: argparse.Namespace, device: torch.device, cpu_warmup: int, cpu_rep: int) -> dict:
    """Warm-up/repeat fields of a config: CPU call counts, or CUDA do_bench milliseconds."""
    if device.type == "cuda":
        return {"cuda_warmup_ms": args.warmup or 25, "cuda_rep_ms": args.rep or 100}
    return {"warmup": cpu_warmup if args.warmup is None else args.warmup,
            "rep": cpu_rep if args.rep is None else args.rep}


def add_ratios(rows: list[OpRow], group_keys: tuple[str, ...], baseline: str = "eager") -> None:
    """``speedup_vs_eager`` (eager ms / ms) and ``mem_vs_eager`` (peak / eager peak)."""
    base = {}
    for r in rows:
        if r.backend == baseline and r.status == "ok":
            base[tuple(getattr(r, k) for k in group_keys)] = r
    for r in rows:
        b = base.get(tuple(getattr(r, k) for k in group_keys))
        r.speedup_vs_eager = None
        r.mem_vs_eager = None
        if b is None or r.status != "ok":
            continue
        if r.ms > 0:
            r.speedup_vs_eager = b.ms / r.ms
        if b.peak_bytes > 0:
            r.mem_vs_eager = r.peak_bytes / b.peak_bytes


def derive_op_rows(rows: list[OpRow], peak_tflops: Optional[float]) -> None:
    """Derived columns in place: TFLOP/s, % of peak, MiB, spread (and its ⚠), ratios to
    eager within one run ("run" is set where a table joins several)."""
    for r in rows:
        ok = r.status == "ok"
        if not ok:
            r.ms = r.p20_ms = r.p80_ms = None
        r.tflops = r.flops / (r.ms * 1e-3) / 1e12 if ok and r.ms > 0 else None
        r.pct_peak = (100 * r.tflops / peak_tflops) if (ok and peak_tflops and r.tflops) else None
        r.peak_mib = r.peak_bytes / 2**20 if ok else None
        r.spread = spread_of(r.ms, r.p20_ms, r.p80_ms)
        r.noisy = None if r.spread is None else r.spread > SPREAD_LIMIT
    add_ratios(rows, ("shape", "B", "C", "Cqk", "dtype", "mode", "run"))


def op_table(op: str, title: str, device: torch.device, env: dict, notes: list[str],
             out_root: Optional[str], peak_tflops: Optional[float], slug: Optional[str] = None,
             expected: Optional[int] = None) -> TableSet:
    """The TableSet of an op benchmark: ``<op>.md``, ``<op>.csv``, ``<op>_speedup.png``,
    ``<op>_memory.png`` under ``OUT/<slug>/``."""
    env = dict(env)
    if peak_tflops:
        env["measured dense bf16 matmul peak"] = (
            f"{peak_tflops:.0f} TFLOP/s (8192³ torch.mm, do_bench median)")
    notes = list(notes) + [spread_note(device),
                           CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD]
    return TableSet(output_dir(out_root, device, slug), op, title, env, notes, OpRow,
                    derive=lambda rows: derive_op_rows(rows, peak_tflops),
                    plot=lambda folder, rows: plot_op(folder, op, rows, env), expected=expected)


def finish_op(op: str, title: str, rows: list[OpRow], device: torch.device, env: dict,
              notes: list[str], out_root: Optional[str], peak_tflops: Optional[float],
              slug: Optional[str] = None) -> Path:
    """All rows at once (measured elsewhere: the GPU headline): derived columns, then the
    op's set (md, csv, speedup and memory plots) replacing the old one under
    ``OUT/<slug>/``; returns that folder. ``slug`` names the output folder when the rows
    were measured on another machine (re-rendered)."""
    table = op_table(op, title, device, env, notes, out_root, peak_tflops, slug, len(rows))
    for r in rows:
        table.add(r)
    return table.finish()
