"""Smoke test of the benchmark CLI: tiny sizes into a temporary folder, then the tables.

Runs ``python -m benchmarks`` as a user would (a subprocess from the repository root) and
checks that the Markdown and CSV files hold a row per config with finite numbers and the
ratio-to-eager columns.
"""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args, tmp_path):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the benchmarks never run the interpreter
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m"] + args + ["--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    dirs = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return proc.stdout, dirs[0]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_op(out_dir, op, backends):
    rows = _rows(out_dir / f"{op}.csv")
    assert {"speedup_vs_eager", "mem_vs_eager", "peak_mib", "ms", "tflops"} <= set(rows[0])
    assert sorted(r["backend"] for r in rows) == sorted(backends)
    for r in rows:
        assert r["status"] == "ok", r
        for key in ("ms", "tflops", "peak_mib", "speedup_vs_eager"):
            assert math.isfinite(float(r[key])), (key, r)
        assert float(r["ms"]) > 0
        assert float(r["peak_mib"]) >= 0
    eager = [r for r in rows if r["backend"] == "eager"][0]
    assert float(eager["speedup_vs_eager"]) == 1.0
    md = (out_dir / f"{op}.md").read_text()
    assert "memory vs eager" in md and "speedup vs eager" in md
    assert "torch:" in md and "triton:" in md and "date:" in md and "device:" in md
    table = [line for line in md.splitlines() if line.startswith("| 8x8 ")]
    assert len(table) == len(rows)


def test_cli_pam_cam_in_process(tmp_path):
    stdout, out_dir = _run(
        ["benchmarks", "--quick", "--ops", "pam,cam", "--sizes", "8x8", "--modes", "fwdbwd",
         "--backends", "eager,sdpa,chunked", "--no-isolate", "--device", "cpu"],
        tmp_path,
    )
    assert out_dir.name.startswith("cpu-")
    assert "[3/3] pam 8x8" in stdout and "PAM fwd+bwd" in stdout
    _check_op(out_dir, "pam", ["eager", "sdpa", "chunked"])
    _check_op(out_dir, "cam", ["eager", "chunked"])


def test_cli_isolated_cpu_process(tmp_path):
    """The default CPU path: each config in a fresh process, memory from /proc."""
    _, out_dir = _run(
        ["benchmarks.bench_pam", "--quick", "--sizes", "8x8", "--modes", "fwd",
         "--backends", "eager,chunked", "--device", "cpu"],
        tmp_path,
    )
    _check_op(out_dir, "pam", ["eager", "chunked"])
    assert {r["mem_method"] for r in _rows(out_dir / "pam.csv")} <= {"rss-hwm-reset", "rss-hwm-unreset"}


@pytest.mark.slow
def test_cli_model_tiny(tmp_path):
    pytest.importorskip("models.presets")
    _, out_dir = _run(
        ["benchmarks", "--quick", "--ops", "model", "--scale", "0.5", "--device", "cpu"], tmp_path
    )
    rows = _rows(out_dir / "model.csv")
    assert [r["backend"] for r in rows] == ["eager", "chunked"]  # the fused side on a CPU
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["train_mem_gb"]) > 0 and float(r["fps"]) > 0
    assert "Mem (GB)" in (out_dir / "model.md").read_text()
