"""``benchmarks.targets``: the kernel issues' targets read off a headline run's rows, on
hand-made rows whose verdicts are known: met, missed, and not measured (no row, a failed
row, or the two rows of a ratio from different runs)."""
import csv

import pytest

from benchmarks import targets

COLUMNS = ["op", "shape", "N", "B", "C", "Cqk", "dtype", "mode", "backend", "ms", "flops",
           "peak_bytes", "err_vs_chunked", "status", "run"]


def _row(backend, ms, dtype="bf16", mode="fwd", n=8192, b=2, run="A", status="ok", **extra):
    return dict(op="pam", shape="64x128", N=n, B=b, C=512, Cqk=64, dtype=dtype, mode=mode,
                backend=backend, ms=ms, status=status, run=run, **extra)


def _rows(tmp_path, rows) -> list:
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return targets.read_rows(str(path))


def _check(checks, target, shape="B=2, N=8192", issue=13):
    found = [c for c in checks if c.target == target and c.shape == shape and c.issue == issue]
    assert len(found) == 1, target
    return found[0]


def test_targets_met_missed_and_not_measured(tmp_path):
    fwd_flops = 2.0 * 2 * 8192**2 * (64 + 512)
    rows = _rows(tmp_path, [
        _row("eager", 2.0), _row("triton", 1.0, flops=fwd_flops),
        _row("eager", 3.0, mode="fwdbwd"), _row("triton", 2.0, mode="fwdbwd"),
        _row("sdpa", 9.0, mode="fwdbwd", status="error: out of memory"),
        _row("eager", 10.0, dtype="fp32", mode="fwdbwd", run="A"),
        _row("triton", 5.0, dtype="fp32", mode="fwdbwd", run="B", err_vs_chunked=3e-6),
        _row("triton", 4.0, n=32768, b=1, peak_bytes=100 * 2**20),
        _row("cuda", 1.2), _row("cuda", 3.0, mode="fwdbwd"),
    ])
    checks = targets.targets(rows, peak_tflops=1000.0, sanitizer=None)
    fwd = _check(checks, "bf16 fwd ≥ 1.8× eager")
    assert fwd.met is True and fwd.measured.startswith("2.00×")
    # 2·B·N²·(Cqk+C) in 1 ms: 155 TFLOP/s, under 55% of 1000
    peak = _check(checks, "bf16 fwd ≥ 55% of the bf16 matmul peak")
    assert peak.met is False and "155 TFLOP/s" in peak.measured
    assert _check(checks, "bf16 fwd+bwd ≥ 1.6× eager").met is False  # 1.5×
    assert _check(checks, "bf16 fwd+bwd ≥ 1.6× eager", "B=2, N=9409").met is None  # no rows
    assert _check(checks, "bf16 fwdbwd ≥ 1.5× SDPA memory-efficient").met is None  # sdpa failed
    assert _check(checks, "fp32 fwd+bwd ≥ 1.5× eager fp32").met is None  # runs A and B
    assert _check(checks, "fp32 fwd+bwd error ≤ 1e-5").met is True
    # q, k, v, out of B=1, N=32768 in bf16 with the fp32 lse: 72.1 MiB; 100 MiB is 1.39x
    memory = _check(checks, "bf16 fwd peak extra memory ≤ 1.2× q, k, v, out, lse", "B=1, N=32768")
    assert memory.met is False and "1.39×" in memory.measured
    assert _check(checks, "bf16 fwd within 1.3× of Triton's time", issue=14).met is True  # 1.2x
    assert _check(checks, "bf16 fwdbwd within 1.3× of Triton's time", issue=14).met is False  # 1.5x
    assert _check(checks, "bf16 fwd ≥ 1.5× eager", issue=14).met is True  # CUDA: 2.0 / 1.2
    assert _check(checks, "fp32 fwd+bwd error ≤ 1e-5", issue=14).met is None  # no CUDA row


def test_ratios_take_the_last_run_that_has_both_rows(tmp_path):
    rows = _rows(tmp_path, [_row("eager", 2.0, run="A"), _row("triton", 1.0, run="A"),
                            _row("eager", 2.0, run="B"), _row("triton", 2.0, run="B")])
    assert _check(targets.targets(rows, None, None), "bf16 fwd ≥ 1.8× eager").met is False


def test_variant_rows_against_plain_triton_of_the_same_run(tmp_path):
    rows = _rows(tmp_path, [
        _row("triton", 2.0), _row("triton[loads=tma]", 1.0), _row("triton[fwd=two_pass]", 4.0),
        _row("triton[bwd=fused]", 1.0, mode="fwdbwd"),  # no plain row to compare with
        _row("cuda", 3.0, mode="fwdbwd"), _row("cuda[bwd=fused]", 2.0, mode="fwdbwd"),
    ])
    found = {(r["backend"], ratio) for _, r, ratio in targets.variant_rows(rows)}
    assert found == {("triton[loads=tma]", 2.0), ("triton[fwd=two_pass]", 0.5), ("cuda[bwd=fused]", 1.5)}
    text = targets.markdown([], targets.variant_rows(rows))
    assert "triton[loads=tma]: faster than triton in 1 of 1 rows, geometric mean 2.00×" in text
    assert "triton[fwd=two_pass]: faster than triton in 0 of 1 rows, geometric mean 0.50×" in text
    assert "cuda[bwd=fused]: faster than cuda in 1 of 1 rows, geometric mean 1.50×" in text


@pytest.mark.parametrize("memcheck,racecheck,expected", [
    ("ERROR SUMMARY: 0 errors", "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)",
     [True, True]),
    ("ERROR SUMMARY: 3 errors", "RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)",
     [False, False]),
    (None, None, [None, None]),
])
def test_sanitizer_summaries(tmp_path, memcheck, racecheck, expected):
    path = tmp_path / "sanitizer.txt"
    lines = [f"memcheck.log:========= {memcheck}" if memcheck else "",
             f"racecheck.log:========= {racecheck}" if racecheck else ""]
    path.write_text("\n".join(lines) + "\n")
    checks = targets.targets([], None, str(path))
    assert [c.met for c in checks if c.target.startswith("compute-sanitizer")] == expected


def test_cli_reads_the_peak_from_device_info(tmp_path, capsys):
    rows_path = tmp_path / "rows.csv"
    with open(rows_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerow(_row("triton", 1.0, flops=2e12))
    env = tmp_path / "env.txt"
    env.write_text("device: NVIDIA H200\nmeasured dense bf16 matmul: 694 TFLOP/s (8192³ torch.mm)\n")
    assert targets.read_peak_tflops(str(env)) == 694.0
    targets.main([str(rows_path), "--env", str(env)])
    out = capsys.readouterr().out
    assert "matmul peak | B=2, N=8192 | 2000 TFLOP/s = 288% of 694 | yes |" in out
    assert "| issue | target | shape | measured | met |" in out and "(no variant rows)" in out
