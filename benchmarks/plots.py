"""The two PNGs of an op benchmark, relative to eager against N: speedup (with p20–p80
bars) and peak extra memory, one panel per dtype and mode, so a reader sees at a glance
where each backend wins and by how much, and which points are noisy."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from benchmarks.measure import SPREAD_LIMIT
from benchmarks.report import fmt
from benchmarks.rows import DTYPES, OpRow

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


def _shape_text(rows: list[OpRow]) -> str:
    parts = []
    for key in ("B", "C", "Cqk"):
        values = sorted({getattr(r, key) for r in rows if getattr(r, key) is not None})
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


def plot_vs_eager(path: Path, op: str, rows: list[OpRow], kind: str, env: dict) -> bool:
    """``kind`` "speedup" (eager ms / ms, bars from the row's p20–p80) or "memory" (peak
    extra memory / eager's, with eager's absolute peak written beside its points) against
    N; one panel per dtype (rows) and mode (columns), one colour and marker per backend,
    baselines dashed, danet_ops backends solid, noisy rows circled in red."""
    plt = pyplot()
    if plt is None:
        return False
    key = "speedup_vs_eager" if kind == "speedup" else "mem_vs_eager"
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        return False
    dtypes = sorted({r.dtype for r in ok}, key=lambda d: (list(DTYPES).index(d) if d in DTYPES else 99, d))
    order = list(MODE_LABEL)
    modes = sorted({r.mode for r in ok}, key=lambda m: (order.index(m) if m in order else 99, m))
    fig, axes = plt.subplots(len(dtypes), len(modes), squeeze=False,
                             figsize=(5.4 * len(modes) + 2.6, 3.9 * len(dtypes) + 1.1))
    handles = {}
    noisy_handle = None
    for i, dtype in enumerate(dtypes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = [r for r in ok if r.dtype == dtype and r.mode == mode]
            # A log axis cannot show 0 (or RSS noise below it): such rows are listed instead.
            have = [r for r in sel if getattr(r, key) is not None and getattr(r, key) > 0]
            hidden = [r for r in sel if getattr(r, key) is not None and getattr(r, key) <= 0]
            title = f"{op.upper()} {MODE_LABEL.get(mode, mode)}, {dtype}"
            eager = sorted((r.N, r.peak_bytes) for r in have if r.backend == "eager")
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
            order = _backend_order({r.backend for r in have})
            for k, backend in enumerate(order):
                pts = sorted((r for r in have if r.backend == backend), key=lambda r: r.N)
                # A small sideways offset per backend, so points at one N do not hide each other.
                dodge = 2 ** (0.03 * (k - (len(order) - 1) / 2))
                xs = [r.N * dodge for r in pts]
                ys = [getattr(r, key) for r in pts]
                values += ys
                yerr = None
                if kind == "speedup":
                    lo_err, hi_err = [], []
                    for r, y in zip(pts, ys):
                        p20, p80 = r.p20_ms, r.p80_ms
                        if p20 and p80:
                            eager_ms = y * r.ms
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
                noisy = [(x, y) for r, x, y in zip(pts, xs, ys) if r.noisy_parts()]
                if noisy and kind == "speedup":
                    noisy_handle = ax.scatter([p[0] for p in noisy], [p[1] for p in noisy], s=260,
                                              facecolors="none", edgecolors="red", linewidths=1.5,
                                              zorder=4)
            _set_ratio_axis(ax, values)
            _set_n_axis(ax, [r.N for r in have])
            if hidden:
                ax.text(0.02, 0.02, textwrap.fill("not drawn (≤ 0, below the resolution): " + ", ".join(
                    f"{r.backend} N={r.N}" for r in hidden), 60), transform=ax.transAxes,
                    fontsize=7, va="bottom")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel("N = H·W (feature-map positions)")
            ax.set_ylabel("speedup vs eager (>1 = faster)" if kind == "speedup"
                          else "peak extra memory / eager's (<1 = less)")
    what = ("speedup vs eager (eager's median time / the backend's; bars: p20–p80 of the timed calls)"
            if kind == "speedup" else "peak extra memory vs eager (beyond the inputs)")
    fig.suptitle(f"{op.upper()} {what}\n{_device_text(env)}, {_shape_text(ok)}, "
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


def plot_op(folder: Path, op: str, rows: list[OpRow], env: dict) -> list[Path]:
    """``<op>_speedup.png`` and ``<op>_memory.png`` in ``folder``; the paths written."""
    written = []
    for kind in ("speedup", "memory"):
        path = folder / f"{op}_{kind}.png"
        if plot_vs_eager(path, op, rows, kind, env):
            written.append(path)
    return written


