"""sm_90 static resources of the CUDA extension's kernels, compiled without a GPU.

``python -m benchmarks.static_cuda`` compiles each CUDA source of ``csrc/`` (pam.cu, cam.cu)
for sm_90 with the extension's own flags (``danet_ops.cuda.build``) plus ``-Xptxas -v``,
and rewrites the table and the raw ptxas lines of
``benchmarks/results/static-sm90/cuda-nvcc13.md`` below its hand-written header (what the
shared-memory formulas and launch bounds mean), which it keeps. Needs nvcc and torch's
headers; no GPU.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results" / "static-sm90" / "cuda-nvcc13.md"
SOURCES = ("pam.cu", "cam.cu")
TABLE_START = "| source | kernel |"


def nvcc_command(source: Path, out: Path) -> list[str]:
    """nvcc for one source, as the extension builds it, for sm_90, with ptxas -v."""
    from torch.utils import cpp_extension

    from danet_ops.cuda import build

    includes = cpp_extension.include_paths(device_type="cuda") + [sysconfig.get_paths()["include"]]
    includes += build.nvidia_include_dirs() + [str(source.parent)]
    return (["nvcc", "-c", str(source), "-o", str(out)] + [f"-I{d}" for d in includes]
            + ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
               "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
               "--expt-relaxed-constexpr", "-DTORCH_EXTENSION_NAME=danet_ops_cuda", "-std=c++17"]
            + list(build.NVCC_FLAGS)
            + ["-Xcompiler", "-fPIC", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v"])


def short_name(mangled: str) -> str:
    """``_ZN5danet17pam_dv_mma_kernelIN3c104HalfEEEv...`` -> ``void pam_dv_mma_kernel<Half>``."""
    name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    name = re.sub(r"\(.*\)$", "", name)  # the parameter list
    return re.sub(r"\b(danet|c10|pam_mma|cam_mma)::", "", name)


def ptxas_rows(source: str, log: str) -> list[tuple]:
    """(source, kernel, registers, spills, static smem) per entry function in ptxas -v output."""
    rows = []
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", log)[1:]:
        mangled = re.search(r"entry function '([^']+)'", block).group(1)
        regs = re.search(r"Used (\d+) registers", block)
        stores = re.search(r"(\d+) bytes spill stores", block)
        loads = re.search(r"(\d+) bytes spill loads", block)
        smem = re.search(r"(\d+) bytes smem", block)
        rows.append((source, short_name(mangled), int(regs.group(1)) if regs else None,
                     f"{stores.group(1) if stores else 0}/{loads.group(1) if loads else 0}",
                     int(smem.group(1)) if smem else 0))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS), help="the markdown file to update")
    args = p.parse_args(argv)
    rows, logs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCES:
            start = time.perf_counter()
            proc = subprocess.run(nvcc_command(REPO_ROOT / "csrc" / name, Path(tmp) / f"{name}.o"),
                                  capture_output=True, text=True)
            print(f"csrc/{name}: compiled for sm_90 in {time.perf_counter() - start:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            if proc.returncode != 0:
                sys.exit(f"nvcc failed on csrc/{name}:\n{proc.stderr[-4000:]}")
            log = "\n".join(line for line in proc.stderr.splitlines() if line.lstrip().startswith(
                ("ptxas info", "0 bytes", "bytes stack")) or "bytes stack frame" in line)
            logs.append(log)
            rows += ptxas_rows(name, log)
    out = Path(args.out)
    header = out.read_text().split(TABLE_START)[0] if out.exists() else "# sm_90 CUDA kernels\n\n"
    table = [TABLE_START + " registers | spill stores/loads (bytes) | static smem (bytes) |",
             "|---|---|---|---|---|"]
    table += [f"| {s} | `{k}` | {r} | {sp} | {sm} |" for s, k, r, sp, sm in rows]
    out.write_text(header + "\n".join(table) + "\n\n## ptxas -v lines\n\n```\n"
                   + "\n".join(logs) + "\n```\n")
    spills = [r for r in rows if r[3] != "0/0"]
    print(f"wrote {out}: {len(rows)} kernels, spilling: {[r[1] for r in spills] or 'none'}")


if __name__ == "__main__":
    main()
