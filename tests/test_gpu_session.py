"""The GPU runbook's dry run: the same stages on the CPU (Triton interpreter, tiny sizes,
CUDA stages reported as skipped), within the GPU machine's limit of 8 files back."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.platform != "linux", reason="the runbook is a bash script for Linux GPU machines")
def test_gpu_session_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, DANET_OPS_SESSION_S="400")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh"), "--dry-run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    for name in ("summary.txt", "env.txt", "gpu_tests.txt", "sanitizer.txt", "pam.md", "cam.md",
                 "logs.tar.gz"):
        assert name in files, files
    summary = (out / "summary.txt").read_text()
    # One line per stage, in priority order, each with its exit status or why it was skipped.
    for stage in ("device: exit 0", "cuda-build: skipped", "triton-tests: exit 0",
                  "cuda-tests: exit 0", "sanitizer: skipped", "headline: exit 0", "total:"):
        assert stage in summary, summary
    env_txt = (out / "env.txt").read_text()
    assert "---- python -m danet_ops" in env_txt and "DANET_OPS_TRITON_PAM_FWD = " in env_txt, env_txt
    pam = (out / "pam.md").read_text()
    assert "| triton |" in pam and "err" in pam, pam[-2000:]
