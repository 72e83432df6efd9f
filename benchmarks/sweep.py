"""The loop every benchmark runs its configs through: each config measured (on the CPU in
a fresh process), its row written at once, a progress line printed, and on Ctrl-C or
SIGTERM the tables of what was measured finished before the process ends."""
from __future__ import annotations

import time
from typing import Callable

import torch

from benchmarks.measure import SPREAD_LIMIT, run_isolated, set_malloc_mmap_threshold
from benchmarks.report import TableSet


def sweep(
    module: str, runner: Callable[[dict, torch.device], dict], configs: list[dict],
    device: torch.device, isolate: bool, timeout: float, describe: Callable[[dict], str],
    table: TableSet,
) -> list:
    """Measure every config (CPU: each in a fresh process, ``python -m <module>``), one
    progress line per config; returns the rows (``table.row_type``).

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
            row = table.row_type.from_dict({**cfg, **result})
            rows.append(row)
            table.add(row)
            what = row.progress()
            noisy = row.noisy_parts()
            if noisy:
                what += f"  ⚠ noisy: {', '.join(noisy)} of the median"
            print(f"  [{i}/{len(configs)}] {describe(cfg)}: {what}  "
                  f"({time.perf_counter() - t0:.1f} s, elapsed {time.perf_counter() - start:.1f} s)",
                  flush=True)
    except KeyboardInterrupt:
        print(f"\n  interrupted after {len(rows)} of {len(configs)} configs", flush=True)
        table.finish(complete=False)
        raise
    noisy_configs = [cfg for cfg, row in zip(configs, rows) if row.noisy_parts()]
    if noisy_configs:
        print(f"  ⚠ {len(noisy_configs)} of {len(rows)} rows are noisy (p20–p80 spread above "
              f"{100 * SPREAD_LIMIT:.0f}% of the median; marked ⚠ in the table): "
              + "; ".join(describe(cfg) for cfg in noisy_configs), flush=True)
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
