"""Run the benchmarks: ``python -m benchmarks [--ops pam,cam,model] [--full | --quick] ...``

Without a GPU, the default run uses the CPU with sizes that finish in a few minutes on
two cores: the headline (PAM forward+backward at B=1, C=512, Cqk=64, 64×128 = the
Cityscapes training crop, fp32: eager vs chunked vs SDPA, peak extra memory and median
time) with smaller N for the curve, CAM at a few sizes, and a reduced-size model run. With
a GPU it runs DANet's shapes (B=2, C=512, Cqk=64; N = 4096, 8192, 9409, 32768; fp32 and
bf16) and the R-50/R-101 Cityscapes models. ``--full`` runs the whole sweep, ``--quick``
tiny sizes (a smoke test).

Results: ``benchmarks/results/<device-slug>/`` (or ``--out DIR``): per op ``<op>.md`` and
``<op>.csv`` (median, p20–p80 and spread of every row; rows noisier than 25% marked ⚠),
``<op>_speedup.png`` and ``<op>_memory.png`` (relative to eager), and ``model.md/.csv``.
Rows are written as they are measured into ``<device-slug>.partial/``; each benchmark's
complete set then replaces the old one. Ctrl-C keeps what was measured (tables and plots)
in the ``.partial`` folder. Plots need matplotlib: ``pip install ".[bench]"``.
Each op script also runs alone: ``python -m benchmarks.bench_pam --help``.
"""
from __future__ import annotations

import argparse
import sys
import time

from benchmarks import bench_cam, bench_model, bench_pam
from benchmarks.cli import add_common_args, split_list
from benchmarks.environment import environment, matmul_peak_tflops, pick_device
from benchmarks.plots import pyplot
from benchmarks.report import fmt, output_dir, staging_dir
from benchmarks.rows import OpRow
from benchmarks.sweep import interrupt_on_sigterm

OPS = {"pam": bench_pam.BENCH.run, "cam": bench_cam.BENCH.run, "model": bench_model.run}


def headline(rows: list[OpRow]) -> None:
    """Print the PAM rows at the largest N measured in fwdbwd fp32 (issue 2's table)."""
    sel = [r for r in rows if r.mode == "fwdbwd" and r.dtype == "fp32"]
    if not sel:
        return
    n = max(r.N for r in sel)
    sel = [r for r in sel if r.N == n]
    print(f"\nPAM fwd+bwd, fp32, B={sel[0].B}, C={sel[0].C}, Cqk={sel[0].Cqk}, "
          f"{sel[0].shape} (N={n}):")
    print(f"  {'backend':10s} {'median ms':>10s} {'p20–p80 ms':>16s} {'spread':>7s} "
          f"{'peak extra MiB':>15s} {'speedup':>8s} {'mem ratio':>9s}")
    for r in sel:
        if r.status != "ok":
            print(f"  {r.backend:10s} {r.status}")
            continue
        print(f"  {r.backend:10s} {r.ms:10.1f} {r.p20_p80 or '–':>16s} "
              f"{r.spread_text or '–':>7s} {r.peak_mib:15.1f} "
              f"{fmt(r.speedup_vs_eager):>8s} {fmt(r.mem_vs_eager):>9s}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="pam,cam,model",
                        help="which benchmarks, comma-separated (default: pam,cam,model)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    ops = split_list(args.ops)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        parser.error(f"--ops takes {','.join(OPS)}, got {unknown}")
    interrupt_on_sigterm()
    device = pick_device(args.device)
    env = environment(device)
    out = output_dir(args.out, device)
    print(f"device: {env['device']} ({device.type}); torch {env['torch']}, triton {env['triton']}; "
          f"results under {out} (rows as they are measured: {staging_dir(out)})", flush=True)
    pyplot()  # says now, not at the end, when no plots can be drawn
    peak = matmul_peak_tflops(device) if any(o in ("pam", "cam") for o in ops) else None
    if peak:
        print(f"measured dense bf16 matmul peak: {peak:.0f} TFLOP/s")
    start = time.perf_counter()
    results = {}
    for op in ops:
        t0 = time.perf_counter()
        try:
            results[op] = OPS[op](args, device, env, peak)
        except KeyboardInterrupt:
            done = [o for o in results if results[o]]
            print(f"interrupted during {op} after {time.perf_counter() - start:.0f} s"
                  + (f"; complete sets written for {', '.join(done)}" if done else ""), flush=True)
            sys.exit(130)
        print(f"{op}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    if results.get("pam"):
        headline(results["pam"])
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
