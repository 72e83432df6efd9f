"""``python -m danet_ops``: the report and the self-check (danet_ops/info.py)."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from danet_ops import chunked, env, info

CPU = torch.device("cpu")


def test_report_lists_every_backend_and_switch(monkeypatch):
    monkeypatch.setenv("DANET_OPS_CUDA_PAM_BWD", "fused")
    monkeypatch.setenv("DANET_OPS_TRITON_PAM_FWD", "fastest")  # not an option: shown, not raised
    monkeypatch.setenv("DANET_OPS_TRITON_CONFIG", "first")
    text = "\n".join(info.report(CPU))
    for name in ("triton", "cuda", "chunked", "eager"):
        assert f"  {name} " in text
    assert "no: the CUDA extension runs on CUDA tensors only" in text
    assert "auto     -> chunked" in text  # B=2, N=8192 on the CPU is past eager's reach
    for name in env.SWITCHES:
        assert name in text
    assert "DANET_OPS_CUDA_PAM_BWD = fused" in text
    assert "DANET_OPS_TRITON_PAM_FWD = INVALID" in text and "'fastest'" in text
    assert "DANET_OPS_TRITON_CONFIG=first" in text


def test_switch_defaults_are_what_the_backends_read(monkeypatch):
    for name in env.SWITCHES:
        monkeypatch.delenv(name, raising=False)
        assert env.choice(name) == env.SWITCHES[name].options[0]
    monkeypatch.setenv("DANET_OPS_TRITON_LOADS", " TMA ")
    assert env.choice("DANET_OPS_TRITON_LOADS") == "tma"
    monkeypatch.setenv("DANET_OPS_TRITON_LOADS", "dma")
    with pytest.raises(ValueError, match="DANET_OPS_TRITON_LOADS must be 'pointer' or 'tma'"):
        env.choice("DANET_OPS_TRITON_LOADS")


def test_check_passes_on_the_backends_that_run_here():
    out = io.StringIO()
    assert info.check(CPU, ["chunked", "eager", "triton"], out=out)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("  ")]
    assert len(lines) == 6 and all(line.lstrip().startswith("OK") for line in lines), out.getvalue()


def test_check_fails_on_a_wrong_gradient(monkeypatch):
    real = chunked.pam_backward

    def off_by_one_percent(*args):
        dq, dk, dv, dgamma = real(*args)
        return dq, dk * 1.01, dv, dgamma

    monkeypatch.setattr(chunked, "pam_backward", off_by_one_percent)
    out = io.StringIO()
    assert not info.check(CPU, ["chunked"], out=out)
    text = out.getvalue()
    assert "FAIL chunked  float32   pam  worst dk" in text
    assert "OK   chunked  float32   cam" in text and "FAILED" in text


def test_check_reports_a_raising_backend_and_goes_on(monkeypatch):
    def broken(*args):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(chunked, "cam_forward", broken)
    out = io.StringIO()
    assert not info.check(CPU, ["chunked"], out=out)
    assert "FAIL chunked  float32   cam  RuntimeError: kernel exploded" in out.getvalue()
    assert "OK   chunked  float32   pam" in out.getvalue()


def test_module_entry_point():
    run = subprocess.run([sys.executable, "-m", "danet_ops", "--device", "cpu", "--check",
                          "--backends", "eager"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "backends" in run.stdout and "all passed" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "danet_ops", "--check", "--backends", "tritonn"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown ['tritonn']" in bad.stderr


@pytest.mark.gpu
def test_check_passes_on_the_gpu():
    """Every fused backend in fp32, fp16 and bf16 on the GPU (the half types' own kernels)."""
    out = io.StringIO()
    assert info.check(torch.device("cuda"), out=out), out.getvalue()
    assert "float16" in out.getvalue() and "bfloat16" in out.getvalue()
