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

forward   ``_cam_gram_kernel``        split-K partial Grams, [S, B, C, C] fp32
          ``_cam_softmax_kernel``     sums the S partials in a fixed order, softmax(-E) -> A
          ``_cam_attn_x_kernel``      A X with the γ·out + x epilogue
backward  ``_cam_gram_kernel``        split-K partials of G = dout Xᵀ
          ``_cam_attn_grad_kernel``   sums the partials, dE and per-row-block dγ partials
          ``_cam_dx_kernel``          dx = Aᵀ(γ dout) + (dE + dEᵀ) X + dout in one pass

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
from danet_ops.triton.padding import pad_rows

# --- configurations ------------------------------------------------------------------------
#
# Candidates per kernel and input dtype (``danet_ops.triton.configs``): each compiles for
# sm_90 without spills and within shared memory (benchmarks/results/static-sm90/); the
# first is the known-good one that DANET_OPS_TRITON_CONFIG=first pins.

_C = configs.config
# Under the interpreter: one fixed configuration (autotuning needs a GPU), blocks as large
# as the test shapes use, since the interpreter's cost is per program and loop step.
_INTERPRETER_GRAM = {"BLOCK_C": 32, "BLOCK_K": 64}
_INTERPRETER_MATMUL = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}
# Keyed on C, a power-of-two bucket of N (or of the split length) and the dot precision;
# Triton adds the tensors' dtypes itself. The Gram's symmetric (forward) and general
# (backward) launches differ in registers: tuned apart. (A key may name only the kernel's
# own arguments: triton 3.9 checks.)
_KEY = ["C", "N_BUCKET", "PRECISION"]

