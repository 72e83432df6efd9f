"""The kernel issues' targets, checked against the rows of one GPU headline run.

    python -m benchmarks.targets ROWS_CSV [--env env.txt] [--sanitizer sanitizer.txt]

ROWS_CSV is the headline's ``rows.csv`` (or a ``pam.csv`` it rendered); ``--env`` is the
``device_info`` output, for the measured bf16 matmul peak; ``--sanitizer`` the runbook's
``sanitizer.txt``. Prints two Markdown tables: every target (issue, target, shape,
measured, met: yes / no / – where a row it needs was not measured), then each variant
row (``triton[...]``, ``cuda[...]``) against the plain row of its backend at the same
shape, dtype and mode (which variant to make the default, which to delete). The GPU
runbook appends both to its summary. Ratios are taken between rows of one run (the
``run`` column, where a table joins several), as the benchmark protocol asks.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional

#: (B, N) of the Triton PAM targets: the training crop, the 97x97 crop, whole-image test.
PAM_SHAPES = [(2, 8192), (2, 9409), (1, 32768)]
#: (B, N) of the CUDA PAM targets.
CUDA_SHAPES = [(2, 8192)]
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass
class Check:
    issue: int
    target: str
    shape: str
    measured: str
    met: Optional[bool]  # None: a row it needs was not measured


def read_rows(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            for key in ("N", "B"):
                r[key] = int(r[key])
            for key in ("ms", "flops", "peak_bytes", "err_vs_chunked"):
                r[key] = float(r[key]) if r.get(key) not in (None, "") else None
            r.setdefault("run", "")
            r.setdefault("op", "pam" if r.get("Cqk") else "cam")  # a rendered pam.csv has no op column
            rows.append(r)
    return rows


def read_peak_tflops(env_path: Optional[str]) -> Optional[float]:
    """The measured dense bf16 matmul rate of a ``device_info`` output, if it has one."""
    if not env_path:
        return None
    with open(env_path) as f:
        match = re.search(r"^measured dense bf16 matmul: ([0-9.]+) TFLOP/s", f.read(), re.M)
    return float(match.group(1)) if match else None


def _find(rows: list[dict], backends: list[str], **key) -> Optional[list[dict]]:
    """One ok row per backend, all from the same run (the last run that has them all)."""
    by_run: dict[str, dict] = {}
    for r in rows:
        if r.get("status", "ok") == "ok" and r["ms"] and all(r.get(k) == v for k, v in key.items()):
            by_run.setdefault(r["run"], {})[r["backend"]] = r
    for run in reversed(list(by_run)):
        if all(b in by_run[run] for b in backends):
            return [by_run[run][b] for b in backends]
    return None


def _shape(b: int, n: int) -> str:
    return f"B={b}, N={n}"


def _speedup(rows, issue, target, ours, base, minimum, shapes, dtype, mode, at_most=None) -> list[Check]:
    """``ours`` at least ``minimum`` times as fast as ``base`` (time ratio base / ours) or,
    with ``at_most``, taking at most that many times ``base``'s time."""
    checks = []
    for b, n in shapes:
        found = _find(rows, [ours, base], op="pam", B=b, N=n, dtype=dtype, mode=mode)
        if found is None:
            checks.append(Check(issue, target, _shape(b, n), "not measured", None))
            continue
        ours_ms, base_ms = found[0]["ms"], found[1]["ms"]
        times = f"({ours_ms:.3f} vs {base_ms:.3f} ms)"
        if at_most is None:
            text, met = f"{base_ms / ours_ms:.2f}× {times}", base_ms / ours_ms >= minimum
        else:
            text, met = f"{ours_ms / base_ms:.2f}× {base}'s time {times}", ours_ms / base_ms <= at_most
        checks.append(Check(issue, target, _shape(b, n), text, met))
    return checks


