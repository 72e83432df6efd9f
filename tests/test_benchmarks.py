"""Smoke test of the benchmark CLI: tiny sizes into a temporary folder, then the tables.

Runs ``python -m benchmarks`` as a user would (a subprocess from the repository root) and
checks that the Markdown, CSV and PNG files appear, the tables hold a row per config with
finite numbers, the spread of every row and the ratio-to-eager columns; that a complete
run replaces a benchmark's old set as a whole; and that an interrupted run keeps what it
measured (tables and plots) without touching the old set. In-process, not in a fresh venv:
``.ci/bench.sh`` runs the README's main-job command, in the venv ``.ci/run`` built.
"""
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.environment import device_slug
from benchmarks.measure import SPREAD_LIMIT, quantile
from benchmarks.ops import op_table
from benchmarks.rows import ModelRow, OpRow

ROOT = Path(__file__).resolve().parent.parent
SLUG = device_slug(torch.device("cpu"))


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the benchmarks never run the interpreter
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(args, tmp_path):
    cmd = [sys.executable, "-m"] + args + ["--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    dirs = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert dirs == [tmp_path / SLUG], dirs  # and no .partial folder left behind
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
        for key in ("ms", "p20_ms", "p80_ms", "spread", "tflops", "peak_mib", "speedup_vs_eager"):
            assert math.isfinite(float(r[key])), (key, r)
        assert 0 < float(r["p20_ms"]) <= float(r["ms"]) <= float(r["p80_ms"])
        assert r["noisy"] == str(float(r["spread"]) > SPREAD_LIMIT)
        assert float(r["peak_mib"]) >= 0
    eager = [r for r in rows if r["backend"] == "eager"][0]
    assert float(eager["speedup_vs_eager"]) == 1.0
    md = (out_dir / f"{op}.md").read_text()
    assert "memory vs eager" in md and "speedup vs eager" in md and "p20–p80 ms" in md
    assert "torch:" in md and "triton:" in md and "date:" in md and "device:" in md
    table = [line for line in md.splitlines() if line.startswith("| 8x8 ")]
    assert len(table) == len(rows)


def test_cli_pam_cam_in_process(tmp_path):
    """Every promised file (md, csv, speedup and memory PNG per op), and a complete run
    replaces each benchmark's old set as a whole, leaving other benchmarks' files alone."""
    pytest.importorskip("matplotlib")  # in the test extra, as in the bench extra
    old = tmp_path / SLUG
    old.mkdir()
    for name in ("pam.md", "pam_time.png", "pam_extra.png", "model.md"):
        (old / name).write_text("an earlier run")
    stdout, out_dir = _run(
        ["benchmarks", "--quick", "--ops", "pam,cam", "--sizes", "8x8", "--modes", "fwdbwd",
         "--backends", "eager,sdpa,chunked", "--no-isolate", "--device", "cpu"],
        tmp_path,
    )
    assert out_dir.name.startswith("cpu-")
    assert "[3/3] pam 8x8" in stdout and "PAM fwd+bwd" in stdout and "p20–p80" in stdout
    _check_op(out_dir, "pam", ["eager", "sdpa", "chunked"])
    _check_op(out_dir, "cam", ["eager", "chunked"])
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "cam.csv", "cam.md", "cam_memory.png", "cam_speedup.png", "model.md",
        "pam.csv", "pam.md", "pam_memory.png", "pam_speedup.png"]
    assert (out_dir / "model.md").read_text() == "an earlier run"  # not run: kept
    for png in out_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_keeps_its_rows(tmp_path, sig):
    """Ctrl-C (or a kill) after the first rows: they are in <slug>.partial/ as tables and
    plots, and the earlier complete set in <slug>/ is untouched."""
    pytest.importorskip("matplotlib")
    old = tmp_path / SLUG
    old.mkdir()
    (old / "pam.md").write_text("an earlier run")
    cmd = [sys.executable, "-m", "benchmarks.bench_pam", "--quick", "--sizes", "8x8,12x16,16x16",
           "--backends", "eager,chunked", "--no-isolate", "--device", "cpu", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("[2/12]"):
                proc.send_signal(sig)
                break
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + out
    assert proc.returncode == 130, output
    assert "interrupted after" in output, output
    partial = tmp_path / (SLUG + ".partial")
    assert sorted(p.name for p in partial.iterdir()) == [
        "pam.csv", "pam.md", "pam_memory.png", "pam_speedup.png"], output
    rows = _rows(partial / "pam.csv")
    assert 2 <= len(rows) < 12 and all(r["status"] == "ok" for r in rows)
    md = (partial / "pam.md").read_text()
    assert "Interrupted run" in md and md.count("| 8x8 ") == min(len(rows), 4)
    assert sorted(p.name for p in old.iterdir()) == ["pam.md"]
    assert (old / "pam.md").read_text() == "an earlier run"


def test_rows_are_written_as_they_come_and_noisy_rows_marked(tmp_path, capsys):
    """TableSet appends each row to the staging tables at once; a row whose p20–p80 spread
    is above 25% of its median is marked in the Markdown, the CSV and the console."""
    out = tmp_path / "dev"
    table = op_table("pam", "t", torch.device("cpu"), {"device": "x"}, [], str(tmp_path),
                     None, slug="dev", expected=2)
    base = dict(shape="8x8", N=64, B=1, C=4, Cqk=2, dtype="fp32", mode="fwd", status="ok",
                flops=1e6, peak_bytes=2**20, reps=5)
    quiet = OpRow(**base, backend="eager", ms=10.0, p20_ms=9.5, p80_ms=10.5)
    noisy = OpRow(**base, backend="chunked", ms=5.0, p20_ms=4.0, p80_ms=6.0)
    table.add(quiet)
    staged = tmp_path / "dev.partial"
    assert len(_rows(staged / "pam.csv")) == 1 and not out.exists()
    table.add(noisy)
    rows = _rows(staged / "pam.csv")
    assert [r["noisy"] for r in rows] == ["False", "True"]
    assert [float(r["spread"]) for r in rows] == [pytest.approx(0.1), pytest.approx(0.4)]
    assert float(rows[1]["speedup_vs_eager"]) == 2.0  # ratio known as the row arrives
    md = (staged / "pam.md").read_text()
    assert "| 10% |" in md and "| 40% ⚠ |" in md and "9.5–10.5" in md
    table.finish()
    assert not staged.exists() and (out / "pam.md").read_text() == md
    assert noisy.noisy_parts() == ["spread 40%"] and quiet.noisy_parts() == []
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)


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


