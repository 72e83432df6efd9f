"""The headline GPU benchmark, sized for a short GPU lease: PAM and CAM at DANet's shapes,
the fused backends beside what a user would pick instead, in one run.

    python -m benchmarks.gpu_headline --out DIR [--budget-s 200]
    python -m benchmarks.gpu_headline --prewarm triton:K|compile|flex   # compile only
    python -m benchmarks.gpu_headline --dry-run --out DIR                # CPU, tiny sizes

Rows run in priority order (bf16 and fp32 at the Cityscapes training crop first, fp16 and
the other sizes after) and each is appended to ``rows.csv`` as soon as it is measured, so a
run stopped by its budget (no new row starts after ``--budget-s``) or killed keeps what it
measured. Every triton/cuda row also carries its error against the ``chunked`` backend run
in float64 on the same inputs (max over the output and the input gradients of
‖x − ref‖/‖ref‖). At the end ``pam``/``cam`` tables (md, csv, png) are written under
``DIR/<device-slug>/`` by the same code as the other op benchmarks.

``--prewarm`` runs each row of one backend once without timing, so that compiles land in
the on-disk caches: Triton's kernel cache (``triton:K`` pins candidate K of every kernel,
see ``danet_ops.triton.configs``; one process per K compiles all candidates in parallel)
and Inductor's (``compile``, ``flex``). The timed run then autotunes over cached binaries.
"""
from __future__ import annotations

import argparse
import csv
import faulthandler
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks import bench_cam, bench_pam, variants
from benchmarks.environment import environment, matmul_peak_tflops, slugify
from benchmarks.measure import free_memory, short_error
from benchmarks.ops import finish_op
from benchmarks.report import RESULTS_ROOT, fmt, range_text
from benchmarks.rows import DTYPES, OpRow

FUSED = ("triton", "cuda")
ROW_COLUMNS = ["op"] + OpRow.csv_columns() + ["flex_kernel_options", "seconds"]


def _cfg(op, h, w, b, dtype, mode, backend, device, timing):
    cfg = dict(op=op, shape=f"{h}x{w}", H=h, W=w, N=h * w, B=b, C=512, dtype=dtype, mode=mode,
               backend=backend, device=str(device), threads=None, **timing)
    if op == "pam":
        cfg["Cqk"] = 64
    else:
        cfg["Cqk"] = None
    return cfg


def plan(device: torch.device, dry_run: bool) -> list[dict]:
    """Every row, highest priority first."""
    timing = dict(warmup=1, rep=2, cuda_warmup_ms=25, cuda_rep_ms=100)
    if dry_run:
        rows = []
        for op, backends in (("pam", ["eager", "sdpa", "chunked", "triton"]),
                             ("cam", ["eager", "chunked", "triton"])):
            for h, w in ((12, 16),):  # one ragged size: the dry run checks the flow, not speed
                for mode in ("fwdbwd", "fwd"):
                    for be in backends:
                        cfg = _cfg(op, h, w, 1, "fp32", mode, be, device, timing)
                        cfg["C"], cfg["Cqk"] = 32, (8 if op == "pam" else None)
                        rows.append(cfg)
        return rows
    # Per shape, dtype and mode: eager (every ratio's base), then ours with the variants
    # (the rows that set defaults), then the other baselines, slowest last: a run that hits
    # its budget loses baselines measured before (benchmarks/results/nvidia-h200/) first.
    pam_backends = ["eager", "triton", "cuda", "compile", "sdpa", "flex"]
    cam_backends = ["eager", "triton", "cuda", "compile"]
    crop, square, whole = (64, 128, 2), (97, 97, 2), (128, 256, 1)
    groups = [
        ("pam", [crop], ["bf16", "fp32"]),
        ("cam", [crop], ["bf16", "fp32"]),
        ("pam", [square, whole], ["bf16", "fp32"]),
        ("pam", [crop, square, whole], ["fp16"]),
        ("cam", [square, whole], ["bf16", "fp32", "fp16"]),
        ("cam", [crop], ["fp16"]),
    ]
    rows = []
    for op, sizes, dtypes in groups:
        for h, w, b in sizes:
            for dtype in dtypes:
                for mode in ("fwdbwd", "fwd"):
                    for be in pam_backends if op == "pam" else cam_backends:
                        rows.append(_cfg(op, h, w, b, dtype, mode, be, device, timing))
    return rows


def _bench(cfg):
    return bench_pam.BENCH if cfg["op"] == "pam" else bench_cam.BENCH


# ---------------------------------------------------------------- correctness