def _each_row(rows, issue, target, backend, shapes, dtype, mode,
              measure: Callable[[dict], tuple[str, Optional[bool]]]) -> list[Check]:
    checks = []
    for b, n in shapes:
        found = _find(rows, [backend], op="pam", B=b, N=n, dtype=dtype, mode=mode)
        text, met = measure(found[0]) if found else ("not measured", None)
        checks.append(Check(issue, target, _shape(b, n), text, met))
    return checks


def _error_at_most(limit: float) -> Callable[[dict], tuple[str, Optional[bool]]]:
    def measure(r):
        err = r["err_vs_chunked"]
        return ("no error measured", None) if err is None else (f"{err:.1e}", err <= limit)
    return measure


def _peak_share(peak_tflops: Optional[float], share: float) -> Callable[[dict], tuple[str, Optional[bool]]]:
    def measure(r):
        if not peak_tflops or not r["flops"]:
            return "no matmul peak measured", None
        tflops = r["flops"] / r["ms"] / 1e9
        return f"{tflops:.0f} TFLOP/s = {100 * tflops / peak_tflops:.0f}% of {peak_tflops:.0f}", \
            tflops >= share * peak_tflops
    return measure


def _memory_within(factor: float) -> Callable[[dict], tuple[str, Optional[bool]]]:
    """Peak extra memory against the bytes of q, k, v, out and the lse."""
    def measure(r):
        if r["peak_bytes"] is None:
            return "no peak measured", None
        cqk = int(r.get("Cqk") or 64)
        tensors = r["B"] * r["N"] * ((2 * cqk + 2 * int(r["C"])) * BYTES[r["dtype"]] + 4)
        ratio = r["peak_bytes"] / tensors
        mib = r["peak_bytes"] / 2**20
        return f"{mib:.0f} MiB = {ratio:.2f}× of {tensors / 2**20:.0f} MiB", ratio <= factor
    return measure


def _sanitizer(path: Optional[str]) -> list[Check]:
    checks = []
    text = open(path).read() if path else ""
    for tool, pattern in (("memcheck", r"memcheck\.log:.*ERROR SUMMARY: (\d+) error"),
                          ("racecheck", r"racecheck\.log:.*SUMMARY: .*\((\d+) errors?")):
        found = re.search(pattern, text)
        measured = f"{found.group(1)} errors" if found else "not run"
        checks.append(Check(14, f"compute-sanitizer {tool} clean", "small cases", measured,
                            int(found.group(1)) == 0 if found else None))
    return checks


def targets(rows: list[dict], peak_tflops: Optional[float], sanitizer: Optional[str]) -> list[Check]:
    """Every target of issues 13 (Triton PAM) and 14 (CUDA PAM) that a headline run measures."""
    pam = PAM_SHAPES
    big = [s for s in pam if s[1] == 32768]
    fp32_error = _error_at_most(1e-5)
    checks = (
        _speedup(rows, 13, "bf16 fwd ≥ 1.8× eager", "triton", "eager", 1.8, pam, "bf16", "fwd")
        + _each_row(rows, 13, "bf16 fwd ≥ 55% of the bf16 matmul peak", "triton", pam, "bf16", "fwd",
                    _peak_share(peak_tflops, 0.55))
        + _speedup(rows, 13, "bf16 fwd+bwd ≥ 1.6× eager", "triton", "eager", 1.6, pam, "bf16", "fwdbwd")
        + _speedup(rows, 13, "fp32 fwd+bwd ≥ 1.5× eager fp32", "triton", "eager", 1.5, pam, "fp32",
                   "fwdbwd")
        + _each_row(rows, 13, "fp32 fwd+bwd error ≤ 1e-5", "triton", pam, "fp32", "fwdbwd", fp32_error)
    )
    for mode in ("fwd", "fwdbwd"):
        checks += _speedup(rows, 13, f"bf16 {mode} ≥ 1.5× SDPA memory-efficient", "triton", "sdpa", 1.5,
                           pam, "bf16", mode)
        checks += _speedup(rows, 13, f"bf16 {mode} ahead of FlexAttention", "triton", "flex", 1.0,
                           pam, "bf16", mode)
    for dtype in ("bf16", "fp32"):
        checks += _each_row(rows, 13, f"{dtype} fwd peak extra memory ≤ 1.2× q, k, v, out, lse", "triton",
                            big, dtype, "fwd", _memory_within(1.2))
    cuda = CUDA_SHAPES
    for mode in ("fwd", "fwdbwd"):
        checks += _speedup(rows, 14, f"bf16 {mode} within 1.3× of Triton's time", "cuda", "triton", None,
                           cuda, "bf16", mode, at_most=1.3)
        checks += _speedup(rows, 14, f"bf16 {mode} ≥ 1.5× eager", "cuda", "eager", 1.5, cuda, "bf16", mode)
    checks += _speedup(rows, 14, "fp32 fwd+bwd ≥ 1.3× eager fp32", "cuda", "eager", 1.3, cuda, "fp32",
                       "fwdbwd")
    checks += _each_row(rows, 14, "fp32 fwd+bwd error ≤ 1e-5", "cuda", cuda, "fp32", "fwdbwd", fp32_error)
    return checks + _sanitizer(sanitizer)