def test_csv_columns_are_the_row_fields():
    """The CSV headers are the rows' dataclass fields in order; pinned, since committed
    results and their readers (``gpu_headline --render``) go by these names."""
    assert OpRow.csv_columns() == [
        "shape", "N", "B", "C", "Cqk", "dtype", "mode", "backend", "ms", "p20_ms", "p80_ms",
        "spread", "noisy", "reps", "tflops", "pct_peak", "peak_mib", "speedup_vs_eager",
        "mem_vs_eager", "err_vs_chunked", "status", "run", "flops", "peak_bytes", "mem_method",
        "device"]
    assert ModelRow.csv_columns() == [
        "preset", "backend", "precision", "crop", "test", "test_mode", "train_mem_gb", "train_ms",
        "train_p20_ms", "train_p80_ms", "train_reps", "fps", "infer_ms", "infer_p20_ms",
        "infer_p80_ms", "infer_reps", "noisy", "infer_peak_gb", "mem_vs_eager", "fps_vs_eager",
        "status", "scale", "amp_dtype", "mem_method", "device"]
    # A config's other keys (H, W, timing) are not columns; a missing column is empty.
    row = ModelRow.from_dict(dict(
        preset="p", backend="eager", precision="fp32", crop="8x8", test="8x8", test_mode="whole",
        warmup=1, rep=3, train_mem_gb=1.0, train_ms=10.0, train_p20_ms=9.0, train_p80_ms=11.0,
        fps=250.0, infer_ms=4.0, infer_p20_ms=3.0, infer_p80_ms=5.0, status="ok"))
    assert row.noisy_parts() == ["infer spread 50%"]
    assert row.spread_text == "20% / 50% ⚠" and row.fps_range == "200–333"
    assert row.progress() == "train 1.00 GB, 10 ms/step, inference 250 fps"
    assert len(row.csv_values()) == len(ModelRow.csv_columns()) and row.csv_values()[-1] == ""


