"""sm_90 static check of every Triton kernel config, without a GPU (issue 11, item 2).

``benchmarks/static_sm90.py`` compiles each config the autotuners would try, at DANet's
shapes, for sm_90 with Triton's bundled ptxas, and reads registers, spills and shared
memory. These tests fail when a config needs more shared memory than an sm_90 block may
have (the autotuner could never run it), when a config spills (unless listed in
``ALLOWED_SPILLS`` with the reason it stays), when a config fails to compile, and when a
kernel is left without a clean config in some dtype. ``python -m benchmarks.static_sm90``
writes the same rows as a table to ``benchmarks/results/static-sm90/``.

The sweep covers every kernel and config in the four dtypes (fp32 under the default
"highest" matmul precision, fp32 under ``torch.set_float32_matmul_precision("high")``,
fp16, bf16). It costs about 270-320 CPU seconds with the 2026-11-28 config lists (Triton
3.6-3.9; ~2.5-3 minutes on CI's 2 cores), less once the spilling configs are pruned, so CI
runs all of it, on the main job's Triton and on both ends of the supported range
(``.ci/stacks.sh``: 3.6, the GPU machines', and 3.9). To keep CI bounded whatever the
lists grow to, no compile starts once the finished ones have used ``CPU_BUDGET_S`` CPU
seconds (env ``DANET_OPS_SM90_CPU_BUDGET_S``, default 480: 4 minutes on 2 idle cores);
configs left uncompiled fail the test. A CPU budget rather than a wall-clock one: on a
shared machine wall time follows the load.

Everything skips, saying why, where Triton or its bundled ptxas is missing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import static_sm90 as static

# Configs kept although ptxas reports spills: (kernel, config, dtype) -> why it stays.
# Labels as in the table, e.g.
#   ("pam_bwd_dk[ATOMIC_DQ=True]", "M64 N64 DV128 w4 s3", "fp16"): "72 B spilled outside the
#   loop; measured faster than every clean config on H200 (benchmarks/results/...)",
ALLOWED_SPILLS: dict[tuple[str, str, str], str] = {}

# Kernels launched in some dtypes only (so exempt from "every kernel in every dtype"):
# label prefix -> why. Each is timed against its default by `gpu_headline --variants`.
HALF_ONLY = {
    "pam_bwd_fused": "the opt-in fused PAM backward (DANET_OPS_TRITON_PAM_BWD=fused) runs for "
                     "fp16/bf16 only: its fp32 accumulators spill kilobytes",
}

CPU_BUDGET_S = float(os.environ.get("DANET_OPS_SM90_CPU_BUDGET_S", "480"))
COMPILE_TIMEOUT_S = 600.0  # wall seconds per compile: a hang guard (the slowest take ~10 CPU s)

UNAVAILABLE = static.unavailable_reason()


@pytest.fixture(scope="module")
def sweep(request) -> static.SweepResult:
    if UNAVAILABLE:
        pytest.skip(f"cannot compile for sm_90 here: {UNAVAILABLE}")
    result = static.sweep(timeout=COMPILE_TIMEOUT_S, cpu_budget=CPU_BUDGET_S, progress=print)
    # The sweep's size and cost in the CI log, pass or fail (past pytest's output capture).
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\nsm_90 static check: " + static.summary_lines(result)[0])
    return result


def _listing(rows) -> str:
    return "\n".join(f"  {r.kernel} | {r.config} | {r.dtype}: {static.cell(r)}" for r in rows)


def test_every_kernel_is_launched_and_has_configs(sweep):
    assert not sweep.unlaunched, f"kernels the launch code never starts at DANet's shapes: {sweep.unlaunched}"
    assert sweep.rows
    dtypes = {r.dtype for r in sweep.rows}
    # Dot precisions differ by dtype by design (tf32 for half, 3xTF32 or ieee for fp32):
    # every kernel is launched in every dtype under one precision or another.
    by_kernel: dict[str, set] = {}
    for r in sweep.rows:
        if not r.kernel.startswith(tuple(HALF_ONLY)):
            kernel = re.sub(r"(MM_|QK_)?PRECISION=[^,\]]*,?", "", r.kernel).replace(",]", "]")
            by_kernel.setdefault(kernel.replace("[]", ""), set()).add(r.dtype)
    for kernel, seen in by_kernel.items():
        assert seen == dtypes, kernel


def test_every_config_compiles(sweep):
    bad = [r for r in sweep.rows if not r.ok]
    hint = ""
    if any(r.status.startswith("not started") for r in bad):
        hint = (f"\nThe sweep starts no compile after {CPU_BUDGET_S:.0f} CPU seconds, to bound CI's "
                "time: prune the config lists (or raise DANET_OPS_SM90_CPU_BUDGET_S for a local run).")
    if bad:
        pytest.fail(f"{len(bad)} configs did not compile for sm_90:\n{_listing(bad)}{hint}", pytrace=False)


def test_no_config_exceeds_shared_memory(sweep):
    bad = [r for r in sweep.rows if r.ok and r.exceeds_shared]
    if bad:
        pytest.fail(f"{len(bad)} configs need more than the {static.SMEM_LIMIT} bytes of shared memory "
                    f"an sm_90 block may have (never launchable):\n{_listing(bad)}", pytrace=False)


def test_no_config_spills_unless_allowed(sweep):
    bad = [r for r in sweep.rows if r.ok and r.spills and r.key not in ALLOWED_SPILLS]
    if bad:
        pytest.fail(f"{len(bad)} configs spill registers on sm_90 (prune them, or list them in "
                    f"ALLOWED_SPILLS with the reason):\n{_listing(bad)}", pytrace=False)


def test_allowed_spills_still_exist_and_spill(sweep):
    rows = {r.key: r for r in sweep.rows}
    stale = []
    for key in ALLOWED_SPILLS:
        row = rows.get(key)
        if row is None:
            stale.append(f"  {key}: no such kernel/config/dtype")
        elif row.ok and not row.spills:
            stale.append(f"  {key}: no longer spills ({static.cell(row)})")
    if stale:
        pytest.fail("ALLOWED_SPILLS entries to remove:\n" + "\n".join(stale), pytrace=False)


def test_every_kernel_keeps_a_clean_config_per_dtype(sweep):
    missing = static.kernels_without_clean_config(sweep.rows)
    if missing:
        pytest.fail("kernels with no config that compiles without spills within shared memory: "
                    + ", ".join(f"{k} {d}" for k, d in missing), pytrace=False)


# ---------------------------------------------------------------- the report code (no ptxas)

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_pam_fwd_kernel' for 'sm_90a'
ptxas info    : Function properties for _pam_fwd_kernel
    10056 bytes stack frame, 27140 bytes spill stores, 29008 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 400 bytes cmem[0]
"""


