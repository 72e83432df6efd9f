"""The device and stack a GPU run measured on, and its two ceilings.

    python -m benchmarks.device_info

Prints the GPU, driver, torch/triton/CUDA/nvcc versions, the measured dense bf16 matmul
rate (8192³ ``torch.mm``) and device-to-device copy bandwidth (bytes read + written), each
a ``triton.testing.do_bench`` median. On a machine without CUDA it says so and stops.
"""
from __future__ import annotations

import shutil
import subprocess

import torch

from benchmarks.environment import environment, matmul_peak_tflops


def copy_gbps(device: torch.device, nbytes: int = 2 << 30) -> float:
    import triton.testing

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for key, value in environment(device).items():
        print(f"{key}: {value}")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        print("nvcc:", version.strip().splitlines()[-1])
    except OSError:
        print("nvcc: not found")
    if device.type != "cuda":
        print("no CUDA device: ceilings not measured")
        return
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True).stdout.strip()
        print("driver, max SM clock:", driver)
    except OSError:
        pass
    print(f"measured dense bf16 matmul: {matmul_peak_tflops(device):.0f} TFLOP/s (8192³ torch.mm)")
    print(f"measured device copy: {copy_gbps(device):.0f} GB/s (2 GiB copy_, read + write)")


if __name__ == "__main__":
    main()
