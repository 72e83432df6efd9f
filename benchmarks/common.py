"""What every benchmark script shares: device info, timing, peak memory, isolation of
CPU runs in fresh processes, the sweep loop with progress lines, and the Markdown / CSV /
PNG writers.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events after warm-up, median); on the
CPU a warm-up, then the median of ``time.perf_counter`` over repeats.

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


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, rep: int) -> float:
    """Median milliseconds of ``fn()``.

    CUDA: ``triton.testing.do_bench`` with ``warmup``/``rep`` read as milliseconds of
    warm-up and measurement. CPU: ``warmup`` calls, then the median of ``rep`` calls.
    """
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, rep)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
    """Warm up, then peak extra memory of one call and the median time.

    CUDA: two warm-up calls, one call under the allocator's peak counter, then do_bench.
    CPU: ``warmup`` calls, one call measuring peak RSS, then ``rep`` timed calls under
    glibc's usual allocator settings (see below).
    """
    if device.type == "cuda":
        fn()
        fn()
        torch.cuda.synchronize(device)
        peak, method = peak_extra_bytes(fn, device)
        ms = time_ms(fn, device, cuda_warmup_ms, cuda_rep_ms)
        return {"ms": ms, "peak_bytes": peak, "mem_method": method}
    for _ in range(warmup):
        fn()
    gc.collect()
    method = "rss-hwm-reset" if reset_peak_rss() else "rss-hwm-unreset"
    before = _proc_status_kb("VmRSS")
    fn()
    peak = (_proc_status_kb("VmHWM") - before) * 1024
    # The memory call ran with a small fixed mmap threshold (child_main), so every freed
    # buffer left RSS at once; that also makes each large allocation a fresh mmap with
    # page faults, which is not how a process runs normally. Time with glibc's usual
    # steady state instead: buffers up to 32 MiB reused from the heap.
    set_malloc_mmap_threshold(32 * 1024 * 1024, trim_bytes=64 * 1024 * 1024)
    ms = time_ms(fn, device, warmup=1, rep=rep)
    set_malloc_mmap_threshold(trim_bytes=128 * 1024)  # back to the memory-measuring setting
    return {"ms": ms, "peak_bytes": peak, "mem_method": method, "reps": max(1, rep)}


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


def sweep(
    module: str, runner: Callable[[dict, torch.device], dict], configs: list[dict],
    device: torch.device, isolate: bool, timeout: float, describe: Callable[[dict], str],
) -> list[dict]:
    """Measure every config (CPU: each in a fresh process), one progress line per config.

    runner(cfg, device) -> result dict; on the CPU the child process calls the same runner.
    """
    rows = []
    if device.type == "cpu":
        set_malloc_mmap_threshold()
    start = time.perf_counter()
    for i, cfg in enumerate(configs, 1):
        t0 = time.perf_counter()
        if isolate and device.type == "cpu":
            result = run_isolated(module, cfg, timeout)
        else:
            result = runner(cfg, device)
        row = dict(cfg)
        row.update(result)
        rows.append(row)
        if row.get("summary"):
            what = row["summary"]
        elif row["status"] == "ok":
            what = f"{row['ms']:.3f} ms, peak extra {row['peak_bytes'] / 2**20:.1f} MiB"
        else:
            what = row["status"]
        print(f"  [{i}/{len(configs)}] {describe(cfg)}: {what}  "
              f"({time.perf_counter() - t0:.1f} s, elapsed {time.perf_counter() - start:.1f} s)",
              flush=True)
    return rows


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
    path = Path(root) if root else RESULTS_ROOT
    path = path / (slug or device_slug(device))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_markdown(path: Path, title: str, env: dict, notes: list[str],
                   columns: list[tuple[str, str]], rows: list[dict]) -> None:
    """columns: (row key, header). Values are formatted with ``fmt``."""
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
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])


# One colour and marker per backend in every chart.
BACKEND_STYLE = {
    "eager": ("tab:blue", "o"), "compile": ("tab:orange", "s"), "sdpa": ("tab:green", "^"),
    "flex": ("tab:red", "v"), "chunked": ("tab:brown", "D"), "triton": ("tab:purple", "*"),
    "cuda": ("tab:gray", "X"),
}


def plot_against_n(path: Path, rows: list[dict], value_key: str, ylabel: str,
                   panel_keys: tuple[str, ...], title: str) -> bool:
    """One panel per ``panel_keys`` combination, one line per backend, value against N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"  (matplotlib not installed: skipping {path.name}; pip install matplotlib)")
        return False
    ok = [r for r in rows if r["status"] == "ok" and r.get(value_key) is not None]
    panels = sorted({tuple(r[k] for k in panel_keys) for r in ok})
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sel = [r for r in ok if tuple(r[k] for k in panel_keys) == panel]
        for backend in dict.fromkeys(r["backend"] for r in sel):
            pts = sorted((r["N"], r[value_key]) for r in sel if r["backend"] == backend)
            color, marker = BACKEND_STYLE.get(backend, ("black", "o"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                    label=backend, markersize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N = H·W")
        ax.set_ylabel(ylabel)
        ax.set_title(" ".join(str(p) for p in panel))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
    p.add_argument("--warmup", type=int, help="warm-up calls (CUDA op benchmarks: do_bench warm-up ms)")
    p.add_argument("--rep", type=int, help="timed repeats (CUDA op benchmarks: do_bench measurement ms)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per CPU config process")
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
    ("mode", "mode"), ("backend", "backend"), ("ms", "median ms"), ("tflops", "TFLOP/s"),
    ("pct_peak", "% of mm peak"), ("peak_mib", "peak extra MiB"),
    ("speedup_vs_eager", "speedup vs eager (×)"), ("mem_vs_eager", "memory vs eager (×)"),
    ("err_vs_chunked", "max rel. err vs chunked"), ("status", "status"), ("run", "run"),
]
OP_CSV_COLUMNS = [k for k, _ in OP_COLUMNS] + ["flops", "peak_bytes", "mem_method", "device"]


def finish_op(op: str, title: str, rows: list[dict], device: torch.device, env: dict,
              notes: list[str], out_root: Optional[str], peak_tflops: Optional[float],
              slug: Optional[str] = None) -> Path:
    """Derived columns (TFLOP/s, % of peak, ratios), then <op>.md/.csv/_time.png/_memory.png.

    ``slug`` names the output folder when the rows were measured elsewhere (re-rendered)."""
    for r in rows:
        ok = r["status"] == "ok"
        r["tflops"] = r["flops"] / (r["ms"] * 1e-3) / 1e12 if ok and r["ms"] > 0 else None
        r["pct_peak"] = (100 * r["tflops"] / peak_tflops) if (ok and peak_tflops and r["tflops"]) else None
        r["peak_mib"] = r["peak_bytes"] / 2**20 if ok else None
        if not ok:
            r["ms"] = None
    # Ratios only within one run ("run" is set where a table joins several).
    add_ratios(rows, ("shape", "B", "C", "Cqk", "dtype", "mode", "run"))
    out = output_dir(out_root, device, slug)
    env = dict(env)
    if peak_tflops:
        env["measured dense bf16 matmul peak"] = f"{peak_tflops:.0f} TFLOP/s (8192³ torch.mm, do_bench median)"
    notes = list(notes) + [CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD]
    write_markdown(out / f"{op}.md", title, env, notes, OP_COLUMNS, rows)
    write_csv(out / f"{op}.csv", OP_CSV_COLUMNS, rows)
    mem_rows = [dict(r, peak_mib=r["peak_mib"] if (r.get("peak_mib") or 0) > 0 else None) for r in rows]
    plot_against_n(out / f"{op}_time.png", rows, "ms", "median time (ms)", ("dtype", "mode"),
                   f"{op.upper()} time, {env['device']}")
    plot_against_n(out / f"{op}_memory.png", mem_rows, "peak_mib", "peak extra memory (MiB)",
                   ("dtype", "mode"), f"{op.upper()} peak memory, {env['device']}")
    plot_against_n(out / f"{op}_speedup.png", rows, "speedup_vs_eager", "speedup vs eager (×, >1 = faster)",
                   ("dtype", "mode"), f"{op.upper()} speedup vs eager, {env['device']}")
    print(f"  wrote {out / (op + '.md')} and .csv")
    return out


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
    device = pick_device(args.device)
    peak = matmul_peak_tflops(device) if needs_peak else None
    run(args, device, environment(device), peak)


def timing_note(device: torch.device) -> str:
    """How the op tables' times were taken, for their headers."""
    if device.type == "cuda":
        return "CUDA timing: triton.testing.do_bench (CUDA events after warm-up), median."
    return ("CPU timing: warm-up call(s), then the median of time.perf_counter over the repeats "
            "(taken after the peak-memory call, under glibc's usual heap reuse).")