def test_parse_ptxas_log():
    assert static.parse_ptxas_log(PTXAS_LOG) == {
        "registers": 32, "spill_stores": 27140, "spill_loads": 29008, "stack_bytes": 10056}
    assert static.parse_ptxas_log("ptxas fatal   : Unsupported .version") is None


def test_tables_from_rows(tmp_path):
    rows = [
        static.Row("pam_fwd", "M64 N64 DV128 w4 s3", "fp32", "ok", 32, 27140, 29008, 10056, 131328, 7.6, 7.1),
        static.Row("pam_fwd", "M64 N64 DV128 w4 s3", "bf16", "ok", 189, 0, 0, 0, 81920, 0.5, 0.5),
        static.Row("pam_fwd", "M128 N128 DV128 w8 s2", "fp32", "ok", 255, 0, 0, 0, 262656, 3.0, 2.9),
        static.Row("pam_fwd", "M128 N128 DV128 w8 s2", "bf16", "timeout (> 180 s)"),
    ]
    result = static.SweepResult(rows, [], 12.0, 10.5)
    env = {"triton": "0.0.test", "torch": "x", "ptxas": "y", "git": "z", "date": "today"}
    md, csv_path = static.write_results(result, tmp_path, env, "python -m benchmarks.static_sm90")
    assert md.name == "triton-0.0.test.md" and csv_path.name == "triton-0.0.test.csv"
    text = md.read_text()
    assert "| M64 N64 DV128 w4 s3 | 32r SPILL27140/29008 131328 | 189r 81920 |" in text
    assert "| M128 N128 DV128 w8 s2 | 255r 262656 >SMEM! | timeout (> 180 s) |" in text
    assert "no clean config: pam_fwd fp32" in text and "no clean config: pam_fwd bf16" not in text
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ",".join(static.CSV_COLUMNS) and len(lines) == 1 + len(rows)
    assert lines[1].startswith("pam_fwd,M64 N64 DV128 w4 s3,fp32,ok,32,27140,29008,10056,131328,False,True,")


def _async_copies(n: int) -> dict:
    script = ("import json, sys; from benchmarks import static_sm90 as s; "
              f"json.dump(s.async_copies({n}), sys.stdout)")
    out = subprocess.run([sys.executable, "-c", script], cwd=static.REPO_ROOT, capture_output=True,
                         text=True, timeout=COMPILE_TIMEOUT_S, env=dict(os.environ, TRITON_INTERPRET="0"))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_unaligned_n_keeps_the_async_copies():
    """At N = 9409 (DANet's 97x97 crop, not a multiple of 16) every Triton kernel's tile
    loads still compile for sm_90 to as many 16-byte cp.async as at N = 8192 (bf16, first
    config). Before the kernels padded N (danet_ops/triton/padding.py), the PAM forward,
    dK and dQ kernels and the CAM Gram had none there: two-byte loads, no pipelining."""
    if UNAVAILABLE:
        pytest.skip(f"cannot compile for sm_90 here: {UNAVAILABLE}")
    aligned, ragged = _async_copies(8192), _async_copies(9409)
    assert set(aligned) == set(ragged) and len(aligned) >= 8, (aligned, ragged)
    fewer = {k: (aligned[k], ragged[k]) for k in aligned if ragged[k] < aligned[k]}
    assert not fewer, f"fewer 16-byte cp.async at N = 9409 than at 8192: {fewer}"
    assert aligned["_pam_fwd_kernel"] > 0 and aligned["_cam_gram_kernel"] > 0
