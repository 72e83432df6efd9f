"""What every benchmark script shares: device info, timing, peak memory, isolation of
CPU runs in fresh processes, the sweep loop with progress lines, and the Markdown / CSV /
PNG writers.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events after warm-up; median, p20, p80);
on the CPU a warm-up of at least ``CPU_WARMUP_S``, then the median, p20 and p80 of
``time.perf_counter`` over at least ``rep`` calls and ``CPU_MIN_TIME_S``. A row whose
p20–p80 spread exceeds ``SPREAD_LIMIT`` of its median is marked ⚠ (table and console).

Output: each benchmark's set (``<op>.md``, ``<op>.csv``, ``<op>_speedup.png``,
``<op>_memory.png``) is written row by row into ``<out>.partial/`` and, once complete,
replaces the old set in ``<out>/`` as a whole (``TableSet``); Ctrl-C leaves what was
measured, with plots, in ``<out>.partial/``.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus what was allocated before the call (the inputs).
The CPU has no allocator counters, so every CPU config runs in a fresh process with
glibc's mmap threshold fixed at 128 KiB (big buffers go straight back to the OS when
freed, instead of staying resident in malloc's heap); after the warm-up the kernel's
peak-RSS mark is reset (``echo 5 > /proc/self/clear_refs``), and the peak extra memory is
``VmHWM`` after the measured call minus ``VmRSS`` just before it. Timed calls come after
that one, under glibc's usual steady state (buffers up to 32 MiB reused from the heap), so
the small threshold's page faults do not count against backends that allocate per block.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Optional

import torch

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
RESULT_TAG = "BENCH_RESULT "

CPU_MEMORY_METHOD = (
    "CPU peak memory: each config runs in a fresh process (glibc mmap threshold fixed at "
    "128 KiB, so freed buffers leave RSS at once); after the warm-up the peak-RSS mark is "
    "reset (`echo 5 > /proc/self/clear_refs`), and peak extra = VmHWM after one measured "
    "call − VmRSS just before it (inputs excluded). Times come from later calls with glibc's "
    "usual heap reuse (mmap threshold 32 MiB)."
)
CUDA_MEMORY_METHOD = (
    "CUDA peak memory: `torch.cuda.reset_peak_memory_stats()`, then "
    "`max_memory_allocated()` during one call minus `memory_allocated()` before it "
    "(inputs excluded)."
)


# ---------------------------------------------------------------- device and environment


def pick_device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_model_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_slug(device: torch.device) -> str:
    """``nvidia-h100-80gb-hbm3`` for GPUs, ``cpu-<model>`` for the CPU."""
    slug = slugify(device_name(device))
    return slug if device.type == "cuda" else f"cpu-{slug}"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {
        "device": device_name(device),
        "device type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "CUDA (torch built with)": torch.version.cuda or "none",
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
    }
    env["danet_ops"] = _danet_ops_version()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["GPU memory"] = f"{props.total_memory / 2**30:.1f} GiB"
        major, minor = torch.cuda.get_device_capability(device)
        env["compute capability"] = f"sm_{major}{minor}"
    else:
        env["CPU threads (torch)"] = str(torch.get_num_threads())
        env["load average at start (1 min)"] = f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    return env


def _danet_ops_version() -> str:
    """Package version, the checkout's commit (``-dirty`` with local changes) and the
    chunked backend's block size, so a table says which code it measured."""
    import danet_ops

    text = danet_ops.__version__
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            text += f", git {rev}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import danet_ops.chunked as chunked

        elements = int(chunked.CHUNK_ELEMENTS)
        power = elements.bit_length() - 1
        text += f", chunked.CHUNK_ELEMENTS = " + (f"2^{power}" if elements == 1 << power else str(elements))
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    return text


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- timing