def test_cpu_crossover_prints_both_backends_per_size(capsys):
    """The script behind CPU_EAGER_MAX_ELEMENTS: a row per (N, mode) and its verdict."""
    from benchmarks import cpu_crossover

    threads = torch.get_num_threads()
    try:
        cpu_crossover.main(["--sizes", "16,24", "--reps", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[1:5]]
    assert [(r[0], r[1]) for r in rows] == [
        ("16", "fwd"), ("16", "fwdbwd"), ("24", "fwd"), ("24", "fwdbwd")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert lines[5].startswith(("eager is at least as fast", "chunked is faster"))
    with pytest.raises(SystemExit):
        cpu_crossover.main(["--sizes", "0"])


def test_variant_rows_follow_each_triton_row_and_name_real_switches(monkeypatch):
    """``--variants``: each triton and cuda row is followed by the variants that change
    something for it, and every variant's environment is one its backend reads and accepts."""
    from benchmarks import variants
    from danet_ops import cuda
    from danet_ops.triton import configs, pam

    base = dict(shape="64x128", B=2, C=512, N=8192)
    cfgs = [dict(base, op="pam", dtype="fp32", mode="fwdbwd", backend="eager"),
            dict(base, op="pam", dtype="fp32", mode="fwdbwd", backend="triton"),
            dict(base, op="pam", dtype="fp32", mode="fwd", backend="triton"),
            dict(base, op="pam", dtype="bf16", mode="fwdbwd", backend="triton"),
            dict(base, op="pam", dtype="bf16", mode="fwd", backend="triton", shape="97x97", N=9409),
            dict(base, op="pam", dtype="bf16", mode="fwdbwd", backend="triton", shape="97x97", N=9409),
            dict(base, op="cam", dtype="bf16", mode="fwdbwd", backend="triton"),
            dict(base, op="cam", dtype="fp32", mode="fwd", backend="triton"),
            dict(base, op="pam", dtype="fp16", mode="fwdbwd", backend="cuda"),
            dict(base, op="pam", dtype="fp16", mode="fwd", backend="cuda"),
            dict(base, op="pam", dtype="fp32", mode="fwdbwd", backend="cuda")]
    got = [(c["op"], c["dtype"], c["mode"], c["backend"]) for c in variants.with_variants(cfgs)]
    assert got == [
        ("pam", "fp32", "fwdbwd", "eager"),
        ("pam", "fp32", "fwdbwd", "triton"),  # fp32 fwd+bwd: only deterministic mode differs
        ("pam", "fp32", "fwdbwd", "triton[deterministic]"),
        ("pam", "fp32", "fwd", "triton"),
        ("pam", "fp32", "fwd", "triton[fwd=two_pass]"),
        ("pam", "fp32", "fwd", "triton[loads=tma]"),
        ("pam", "fp32", "fwd", "triton[fp32=ieee]"),
        ("pam", "bf16", "fwdbwd", "triton"),
        ("pam", "bf16", "fwdbwd", "triton[bwd=fused]"),
        ("pam", "bf16", "fwdbwd", "triton[deterministic]"),
        ("pam", "bf16", "fwd", "triton"),  # N = 9409: TMA reads the padded copies
        ("pam", "bf16", "fwd", "triton[fwd=two_pass]"),
        ("pam", "bf16", "fwd", "triton[loads=tma]"),
        ("pam", "bf16", "fwdbwd", "triton"),  # N = 9409: deterministic mode at the crop only
        ("pam", "bf16", "fwdbwd", "triton[bwd=fused]"),
        ("cam", "bf16", "fwdbwd", "triton"),
        ("cam", "fp32", "fwd", "triton"),
        ("cam", "fp32", "fwd", "triton[fp32=ieee]"),
        ("pam", "fp16", "fwdbwd", "cuda"),
        ("pam", "fp16", "fwdbwd", "cuda[bwd=fused]"),
        ("pam", "fp16", "fwd", "cuda"),
        ("pam", "fp16", "fwd", "cuda[fwd=whole_cv]"),
        ("pam", "fp32", "fwdbwd", "cuda"),  # fp32: the default kernels anyway
    ]
    readers = {pam.FWD_VARIANT_ENV: pam.forward_variant, pam.LOADS_VARIANT_ENV: pam.load_variant,
               pam.BWD_VARIANT_ENV: lambda: pam.backward_variant(512, torch.bfloat16),
               configs.FP32_ENV: configs.fp32_exact_precision, cuda.FWD_VARIANT_ENV: cuda.forward_variant,
               cuda.BWD_VARIANT_ENV: cuda.backward_variant}
    for key in readers:
        monkeypatch.delenv(key, raising=False)
    for backend, named in variants.VARIANTS.items():
        for name, env in named.items():
            if variants.DETERMINISTIC in env:
                continue  # below
            (key, value), = env.items()
            assert key in readers, f"variant {name} sets {key}, which danet_ops.{backend} does not read"
            with variants.backend_of(dict(backend=f"{backend}[{name}]")) as call:
                assert call["backend"] == backend and os.environ[key] == value
                assert readers[key]() == value  # accepted, and not the default
            assert os.environ.get(key) != value  # restored
    with variants.backend_of(dict(backend="triton[deterministic]")) as call:
        assert call["backend"] == "triton" and torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # the kernels' cost only
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    assert torch.utils.deterministic.fill_uninitialized_memory
