"""The rows of the benchmark tables, as dataclasses whose field order is their CSV's column
order: the CSV header is read off the class, so it cannot drift from what a row holds, and
every row carries every column (spread, noise mark, memory method, device), None where it
has no value. The Markdown tables show a selection (``MARKDOWN``), some of it as text
derived from the fields (properties)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from benchmarks.measure import SPREAD_LIMIT, spread_of
from benchmarks.report import range_text, spread_text

# The dtype names of configs and rows (``--dtypes``), in the order tables and plots use.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


class Row:
    """What the sweep and the table writers ask of a row, whatever the benchmark."""

    MARKDOWN: ClassVar[list[tuple[str, str]]]  # (attribute, header) of each Markdown column

    @classmethod
    def from_dict(cls, values: dict):
        """The row of a config merged with its result: the keys that are columns (the
        config's others, such as H, W, threads or warm-up counts, are not the table's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def csv_columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def csv_values(self) -> list:
        return ["" if v is None else v for v in (getattr(self, c) for c in self.csv_columns())]

    def timings(self) -> dict[str, tuple]:
        """``{label: (median, p20, p80)}`` of each timing the row holds."""
        raise NotImplementedError

    def noisy_parts(self) -> list[str]:
        """``["spread 41%"]`` for each timing whose p20–p80 spread exceeds SPREAD_LIMIT of
        its median (labelled ``train``/``infer`` for the model's two)."""
        parts = []
        for label, times in self.timings().items():
            spread = spread_of(*times)
            if spread is not None and spread > SPREAD_LIMIT:
                parts.append(f"{label + ' ' if label else ''}spread {100 * spread:.0f}%")
        return parts

    def progress(self) -> str:
        """What the sweep's console line says of a measured row."""
        raise NotImplementedError


@dataclass
class OpRow(Row):
    """One op benchmark config (PAM or CAM) and what was measured."""

    shape: str
    N: int
    B: int
    C: int
    Cqk: Optional[int]
    dtype: str
    mode: str
    backend: str
    ms: Optional[float] = None
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    spread: Optional[float] = None
    noisy: Optional[bool] = None
    reps: Optional[int] = None
    tflops: Optional[float] = None
    pct_peak: Optional[float] = None
    peak_mib: Optional[float] = None
    speedup_vs_eager: Optional[float] = None
    mem_vs_eager: Optional[float] = None
    err_vs_chunked: Optional[float] = None
    status: Optional[str] = None
    run: Optional[str] = None  # which run a row comes from, where a table joins several
    flops: Optional[float] = None
    peak_bytes: Optional[int] = None
    mem_method: Optional[str] = None
    device: Optional[str] = None

    MARKDOWN: ClassVar = [
        ("shape", "H×W"), ("N", "N"), ("B", "B"), ("C", "C"), ("Cqk", "Cqk"), ("dtype", "dtype"),
        ("mode", "mode"), ("backend", "backend"), ("ms", "median ms"), ("p20_p80", "p20–p80 ms"),
        ("spread_text", "spread"), ("tflops", "TFLOP/s"),
        ("pct_peak", "% of mm peak"), ("peak_mib", "peak extra MiB"),
        ("speedup_vs_eager", "speedup vs eager (×)"), ("mem_vs_eager", "memory vs eager (×)"),
        ("err_vs_chunked", "max rel. err vs chunked"), ("status", "status"), ("run", "run"),
    ]

    @property
    def p20_p80(self) -> Optional[str]:
        return range_text(self.p20_ms, self.p80_ms)

    @property
    def spread_text(self) -> Optional[str]:
        return spread_text(self.spread)

    def timings(self) -> dict[str, tuple]:
        return {"": (self.ms, self.p20_ms, self.p80_ms)}

    def progress(self) -> str:
        if self.status != "ok":
            return self.status
        return (f"{self.ms:.3f} ms (p20–p80 {range_text(self.p20_ms, self.p80_ms)}"
                + (f", {self.reps} calls" if self.reps else "")
                + f"), peak extra {self.peak_bytes / 2**20:.1f} MiB")


@dataclass
class ModelRow(Row):
    """One model benchmark config (preset, attention backend, precision): training step
    memory and time, inference time."""

    preset: str
    backend: str
    precision: str
    crop: str
    test: str
    test_mode: str
    train_mem_gb: Optional[float] = None
    train_ms: Optional[float] = None
    train_p20_ms: Optional[float] = None
    train_p80_ms: Optional[float] = None
    train_reps: Optional[int] = None
    fps: Optional[float] = None
    infer_ms: Optional[float] = None
    infer_p20_ms: Optional[float] = None
    infer_p80_ms: Optional[float] = None
    infer_reps: Optional[int] = None
    noisy: Optional[bool] = None
    infer_peak_gb: Optional[float] = None
    mem_vs_eager: Optional[float] = None
    fps_vs_eager: Optional[float] = None
    status: Optional[str] = None
    scale: Optional[float] = None
    amp_dtype: Optional[str] = None
    mem_method: Optional[str] = None
    device: Optional[str] = None

    MARKDOWN: ClassVar = [
        ("preset", "config"), ("backend", "attention"), ("precision", "precision"),
        ("crop", "train crop"), ("test", "test input"), ("test_mode", "test mode"),
        ("train_mem_gb", "Mem (GB), train B=2"), ("train_ms", "train ms/step"),
        ("train_range", "train ms p20–p80"), ("fps", "Inf time (fps), B=1"),
        ("fps_range", "fps p20–p80"), ("spread_text", "spread (train / inference)"),
        ("infer_peak_gb", "inference peak extra (GB)"),
        ("mem_vs_eager", "train mem vs eager (×)"), ("fps_vs_eager", "fps vs eager (×)"),
        ("status", "status"),
    ]

    @property
    def train_range(self) -> Optional[str]:
        return range_text(self.train_p20_ms, self.train_p80_ms)

    @property
    def fps_range(self) -> Optional[str]:
        p20, p80 = self.infer_p20_ms, self.infer_p80_ms
        return range_text(1000.0 / p80, 1000.0 / p20) if p20 and p80 else None

    @property
    def spread_text(self) -> str:
        return " / ".join(spread_text(spread_of(*t)) or "–" for t in self.timings().values())

    def timings(self) -> dict[str, tuple]:
        return {"train": (self.train_ms, self.train_p20_ms, self.train_p80_ms),
                "infer": (self.infer_ms, self.infer_p20_ms, self.infer_p80_ms)}

    def progress(self) -> str:
        parts = []
        if self.train_mem_gb is not None:
            parts.append(f"train {self.train_mem_gb:.2f} GB, {self.train_ms:.0f} ms/step")
        if self.fps is not None:
            parts.append(f"inference {self.fps:.3g} fps")
        if self.status != "ok":
            parts.append(self.status)
        return ", ".join(parts)