# A row whose p20–p80 spread exceeds this fraction of its median is marked noisy.
SPREAD_LIMIT = 0.25
# CPU timing: warm-up runs at least the given calls and at least CPU_WARMUP_S seconds (a
# fresh process's first calls set up thread pools and the heap, and a shared machine's
# cores may need a moment); the timed calls at least ``rep`` and at least CPU_MIN_TIME_S
# seconds, at most CPU_MAX_REPS calls.
CPU_WARMUP_S = 0.5
CPU_MIN_TIME_S = 1.0
CPU_MAX_REPS = 200
QUANTILES = (0.2, 0.5, 0.8)


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, torch.quantile's)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_stats(fn: Callable[[], object], device: torch.device, warmup: int, rep: int) -> dict:
    """Median and p20/p80 milliseconds of ``fn()``: ``{"ms", "p20_ms", "p80_ms", "reps"}``.

    CUDA: ``triton.testing.do_bench(fn, warmup, rep, quantiles=[0.2, 0.5, 0.8])`` with
    ``warmup``/``rep`` read as milliseconds of warm-up and measurement (``reps`` is None:
    do_bench picks the count). CPU: at least ``warmup`` calls and ``CPU_WARMUP_S`` seconds
    of warm-up, then at least ``rep`` timed calls and ``CPU_MIN_TIME_S`` seconds.
    """
    if device.type == "cuda":
        import triton.testing

        p20, p50, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=list(QUANTILES))
        return {"ms": float(p50), "p20_ms": float(p20), "p80_ms": float(p80), "reps": None}
    start = time.perf_counter()
    calls = 0
    while calls < warmup or (time.perf_counter() - start < CPU_WARMUP_S and calls < CPU_MAX_REPS):
        fn()
        calls += 1
    times = []
    start = time.perf_counter()
    while len(times) < max(1, rep) or (time.perf_counter() - start < CPU_MIN_TIME_S
                                        and len(times) < CPU_MAX_REPS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize_times(times)


def summarize_times(times: list[float]) -> dict:
    """``{"ms": median, "p20_ms", "p80_ms", "reps"}`` of a list of milliseconds."""
    return {"ms": statistics.median(times), "p20_ms": quantile(times, 0.2),
            "p80_ms": quantile(times, 0.8), "reps": len(times)}


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, rep: int) -> float:
    """Median milliseconds of ``fn()`` (see ``time_stats``)."""
    return time_stats(fn, device, warmup, rep)["ms"]


def spread_of(row: dict, prefix: str = "") -> Optional[float]:
    """(p80 − p20) / median of a row's times, or None where the row has no spread."""
    ms, p20, p80 = row.get(prefix + "ms"), row.get(prefix + "p20_ms"), row.get(prefix + "p80_ms")
    if ms is None or p20 is None or p80 is None or ms <= 0:
        return None
    return (p80 - p20) / ms


def spread_text(spread: Optional[float]) -> Optional[str]:
    """``12%``, or ``41% ⚠`` above SPREAD_LIMIT (the mark the tables and console use)."""
    if spread is None:
        return None
    return f"{100 * spread:.0f}%" + (" ⚠" if spread > SPREAD_LIMIT else "")


def range_text(p20: Optional[float], p80: Optional[float]) -> Optional[str]:
    if p20 is None or p80 is None:
        return None
    return f"{fmt(float(p20))}–{fmt(float(p80))}"


def spread_note(device: torch.device) -> str:
    return (f"p20–p80: the 20th and 80th percentiles of the timed calls"
            + (" (do_bench quantiles)" if device.type == "cuda" else "")
            + f"; spread = (p80 − p20)/median. Rows with a spread above "
            f"{100 * SPREAD_LIMIT:.0f}% are marked ⚠ (noisy: compare them with care).")


def matmul_peak_tflops(device: torch.device) -> Optional[float]:
    """The device's measured dense bf16 matmul rate (8192³, do_bench median); None on CPU."""
    if device.type != "cuda":
        return None
    import triton.testing

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: torch.mm(a, b), warmup=100, rep=500, return_mode="median")
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / (ms * 1e-3) / 1e12


# ---------------------------------------------------------------- memory


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """Peak memory of one ``fn()`` call beyond what was live before it, and how measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda-allocator"
    method = "rss-hwm-reset" if reset_peak_rss() else "rss-hwm-unreset"
    before = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - before) * 1024, method


def set_malloc_mmap_threshold(nbytes: int = 128 * 1024, trim_bytes: Optional[int] = None) -> None:
    """Fix glibc's mmap (and optionally trim) threshold (no-op off glibc).

    Small: big frees return to the OS at once, so peak RSS measures what was live.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
        if trim_bytes is not None:
            libc.mallopt(-1, trim_bytes)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate" in text


def short_error(exc: BaseException) -> str:
    if is_oom(exc):
        return "OOM"
    text = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {text[:160]}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- one measured config


