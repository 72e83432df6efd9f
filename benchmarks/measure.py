"""How one config is measured: its time, its peak memory, and (on the CPU) the fresh
process it runs in, kept together because each depends on the others' order and
allocator settings. Every benchmark measures through here, so their numbers mean the same.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events after warm-up; median, p20, p80);
on the CPU a warm-up of at least ``CPU_WARMUP_S``, then the median, p20 and p80 of
``time.perf_counter`` over at least ``rep`` calls and ``CPU_MIN_TIME_S``. A row whose
p20–p80 spread exceeds ``SPREAD_LIMIT`` of its median is marked ⚠ (table and console).
The model benchmark's steps are too long for that: ``timed_calls`` times a few
synchronised calls instead.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus what was allocated before the call (the inputs).
The CPU has no allocator counters, so every CPU config runs in a fresh process
(``run_isolated``/``child_main``) with glibc's mmap threshold fixed at 128 KiB (big
buffers go straight back to the OS when freed, instead of staying resident in malloc's
heap); after the warm-up the kernel's peak-RSS mark is reset
(``echo 5 > /proc/self/clear_refs``), and the peak extra memory is ``VmHWM`` after the
measured call minus ``VmRSS`` just before it. Timed calls come after that one, under
glibc's usual steady state (buffers up to 32 MiB reused from the heap), so the small
threshold's page faults do not count against backends that allocate per block.
"""
from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch

from benchmarks.environment import REPO_ROOT

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
# The line a fresh process prints its result on (run_isolated looks for it).
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


def timing_note(device: torch.device) -> str:
    """How the op tables' times were taken, for their headers."""
    if device.type == "cuda":
        return ("CUDA timing: triton.testing.do_bench (CUDA events after warm-up), median and "
                "p20/p80 (quantiles 0.2, 0.5, 0.8).")
    return (f"CPU timing: warm-up (the given calls, and at least {CPU_WARMUP_S:g} s), one call "
            f"for peak memory, then the median of time.perf_counter over the timed calls (at "
            f"least the given repeats and {CPU_MIN_TIME_S:g} s, under glibc's usual heap reuse).")


def spread_note(device: torch.device) -> str:
    return ("p20–p80: the 20th and 80th percentiles of the timed calls"
            + (" (do_bench quantiles)" if device.type == "cuda" else "")
            + f"; spread = (p80 − p20)/median. Rows with a spread above "
            f"{100 * SPREAD_LIMIT:.0f}% are marked ⚠ (noisy: compare them with care).")


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, torch.quantile's)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize_times(times: list[float]) -> dict:
    """``{"ms": median, "p20_ms", "p80_ms", "reps"}`` of a list of milliseconds."""
    return {"ms": statistics.median(times), "p20_ms": quantile(times, 0.2),
            "p80_ms": quantile(times, 0.8), "reps": len(times)}


def spread_of(ms: Optional[float], p20: Optional[float], p80: Optional[float]) -> Optional[float]:
    """(p80 − p20) / median, or None where a timing has no spread (not measured)."""
    if ms is None or p20 is None or p80 is None or ms <= 0:
        return None
    return (p80 - p20) / ms


def _cpu_warm_up(fn: Callable[[], object], calls: int) -> None:
    """At least ``calls`` calls and CPU_WARMUP_S seconds (at most CPU_MAX_REPS calls)."""
    start = time.perf_counter()
    done = 0
    while done < calls or (time.perf_counter() - start < CPU_WARMUP_S and done < CPU_MAX_REPS):
        fn()
        done += 1


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
    _cpu_warm_up(fn, warmup)
    times = []
    start = time.perf_counter()
    while len(times) < max(1, rep) or (time.perf_counter() - start < CPU_MIN_TIME_S
                                        and len(times) < CPU_MAX_REPS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize_times(times)


# ---------------------------------------------------------------- memory


def proc_status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB (``VmRSS``, ``VmHWM``)."""
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


def live_bytes(device: torch.device) -> int:
    """What is allocated now: the CUDA allocator's count, or the process's RSS."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return proc_status_kb("VmRSS") * 1024


def peak_bytes(fn: Callable[[], object], device: torch.device,
               base: Optional[int] = None) -> tuple[int, str]:
    """Peak memory during one ``fn()`` call above ``base`` (default: what is live just
    before the call), and how it was measured: ``cuda-allocator``, ``rss-hwm-reset``, or
    ``rss-hwm-unreset`` where the peak-RSS mark could not be reset."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if base is None else base
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda-allocator"
    method = "rss-hwm-reset" if reset_peak_rss() else "rss-hwm-unreset"
    before = live_bytes(device) if base is None else base
    fn()
    return proc_status_kb("VmHWM") * 1024 - before, method


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
    """A row's status for a failed config: ``OOM``, or the error's first 160 characters."""
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
        gc.collect()
        peak, method = peak_bytes(fn, device)
        stats = time_stats(fn, device, cuda_warmup_ms, cuda_rep_ms)
        return dict(stats, peak_bytes=peak, mem_method=method)
    _cpu_warm_up(fn, warmup)
    gc.collect()
    peak, method = peak_bytes(fn, device)
    # The memory call ran with a small fixed mmap threshold (child_main), so every freed
    # buffer left RSS at once; that also makes each large allocation a fresh mmap with
    # page faults, which is not how a process runs normally. Time with glibc's usual
    # steady state instead: buffers up to 32 MiB reused from the heap (warmed up again).
    set_malloc_mmap_threshold(32 * 1024 * 1024, trim_bytes=64 * 1024 * 1024)
    stats = time_stats(fn, device, warmup=1, rep=rep)
    set_malloc_mmap_threshold(trim_bytes=128 * 1024)  # back to the memory-measuring setting
    return dict(stats, peak_bytes=peak, mem_method=method)


def timed_calls(fn: Callable[[], object], device: torch.device, warmup: int, rep: int,
                base: Optional[int] = None) -> tuple[dict, int, str]:
    """For calls too long for ``measure``'s repeats (a model's training step): ``warmup``
    calls, then ``rep`` synchronised wall-clock calls, the first of them also measuring
    ``peak_bytes(fn, device, base)``. Returns ``summarize_times``' dict, the peak and how it
    was measured."""
    for _ in range(max(1, warmup)):
        fn()
    synchronize(device)
    free_memory(device)
    t0 = time.perf_counter()
    peak, method = peak_bytes(fn, device, base)
    synchronize(device)
    times = [(time.perf_counter() - t0) * 1e3]
    for _ in range(max(1, rep) - 1):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize_times(times), peak, method


def run_one(setup: Callable[[dict, torch.device], tuple], cfg: dict, device: torch.device) -> dict:
    """Build the config's inputs and function (``setup`` returns ``(fn, extra row
    fields)``), measure; errors become a status."""
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


# ---------------------------------------------------------------- a fresh process per config


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