# fp32 "ieee" Gram dots spill on sm_90 in every tile but 128x32, kept for 3xTF32 too.
_GRAM_FP32 = [_C(8, 3, BLOCK_C=128, BLOCK_K=32), _C(8, 4, BLOCK_C=128, BLOCK_K=32)]
_GRAM_HALF = _GRAM_FP32 + [
    _C(4, 3, BLOCK_C=64, BLOCK_K=64),
    _C(4, 3, BLOCK_C=64, BLOCK_K=128),
    _C(8, 3, BLOCK_C=128, BLOCK_K=64),
]
# The [C, N]-tiled kernels. One stage count keeps first-use compiles bounded (a DANet
# step: at most 40).
_ATTN_X = [
    _C(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
    _C(4, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32),
    _C(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32),
    _C(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
    _C(4, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64),
]
# dx stages four operand tiles, two of them fp32, so it drops BLOCK_K = 64 (with fp32
# inputs that tile exceeds shared memory); fp32 dx spills on sm_90 in every tile but 64x64
# (3xTF32 and FMA).
_DX_HALF = _ATTN_X[:-1]
_DX_FP32 = _ATTN_X[:1]

# Split-K chunks are a multiple of the largest BLOCK_K of any configuration, so a split
# boundary never falls inside a block.
_SPLIT_ALIGN = 128
# Each split reduces over at least this many positions (GPU), so a split earns its launch.
_MIN_SPLIT_LEN = 512


# --- kernels -------------------------------------------------------------------------------


@configs.autotune(half=_GRAM_HALF, fp32=_GRAM_FP32, interpreter=_INTERPRETER_GRAM,
                  key=_KEY + ["SYMMETRIC"], dtype_arg="X")
@triton.jit
def _cam_gram_kernel(
    X, Y, Part, C, N, K_PER_SPLIT, N_BUCKET,
    SYMMETRIC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Part[s, b, i, j] = Σ_{n in split s} X[b, i, n]·Y[b, j, n] for one C x C tile, fp32.

    Grid: (tiles², splits, batch). With SYMMETRIC (X is Y, the forward Gram) only tiles on
    and above the diagonal compute, and write their transpose below it: half the FLOPs.
    The programs below the diagonal return at once; enumerating only the upper triangle
    would save their launch but needs a square root to decode the tile index.
    N_BUCKET is unused here: it is only the autotuning key.
    """
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_tiles = tl.cdiv(C, BLOCK_C)
    ti = pid_t // n_tiles
    tj = pid_t % n_tiles
    if SYMMETRIC:
        if ti > tj:
            return
    X += b * C * N
    Y += b * C * N
    Part += (pid_s * tl.num_programs(2) + b) * C * C

    offs_i = ti * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_j = tj * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    mask_i = offs_i < C
    mask_j = offs_j < C
    n_start = pid_s * K_PER_SPLIT
    n_end = tl.minimum(n_start + K_PER_SPLIT, N)

    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    for start_k in range(n_start, n_end, BLOCK_K):
        offs_n = start_k + offs_k
        mask_n = offs_n < n_end
        x = tl.load(X + offs_i[:, None] * N + offs_n[None, :],
                    mask=mask_i[:, None] & mask_n[None, :], other=0.0)  # [C_i, K]
        yt = tl.load(Y + offs_j[None, :] * N + offs_n[:, None],
                     mask=mask_j[None, :] & mask_n[:, None], other=0.0)  # [K, C_j]
        acc = tl.dot(x, yt, acc, input_precision=PRECISION)

    mask = mask_i[:, None] & mask_j[None, :]
    tl.store(Part + offs_i[:, None] * C + offs_j[None, :], acc, mask=mask)
    if SYMMETRIC:
        # The mirror image; a diagonal tile already holds both halves.
        # A branch, not `mask & (ti < tj)` (triton 3.9's interpreter rejects scalar-bool masks).
        if ti < tj:
            tl.store(Part + offs_j[None, :] * C + offs_i[:, None], acc, mask=mask)


@triton.jit
def _sum_splits(Part, b, n_batch, offs, mask, C, S, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Σ_s Part[s, b][offs] in split order (fixed order: bitwise reproducible), fp32."""
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for s in range(S):
        acc += tl.load(Part + (s * n_batch + b) * C * C + offs, mask=mask, other=0.0)
    return acc


@triton.jit
def _cam_softmax_kernel(Part, Attn, C, S, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """A = exp(rowmin(E) - E) / Σ for BLOCK_R full rows, E = Σ_s Part[s] in split order.

    Grid: (row blocks, batch). rowmin(E) - E ≤ 0, so exp never overflows; it is
    softmax(rowmax(E) - E) as mmseg writes it, with the constant shift cancelled.
    """
    pid_r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_r[:, None] < C) & (offs_c[None, :] < C)
    offs = offs_r[:, None] * C + offs_c[None, :]

    e = _sum_splits(Part, b, tl.num_programs(1), offs, mask, C, S, BLOCK_R, BLOCK_C)
    # Padding columns get +inf so that they neither set the row minimum nor add to Σ.
    valid = offs_c[None, :] < C
    e = tl.where(valid, e, float("inf"))
    # (rowmax - rowmax) is 0, or NaN on a row holding +inf: eager's softmax(rowmax(E) - E)
    # is NaN on such a row, where rowmin(E) - E alone would give +inf weight 0.
    row_max = tl.max(tl.where(valid, e, -float("inf")), axis=1)
    p = tl.exp((tl.min(e, axis=1) + (row_max - row_max))[:, None] - e)
    p = p / tl.sum(p, axis=1)[:, None]
    tl.store(Attn + b * C * C + offs, p, mask=mask)


@configs.autotune(half=_ATTN_X, fp32=_ATTN_X, interpreter=_INTERPRETER_MATMUL, key=_KEY,
                  dtype_arg="X")
@triton.jit
def _cam_attn_x_kernel(
    Attn, X, Gamma, Out, C, N, N_LOAD, N_BUCKET,
    HAS_GAMMA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Out[b, i, n] = γ·Σ_k A[b, i, k]·X[b, k, n] + X[b, i, n] (no γ, no + X without gamma).

    Grid: (C tiles, N tiles, batch). A is fp32; for half inputs its tile is cast to the
    input dtype so the dot runs on tensor cores, accumulating in fp32. X is [B, C, N_LOAD]
    (zero-padded, ``danet_ops.triton.padding``), Out [B, C, N].
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    Attn += b * C * C
    X += b * C * N_LOAD
    Out += b * C * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < C
    mask_n = offs_n < N
    mask_load = offs_n < N_LOAD

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start_k in range(0, C, BLOCK_K):
        offs_k = start_k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C
        a = tl.load(Attn + offs_m[:, None] * C + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [M, K] fp32
        x = tl.load(X + offs_k[:, None] * N_LOAD + offs_n[None, :],
                    mask=mask_k[:, None] & mask_load[None, :], other=0.0)  # [K, N]
        acc = tl.dot(a.to(x.dtype), x, acc, input_precision=PRECISION)

    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_GAMMA:
        x = tl.load(X + offs_m[:, None] * N_LOAD + offs_n[None, :],
                    mask=mask_m[:, None] & mask_load[None, :], other=0.0)
        acc = tl.load(Gamma).to(tl.float32) * acc + x.to(tl.float32)
    tl.store(Out + offs_m[:, None] * N + offs_n[None, :], acc.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _cam_attn_grad_kernel(
    Part, Attn, Gamma, DE, DGammaPart, C, S,
    HAS_GAMMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dE = -A∘(dA - rowsum(dA∘A)) with dA = γ·G, G = Σ_s Part[s]; and Σ A∘G per row block.

    Grid: (row blocks, batch). The dγ partial of this program goes to
    DGammaPart[b, row block]; the launcher sums that small buffer (a fixed order).
    """
    pid_r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_r[:, None] < C) & (offs_c[None, :] < C)
    offs = offs_r[:, None] * C + offs_c[None, :]

    g = _sum_splits(Part, b, tl.num_programs(1), offs, mask, C, S, BLOCK_R, BLOCK_C)
    a = tl.load(Attn + b * C * C + offs, mask=mask, other=0.0)
    if HAS_GAMMA:
        tl.store(DGammaPart + b * tl.num_programs(0) + pid_r, tl.sum(a * g))
        da = tl.load(Gamma).to(tl.float32) * g
    else:
        da = g
    row_dot = tl.sum(da * a, axis=1)
    de = a * (row_dot[:, None] - da)
    tl.store(DE + b * C * C + offs, de, mask=mask)


@configs.autotune(half=_DX_HALF, fp32=_DX_FP32, interpreter=_INTERPRETER_MATMUL, key=_KEY,
                  dtype_arg="X")
@triton.jit
def _cam_dx_kernel(
    Attn, DE, X, Dout, Gamma, DX, C, N, N_LOAD, N_BUCKET,
    HAS_GAMMA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """DX[b, i, n] = Σ_k (γ·A[k, i]·Dout[k, n] + (dE[i, k] + dE[k, i])·X[k, n]) + Dout[i, n].

    Grid: (C tiles, N tiles, batch). Both products share one accumulator and one walk over
    k; dE + dEᵀ is formed from two loads of dE rather than stored. Aᵀ·dout runs in the
    input dtype (A ∈ [0, 1]); (dE + dEᵀ)·x multiplies fp32 operands since dE can leave
    fp16's range. Without gamma: γ = 1 and no residual term. X and Dout are [B, C, N_LOAD]
    (zero-padded, ``danet_ops.triton.padding``), DX [B, C, N].
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    Attn += b * C * C
    DE += b * C * C
    X += b * C * N_LOAD
    Dout += b * C * N_LOAD
    DX += b * C * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < C
    mask_n = offs_n < N
    mask_load = offs_n < N_LOAD
    gamma = 1.0
    if HAS_GAMMA:
        gamma = tl.load(Gamma).to(tl.float32)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start_k in range(0, C, BLOCK_K):
        offs_k = start_k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C
        mask_mk = mask_m[:, None] & mask_k[None, :]
        mask_kn = mask_k[:, None] & mask_load[None, :]
        at = tl.load(Attn + offs_k[None, :] * C + offs_m[:, None], mask=mask_mk, other=0.0)  # [M, K]
        de_sym = (tl.load(DE + offs_m[:, None] * C + offs_k[None, :], mask=mask_mk, other=0.0)
                  + tl.load(DE + offs_k[None, :] * C + offs_m[:, None], mask=mask_mk, other=0.0))
        dout = tl.load(Dout + offs_k[:, None] * N_LOAD + offs_n[None, :], mask=mask_kn, other=0.0)  # [K, N]
        x = tl.load(X + offs_k[:, None] * N_LOAD + offs_n[None, :], mask=mask_kn, other=0.0)  # [K, N]
        acc = tl.dot((gamma * at).to(dout.dtype), dout, acc, input_precision=PRECISION)
        acc = tl.dot(de_sym, x.to(tl.float32), acc, input_precision=PRECISION)

    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_GAMMA:
        acc += tl.load(Dout + offs_m[:, None] * N_LOAD + offs_n[None, :],
                       mask=mask_m[:, None] & mask_load[None, :], other=0.0).to(tl.float32)
    tl.store(DX + offs_m[:, None] * N + offs_n[None, :], acc.to(DX.dtype.element_ty), mask=mask)


# --- launch code -------------------------------------------------------------------------------


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(c: int, n: int, batch: int, symmetric: bool, device: torch.device) -> tuple[int, int]:
    """(splits, positions per split) for a split-K Gram over N: enough programs for the GPU.

    Aims at two programs per SM counting the tiles that compute (nominal 64x64 tiles),
    with splits no shorter than _MIN_SPLIT_LEN and at most 32 of them.
    """
    if interpreter_enabled():
        block_c, align, min_len, programs = _INTERPRETER_GRAM["BLOCK_C"], _INTERPRETER_GRAM["BLOCK_K"], 64, 4
    else:
        block_c, align, min_len = 64, _SPLIT_ALIGN, _MIN_SPLIT_LEN
        index = device.index if device.index is not None else torch.cuda.current_device()
        programs = 2 * _sm_count(index)
    t = triton.cdiv(c, block_c)
    tiles = batch * (t * (t + 1) // 2 if symmetric else t * t)
    splits = max(1, min(32, triton.cdiv(programs, tiles), n // min_len))
    split_len = triton.cdiv(triton.cdiv(n, splits), align) * align
    return triton.cdiv(n, split_len), split_len


def _gram_partials(x: Tensor, y: Tensor, symmetric: bool) -> tuple[Tensor, int]:
    """Split-K partials of x yᵀ per batch item: ([S, B, C, C] fp32, S)."""
    batch, c, n = x.shape
    splits, split_len = _num_splits(c, n, batch, symmetric, x.device)
    part = torch.empty((splits, batch, c, c), device=x.device, dtype=torch.float32)
    # The Gram and G are energies (or their gradient): never plain TF32 for fp32 inputs.
    precision = configs.dot_precisions(x.dtype)[0]

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_C"]) ** 2, splits, batch)

    _cam_gram_kernel[grid](x, y, part, c, n, split_len, configs.n_bucket(split_len),
                           SYMMETRIC=symmetric, PRECISION=precision)
    return part, splits


def _row_blocks(c: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for the row kernels: whole rows, ~4K elements a program."""
    block_c = triton.next_power_of_2(c)
    block_r = max(1, min(block_c, 4096 // block_c))
    return block_r, block_c, 8 if block_c >= 2048 else 4


def cam_forward(x: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """out = γ·softmax(-x xᵀ)·x + x (or softmax(-x xᵀ)·x), and the fp32 softmax ``[B, C, C]``.

    x ``[B, C, N]`` float32/float16/bfloat16; gamma 0-dim (any float dtype) or None.
    """
    batch, c, n = x.shape
    xp, n_load = pad_rows(x)
    xp = xp.contiguous()  # a padded copy already is: one copy at most
    part, splits = _gram_partials(xp, xp, symmetric=True)

    attn = torch.empty((batch, c, c), device=x.device, dtype=torch.float32)
    block_r, block_c, warps = _row_blocks(c)
    _cam_softmax_kernel[(triton.cdiv(c, block_r), batch)](
        part, attn, c, splits, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )

    out = torch.empty((batch, c, n), device=x.device, dtype=x.dtype)
    has_gamma = gamma is not None

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), batch)

    _cam_attn_x_kernel[grid](attn, xp, gamma if has_gamma else xp, out, c, n, n_load, configs.n_bucket(n),
                             HAS_GAMMA=has_gamma, PRECISION=configs.dot_precisions(x.dtype)[1])
    return out, attn


def cam_backward(dout: Tensor, x: Tensor, attn: Tensor, gamma: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(dx in x's dtype, dγ 0-dim in gamma's dtype, or an empty tensor when gamma is None).

    dout, x ``[B, C, N]``; attn the fp32 ``[B, C, C]`` softmax from ``cam_forward``.
    dout may be expanded (stride 0, from ``out.sum()``): it is made contiguous here (padded
    copies already are: one copy at most).
    """
    attn = attn.contiguous()
    batch, c, n = x.shape
    has_gamma = gamma is not None
    dout_p, xp, n_load = pad_rows(dout, x)
    dout_p, xp = dout_p.contiguous(), xp.contiguous()
    part, splits = _gram_partials(dout_p, xp, symmetric=False)

    block_r, block_c, warps = _row_blocks(c)
    row_blocks = triton.cdiv(c, block_r)
    d_energy = torch.empty((batch, c, c), device=x.device, dtype=torch.float32)
    dgamma_part = torch.empty((batch, row_blocks), device=x.device, dtype=torch.float32)
    _cam_attn_grad_kernel[(row_blocks, batch)](
        part, attn, gamma if has_gamma else attn, d_energy, dgamma_part, c, splits,
        HAS_GAMMA=has_gamma, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )

    dx = torch.empty((batch, c, n), device=x.device, dtype=x.dtype)

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), batch)

    _cam_dx_kernel[grid](attn, d_energy, xp, dout_p, gamma if has_gamma else xp, dx, c, n, n_load,
                         configs.n_bucket(n), HAS_GAMMA=has_gamma,
                         PRECISION=configs.dot_precisions(x.dtype)[1])
    dgamma = dgamma_part.sum().to(gamma.dtype) if has_gamma else dout.new_empty(0)
    return dx, dgamma