def measure(
    fn: Callable[[], object], device: torch.device, warmup: int, rep: int,
    cuda_warmup_ms: int = 25, cuda_rep_ms: int = 100,
) -> dict:
    """Warm up, then peak extra memory of one call, then the timed calls: a dict with
    ``ms`` (median), ``p20_ms``, ``p80_ms``, ``reps``, ``peak_bytes``, ``mem_method``.

    CUDA: two warm-up calls, one call under the allocator's peak counter, then do_bench.
    CPU: ``warmup`` calls (and at least CPU_WARMUP_S seconds), one call measuring peak RSS,
    then the timed calls under glibc's usual allocator settings (see below).
    """
    if device.type == "cuda":
        fn()
        fn()
        torch.cuda.synchronize(device)
        peak, method = peak_extra_bytes(fn, device)
        stats = time_stats(fn, device, cuda_warmup_ms, cuda_rep_ms)
        return dict(stats, peak_bytes=peak, mem_method=method)
    start = time.perf_counter()
    calls = 0
    while calls < warmup or (time.perf_counter() - start < CPU_WARMUP_S and calls < CPU_MAX_REPS):
        fn()
        calls += 1
    gc.collect()
    method = "rss-hwm-reset" if reset_peak_rss() else "rss-hwm-unreset"
    before = _proc_status_kb("VmRSS")
    fn()
    peak = (_proc_status_kb("VmHWM") - before) * 1024
    # The memory call ran with a small fixed mmap threshold (child_main), so every freed
    # buffer left RSS at once; that also makes each large allocation a fresh mmap with
    # page faults, which is not how a process runs normally. Time with glibc's usual
    # steady state instead: buffers up to 32 MiB reused from the heap (warmed up again).
    set_malloc_mmap_threshold(32 * 1024 * 1024, trim_bytes=64 * 1024 * 1024)
    stats = time_stats(fn, device, warmup=1, rep=rep)
    set_malloc_mmap_threshold(trim_bytes=128 * 1024)  # back to the memory-measuring setting
    return dict(stats, peak_bytes=peak, mem_method=method)


def run_one(setup: Callable[[dict, torch.device], tuple], cfg: dict, device: torch.device) -> dict:
    """Build the config's inputs and function, measure; errors become a status."""
    fn = None
    try:
        fn, extra = setup(cfg, device)
        result = measure(fn, device, cfg.get("warmup", 1), cfg.get("rep", 3),
                         cfg.get("cuda_warmup_ms", 25), cfg.get("cuda_rep_ms", 100))
        result.update(extra)
        result["status"] = "ok"
    except Exception as exc:  # one bad row must not end the sweep
        result = {"status": short_error(exc)}
    del fn
    free_memory(device)
    return result


