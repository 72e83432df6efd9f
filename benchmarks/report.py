"""Where results go and how tables are written: each benchmark's set (``<name>.md``,
``<name>.csv`` and its plots) is written row by row into ``<out>.partial/`` and, once
complete, replaces the old set in ``<out>/`` as a whole (``TableSet``), so tables and plots
in ``<out>/`` always come from one run and Ctrl-C keeps what was measured."""
from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from benchmarks.environment import device_slug
from benchmarks.measure import SPREAD_LIMIT

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def fmt(value, digits: int = 3) -> str:
    """A table cell: ``–`` for no value, floats to about three significant digits."""
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


def range_text(p20: Optional[float], p80: Optional[float]) -> Optional[str]:
    if p20 is None or p80 is None:
        return None
    return f"{fmt(float(p20))}–{fmt(float(p80))}"


def spread_text(spread: Optional[float]) -> Optional[str]:
    """``12%``, or ``41% ⚠`` above SPREAD_LIMIT (the mark the tables and console use)."""
    if spread is None:
        return None
    return f"{100 * spread:.0f}%" + (" ⚠" if spread > SPREAD_LIMIT else "")


def output_dir(root: Optional[str], device: torch.device, slug: Optional[str] = None) -> Path:
    """``ROOT/<device-slug>/`` (not created: ``TableSet`` creates it when a set is complete)."""
    path = Path(root) if root else RESULTS_ROOT
    return path / (slug or device_slug(device))


def staging_dir(out: Path) -> Path:
    """Where a run writes before its sets are complete: ``<out>.partial`` next to ``out``."""
    return out.parent / (out.name + ".partial")


def set_files(folder: Path, name: str) -> list[Path]:
    """The files of one table set in ``folder``: ``<name>.md``, ``<name>.csv``, ``<name>_*.png``."""
    if not folder.is_dir():
        return []
    files = [folder / f"{name}.md", folder / f"{name}.csv"]
    return [f for f in files if f.is_file()] + sorted(folder.glob(f"{name}_*.png"))


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


def markdown_row(columns: list[tuple[str, str]], row) -> str:
    return "| " + " | ".join(fmt(getattr(row, k)) for k, _ in columns) + " |"


class TableSet:
    """One benchmark's output set (``<name>.md``, ``<name>.csv`` and its plots), written as
    rows arrive and replaced as a whole.

    Rows (instances of ``row_type``, see ``benchmarks.rows``) are appended to the Markdown
    and CSV files in the staging folder (``<out>.partial/``) as each config finishes, so a
    killed run keeps what it measured. ``finish()`` rewrites both tables (final ratios)
    and draws the plots; complete, it then removes the old set's files from ``out`` and
    moves the new ones in. ``finish(complete=False)`` (Ctrl-C) leaves the partial set in
    the staging folder and ``out`` as it was.

    derive(rows) fills derived columns in place (it sees every row so far);
    plot(folder, rows) draws the set's PNGs into ``folder``.
    """

    def __init__(self, out: Path, name: str, title: str, env: dict, notes: list[str], row_type: type,
                 derive: Optional[Callable[[list], None]] = None,
                 plot: Optional[Callable[[Path, list], list[Path]]] = None,
                 expected: Optional[int] = None):
        self.out, self.name, self.title = Path(out), name, title
        self.env, self.notes = dict(env), list(notes)
        self.row_type, self.columns = row_type, row_type.MARKDOWN
        self.derive, self.plot, self.expected = derive, plot, expected
        self.rows: list = []
        self.staging = staging_dir(self.out)
        self.staging.mkdir(parents=True, exist_ok=True)
        for f in set_files(self.staging, name):  # an earlier interrupted run's
            f.unlink()
        self.md, self.csv = self.staging / f"{name}.md", self.staging / f"{name}.csv"
        self._write(self.notes)

    def _write(self, notes: list[str]) -> None:
        lines = markdown_header(self.title, self.env, notes, self.columns)
        self.md.write_text("\n".join(lines + [markdown_row(self.columns, r) for r in self.rows]) + "\n")
        with open(self.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.row_type.csv_columns())
            w.writerows(r.csv_values() for r in self.rows)

    def add(self, row) -> None:
        self.rows.append(row)
        if self.derive is not None:
            self.derive(self.rows)
        with open(self.md, "a") as f:
            f.write(markdown_row(self.columns, row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow(row.csv_values())

    def finish(self, complete: bool = True) -> Path:
        """Final tables and plots; installed into ``out`` when complete. Returns the folder
        that holds the set."""
        if self.derive is not None:
            self.derive(self.rows)
        notes = list(self.notes)
        if not complete:
            of = f" of {self.expected}" if self.expected else ""
            notes.insert(0, f"**Interrupted run**: {len(self.rows)}{of} configs measured.")
        self._write(notes)
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