def variant_rows(rows: list[dict]) -> list[tuple[dict, dict, float]]:
    """(plain backend row, variant row, plain ms / variant ms) for every variant row
    (``triton[...]`` against ``triton``, ``cuda[...]`` against ``cuda``)."""
    out = []
    for r in rows:
        plain, bracket, _ = r["backend"].partition("[")
        if not bracket or r.get("status", "ok") != "ok" or not r["ms"]:
            continue
        key = {k: r[k] for k in ("op", "shape", "B", "dtype", "mode") if k in r}
        found = _find(rows, [plain, r["backend"]], run=r["run"], **key)
        if found:
            out.append((found[0], r, found[0]["ms"] / r["ms"]))
    return out


def markdown(checks: list[Check], variants: list[tuple[dict, dict, float]]) -> str:
    met = lambda c: "–" if c.met is None else ("yes" if c.met else "**no**")  # noqa: E731
    lines = ["| issue | target | shape | measured | met |", "|---|---|---|---|---|"]
    lines += [f"| {c.issue} | {c.target} | {c.shape} | {c.measured} | {met(c)} |" for c in checks]
    counted = [c for c in checks if c.met is not None]
    lines += ["", f"{sum(c.met for c in counted)} of {len(counted)} measured targets met; "
                  f"{len(checks) - len(counted)} not measured.", ""]
    lines += ["| variant | op | shape | dtype | mode | plain ms | variant ms | variant speedup |",
              "|---|---|---|---|---|---|---|---|"]
    for base, r, ratio in variants:
        lines.append(f"| {r['backend']} | {r.get('op', 'pam')} | {r['shape']} | {r['dtype']} | {r['mode']} "
                     f"| {base['ms']:.3f} | {r['ms']:.3f} | {ratio:.2f}× |")
    by_variant: dict[str, list[float]] = {}
    for _, r, ratio in variants:
        by_variant.setdefault(r["backend"], []).append(ratio)
    for name, ratios in by_variant.items():
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        plain = name.partition("[")[0]
        lines.append(f"- {name}: faster than {plain} in {sum(x > 1 for x in ratios)} of {len(ratios)} rows, "
                     f"geometric mean {geo:.2f}×")
    if not variants:
        lines.append("(no variant rows)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", help="the headline's rows.csv (or a rendered pam.csv)")
    p.add_argument("--env", help="device_info output (for the measured bf16 matmul peak)")
    p.add_argument("--sanitizer", help="the runbook's sanitizer.txt")
    args = p.parse_args(argv)
    if not os.path.exists(args.rows):
        sys.exit(f"benchmarks.targets: no rows at {args.rows} (did the headline run?)")
    rows = read_rows(args.rows)
    sys.stdout.write(markdown(targets(rows, read_peak_tflops(args.env), args.sanitizer), variant_rows(rows)))


if __name__ == "__main__":
    main()