def child_main(runner: Callable[[dict, torch.device], dict], cfg_json: str) -> None:
    """Entry of a fresh process measuring one CPU config; prints one tagged JSON line.

    runner(cfg, device) -> result dict with a "status" (``run_one`` bound to a setup).
    """
    set_malloc_mmap_threshold()
    cfg = json.loads(cfg_json)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    result = runner(cfg, torch.device(cfg["device"]))
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_isolated(module: str, cfg: dict, timeout: float) -> dict:
    """Run ``python -m <module> --one-config <json>`` and parse its result line."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", module, "--one-config", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=str(REPO_ROOT), env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {timeout:.0f} s)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    if proc.returncode in (-9, 137):
        return {"status": "OOM (process killed)"}
    tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])[:160]
    return {"status": f"error: exit {proc.returncode}: {tail}"}


# ---------------------------------------------------------------- the sweep


def noisy_parts(row: dict) -> list[str]:
    """``["spread 41%"]`` for each of a row's timings (op: ``ms``; model: ``train_ms``,
    ``infer_ms``) whose p20–p80 spread exceeds SPREAD_LIMIT of its median."""
    parts = []
    for prefix in ("", "train_", "infer_"):
        spread = spread_of(row, prefix)
        if spread is not None and spread > SPREAD_LIMIT:
            parts.append(f"{prefix.replace('_', ' ')}spread {100 * spread:.0f}%")
    return parts


def sweep(
    module: str, runner: Callable[[dict, torch.device], dict], configs: list[dict],
    device: torch.device, isolate: bool, timeout: float, describe: Callable[[dict], str],
    table: Optional["TableSet"] = None,
) -> list[dict]:
    """Measure every config (CPU: each in a fresh process), one progress line per config.

    runner(cfg, device) -> result dict; on the CPU the child process calls the same runner.
    Each row goes to ``table`` as soon as it is measured (its Markdown and CSV lines are
    appended). On Ctrl-C (or SIGTERM, see ``interrupt_on_sigterm``) the table is finished
    with what was measured, in its staging folder, and KeyboardInterrupt propagates.
    """
    rows = []
    if device.type == "cpu":
        set_malloc_mmap_threshold()
    start = time.perf_counter()
    try:
        for i, cfg in enumerate(configs, 1):
            t0 = time.perf_counter()
            if isolate and device.type == "cpu":
                result = run_isolated(module, cfg, timeout)
            else:
                result = runner(cfg, device)
            row = dict(cfg)
            row.update(result)
            rows.append(row)
            if table is not None:
                table.add(row)
            if row.get("summary"):
                what = row["summary"]
            elif row["status"] == "ok":
                what = (f"{row['ms']:.3f} ms (p20–p80 {range_text(row.get('p20_ms'), row.get('p80_ms'))}"
                        + (f", {row['reps']} calls" if row.get("reps") else "")
                        + f"), peak extra {row['peak_bytes'] / 2**20:.1f} MiB")
            else:
                what = row["status"]
            noisy = noisy_parts(row)
            if noisy:
                what += f"  ⚠ noisy: {', '.join(noisy)} of the median"
            print(f"  [{i}/{len(configs)}] {describe(cfg)}: {what}  "
                  f"({time.perf_counter() - t0:.1f} s, elapsed {time.perf_counter() - start:.1f} s)",
                  flush=True)
    except KeyboardInterrupt:
        print(f"\n  interrupted after {len(rows)} of {len(configs)} configs", flush=True)
        if table is not None:
            table.finish(complete=False)
        raise
    noisy_rows = [r for r in rows if noisy_parts(r)]
    if noisy_rows:
        print(f"  ⚠ {len(noisy_rows)} of {len(rows)} rows are noisy (p20–p80 spread above "
              f"{100 * SPREAD_LIMIT:.0f}% of the median; marked ⚠ in the table): "
              + "; ".join(describe(r) for r in noisy_rows), flush=True)
    return rows


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a job's time limit) end a run like Ctrl-C does: the tables
    and plots of what was measured are written before the process ends."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def add_ratios(rows: list[dict], group_keys: tuple[str, ...], baseline: str = "eager") -> None:
    """``speedup_vs_eager`` (eager ms / ms) and ``mem_vs_eager`` (peak / eager peak)."""
    base = {}
    for r in rows:
        if r["backend"] == baseline and r["status"] == "ok":
            base[tuple(r.get(k) for k in group_keys)] = r
    for r in rows:
        b = base.get(tuple(r.get(k) for k in group_keys))
        r["speedup_vs_eager"] = None
        r["mem_vs_eager"] = None
        if b is None or r["status"] != "ok":
            continue
        if r["ms"] > 0:
            r["speedup_vs_eager"] = b["ms"] / r["ms"]
        if b["peak_bytes"] > 0:
            r["mem_vs_eager"] = r["peak_bytes"] / b["peak_bytes"]


# ---------------------------------------------------------------- output


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def output_dir(root: Optional[str], device: torch.device, slug: Optional[str] = None) -> Path:
    """``ROOT/<device-slug>/`` (not created: ``TableSet`` creates it when a set is complete)."""
    path = Path(root) if root else RESULTS_ROOT
    return path / (slug or device_slug(device))


def staging_dir(out: Path) -> Path:
    """Where a run writes before its sets are complete: ``<out>.partial`` next to ``out``."""
    return out.parent / (out.name + ".partial")


def markdown_header(title: str, env: dict, notes: list[str], columns: list[tuple[str, str]]) -> list[str]:
    lines = [f"# {title}", ""]
    for key, value in env.items():
        lines.append(f"- {key}: {value}")
    argv = getattr(sys, "orig_argv", sys.argv)[1:]
    lines.append(f"- command: `{' '.join(['python'] + list(argv))}`")
    lines.append("")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("")
    lines.append("| " + " | ".join(h for _, h in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    return lines


def markdown_row(columns: list[tuple[str, str]], row: dict) -> str:
    return "| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |"


def write_markdown(path: Path, title: str, env: dict, notes: list[str],
                   columns: list[tuple[str, str]], rows: list[dict]) -> None:
    """columns: (row key, header). Values are formatted with ``fmt``."""
    lines = markdown_header(title, env, notes, columns) + [markdown_row(columns, r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def csv_row(columns: list[str], row: dict) -> list:
    return ["" if row.get(c) is None else row.get(c) for c in columns]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(csv_row(columns, r))


def set_files(folder: Path, name: str) -> list[Path]:
    """The files of one table set in ``folder``: ``<name>.md``, ``<name>.csv``, ``<name>_*.png``."""
    if not folder.is_dir():
        return []
    files = [folder / f"{name}.md", folder / f"{name}.csv"]
    return [f for f in files if f.is_file()] + sorted(folder.glob(f"{name}_*.png"))


class TableSet:
    """One benchmark's output set (``<name>.md``, ``<name>.csv`` and its plots), written as
    rows arrive and replaced as a whole.

    Rows are appended to the Markdown and CSV files in the staging folder
    (``<out>.partial/``) as each config finishes, so a killed run keeps what it measured.
    ``finish()`` rewrites both tables (final ratios) and draws the plots; complete, it then
    removes the old set's files from ``out`` and moves the new ones in, so tables and plots
    in ``out`` always come from one run. ``finish(complete=False)`` (Ctrl-C) leaves the
    partial set in the staging folder and ``out`` as it was.

    derive(rows) fills derived columns in place (it sees every row so far);
    plot(folder, rows) draws the set's PNGs into ``folder``.
    """

    def __init__(self, out: Path, name: str, title: str, env: dict, notes: list[str],
                 columns: list[tuple[str, str]], csv_columns: list[str],
                 derive: Optional[Callable[[list[dict]], None]] = None,
                 plot: Optional[Callable[[Path, list[dict]], list[Path]]] = None,
                 expected: Optional[int] = None):
        self.out, self.name, self.title = Path(out), name, title
        self.env, self.notes = dict(env), list(notes)
        self.columns, self.csv_columns = columns, csv_columns
        self.derive, self.plot, self.expected = derive, plot, expected
        self.rows: list[dict] = []
        self.staging = staging_dir(self.out)
        self.staging.mkdir(parents=True, exist_ok=True)
        for f in set_files(self.staging, name):  # an earlier interrupted run's
            f.unlink()
        self.md, self.csv = self.staging / f"{name}.md", self.staging / f"{name}.csv"
        write_markdown(self.md, title, self.env, self.notes, columns, [])
        write_csv(self.csv, csv_columns, [])

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.derive is not None:
            self.derive(self.rows)
        with open(self.md, "a") as f:
            f.write(markdown_row(self.columns, row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow(csv_row(self.csv_columns, row))

    def finish(self, complete: bool = True) -> Path:
        """Final tables and plots; installed into ``out`` when complete. Returns the folder
        that holds the set."""
        if self.derive is not None:
            self.derive(self.rows)
        notes = list(self.notes)
        if not complete:
            of = f" of {self.expected}" if self.expected else ""
            notes.insert(0, f"**Interrupted run**: {len(self.rows)}{of} configs measured.")
        write_markdown(self.md, self.title, self.env, notes, self.columns, self.rows)
        write_csv(self.csv, self.csv_columns, self.rows)
        if self.plot is not None and self.rows:
            self.plot(self.staging, self.rows)
        if not complete:
            print(f"  {self.name}: the {len(self.rows)} rows measured are in {self.staging}/ "
                  f"({', '.join(f.name for f in set_files(self.staging, self.name))}); "
                  f"{self.out}/ keeps its earlier {self.name} files", flush=True)
            return self.staging
        self.out.mkdir(parents=True, exist_ok=True)
        for f in set_files(self.out, self.name):
            f.unlink()
        new = set_files(self.staging, self.name)
        for f in new:
            os.replace(f, self.out / f.name)
        try:
            self.staging.rmdir()
        except OSError:  # other sets' files from an interrupted run stay
            pass
        print(f"  wrote {self.out}/: {', '.join(f.name for f in new)}", flush=True)
        return self.out


# ---------------------------------------------------------------- plots

# One colour and marker per backend in every chart.
BACKEND_STYLE = {
    "eager": ("tab:blue", "o"), "compile": ("tab:orange", "s"), "sdpa": ("tab:green", "^"),
    "flex": ("tab:red", "v"), "chunked": ("tab:brown", "D"), "triton": ("tab:purple", "*"),
    "cuda": ("tab:gray", "X"),
}
# What a user would use instead of danet_ops: drawn dashed; danet_ops' backends solid.
BASELINE_BACKENDS = ("eager", "compile", "sdpa", "flex")
BACKEND_LABEL = {
    "eager": "eager (mmseg math)", "compile": "torch.compile(eager)", "sdpa": "SDPA",
    "flex": "FlexAttention", "chunked": "danet_ops chunked", "triton": "danet_ops triton",
    "cuda": "danet_ops cuda",
}
MODE_LABEL = {"fwd": "forward", "fwdbwd": "forward+backward"}
_MATPLOTLIB_WARNED = []


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with one message) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _MATPLOTLIB_WARNED:
            print("  matplotlib is not installed: no PNG plots (pip install \".[bench]\" or "
                  "pip install matplotlib)", flush=True)
            _MATPLOTLIB_WARNED.append(True)
        return None
    return plt


def _backend_order(backends) -> list[str]:
    known = [b for b in BACKEND_STYLE if b in backends]
    return known + sorted(b for b in backends if b not in BACKEND_STYLE)


def _device_text(env: dict) -> str:
    text = f"{env.get('device', '?')} ({env.get('device type', '?')}"
    if env.get("CPU threads (torch)"):
        text += f", {env['CPU threads (torch)']} threads"
    return text + ")"


def _shape_text(op: str, rows: list[dict]) -> str:
    parts = []
    for key in ("B", "C", "Cqk"):
        values = sorted({r.get(key) for r in rows if r.get(key) is not None})
        if values:
            parts.append(f"{key}={'/'.join(str(v) for v in values)}")
    return ", ".join(parts)


def _set_ratio_axis(ax, values: list[float]) -> None:
    """Log y axis around the data and 1, with plain ticks (0.5×, 1×, 2×)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = min(values + [1.0]) / 1.25, max(values + [1.0]) * 1.25
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    for subs in ((1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,)):  # at most 8 ticks
        ticks = [round(m * 10.0**e, 6) for e in range(-6, 7) for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) <= 8:
            break
    if len(ticks) < 4 and hi / lo < 4:  # a narrow range: steps of 0.1 (or 0.05)
        for step in (0.1, 0.05):
            steps = [round(step * k, 2) for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
            if len(steps) >= 4:
                phase = steps.index(1.0) % 2 if 1.0 in steps else 0
                ticks = steps[phase::2] if len(steps) > 10 else steps  # 1× stays a tick
                break
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
    ax.yaxis.set_minor_locator(NullLocator())


def _set_n_axis(ax, ns: list[int]) -> None:
    """Log2 N axis with a tick at each measured N."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ns = sorted(set(ns))
    ax.set_xlim(ns[0] / 1.5, ns[-1] * 1.5)
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_major_formatter(FixedFormatter([str(n) for n in ns]))
    ax.xaxis.set_minor_locator(NullLocator())
    crowded = any(b / a < 1.6 for a, b in zip(ns, ns[1:]))
    ax.tick_params(axis="x", labelrotation=30 if crowded else 0)


def plot_vs_eager(path: Path, op: str, rows: list[dict], kind: str, env: dict) -> bool:
    """``kind`` "speedup" (eager ms / ms, bars from the row's p20–p80) or "memory" (peak
    extra memory / eager's, with eager's absolute peak written beside its points) against
    N; one panel per dtype (rows) and mode (columns), one colour and marker per backend,
    baselines dashed, danet_ops backends solid, noisy rows circled in red."""
    plt = pyplot()
    if plt is None:
        return False
    key = "speedup_vs_eager" if kind == "speedup" else "mem_vs_eager"
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return False
    dtypes = sorted({r["dtype"] for r in ok}, key=lambda d: (list(DTYPES).index(d) if d in DTYPES else 99, d))
    modes = sorted({r["mode"] for r in ok}, key=lambda m: (list(MODE_LABEL).index(m) if m in MODE_LABEL else 99, m))
    fig, axes = plt.subplots(len(dtypes), len(modes), squeeze=False,
                             figsize=(5.4 * len(modes) + 2.6, 3.9 * len(dtypes) + 1.1))
    handles = {}
    noisy_handle = None
    for i, dtype in enumerate(dtypes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = [r for r in ok if r["dtype"] == dtype and r["mode"] == mode]
            # A log axis cannot show 0 (or RSS noise below it): such rows are listed instead.
            have = [r for r in sel if r.get(key) is not None and r[key] > 0]
            hidden = [r for r in sel if r.get(key) is not None and r[key] <= 0]
            title = f"{op.upper()} {MODE_LABEL.get(mode, mode)}, {dtype}"
            eager = sorted((r["N"], r["peak_bytes"]) for r in have if r["backend"] == "eager")
            if kind == "memory" and eager:  # eager's absolute peak, for scale
                title += "\n" + textwrap.fill("eager's peak extra: " + ", ".join(
                    f"{fmt(b / 2**20)} MiB (N={n})" for n, b in eager), 75)
            ax.set_title(title, fontsize=11 if "\n" not in title else 9)
            if not have:
                why = ("not measured (no successful rows)" if not sel else
                       "no ratio: eager's peak extra memory is 0 here (below the measurement's "
                       "resolution)" if kind == "memory" else "no eager row to compare with")
                ax.text(0.5, 0.5, textwrap.fill(why, 36), ha="center", va="center", fontsize=9,
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            ax.axhline(1.0, color="black", lw=0.8, ls=":", zorder=1)
            values = []
            order = _backend_order({r["backend"] for r in have})
            for k, backend in enumerate(order):
                pts = sorted((r for r in have if r["backend"] == backend), key=lambda r: r["N"])
                # A small sideways offset per backend, so points at one N do not hide each other.
                dodge = 2 ** (0.03 * (k - (len(order) - 1) / 2))
                xs = [r["N"] * dodge for r in pts]
                ys = [r[key] for r in pts]
                values += ys
                yerr = None
                if kind == "speedup":
                    lo_err, hi_err = [], []
                    for r, y in zip(pts, ys):
                        p20, p80 = r.get("p20_ms"), r.get("p80_ms")
                        if p20 and p80:
                            eager_ms = y * r["ms"]
                            lo_err.append(max(0.0, y - eager_ms / p80))
                            hi_err.append(max(0.0, eager_ms / p20 - y))
                            values += [y - lo_err[-1], y + hi_err[-1]]
                        else:
                            lo_err.append(0.0)
                            hi_err.append(0.0)
                    yerr = [lo_err, hi_err]
                color, marker = BACKEND_STYLE.get(backend, ("black", "o"))
                baseline = backend in BASELINE_BACKENDS
                h = ax.errorbar(xs, ys, yerr=yerr, color=color, marker=marker,
                                ls="--" if baseline else "-", lw=1.4 if baseline else 2.2,
                                markersize=11 if marker == "*" else 7, capsize=3, zorder=3)
                handles.setdefault(backend, h)
                noisy = [(x, y) for r, x, y in zip(pts, xs, ys) if noisy_parts(r)]
                if noisy and kind == "speedup":
                    noisy_handle = ax.scatter([p[0] for p in noisy], [p[1] for p in noisy], s=260,
                                              facecolors="none", edgecolors="red", linewidths=1.5,
                                              zorder=4)
            _set_ratio_axis(ax, values)
            _set_n_axis(ax, [r["N"] for r in have])
            if hidden:
                ax.text(0.02, 0.02, textwrap.fill("not drawn (≤ 0, below the resolution): " + ", ".join(
                    f"{r['backend']} N={r['N']}" for r in hidden), 60), transform=ax.transAxes,
                    fontsize=7, va="bottom")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel("N = H·W (feature-map positions)")
            ax.set_ylabel("speedup vs eager (>1 = faster)" if kind == "speedup"
                          else "peak extra memory / eager's (<1 = less)")
    what = ("speedup vs eager (eager's median time / the backend's; bars: p20–p80 of the timed calls)"
            if kind == "speedup" else "peak extra memory vs eager (beyond the inputs)")
    fig.suptitle(f"{op.upper()} {what}\n{_device_text(env)}, {_shape_text(op, ok)}, "
                 f"torch {env.get('torch', '?')}, {env.get('date', '')}", fontsize=11)
    labels = [BACKEND_LABEL.get(b, b) for b in _backend_order(handles)]
    handles = [handles[b] for b in _backend_order(handles)]
    if noisy_handle is not None:
        labels.append(f"⚠ noisy: p20–p80 spread\n> {100 * SPREAD_LIMIT:.0f}% of the median")
        handles.append(noisy_handle)
    fig.legend(handles, labels, loc="center right", fontsize=9,
               title="dashed: baselines\nsolid: danet_ops", title_fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_op(folder: Path, op: str, rows: list[dict], env: dict) -> list[Path]:
    """``<op>_speedup.png`` and ``<op>_memory.png`` in ``folder``; the paths written."""
    written = []
    for kind in ("speedup", "memory"):
        path = folder / f"{op}_{kind}.png"
        if plot_vs_eager(path, op, rows, kind, env):
            written.append(path)
    return written


# ---------------------------------------------------------------- command line


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


def timing_args(args: argparse.Namespace, device: torch.device, cpu_warmup: int, cpu_rep: int) -> dict:
    """Warm-up/repeat fields of a config: CPU call counts, or CUDA do_bench milliseconds."""
    if device.type == "cuda":
        return {"cuda_warmup_ms": args.warmup or 25, "cuda_rep_ms": args.rep or 100}
    return {"warmup": cpu_warmup if args.warmup is None else args.warmup,
            "rep": cpu_rep if args.rep is None else args.rep}


# ---------------------------------------------------------------- op-level benchmarks


def op_backends(device: torch.device, args: argparse.Namespace, baselines: list[str],
                not_default_compile: bool = False) -> list[str]:
    """eager and the baselines first, then every danet_ops backend available on ``device``
    (the Triton interpreter on the CPU is no benchmark, so triton needs CUDA).

    not_default_compile: leave torch.compile out of the default CPU run (its compile time
    on a few cores would dominate); --full or --backends brings it back.
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


OP_COLUMNS = [
    ("shape", "H×W"), ("N", "N"), ("B", "B"), ("C", "C"), ("Cqk", "Cqk"), ("dtype", "dtype"),
    ("mode", "mode"), ("backend", "backend"), ("ms", "median ms"), ("p20_p80", "p20–p80 ms"),
    ("spread_text", "spread"), ("tflops", "TFLOP/s"),
    ("pct_peak", "% of mm peak"), ("peak_mib", "peak extra MiB"),
    ("speedup_vs_eager", "speedup vs eager (×)"), ("mem_vs_eager", "memory vs eager (×)"),
    ("err_vs_chunked", "max rel. err vs chunked"), ("status", "status"), ("run", "run"),
]
OP_CSV_COLUMNS = [
    "shape", "N", "B", "C", "Cqk", "dtype", "mode", "backend", "ms", "p20_ms", "p80_ms",
    "spread", "noisy", "reps", "tflops", "pct_peak", "peak_mib", "speedup_vs_eager",
    "mem_vs_eager", "err_vs_chunked", "status", "run", "flops", "peak_bytes", "mem_method", "device",
]


def derive_op_rows(rows: list[dict], peak_tflops: Optional[float]) -> None:
    """Derived columns in place: TFLOP/s, % of peak, MiB, spread (and its ⚠), ratios to
    eager within one run ("run" is set where a table joins several)."""
    for r in rows:
        ok = r["status"] == "ok"
        if not ok:
            r["ms"] = r["p20_ms"] = r["p80_ms"] = None
        r["tflops"] = r["flops"] / (r["ms"] * 1e-3) / 1e12 if ok and r["ms"] > 0 else None
        r["pct_peak"] = (100 * r["tflops"] / peak_tflops) if (ok and peak_tflops and r["tflops"]) else None
        r["peak_mib"] = r["peak_bytes"] / 2**20 if ok else None
        r["spread"] = spread_of(r)
        r["noisy"] = None if r["spread"] is None else r["spread"] > SPREAD_LIMIT
        r["p20_p80"] = range_text(r.get("p20_ms"), r.get("p80_ms"))
        r["spread_text"] = spread_text(r["spread"])
    add_ratios(rows, ("shape", "B", "C", "Cqk", "dtype", "mode", "run"))


def op_table(op: str, title: str, device: torch.device, env: dict, notes: list[str],
             out_root: Optional[str], peak_tflops: Optional[float], slug: Optional[str] = None,
             expected: Optional[int] = None) -> TableSet:
    """The TableSet of an op benchmark: ``<op>.md``, ``<op>.csv``, ``<op>_speedup.png``,
    ``<op>_memory.png`` under ``OUT/<slug>/``."""
    env = dict(env)
    if peak_tflops:
        env["measured dense bf16 matmul peak"] = f"{peak_tflops:.0f} TFLOP/s (8192³ torch.mm, do_bench median)"
    notes = list(notes) + [spread_note(device),
                           CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD]
    return TableSet(output_dir(out_root, device, slug), op, title, env, notes, OP_COLUMNS,
                    OP_CSV_COLUMNS, derive=lambda rows: derive_op_rows(rows, peak_tflops),
                    plot=lambda folder, rows: plot_op(folder, op, rows, env), expected=expected)


def finish_op(op: str, title: str, rows: list[dict], device: torch.device, env: dict,
              notes: list[str], out_root: Optional[str], peak_tflops: Optional[float],
              slug: Optional[str] = None) -> Path:
    """All rows at once: derived columns, then the op's set (md, csv, speedup and memory
    plots) replacing the old one under ``OUT/<slug>/``; returns that folder.

    ``slug`` names the output folder when the rows were measured elsewhere (re-rendered)."""
    table = op_table(op, title, device, env, notes, out_root, peak_tflops, slug, len(rows))
    for r in rows:
        table.add(r)
    return table.finish()


def run_op(op: str, title: str, module: str, runner: Callable, configs: list[dict],
           describe: Callable[[dict], str], notes: list[str], args: argparse.Namespace,
           device: torch.device, env: dict, peak_tflops: Optional[float]) -> list[dict]:
    """Sweep an op benchmark's configs, each row written as it is measured, then the final
    tables and plots (see ``TableSet``)."""
    table = op_table(op, title, device, env, notes, args.out, peak_tflops, expected=len(configs))
    rows = sweep(module, runner, configs, device, not args.no_isolate, args.timeout, describe, table)
    table.finish()
    return rows


def script_main(argv: Optional[list[str]], doc: str, run: Callable, runner: Callable,
                needs_peak: bool = True) -> None:
    """The ``main`` of each bench_* script: parse the common arguments, then either run one
    isolated config (``--one-config``, the child process of a sweep) or the whole script."""
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


def timing_note(device: torch.device) -> str:
    """How the op tables' times were taken, for their headers."""
    if device.type == "cuda":
        return ("CUDA timing: triton.testing.do_bench (CUDA events after warm-up), median and "
                "p20/p80 (quantiles 0.2, 0.5, 0.8).")
    return (f"CPU timing: warm-up (the given calls, and at least {CPU_WARMUP_S:g} s), one call "
            f"for peak memory, then the median of time.perf_counter over the timed calls (at "
            f"least the given repeats and {CPU_MIN_TIME_S:g} s, under glibc's usual heap reuse).")