def error_vs_chunked(cfg: dict, device: torch.device) -> float:
    """Max relative error of out and the input gradients against chunked in float64."""
    import danet_ops
    from danet_ops.reference import relative_error

    dtype = DTYPES[cfg["dtype"]]
    b, c, n = cfg["B"], cfg["C"], cfg["N"]
    if cfg["op"] == "pam":
        inputs = [torch.randn(b, cfg["Cqk"], n, device=device), torch.randn(b, cfg["Cqk"], n, device=device),
                  torch.randn(b, c, n, device=device), torch.randn(b, c, n, device=device)]
    else:
        inputs = [bench_cam.INPUT_STD * torch.randn(b, c, n, device=device)]
    inputs = [t.to(dtype) for t in inputs]
    gamma = torch.tensor(0.5, device=device)
    dout = torch.randn(b, c, n, device=device).to(dtype)
    grad = cfg["mode"] == "fwdbwd"

    def run(backend, cast):
        leaves = [cast(t).requires_grad_(grad) for t in inputs]
        g = cast(gamma)
        if cfg["op"] == "pam":
            q, k, v, x = leaves
            out = danet_ops.position_attention(q, k, v, gamma=g, residual=x, backend=backend)
        else:
            out = danet_ops.channel_attention(leaves[0], gamma=g, backend=backend)
        grads = torch.autograd.grad(out, leaves, cast(dout)) if grad else []
        return [out.detach(), *grads]

    got = run(cfg["backend"], lambda t: t.detach().clone())
    ref = run("chunked", lambda t: t.detach().double())
    return max(relative_error(a, r) for a, r in zip(got, ref))


# ---------------------------------------------------------------- the run


def measure_row(cfg: dict, device: torch.device) -> dict:
    start = time.perf_counter()
    with variants.backend_of(cfg) as call:
        result = _bench(call).measure(call, device)
        row = dict(cfg, **result)
        if row["status"] == "ok" and call["backend"] in FUSED:
            try:
                row["err_vs_chunked"] = error_vs_chunked(call, device)
            except Exception as exc:  # a failed check is reported, not hidden
                row["status"] = "check failed: " + short_error(exc)
    free_memory(device)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _available(backend: str, device: torch.device) -> bool:
    import danet_ops

    if backend in ("eager", "compile", "sdpa"):
        return True
    if backend == "flex":
        return device.type == "cuda"
    return backend.partition("[")[0] in danet_ops.available_backends(device)


