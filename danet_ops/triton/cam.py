"""CAM (channel attention) in Triton: forward and backward kernels plus their launch code.

Math, with ``X = x`` as ``[B, C, N]`` (backend contract: ``danet_ops.backends``)::

    E = X Xᵀ                      [B, C, C]  Gram, fp32
    A = exp(rowmin(E) - E) / Σ    [B, C, C]  softmax(-E), fp32, kept for backward
    out = γ·(A X) + x             (or A X when gamma is None)

    G  = dout Xᵀ                  [B, C, C]
    dγ = Σ A∘G
    dA = γ·G
    dE = -A∘(dA - rowsum(dA∘A))
    dx = Aᵀ(γ·dout) + (dE + dEᵀ) X + dout   (the last term only with gamma)

Kernels, in launch order:

forward   ``_gram_kernel``        split-K partial Grams, [S, B, C, C] fp32
          ``_softmax_kernel``     sums the S partials in a fixed order, softmax(-E) -> A
          ``_attn_x_kernel``      A X with the γ·out + x epilogue
backward  ``_gram_kernel``        split-K partials of G = dout Xᵀ
          ``_attn_grad_kernel``   sums the partials, dE and per-row-block dγ partials
          ``_dx_kernel``          dx = Aᵀ(γ dout) + (dE + dEᵀ) X + dout in one pass

Why split-K with a partial buffer instead of atomics: the C x C output has few tiles
(C = 512, 64x64 tiles: 36 on and above the diagonal) against a long reduction over N
(up to 32768), so the grid is split along N to fill the GPU. Each split writes its own fp32
slice and the row kernels, which read every row in full anyway, add the slices in a fixed
order. That is as cheap as an atomic reduction here (the partials are small and read once),
needs no zero-filled buffer, and is bitwise deterministic always, so
``torch.are_deterministic_algorithms_enabled()`` needs no separate path.

Precision: every accumulator, the Gram, the softmax and its statistics are fp32 whatever
the input dtype (eager fp16 overflows the Gram once Σx² passes 65504). fp32 inputs: the
Gram and G are always fp32-accurate (3xTF32, or exact FMA under DANET_OPS_TRITON_FP32=ieee;
plain TF32 on unscaled energies moves the softmax by percent); A·X and the dx products use
plain TF32 only when the user allowed it (``torch.get_float32_matmul_precision() !=
"highest"``); see ``configs.dot_precisions``. fp16/bf16 inputs: tensor-core
dots with A (in [0, 1]) cast to the input dtype; dE can exceed fp16's range, so
(dE + dEᵀ)·X multiplies fp32 operands (TF32).

No host synchronisation anywhere (gamma is read from its pointer, dγ is reduced on the
device), so the launches are CUDA-graph capturable once autotuning has run.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from danet_ops.triton import configs, interpreter_enabled

# --- kernels -------------------------------------------------------------------------------


@triton.jit
def _gram_kernel(
    a_ptr, b_ptr, part_ptr, C, N, K_PER_SPLIT, N_BUCKET,
    SYMMETRIC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """part[s, b, i, j] = Σ_{n in split s} a[b, i, n]·b[b, j, n] for one C x C tile, fp32.

    Grid: (tiles², splits, batch). With SYMMETRIC (a is b, the forward Gram) only tiles on
    and above the diagonal compute, and write their transpose below it: half the FLOPs.
    The programs below the diagonal return at once; enumerating only the upper triangle
    would save their launch but needs a square root to decode the tile index.
    N_BUCKET is unused here: it is only the autotuning key.
    """
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2)
    n_tiles = tl.cdiv(C, BLOCK_C)
    ti = pid_t // n_tiles
    tj = pid_t % n_tiles
    if SYMMETRIC:
        if ti > tj:
            return

    rows = ti * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = tj * BLOCK_C + tl.arange(0, BLOCK_C)
    ks = tl.arange(0, BLOCK_K)
    base = pid_b.to(tl.int64) * C * N
    n_start = pid_s * K_PER_SPLIT
    n_end = tl.minimum(n_start + K_PER_SPLIT, N)

    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    for k0 in range(n_start, n_end, BLOCK_K):
        n = k0 + ks
        a = tl.load(
            a_ptr + base + rows[:, None] * N + n[None, :],
            mask=(rows[:, None] < C) & (n[None, :] < n_end), other=0.0,
        )
        bt = tl.load(
            b_ptr + base + cols[None, :] * N + n[:, None],
            mask=(cols[None, :] < C) & (n[:, None] < n_end), other=0.0,
        )
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)

    out = part_ptr + (pid_s * tl.num_programs(2) + pid_b).to(tl.int64) * C * C
    mask = (rows[:, None] < C) & (cols[None, :] < C)
    tl.store(out + rows[:, None] * C + cols[None, :], acc, mask=mask)
    if SYMMETRIC:
        # The mirror image; a diagonal tile already holds both halves.
        # A branch, not `mask & (ti < tj)` (triton 3.9's interpreter rejects scalar-bool masks).
        if ti < tj:
            tl.store(out + cols[None, :] * C + rows[:, None], acc, mask=mask)


@triton.jit
def _sum_splits(part_ptr, pid_b, n_batch, offs, mask, C, S, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Σ_s part[s, b][offs] in split order (fixed order: bitwise reproducible), fp32."""
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for s in range(S):
        acc += tl.load(part_ptr + (s * n_batch + pid_b).to(tl.int64) * C * C + offs, mask=mask, other=0.0)
    return acc


