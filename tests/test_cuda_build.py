"""The CUDA extension's build path, on any machine.

The compile test builds and links the whole extension for one architecture (sm_90) with
nvcc, which CI can do without a GPU when torch is a CUDA build and a toolkit is present
(about 2-3 minutes on 2 cores). It cannot run the kernels: that is tests/test_cuda_gpu.py.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import cuda_emulation
import pytest
import torch
from helpers import rel_err, tolerance

import danet_ops.cuda as cuda_backend
from danet_ops import chunked
from danet_ops.backends import BackendUnavailableError
from danet_ops.cuda import build

EXPECTED_FUNCTIONS = ("pam_forward", "pam_backward", "cam_forward", "cam_backward")


def _toolchain_skip_reason():
    # None, or why this machine cannot build: CPU-only torch, no nvcc, or an nvcc whose
    # major CUDA version differs from torch's (torch's builder refuses that).
    return build.toolchain_problem()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(module, seconds, build dir): one full build for sm_90 into a fresh directory."""
    reason = _toolchain_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("danet_ops_build")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAX_JOBS", "2")  # nvcc needs ~3 GB per process
        start = time.perf_counter()
        module = build.build_extension(arch_list="9.0", build_root=root)
        elapsed = time.perf_counter() - start
    return module, elapsed, root


def test_compile_and_link_extension_for_sm90(built):
    module, elapsed, root = built
    for name in EXPECTED_FUNCTIONS:
        assert callable(getattr(module, name, None)), f"extension lacks {name}"
    assert list(root.rglob("*.so")), "no shared library was produced"
    # Must stay well inside CI's budget (measured about 3 minutes on 2 cores).
    assert elapsed < 8 * 60, f"the extension took {elapsed:.0f} s to build"


def _cuobjdump():
    """A cuobjdump: on PATH, in the toolkit, or the one Triton's NVIDIA backend ships."""
    home = build.find_cuda_home()
    candidates = [shutil.which("cuobjdump"), home and str(Path(home) / "bin" / "cuobjdump")]
    try:
        import triton
        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and Path(c).is_file()), None)


def kernel_resources(text: str) -> dict:
    """``cuobjdump -res-usage`` output -> {mangled kernel: {"REG": n, "STACK": n, "LOCAL": n, ...}}."""
    kernels, name = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Function "):
            name = line[len("Function "):].rstrip(":")
        elif name and line.startswith("REG:"):
            kernels[name] = {k: int(v) for k, v in (f.split(":") for f in line.split())}
            name = None
    return kernels


def test_kernel_resources_are_parsed():
    text = (" Function _ZN5danet17pam_dv_mma_kernelIfEEvNS_7PamArgsIT_EEPS2_:\n"
            "  REG:223 STACK:8 SHARED:1024 LOCAL:0 CONSTANT[0]:624 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert kernel_resources(text) == {"_ZN5danet17pam_dv_mma_kernelIfEEvNS_7PamArgsIT_EEPS2_": {
        "REG": 223, "STACK": 8, "SHARED": 1024, "LOCAL": 0, "CONSTANT[0]": 624, "TEXTURE": 0,
        "SURFACE": 0, "SAMPLER": 0}}