def run(out: Path, device: torch.device, budget_s: float, dry_run: bool, only: dict,
        stuck_s: float = 60.0, with_variant_rows: bool = False) -> None:
    env = environment(device)
    peak = matmul_peak_tflops(device)
    rows_csv = out / "rows.csv"
    out.mkdir(parents=True, exist_ok=True)
    cfgs = plan(device, dry_run)
    cfgs = variants.with_variants(cfgs) if with_variant_rows else cfgs
    cfgs = [c for c in cfgs if _available(c["backend"], device)
            and all(c[k].partition("[")[0] in v if k == "backend" else c[k] in v for k, v in only.items())]
    print(f"headline: {len(cfgs)} rows on {env['device']}, budget {budget_s:.0f} s", flush=True)
    start = time.perf_counter()
    rows = []
    with open(rows_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for i, cfg in enumerate(cfgs):
            if time.perf_counter() - start > budget_s:
                print(f"budget reached: {len(cfgs) - i} rows not run", flush=True)
                break
            # A row still running after this long prints every thread's stack to the log.
            faulthandler.dump_traceback_later(stuck_s, repeat=True)
            row = measure_row(cfg, device)
            faulthandler.cancel_dump_traceback_later()
            rows.append(row)
            writer.writerow(row)
            f.flush()
            err = row.get("err_vs_chunked")
            print(f"[{i + 1}/{len(cfgs)}] {cfg['op']} {cfg['shape']} {cfg['dtype']} {cfg['mode']} "
                  f"{cfg['backend']}: {fmt(row.get('ms'))} ms"
                  + (f" (p20–p80 {range_text(row.get('p20_ms'), row.get('p80_ms'))})"
                     if row["status"] == "ok" else "")
                  + "".join(f" ⚠ noisy: {part}" for part in OpRow.from_dict(row).noisy_parts())
                  + (f", err {err:.1e}" if err is not None else "")
                  + ("" if row["status"] == "ok" else f" [{row['status'][:100]}]")
                  + f" ({row['seconds']} s)", flush=True)
    _write_autotune_choices(out / "autotune.txt")
    for op, title, notes in (("pam", bench_pam.TITLE, bench_pam.notes(device)),
                             ("cam", bench_cam.TITLE, bench_cam.notes(device))):
        op_rows = [r for r in rows if r["op"] == op]
        if op_rows:
            notes = notes + ["Rows in priority order under a time budget "
                             "(`python -m benchmarks.gpu_headline`); err vs chunked: max "
                             "‖x − ref‖/‖ref‖ over out and input gradients, ref = chunked in float64."]
            finish_op(op, title + " (GPU headline)", [OpRow.from_dict(r) for r in op_rows], device,
                      env, notes, str(out), peak)


def render(sources: list[str], out: Path, env_file: Path, notes: list[str]) -> None:
    """pam/cam tables from the ``rows.csv`` of several runs (``LABEL=PATH`` each), for the
    device those runs measured (``env_file``: the ``device_info`` output). Ratios to eager
    are taken within one run only."""
    env = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if not sep or line.startswith((" ", "|", "+")):
            break
        env[key] = value
    peak = float(env["measured dense bf16 matmul"].split()[0])
    ints = ("N", "B", "C", "Cqk", "H", "W")
    floats = ("ms", "p20_ms", "p80_ms", "flops", "peak_bytes", "err_vs_chunked", "seconds")
    rows = []
    for source in sources:
        label, _, path = source.partition("=")
        with open(path) as f:
            for r in csv.DictReader(f):
                r = {k: (None if v == "" else v) for k, v in r.items()}
                for k in ints:
                    r[k] = int(r[k]) if r.get(k) is not None else None
                for k in floats:
                    r[k] = float(r[k]) if r.get(k) is not None else None
                r["run"] = label
                rows.append(r)
    device, slug = torch.device("cuda"), slugify(env["device"])
    for op, title, op_notes in (("pam", bench_pam.TITLE, bench_pam.notes(device)),
                                ("cam", bench_cam.TITLE, bench_cam.notes(device))):
        op_rows = [r for r in rows if r["op"] == op]
        if op_rows:
            finish_op(op, title + " (GPU headline)", [OpRow.from_dict(r) for r in op_rows], device,
                      env, op_notes + notes, str(out), peak, slug)


def _write_autotune_choices(path: Path) -> None:
    try:
        from danet_ops.triton import configs
    except ImportError:
        return
    lines = [f"{name}  key={key}  ->  {config}" for name, key, config in configs.choices()]
    path.write_text("\n".join(lines) + "\n")
    print(f"  wrote {path} ({len(lines)} autotune choices)")


def prewarm(kind: str, device: torch.device, dry_run: bool, with_variant_rows: bool = False) -> None:
    """Run every row of one backend (and its variants) once, untimed: fills the compile caches."""
    backend, _, index = kind.partition(":")
    if index:
        os.environ["DANET_OPS_TRITON_CONFIG"] = index
    done = 0
    cfgs = plan(device, dry_run)
    for cfg in variants.with_variants(cfgs) if with_variant_rows else cfgs:
        if variants.split(cfg["backend"])[0] != backend:
            continue
        try:
            with variants.backend_of(cfg) as call:
                fn, _ = _bench(call).setup(call, device)
                fn()
            done += 1
        except Exception as exc:
            print(f"prewarm {kind} {cfg['op']} {cfg['shape']} {cfg['dtype']} {cfg['mode']}: "
                  f"{short_error(exc)}", flush=True)
        free_memory(device)
    print(f"prewarm {kind}: {done} rows compiled", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS_ROOT))
    p.add_argument("--budget-s", type=float, default=200.0, help="start no new row after this")
    p.add_argument("--prewarm", help="triton:K, compile or flex: compile only, no timing")
    p.add_argument("--variants", action="store_true",
                   help="also time each Triton variant (rows triton[<variant>], see benchmarks/variants.py)")
    p.add_argument("--render", nargs="+", metavar="LABEL=ROWS_CSV",
                   help="no run: write the tables from earlier runs' rows.csv (with --env-file)")
    p.add_argument("--env-file", help="with --render: the device_info output of those runs")
    p.add_argument("--note", action="append", default=[], help="with --render: a note for the tables")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter")
    p.add_argument("--stuck-s", type=float, default=60.0,
                   help="a row running longer than this prints every thread's stack")
    for name in ("op", "shape", "dtype", "mode", "backend"):
        p.add_argument(f"--{name}s", help=f"comma-separated: run only the rows with these {name}s")
    args = p.parse_args(argv)
    only = {name: getattr(args, f"{name}s").split(",") for name in ("op", "shape", "dtype", "mode", "backend")
            if getattr(args, f"{name}s")}
    if args.render:
        render(args.render, Path(args.out), Path(args.env_file), args.note)
        return
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.prewarm:
        prewarm(args.prewarm, device, args.dry_run, args.variants)
    else:
        run(Path(args.out), device, args.budget_s, args.dry_run, only, args.stuck_s, args.variants)


if __name__ == "__main__":
    main(sys.argv[1:])