@triton.jit
def _softmax_kernel(part_ptr, attn_ptr, C, S, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """A = exp(rowmin(E) - E) / Σ for BLOCK_R full rows, E = Σ_s part[s] in split order.

    Grid: (row blocks, batch). rowmin(E) - E ≤ 0, so exp never overflows; it is
    softmax(rowmax(E) - E) as mmseg writes it, with the constant shift cancelled.
    """
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_batch = tl.num_programs(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < C) & (cols[None, :] < C)
    offs = rows[:, None] * C + cols[None, :]

    e = _sum_splits(part_ptr, pid_b, n_batch, offs, mask, C, S, BLOCK_R, BLOCK_C)
    # Padding columns get +inf so that they neither set the row minimum nor add to Σ.
    valid = cols[None, :] < C
    e = tl.where(valid, e, float("inf"))
    # (rowmax - rowmax) is 0, or NaN on a row holding +inf: eager's softmax(rowmax(E) - E)
    # is NaN on such a row, where rowmin(E) - E alone would give +inf weight 0.
    row_max = tl.max(tl.where(valid, e, -float("inf")), axis=1)
    p = tl.exp((tl.min(e, axis=1) + (row_max - row_max))[:, None] - e)
    p = p / tl.sum(p, axis=1)[:, None]
    tl.store(attn_ptr + pid_b.to(tl.int64) * C * C + offs, p, mask=mask)


@triton.jit
def _attn_x_kernel(
    attn_ptr, x_ptr, gamma_ptr, out_ptr, C, N, N_BUCKET,
    HAS_GAMMA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, i, n] = γ·Σ_k A[b, i, k]·x[b, k, n] + x[b, i, n] (no γ, no + x without gamma).

    Grid: (C tiles, N tiles, batch). A is fp32; for half inputs its tile is cast to the
    input dtype so the dot runs on tensor cores, accumulating in fp32.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    attn = attn_ptr + pid_b.to(tl.int64) * C * C
    x = x_ptr + pid_b.to(tl.int64) * C * N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + ks
        a = tl.load(attn + rows[:, None] * C + k[None, :], mask=(rows[:, None] < C) & (k[None, :] < C), other=0.0)
        xk = tl.load(x + k[:, None] * N + n[None, :], mask=(k[:, None] < C) & (n[None, :] < N), other=0.0)
        acc = tl.dot(a.to(xk.dtype), xk, acc, input_precision=PRECISION)

    mask = (rows[:, None] < C) & (n[None, :] < N)
    offs = rows[:, None] * N + n[None, :]
    if HAS_GAMMA:
        gamma = tl.load(gamma_ptr).to(tl.float32)
        acc = gamma * acc + tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_b.to(tl.int64) * C * N + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attn_grad_kernel(
    part_ptr, attn_ptr, gamma_ptr, de_ptr, dgamma_ptr, C, S,
    HAS_GAMMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dE = -A∘(dA - rowsum(dA∘A)) with dA = γ·G, G = Σ_s part[s]; and Σ A∘G per row block.

    Grid: (row blocks, batch). The dγ partial of this program goes to
    dgamma[b, row block]; the launcher sums that small buffer (a fixed order).
    """
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_batch = tl.num_programs(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < C) & (cols[None, :] < C)
    offs = rows[:, None] * C + cols[None, :]

    g = _sum_splits(part_ptr, pid_b, n_batch, offs, mask, C, S, BLOCK_R, BLOCK_C)
    a = tl.load(attn_ptr + pid_b.to(tl.int64) * C * C + offs, mask=mask, other=0.0)
    if HAS_GAMMA:
        tl.store(dgamma_ptr + pid_b * tl.num_programs(0) + pid_r, tl.sum(a * g))
        da = tl.load(gamma_ptr).to(tl.float32) * g
    else:
        da = g
    row_dot = tl.sum(da * a, axis=1)
    de = a * (row_dot[:, None] - da)
    tl.store(de_ptr + pid_b.to(tl.int64) * C * C + offs, de, mask=mask)


@triton.jit
def _dx_kernel(
    attn_ptr, de_ptr, x_ptr, dout_ptr, gamma_ptr, dx_ptr, C, N, N_BUCKET,
    HAS_GAMMA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, i, n] = Σ_k (γ·A[k, i]·dout[k, n] + (dE[i, k] + dE[k, i])·x[k, n]) + dout[i, n].

    Grid: (C tiles, N tiles, batch). Both products share one accumulator and one walk over
    k; dE + dEᵀ is formed from two loads of dE rather than stored. Aᵀ·dout runs in the
    input dtype (A ∈ [0, 1]); (dE + dEᵀ)·x multiplies fp32 operands since dE can leave
    fp16's range. Without gamma: γ = 1 and no residual term.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    attn = attn_ptr + pid_b.to(tl.int64) * C * C
    de = de_ptr + pid_b.to(tl.int64) * C * C
    x = x_ptr + pid_b.to(tl.int64) * C * N
    dout = dout_ptr + pid_b.to(tl.int64) * C * N
    if HAS_GAMMA:
        gamma = tl.load(gamma_ptr).to(tl.float32)
    else:
        gamma = 1.0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + ks
        mask_ik = (rows[:, None] < C) & (k[None, :] < C)
        mask_kn = (k[:, None] < C) & (n[None, :] < N)
        a_t = tl.load(attn + k[None, :] * C + rows[:, None], mask=mask_ik, other=0.0)
        d_sym = (
            tl.load(de + rows[:, None] * C + k[None, :], mask=mask_ik, other=0.0)
            + tl.load(de + k[None, :] * C + rows[:, None], mask=mask_ik, other=0.0)
        )
        dok = tl.load(dout + k[:, None] * N + n[None, :], mask=mask_kn, other=0.0)
        xk = tl.load(x + k[:, None] * N + n[None, :], mask=mask_kn, other=0.0)
        acc = tl.dot((gamma * a_t).to(dok.dtype), dok, acc, input_precision=PRECISION)
        acc = tl.dot(d_sym, xk.to(tl.float32), acc, input_precision=PRECISION)

    mask = (rows[:, None] < C) & (n[None, :] < N)
    offs = rows[:, None] * N + n[None, :]
    if HAS_GAMMA:
        acc += tl.load(dout + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + pid_b.to(tl.int64) * C * N + offs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# --- configurations --------------------------------------------------------------------------

# Under the interpreter: one fixed configuration (autotuning needs a GPU), blocks as large
# as the test shapes use, since the interpreter's cost is per program and loop step.
_INTERPRET_GRAM = {"BLOCK_C": 32, "BLOCK_K": 64}
_INTERPRET_MATMUL = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}
# Split-K chunks are a multiple of the largest BLOCK_K of any configuration, so a split
# boundary never falls inside a block.
_SPLIT_ALIGN = 128
# Each split reduces over at least this many positions (GPU), so a split earns its launch.
_MIN_SPLIT_LEN = 512


def _gram_configs(major: int) -> tuple[list[triton.Config], list[triton.Config]]:
    """(half, fp32) candidates for the Gram kernel. Its fp32 "ieee" dots spill on sm_90 in
    every tile but 128x32 (``benchmarks/results/static-sm90/``), kept for 3xTF32 too."""
    stages = (3, 4) if major >= 9 else (2, 3)
    fp32 = [configs.config(8, st, BLOCK_C=128, BLOCK_K=32) for st in stages]
    tiles = ((64, 64, 4), (64, 128, 4), (128, 64, 8))
    return fp32 + [configs.config(w, stages[0], BLOCK_C=c, BLOCK_K=k) for c, k, w in tiles], fp32


def _matmul_configs(major: int, name: str) -> list[triton.Config]:
    """Configs for the [C, N]-tiled kernels (``attn_x``, ``dx``), every dtype.

    ``dx`` stages four operand tiles, two of them fp32, so it drops BLOCK_K = 64: with fp32
    inputs that tile would exceed shared memory (sm_80 and sm_90, Triton's ptxas). One stage
    count per arch keeps first-use compiles bounded (a DANet step: at most 40).
    """
    stages = 3 if major >= 9 else 2
    tiles = [(64, 64, 32, 4), (64, 128, 32, 4), (128, 64, 32, 4), (128, 128, 32, 8), (64, 128, 64, 4)]
    if name == "dx":
        tiles = tiles[:-1]
    return [configs.config(warps, stages, BLOCK_M=m, BLOCK_N=n, BLOCK_K=k) for m, n, k, warps in tiles]


# Autotune keys name the kernel's own arguments only (triton 3.9 checks); the Gram's
# symmetric (forward) and general (backward) launches differ in registers: tuned apart.
_KEY = ["C", "N_BUCKET", "PRECISION"]
# The argument whose dtype (the input's) picks a kernel's candidate list.
_DTYPE_ARG = {"gram": "a_ptr", "attn_x": "x_ptr", "dx": "x_ptr"}


@functools.cache
def _tuned(name: str, device_index: int):
    """The autotuned wrapper of kernel ``name`` for one GPU (configs chosen by its arch).

    Keyed on C, a power-of-two bucket of N (or of the split length) and the dot precision;
    Triton adds the tensors' dtypes to the key itself.
    """
    kernel = {"gram": _gram_kernel, "attn_x": _attn_x_kernel, "dx": _dx_kernel}[name]
    if interpreter_enabled():
        interpreter = _INTERPRET_GRAM if name == "gram" else _INTERPRET_MATMUL
        half = fp32 = []
    else:
        major, _ = torch.cuda.get_device_capability(device_index)
        interpreter = {}
        if name == "gram":
            half, fp32 = _gram_configs(major)
        else:
            half = fp32 = _matmul_configs(major, name)
            if name == "dx":  # fp32 dx spills on sm_90 in every tile but 64x64 (3xTF32 and FMA)
                fp32 = half[:1]
    return configs.autotune(half=half, fp32=fp32, interpreter=interpreter,
                            key=_KEY + (["SYMMETRIC"] if name == "gram" else []),
                            dtype_arg=_DTYPE_ARG[name])(kernel)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _launch(name: str, grid, args: tuple, kwargs: dict, device: torch.device) -> None:
    """Run kernel ``name``: autotuned on a GPU, the interpreter's fixed blocks on the CPU."""
    index = 0 if interpreter_enabled() else _device_index(device)
    _tuned(name, index)[grid](*args, **kwargs)


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def _num_splits(c: int, n: int, batch: int, symmetric: bool, device: torch.device) -> tuple[int, int]:
    """(splits, positions per split) for a split-K Gram over N: enough programs for the GPU.

    Aims at two programs per SM counting the tiles that compute (nominal 64x64 tiles),
    with splits no shorter than _MIN_SPLIT_LEN and at most 32 of them.
    """
    if interpreter_enabled():
        block_c, align, min_len, programs = _INTERPRET_GRAM["BLOCK_C"], _INTERPRET_GRAM["BLOCK_K"], 64, 4
    else:
        block_c, align, min_len = 64, _SPLIT_ALIGN, _MIN_SPLIT_LEN
        programs = 2 * _sm_count(_device_index(device))
    t = triton.cdiv(c, block_c)
    tiles = batch * (t * (t + 1) // 2 if symmetric else t * t)
    splits = max(1, min(32, triton.cdiv(programs, tiles), n // min_len))
    split_len = triton.cdiv(triton.cdiv(n, splits), align) * align
    return triton.cdiv(n, split_len), split_len


def _gram_partials(a: Tensor, b: Tensor, symmetric: bool) -> tuple[Tensor, int]:
    """Split-K partials of a bᵀ per batch item: ([S, B, C, C] fp32, S)."""
    batch, c, n = a.shape
    splits, split_len = _num_splits(c, n, batch, symmetric, a.device)
    part = torch.empty((splits, batch, c, c), device=a.device, dtype=torch.float32)
    # The Gram and G are energies (or their gradient): never plain TF32 for fp32 inputs.
    precision = configs.dot_precisions(a.dtype)[0]

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_C"]) ** 2, splits, batch)

    _launch(
        "gram", grid, (a, b, part, c, n, split_len, _bucket(split_len)),
        {"SYMMETRIC": symmetric, "PRECISION": precision}, a.device,
    )
    return part, splits


def _row_blocks(c: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for the row kernels: whole rows, ~4K elements a program."""
    block_c = triton.next_power_of_2(c)
    block_r = max(1, min(block_c, 4096 // block_c))
    return block_r, block_c, 8 if block_c >= 2048 else 4


# --- launch code (the backend contract) ------------------------------------------------------


def cam_forward(x: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """out = γ·softmax(-x xᵀ)·x + x (or softmax(-x xᵀ)·x), and the fp32 softmax ``[B, C, C]``.

    x ``[B, C, N]`` float32/float16/bfloat16; gamma 0-dim (any float dtype) or None.
    """
    x = x.contiguous()
    batch, c, n = x.shape
    part, splits = _gram_partials(x, x, symmetric=True)

    attn = torch.empty((batch, c, c), device=x.device, dtype=torch.float32)
    block_r, block_c, warps = _row_blocks(c)
    _softmax_kernel[(triton.cdiv(c, block_r), batch)](
        part, attn, c, splits, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )

    out = torch.empty_like(x)
    has_gamma = gamma is not None

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), batch)

    _launch(
        "attn_x", grid, (attn, x, gamma if has_gamma else x, out, c, n, _bucket(n)),
        {"HAS_GAMMA": has_gamma, "PRECISION": configs.dot_precisions(x.dtype)[1]}, x.device,
    )
    return out, attn


def cam_backward(dout: Tensor, x: Tensor, attn: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(dx in x's dtype, dγ 0-dim in gamma's dtype, or an empty tensor when gamma is None).

    dout, x ``[B, C, N]``; attn the fp32 ``[B, C, C]`` softmax from ``cam_forward``.
    dout may be expanded (stride 0, from ``out.sum()``): it is made contiguous here.
    """
    dout = dout.contiguous()
    x = x.contiguous()
    attn = attn.contiguous()
    batch, c, n = x.shape
    has_gamma = gamma is not None
    part, splits = _gram_partials(dout, x, symmetric=False)

    block_r, block_c, warps = _row_blocks(c)
    row_blocks = triton.cdiv(c, block_r)
    d_energy = torch.empty((batch, c, c), device=x.device, dtype=torch.float32)
    dgamma_part = torch.empty((batch, row_blocks), device=x.device, dtype=torch.float32)
    _attn_grad_kernel[(row_blocks, batch)](
        part, attn, gamma if has_gamma else attn, d_energy, dgamma_part, c, splits,
        HAS_GAMMA=has_gamma, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )

    dx = torch.empty_like(x)

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), batch)

    _launch(
        "dx", grid,
        (attn, d_energy, x, dout, gamma if has_gamma else x, dx, c, n, _bucket(n)),
        {"HAS_GAMMA": has_gamma, "PRECISION": configs.dot_precisions(x.dtype)[1]}, x.device,
    )
    dgamma = dgamma_part.sum().to(gamma.dtype) if has_gamma else dout.new_empty(0)
    return dx, dgamma
