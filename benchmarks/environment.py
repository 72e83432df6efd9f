"""Which device and stack a run measured on, so that every table says so: the device and
its output-folder slug, the versions (danet_ops with its git commit), and the GPU's
measured matmul rate that the op tables' "% of mm peak" is taken against."""
from __future__ import annotations

import datetime
import functools
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def pick_device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_model_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_slug(device: torch.device) -> str:
    """``nvidia-h100-80gb-hbm3`` for GPUs, ``cpu-<model>`` for the CPU."""
    slug = slugify(device_name(device))
    return slug if device.type == "cuda" else f"cpu-{slug}"


def environment(device: torch.device) -> dict:
    """The header lines of every table: device, versions, date, host, and the CPU's load
    at the start (a loaded machine's times are to be read with care)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {
        "device": device_name(device),
        "device type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "CUDA (torch built with)": torch.version.cuda or "none",
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
    }
    env["danet_ops"] = _danet_ops_version()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["GPU memory"] = f"{props.total_memory / 2**30:.1f} GiB"
        major, minor = torch.cuda.get_device_capability(device)
        env["compute capability"] = f"sm_{major}{minor}"
    else:
        env["CPU threads (torch)"] = str(torch.get_num_threads())
        env["load average at start (1 min)"] = f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    return env


def _danet_ops_version() -> str:
    """Package version, the checkout's commit (``-dirty`` with local changes) and the
    chunked backend's block size, so a table says which code it measured."""
    import danet_ops

    text = danet_ops.__version__
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            text += f", git {rev}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import danet_ops.chunked as chunked

        elements = int(chunked.CHUNK_ELEMENTS)
        power = elements.bit_length() - 1
        text += ", chunked.CHUNK_ELEMENTS = " + (f"2^{power}" if elements == 1 << power else str(elements))
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    return text


def matmul_peak_tflops(device: torch.device) -> Optional[float]:
    """The device's measured dense bf16 matmul rate (8192³, do_bench median); None on CPU."""
    if device.type != "cuda":
        return None
    import triton.testing

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(functools.partial(torch.mm, a, b), warmup=100, rep=500,
                                 return_mode="median")
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / (ms * 1e-3) / 1e12