def test_built_kernels_do_not_spill(built):
    """Every sm_90 kernel of the built library without a stack frame or local memory: a
    register spill (or a local array indexed at run time) shows up as both, and costs
    local-memory traffic in the inner loops (benchmarks/results/static-sm90/cuda-nvcc13.md
    has the ptxas -v lines)."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's NVIDIA backend) to read the kernels")
    library = next(built[2].rglob("*.so"))
    out = subprocess.run([tool, "-res-usage", str(library)], capture_output=True, text=True, check=True)
    kernels = kernel_resources(out.stdout)
    assert len(kernels) >= 50, f"read only {len(kernels)} kernels from {library}"
    spilling = {k: r for k, r in kernels.items() if r["STACK"] or r["LOCAL"]}
    assert not spilling, f"kernels with a stack frame or local memory: {spilling}"


def test_cached_build_reloads_without_compiling(built):
    """The build left its completion record; asking again imports the library directly."""
    module, _, root = built
    library = Path(module.__file__)
    assert build.cached_library(library.parent) == (library, None)
    start = time.perf_counter()
    again = build.build_extension(arch_list="9.0", build_root=root)
    assert time.perf_counter() - start < 30  # no compiler ran
    assert Path(again.__file__) == library
    assert callable(again.pam_forward)


def test_state_says_built_not_built_or_why_not(built, monkeypatch, tmp_path):
    """build.state(), the line ``python -m danet_ops`` prints for the extension."""
    monkeypatch.setattr(build, "prebuilt", lambda: None)
    monkeypatch.setattr(build, "default_arch_list", lambda: "9.0")
    monkeypatch.setenv("DANET_OPS_CACHE", str(built[2]))
    assert build.state() == f"built for arch 9.0, cached in {Path(built[0].__file__).parent}"
    monkeypatch.setenv("DANET_OPS_CACHE", str(tmp_path))
    assert build.state().startswith("not built yet: the first cuda call compiles it for arch 9.0 into "
                                    f"{tmp_path}")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert build.state().startswith("cannot be built here: ") and "CPU-only" in build.state()


def test_extension_rejects_cpu_tensors_with_a_clear_message(built):
    module = built[0]
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        module.cam_forward(torch.randn(1, 4, 8), None)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        module.pam_forward(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.randn(1, 4, 8),
                           None, None, 1.0, False)


def test_unavailable_reason_for_cpu_says_why():
    # How to run instead (.cuda(), chunked, eager) is added once by backends.resolve:
    # tests/test_validation.py::test_gpu_backend_on_cpu_tensors_says_the_fix_once.
    reason = cuda_backend.unavailable_reason(torch.device("cpu"))
    assert reason is not None and "CUDA tensors" in reason


def test_missing_nvcc_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(build, "find_cuda_home", lambda: None)
    monkeypatch.setattr(build, "prebuilt", lambda: None)
    with pytest.raises(BackendUnavailableError, match="nvcc|CPU-only"):
        build.build_extension(arch_list="9.0")
    reason = cuda_backend.unavailable_reason(torch.device("cuda"))
    assert reason is not None and ("nvcc" in reason or "CPU-only" in reason)
    assert "install" in reason


def test_cpu_only_torch_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailableError, match="CPU-only"):
        build.build_extension(arch_list="9.0")


def test_mismatched_nvcc_gives_a_clear_error(monkeypatch):
    home = build.find_cuda_home()
    if torch.version.cuda is None or home is None or build.nvcc_version(home) is None:
        pytest.skip("needs nvcc and a CUDA build of torch")
    other = "11.8" if not build.nvcc_version(home).startswith("11.") else "12.8"
    monkeypatch.setattr(torch.version, "cuda", other)
    with pytest.raises(BackendUnavailableError, match="built with CUDA " + other):
        build.build_extension(arch_list="9.0")


def test_arch_list_parsing():
    assert build._parse_arch_list("8.0;9.0+PTX") == ["8.0", "9.0+PTX"]
    assert build._gencode_flags(["9.0+PTX"]) == [
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    with pytest.raises(BackendUnavailableError, match="arch"):
        build._parse_arch_list("Hopper")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DANET_OPS_CACHE", str(tmp_path / "a"))
    assert build.cache_root() == tmp_path / "a"
    monkeypatch.delenv("DANET_OPS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "danet_ops"


def test_sources_are_found():
    src = build.source_dir()
    for name in build.SOURCES + build.HEADERS:
        assert (src / name).is_file()


# --- the kernels themselves, on the CPU ----------------------------------------------------
# csrc/emulation/ compiles the real kernel code as C++ with a thin CUDA shim (a thread per
# CUDA thread, barriers for __syncthreads and shuffles), so the fp32 kernels' indexing,
# ragged-edge masking and synchronisation are exercised here without a GPU. PAM forward
# and backward run the mma.sync kernels for every dtype, CAM's fp16/bf16 products too
# (mma.sync m16n8k16 and m16n8k8 .tf32, ldmatrix, cp.async emulated as warp collectives
# with the PTX ISA's fragment layouts, which tests/test_cuda_mma.py pins down; TF32
# operands truncated as the tensor cores read them, so fp32 meets 1e-5 only through
# 3xTF32); PAM and CAM with legacy=True (what every dtype takes on GPUs before sm_80) run
# the tile kernels: fp32 SIMT, the half types the WMMA product, emulated by the shim.
# Operands are rounded to fp16/bf16 as on the GPU, accumulation is fp32.
# Speed and real-GPU memcheck need tests/test_cuda_gpu.py. The library is built once per
# session (conftest's emulated_kernels; calls in tests/cuda_emulation.py).

EMULATION = cuda_emulation.EMULATION


def _gxx():
    gxx = cuda_emulation.gxx()
    if gxx is None:
        pytest.skip("g++ not found: the CPU emulation of the kernels needs a C++20 compiler")
    return gxx


def _d(t):
    return None if t is None else t.double()


# dtype -> tolerance against the float64 reference on the same rounded inputs. Half
# tolerances cover fp16/bf16 operand rounding of P, dS, attention.
EMU_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
HALF = [torch.float16, torch.bfloat16]
ALL = [torch.float32, *HALF]


@pytest.mark.parametrize("dtype,shape,scale,with_gamma,with_residual,legacy", [
    # mma.sync, every dtype (fp32 as 3xTF32 on m16n8k8): ragged N (padded rows), Cqk not a
    # multiple of 8, Cv under one 128-channel block; Cqk over 64 and not a multiple of 8;
    # batch 2 with N a multiple of 8 over two key tiles and Cv over one block (two channel
    # blocks, the second nearly empty).
    *[(dt, (1, 5, 70, 131), 1.0, True, True, False) for dt in ALL],
    (torch.float32, (2, 5, 70, 131), 1.0, True, True, False),
    *[(dt, (1, 70, 20, 67), 0.7, False, False, False) for dt in ALL],
    *[(dt, (2, 16, 130, 136), 1.0, True, True, False) for dt in ALL],
    # The mma.sync backward's edges besides those: N = 64 exactly with the rows used in
    # place (no padding) and no gamma; N under one 16-row fragment with Cv over three
    # 64-channel dP chunks (the last 8 channels) and over one 128-channel dV block; Cqk
    # over two 64-channel dK/dQ blocks with the third's second 16-channel pair past Cqk.
    *[(dt, (1, 16, 64, 64), 0.7, False, False, False) for dt in ALL],
    *[(dt, (1, 8, 200, 9), 1.0, True, False, False) for dt in ALL],
    *[(dt, (1, 130, 8, 40), 1.0, True, False, False) for dt in ALL],
    # legacy: the 64x64 tile kernels (every dtype before sm_80 or with too large a Cqk;
    # fp32 on SIMT FMAs, the half types on WMMA); fp32 also with Cqk over one tile.
    *[(dt, (1, 5, 70, 131), 1.0, True, True, True) for dt in ALL],
    (torch.float32, (1, 70, 20, 67), 1.0, True, False, True),
], ids=lambda x: str(x).replace("torch.", "") if isinstance(x, torch.dtype) else None)
def test_emulated_pam_kernels_match_chunked(emulated_kernels, dtype, shape, scale, with_gamma,
                                            with_residual, legacy):
    b, cqk, cv, n = shape
    tol = EMU_TOL[dtype]
    q, k, v, res, dout = (torch.randn(b, c, n).to(dtype) for c in (cqk, cqk, cv, cv, cv))
    gamma = torch.tensor(0.75) if with_gamma else None
    res = res if with_residual else None
    out, o, lse = cuda_emulation.pam_forward(emulated_kernels, q, k, v, gamma, res, scale, legacy=legacy)
    ref_out, ref_lse, ref_o = chunked.pam_forward(_d(q), _d(k), _d(v), _d(gamma), _d(res), scale, True)
    ref_o = ref_out if ref_o.numel() == 0 else ref_o
    assert rel_err(out, ref_out) <= tol
    assert rel_err(o, ref_o) <= tol
    assert rel_err(lse, ref_lse) <= tol

    dq, dk, dv, dgamma = cuda_emulation.pam_backward(emulated_kernels, dout, q, k, v, gamma, o, lse, scale,
                                                     legacy=legacy)
    # The saved o is the kernel's (rounded to dtype on the half paths), as in autograd.
    refs = chunked.pam_backward(_d(dout), _d(q), _d(k), _d(v), _d(gamma), _d(o), ref_lse, scale)
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), refs):
        assert rel_err(got, ref) <= tol, name
    if gamma is not None:
        assert rel_err(dgamma, refs[3]) <= tol


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape,with_gamma", [
    # ragged N over five key tiles of 32, Cqk not a multiple of 8, Cv under one warp's 128
    # channels (the dP exchange larger than the dout stage rows); batch 2 with Cv over one
    # warp's channels and N past four key tiles; DANet's widths (Cqk 64, Cv 512); N under
    # one 16-row fragment; Cqk 40 (the second dQ channel half partly past Cqk), Cv 300.
    ((1, 5, 70, 131), True),
    ((2, 16, 130, 136), True),
    ((1, 64, 512, 70), True),
    ((1, 8, 200, 9), False),
    ((1, 40, 300, 64), True),
], ids=str)
def test_emulated_fused_pam_backward_matches_chunked(emulated_kernels, dtype, shape, with_gamma):
    """pam_bwd_fused_mma_kernel (DANET_OPS_CUDA_PAM_BWD=fused): dK, dV and the atomically
    summed dQ against the float64 reference; the helper asserts that the fused kernel ran."""
    b, cqk, cv, n = shape
    q, k, v, dout = (torch.randn(b, c, n).to(dtype) for c in (cqk, cqk, cv, cv))
    gamma = torch.tensor(0.75) if with_gamma else None
    _, o, lse = cuda_emulation.pam_forward(emulated_kernels, q, k, v, gamma, None, 0.7)
    dq, dk, dv, dgamma = cuda_emulation.pam_backward(emulated_kernels, dout, q, k, v, gamma, o, lse, 0.7,
                                                     fused=True)
    _, ref_lse, _ = chunked.pam_forward(_d(q), _d(k), _d(v), _d(gamma), None, 0.7, True)
    refs = chunked.pam_backward(_d(dout), _d(q), _d(k), _d(v), _d(gamma), _d(o), ref_lse, 0.7)
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), refs):
        assert rel_err(got, ref) <= EMU_TOL[dtype], name
    if gamma is not None:
        assert rel_err(dgamma, refs[3]) <= EMU_TOL[dtype]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape,with_gamma,with_residual", [
    # ragged N over three key tiles, Cqk not a multiple of 8, Cv under one warp's 128
    # channels; batch 2 with two query groups and Cv over one warp's channels, N past two
    # key tiles; DANet's widths; N under one 16-row group with a key quarter past N in
    # every warp but the first; Cqk 40, Cv 300.
    ((1, 5, 70, 131), True, True),
    ((2, 16, 130, 136), True, False),
    ((1, 64, 512, 70), True, True),
    ((1, 8, 200, 9), False, False),
    ((1, 40, 300, 64), False, True),
], ids=str)
def test_emulated_whole_cv_forward_matches_chunked(emulated_kernels, dtype, shape, with_gamma, with_residual):
    """pam_forward_whole_cv_kernel (DANET_OPS_CUDA_PAM_FWD=whole_cv): out, the raw o and the
    LSE against the float64 reference; the helper asserts that the whole_cv kernel ran."""
    b, cqk, cv, n = shape
    q, k, v, res = (torch.randn(b, c, n).to(dtype) for c in (cqk, cqk, cv, cv))
    gamma = torch.tensor(0.75) if with_gamma else None
    res = res if with_residual else None
    out, o, lse = cuda_emulation.pam_forward(emulated_kernels, q, k, v, gamma, res, 0.7, whole_cv=True)
    ref_out, ref_lse, ref_o = chunked.pam_forward(_d(q), _d(k), _d(v), _d(gamma), _d(res), 0.7, True)
    ref_o = ref_out if ref_o.numel() == 0 else ref_o
    assert rel_err(out, ref_out) <= EMU_TOL[dtype]
    assert rel_err(o, ref_o) <= EMU_TOL[dtype]
    assert rel_err(lse, ref_lse) <= 1e-5  # fp32 statistics of exact products of the rounded inputs


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (1, 5, 70, 131)), (torch.float16, (1, 70, 20, 67)),
                                         (torch.bfloat16, (1, 8, 520, 40))], ids=str)
def test_emulated_variant_request_falls_back_to_the_default_kernels(emulated_kernels, dtype, shape):
    """fp32, Cqk over 64 or Cv over 512: ``whole_cv`` and ``fused`` run the default mma
    kernels (the helpers assert which ran), with the same results as without them."""
    b, cqk, cv, n = shape
    q, k, v, dout = (torch.randn(b, c, n).to(dtype) for c in (cqk, cqk, cv, cv))
    whole = cuda_emulation.pam_forward(emulated_kernels, q, k, v, None, None, 1.0, whole_cv=True)
    out, o, lse = cuda_emulation.pam_forward(emulated_kernels, q, k, v, None, None, 1.0)
    for got, ref in zip(whole, (out, o, lse)):
        assert torch.equal(got, ref)
    fused = cuda_emulation.pam_backward(emulated_kernels, dout, q, k, v, None, o, lse, 1.0, fused=True)
    split = cuda_emulation.pam_backward(emulated_kernels, dout, q, k, v, None, o, lse, 1.0)
    for got, ref in zip(fused[:3], split[:3]):
        assert torch.equal(got, ref)


def test_backward_variant_follows_the_environment_and_deterministic_mode(monkeypatch):
    from danet_ops import cuda

    monkeypatch.delenv(cuda.BWD_VARIANT_ENV, raising=False)
    assert cuda.backward_variant() == "split"
    monkeypatch.setenv(cuda.BWD_VARIANT_ENV, " Fused ")
    assert cuda.backward_variant() == "fused"
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert cuda.backward_variant() == "split"  # its dQ atomics add in no fixed order
    finally:
        torch.use_deterministic_algorithms(previous)
    monkeypatch.setenv(cuda.BWD_VARIANT_ENV, "fast")
    with pytest.raises(ValueError, match="DANET_OPS_CUDA_PAM_BWD must be 'split' or 'fused', got 'fast'"):
        cuda.backward_variant()


def test_forward_variant_follows_the_environment(monkeypatch):
    from danet_ops import cuda

    monkeypatch.delenv(cuda.FWD_VARIANT_ENV, raising=False)
    assert cuda.forward_variant() == "cv_blocks"
    monkeypatch.setenv(cuda.FWD_VARIANT_ENV, "whole_cv")
    assert cuda.forward_variant() == "whole_cv"
    monkeypatch.setenv(cuda.FWD_VARIANT_ENV, "whole")
    expected = "DANET_OPS_CUDA_PAM_FWD must be 'cv_blocks' or 'whole_cv', got 'whole'"
    with pytest.raises(ValueError, match=expected):
        cuda.forward_variant()


@pytest.mark.parametrize("shape", [(1, 5, 70, 131), (1, 130, 8, 40)])
def test_emulated_pam_fp32_tf32_mode_is_plain_tf32(emulated_kernels, shape):
    """fp32 with tf32 (torch's matmul precision "high"/"medium"): the products other than
    the energies as one TF32 MMA. Within the "pam-tf32" bounds, and visibly not fp32-accurate,
    so the flag reaches the kernels (and 3xTF32, the default, is what meets 1e-5 above)."""
    b, cqk, cv, n = shape
    out_tol, grad_tol = tolerance(torch.float32, "pam-tf32")
    q, k, v, res, dout = (torch.randn(b, c, n) for c in (cqk, cqk, cv, cv, cv))
    gamma = torch.tensor(0.75)
    out, o, lse = cuda_emulation.pam_forward(emulated_kernels, q, k, v, gamma, res, 1.0, tf32=True)
    ref_out, ref_lse, ref_o = chunked.pam_forward(_d(q), _d(k), _d(v), _d(gamma), _d(res), 1.0, True)
    assert 1e-5 < rel_err(o, ref_o) <= out_tol
    assert rel_err(out, ref_out) <= out_tol
    assert rel_err(lse, ref_lse) <= 1e-5  # the energies stay 3xTF32
    dq, dk, dv, _ = cuda_emulation.pam_backward(emulated_kernels, dout, q, k, v, gamma, o, lse, 1.0,
                                                tf32=True)
    refs = chunked.pam_backward(_d(dout), _d(q), _d(k), _d(v), _d(gamma), _d(o), ref_lse, 1.0)
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), refs):
        assert rel_err(got, ref) <= grad_tol, name
    assert rel_err(dv, refs[2]) > 1e-5


@pytest.mark.parametrize(
    "dtype,shape,with_gamma,splits,legacy",
    [
        # mma.sync (every dtype on sm_80+; fp32 as 3xTF32, its own pitches and 8-step
        # fragments): ragged N (zero-padded rows) with a split-K Gram of two splits, the
        # second under one 64-position chunk; C under one tile, no gamma; C = 96 (a 64-row
        # tile and a half, under one 128-column tile) with N = 13 * 17 and batch 2; N a
        # multiple of 8 (rows read in place) over two splits; a DANet-like C = 515 (not a
        # multiple of 8: ragged operand rows, 9 x 5 output tiles, a last 3-channel reduction
        # chunk; bf16 only, fp16 shares the code, and the emulation's time grows as C^2 N)
        # at an odd N; fp32 also over two 64-row tiles and a split-K of three.
        *[(dt, (1, 70, 131), True, 2, False) for dt in ALL],
        *[(dt, (1, 24, 300), False, 1, False) for dt in ALL],
        *[(dt, (2, 96, 221), True, 2, False) for dt in ALL],
        *[(dt, (1, 40, 1024), True, 3, False) for dt in ALL],
        (torch.bfloat16, (1, 515, 45), True, 1, False),
        (torch.float32, (2, 130, 67), True, 3, False),
        # legacy: the 64x64 tile kernel (GPUs before sm_80): fp32 SIMT, the half types WMMA
        *[(dt, (1, 70, 131), True, 2, True) for dt in ALL],
    ],
)
def test_emulated_cam_kernels_match_chunked(emulated_kernels, dtype, shape, with_gamma, splits, legacy):
    b, c, n = shape
    tol = EMU_TOL[dtype]
    x = (torch.randn(b, c, n) * (2.0 / n**0.5)).to(dtype)
    dout = torch.randn(b, c, n).to(dtype)
    gamma = torch.tensor(0.7) if with_gamma else None
    out, attn = cuda_emulation.cam_forward(emulated_kernels, x, gamma, splits, legacy=legacy)
    ref_out, ref_attn = chunked.cam_forward(_d(x), _d(gamma))
    assert rel_err(out, ref_out) <= tol
    assert rel_err(attn, ref_attn) <= tol

    dx, dgamma = cuda_emulation.cam_backward(emulated_kernels, dout, x, attn, gamma, splits, legacy=legacy)
    ref_dx, ref_dgamma = chunked.cam_backward(_d(dout), _d(x), ref_attn, _d(gamma))
    assert rel_err(dx, ref_dx) <= tol
    if gamma is not None:
        assert rel_err(dgamma, ref_dgamma) <= tol


@pytest.mark.parametrize("shape,splits", [((1, 70, 131), 2), ((2, 96, 64), 1)])
def test_emulated_cam_fp32_tf32_mode_is_plain_tf32(emulated_kernels, shape, splits):
    """fp32 CAM with tf32 (matmul precision "high"/"medium"): A·X and dx as one TF32 MMA,
    within the "cam-tf32" bounds and visibly not fp32-accurate (the flag reaches the kernel);
    the Gram E, hence the attention, and G = dout·Xᵀ, hence dgamma, stay 3xTF32 (1e-5)."""
    b, c, n = shape
    out_tol, grad_tol = tolerance(torch.float32, "cam-tf32")
    x = torch.randn(b, c, n) * (2.0 / n**0.5)
    dout = torch.randn(b, c, n)
    gamma = torch.tensor(0.7)
    out, attn = cuda_emulation.cam_forward(emulated_kernels, x, gamma, splits, tf32=True)
    ref_out, ref_attn = chunked.cam_forward(_d(x), _d(gamma))
    assert rel_err(attn, ref_attn) <= 1e-5
    assert 1e-5 < rel_err(out - x, ref_out - _d(x)) <= out_tol  # gamma A X alone: the TF32 part
    dx, dgamma = cuda_emulation.cam_backward(emulated_kernels, dout, x, attn, gamma, splits, tf32=True)
    ref_dx, ref_dgamma = chunked.cam_backward(_d(dout), _d(x), ref_attn, _d(gamma))
    assert 1e-5 < rel_err(dx - dout, ref_dx - _d(dout)) <= grad_tol
    assert rel_err(dgamma, ref_dgamma) <= 1e-5


def test_emulated_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    gxx = _gxx()
    exe = tmp_path / "memcheck"
    cmd = [
        gxx,
        "-std=c++20",
        "-O1",
        "-g",
        "-fsanitize=address",
        "-fno-omit-frame-pointer",
        "-pthread",
        "-Wno-unknown-pragmas",
        str(EMULATION / "memcheck_main.cpp"),
        "-o",
        str(exe),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 and "asan" in result.stderr.lower():
        pytest.skip(f"no AddressSanitizer runtime for g++: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "memcheck ok" in run.stdout, (run.stdout + run.stderr)[-4000:]
