"""Position attention (PAM) in Triton: forward and backward kernels and their launch code.

Implements ``pam_forward``/``pam_backward`` of the backend contract (``danet_ops.backends``)
with the same numerics as ``danet_ops.chunked``: energies, softmax statistics and every
accumulator in fp32 whatever the input dtype.

Tensors stay channel-first ``[B, C, N]`` and are read through their strides, so slices,
transposes and expanded (stride-0) gradients need no copies. Each kernel picks its tile
orientation so that loads come straight from that layout:

* ``q`` as ``[BLOCK_M, Cqk]`` (rows = query positions) and ``k`` as ``[Cqk, BLOCK_N]``, so
  ``S = q·k`` needs no transpose;
* ``v``/``dout`` as ``[positions, BLOCK_DV]`` or ``[BLOCK_DV, positions]``, whichever the
  product wants.

Cqk (query/key channels, 64 in DANet) is padded to a power of two and masked. Cv (value
channels, 512 in DANet) is too wide for one fp32 accumulator per program, so it is tiled:
see the forward kernel's docstring.

All kernels use ``exp2`` with ``log2(e)`` folded into the energy scale; the saved
log-sum-exp ``lse`` is in natural-log units, as the contract says.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from danet_ops import env
from danet_ops.triton import configs
from danet_ops.triton.padding import pad_rows

# Kernels work in base 2 (exp2, log2); the contract's lse is in natural-log units.
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # log2(e)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # ln(2)


# --- configurations ----------------------------------------------------------------------
#
# Candidates per kernel and input dtype (``danet_ops.triton.configs``): each compiles for
# sm_90 without spills and within shared memory (benchmarks/results/static-sm90/); the
# first is the known-good one that DANET_OPS_TRITON_CONFIG=first pins. fp32 products run
# as 3xTF32 by default (``configs.dot_precisions``); with exact FMA dots
# (DANET_OPS_TRITON_FP32=ieee) fp32 keeps the small tile only, as every larger one spills.
# Which wins among the rest (and whether a wider BLOCK_DV, up to the whole v width of 512,
# beats the S recomputation of narrower ones) is the autotuner's call.

_C = configs.config
# Under the interpreter: small v tiles, so tests with Cv = 96 cover more than one v block.
_INTERPRETER_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_DV": 64}
_SMALL = _C(4, 1, BLOCK_M=32, BLOCK_N=32, BLOCK_DV=64)
_KEY = ["CQK", "CV", "N_BUCKET", "QK_PRECISION", "MM_PRECISION"]
# The dK kernels' atomic and ordered launches differ in registers: tuned apart. (A key may
# name only the kernel's own arguments: triton 3.9 checks.)
_KEY_DQ = _KEY + ["ATOMIC_DQ"]

_FWD_HALF = [
    _C(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=128),
    _C(8, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=256),
    _C(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_DV=128),
    _C(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_DV=128),
    # The whole v width in one program (no S recomputation: 1.0x the minimal FLOPs) and
    # wider v tiles over narrower key steps. Only BLOCK_M = 32 holds a [M, 512] fp32
    # accumulator without spills on sm_90 (16 warps hit the 128-register cap: M64 DV512
    # spills 112-144 B, M32 DV512 20 B on triton 3.8; M128 DV256 spills 16-64 B).
    _C(8, 2, BLOCK_M=32, BLOCK_N=64, BLOCK_DV=512),
    _C(8, 3, BLOCK_M=64, BLOCK_N=32, BLOCK_DV=256),
    _C(8, 2, BLOCK_M=128, BLOCK_N=32, BLOCK_DV=128),
]
# 3xTF32 dots hold each operand twice (high and low TF32 parts): on sm_90 64-wide key
# steps spill from DV128 on (M64 N64 DV128 w8: 540 B; M32 N64 DV128 w4: 372 B), 32-wide
# ones at DV64 do not (M64 N32 DV64 w4: 184 registers, M128 N32 DV64 w8: 155, and with a
# third stage 186 and 156; M32 N32 DV128 w4 is clean on triton 3.6 but spills 28-32 B on
# 3.8; M64 N32 DV128 w8 spills 8 B, M128 N16 DV128 w8 32 B with TMA loads).
_FWD_TF32X3 = [
    _C(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=128, BLOCK_N=32, BLOCK_DV=64),
    _C(4, 3, BLOCK_M=64, BLOCK_N=32, BLOCK_DV=64),
    _C(8, 3, BLOCK_M=128, BLOCK_N=32, BLOCK_DV=64),
    _SMALL,
]
# The two-pass forward: pass 1 (lse from q·k) has no v tile; pass 2 the forward's tiles.
_KEY_LSE = ["CQK", "N_BUCKET", "QK_PRECISION"]
_LSE_HALF = [
    _C(4, 3, BLOCK_M=64, BLOCK_N=64),
    _C(8, 3, BLOCK_M=128, BLOCK_N=64),
    _C(4, 3, BLOCK_M=64, BLOCK_N=128),
]  # Pruned: M32 N32 w4 s1, capped at 48 registers, spilled 16 B (triton 3.8 or 3.9 by version)
_LSE_TF32X3 = [_C(4, 2, BLOCK_M=64, BLOCK_N=64), _C(8, 2, BLOCK_M=128, BLOCK_N=64),
               _C(4, 1, BLOCK_M=32, BLOCK_N=32)]
_FWD2_HALF = list(_FWD_HALF)
_FWD2_TF32X3 = list(_FWD_TF32X3)
# Backward kernels that own a key block and loop over query blocks (dV, dK[+dQ]).
_BWD_DV_HALF = [
    _C(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=64),
    _C(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=128),
    _C(8, 2, BLOCK_M=64, BLOCK_N=128, BLOCK_DV=64),
    _C(8, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_DV=128),
    _C(4, 3, BLOCK_M=32, BLOCK_N=128, BLOCK_DV=64),
]
# dK (+ atomic dQ) in fp16/bf16, clean on sm_90 (triton 3.6 and 3.8) and kept for the
# autotuner to choose on the GPU: wider v chunks (DV128), a third stage, and 32-key blocks
# (B = 2, N = 8192: 512 programs, where 128-key blocks give 128, under one wave of 132 SMs).
# Rejected: M128 N64 DV64 w8 (20 B of spills with the atomic dQ), M64 N32 DV128 w4 s3 (8 B).
_BWD_DK_HALF = [
    _C(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=64, BLOCK_N=128, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=128),
    _C(8, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=32, BLOCK_N=128, BLOCK_DV=64),
    _C(4, 2, BLOCK_M=32, BLOCK_N=64, BLOCK_DV=64),
    _C(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=128, BLOCK_N=32, BLOCK_DV=64),
]
# 3xTF32 (sm_90, clean under "highest" and "high"): 32-row query steps over 128 keys fit
# (M32 N128 DV64 w8: 136 registers, DV128: 246); M32 N64 DV128 w8 spills 88 B, and
# M64 N64 DV64 w4 (251-255 registers on triton 3.6) spills 4 B on 3.9.
_BWD_DV_TF32X3 = [
    _C(8, 2, BLOCK_M=32, BLOCK_N=128, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=32, BLOCK_N=128, BLOCK_DV=128),
    _C(8, 2, BLOCK_M=64, BLOCK_N=128, BLOCK_DV=64),
    _SMALL,
]
# dK/dQ reduce dP over Cv in BLOCK_DV chunks: 32-wide chunks keep 3xTF32 (and the ordered
# dQ kernel's exact FMA dots) out of spills, where the small tile spills 16-64 B on sm_90.
# With the atomic dQ every larger key block spills (M32 N64 DV32: 80-360 B, M64 N32 DV32
# w8: 8 B, M16 N128 DV32 w8: 12 B) but 16-row query steps (M16 N64 DV32 w4: 227 registers,
# DV16: 192) and the small tile over two stages (M32 N32 DV32 w8 s2: 222).
_BWD_DK_TF32X3 = [_C(8, 1, BLOCK_M=32, BLOCK_N=32, BLOCK_DV=32),
                  _C(4, 2, BLOCK_M=16, BLOCK_N=64, BLOCK_DV=32),
                  _C(8, 2, BLOCK_M=32, BLOCK_N=32, BLOCK_DV=32),
                  _C(4, 2, BLOCK_M=16, BLOCK_N=64, BLOCK_DV=16)]
# The ordered dQ kernel: exact FMA keeps the small tile (M32 N64 DV16 spills kilobytes
# there); 3xTF32 also takes M32 N64 DV16 w4 (230 registers; M32 N32 DV32 w4 spills 16 B on
# triton 3.8).
_BWD_DQ_FP32 = [_C(4, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_DV=32)]
_BWD_DQ_TF32X3 = _BWD_DQ_FP32 + [_C(4, 2, BLOCK_M=32, BLOCK_N=64, BLOCK_DV=16)]
# Exact FMA dK: the small tile over 8 warps (over 4 it spills 8 B on triton 3.8 and 3.9).
_BWD_DK_IEEE = [_C(8, 1, BLOCK_M=32, BLOCK_N=32, BLOCK_DV=64)]
# The deterministic dQ kernel owns a query block and loops over key blocks.
_BWD_DQ_HALF = [
    _C(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=64),
    _C(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_DV=128),
    _C(8, 2, BLOCK_M=128, BLOCK_N=64, BLOCK_DV=64),
    _C(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_DV=128),
]
# (M128 DV64 w4 spills 32 B in bf16 on triton 3.9.)
_PRE = [_C(4, 2, BLOCK_M=64, BLOCK_DV=128)]
# The fused backward holds a [BLOCK_N, Cv] fp32 dV accumulator (Cv <= 512) beside the
# resident [BLOCK_N, Cv] v tile. Compiled for sm_90 in fp16/bf16, 8 warps: spill-free at
# BLOCK_N = 32 (M32: 230-234 registers); M16 N64 sits at 255 and spills 4 B with the
# ordered dQ, M32 N64 spills 40-84 B, and 16 warps hit the 128-register cap. fp32 spills
# kilobytes: fp16/bf16 only, opt-in, until a GPU run says whether it pays. BLOCK_DV is
# unused there (the whole v width).
_BWD_FUSED_HALF = [
    _C(8, 2, BLOCK_M=32, BLOCK_N=32, BLOCK_DV=64),
    _C(8, 2, BLOCK_M=16, BLOCK_N=32, BLOCK_DV=64),
]
# The backward variants (DANET_OPS_TRITON_PAM_BWD, read at launch): "split" = dV kernel per
# (key block, v block) + dK/dQ kernel (P recomputed per v block); "fused" = one kernel per
# key block computing P and dS once for the whole v width (fp16/bf16, Cv <= FUSED_MAX_CV).
BWD_VARIANT_ENV = "DANET_OPS_TRITON_PAM_BWD"
# The forward variants (DANET_OPS_TRITON_PAM_FWD, read at launch): "online" = one kernel,
# online softmax per (query block, v block); "two_pass" = an lse kernel, then exactly
# normalised P per (query block, v block), no rescaling.
FWD_VARIANT_ENV = "DANET_OPS_TRITON_PAM_FWD"
# How the forward kernels load q, k, v (DANET_OPS_TRITON_LOADS, read at launch): "pointer"
# = masked pointer loads; "tma" = tensor descriptors (sm_90+, aligned tensors only).
LOADS_VARIANT_ENV = "DANET_OPS_TRITON_LOADS"
FUSED_MAX_CV = 512


def _tune(half: list, fp32: list, ieee: list = (_SMALL,), interpreter: dict = _INTERPRETER_BLOCKS,
          small: bool = True, key: list = _KEY, **kwargs):
    """Autotuned over ``half`` (plus the small tile, pinned where q/k are wider than 64,
    unless ``small`` is False), or over ``fp32`` (3xTF32 dots), or ``ieee`` (exact FMA)."""
    return configs.autotune(half=half + [_SMALL] * small, fp32=list(fp32), ieee=list(ieee),
                            interpreter=interpreter, key=key, dtype_arg="Q", **kwargs)


@triton.jit
def _load_tile(
    X, b, c0, n0, stride_b, stride_c, stride_n, C, N,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, N_MAJOR: tl.constexpr, TMA: tl.constexpr,
):
    """The tile X[b, c0:c0 + BLOCK_C, n0:n0 + BLOCK_N] of a channel-first [B, C, N] tensor,
    zero past its edges, as [BLOCK_C, BLOCK_N] or, if N_MAJOR, [BLOCK_N, BLOCK_C].

    X is a pointer, or with TMA a tensor descriptor of block [1, BLOCK_C, BLOCK_N] (a TMA
    copy into shared memory, zero-filled out of bounds by the hardware)."""
    if TMA:
        tile = tl.reshape(X.load([b, c0, n0]), [BLOCK_C, BLOCK_N])
        if N_MAJOR:
            tile = tl.trans(tile)
    else:
        X += b.to(tl.int64) * stride_b
        offs_c = c0 + tl.arange(0, BLOCK_C)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if N_MAJOR:
            tile = tl.load(X + offs_n[:, None] * stride_n + offs_c[None, :] * stride_c,
                           mask=(offs_n[:, None] < N) & (offs_c[None, :] < C), other=0.0)
        else:
            tile = tl.load(X + offs_c[:, None] * stride_c + offs_n[None, :] * stride_n,
                           mask=(offs_c[:, None] < C) & (offs_n[None, :] < N), other=0.0)
    return tile


# --- forward -----------------------------------------------------------------------------


@_tune(_FWD_HALF, _FWD_TF32X3)
@triton.jit
def _pam_fwd_kernel(
    Q, K, V, Gamma, Res, Out, O, Lse,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_rb, stride_rc, stride_rn,
    N, N_LOAD, CQK, CV, N_BUCKET, qk_scale,
    HAS_GAMMA: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SAVE_O: tl.constexpr,
    QK_PRECISION: tl.constexpr, MM_PRECISION: tl.constexpr, TMA: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program per (query block, v-channel block, batch item): out[:, c-block, m-block].

    Cv is tiled because an fp32 accumulator of BLOCK_M x 512 does not fit in registers.
    Every v-block program recomputes S = q·k and its exponentials, which is cheap while
    Cqk is small against Cv (64 vs 512 in DANet: 4 v blocks of 128 cost 1.33x the minimal
    FLOPs); a BLOCK_DV = 512 config holds the whole v width instead (minimal FLOPs, 16
    warps for the registers). The other variant is ``two_pass`` (below).

    Q, K, V are pointers, or with TMA tensor descriptors (``_load_tile``). Outputs are
    contiguous [B, Cv, N] (Out, O) and [B, N] (Lse, written by v block 0).
    """
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mask_m = offs_m < N
    mask_c = offs_c < CV

    # Padded query rows and channels load as 0: finite energies, masked on store.
    q = _load_tile(Q, b, 0, pid_m * BLOCK_M, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_M, True, TMA)  # [M, D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exponentials
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        mask_n = start_n + tl.arange(0, BLOCK_N) < N
        kt = _load_tile(K, b, 0, start_n, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_N, False, TMA)  # [D, N]
        s = tl.dot(q, kt, input_precision=QK_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # Every key block holds at least one real column, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(V, b, pid_v * BLOCK_DV, start_n, stride_vb, stride_vc, stride_vn, CV, N_LOAD,
                       BLOCK_DV, BLOCK_N, True, TMA)  # [N, DV]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=MM_PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    _store_forward(o, b.to(tl.int64), offs_m, offs_c, mask_m, mask_c, Gamma, Res, Out, O,
                   stride_rb, stride_rc, stride_rn, N, CV, HAS_GAMMA, HAS_RESIDUAL, SAVE_O)
    lse = (m_i + tl.log2(l_i)) * LN2  # natural log
    # A branch, not `mask_m & (pid_v == 0)`: triton 3.9's interpreter rejects a mask that
    # combines a tensor with a scalar bool.
    if pid_v == 0:
        tl.store(Lse + b.to(tl.int64) * N + offs_m, lse, mask=mask_m)


@triton.jit
def _store_forward(
    o, b, offs_m, offs_c, mask_m, mask_c, Gamma, Res, Out, O,
    stride_rb, stride_rc, stride_rn, N, CV,
    HAS_GAMMA: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SAVE_O: tl.constexpr,
):
    """The forward's epilogue, for an fp32 [BLOCK_M, BLOCK_DV] tile o of softmax(S)·v:
    out = gamma·o + residual into contiguous [B, Cv, N] Out, and o itself into O if SAVE_O."""
    out_offs = b * CV * N + offs_c[None, :] * N + offs_m[:, None]
    out_mask = mask_m[:, None] & mask_c[None, :]
    out = o
    if HAS_GAMMA:
        out = out * tl.load(Gamma).to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(Res + b * stride_rb + offs_c[None, :] * stride_rc + offs_m[:, None] * stride_rn,
                      mask=out_mask, other=0.0)
        out = out + res.to(tl.float32)
    tl.store(Out + out_offs, out.to(Out.dtype.element_ty), mask=out_mask)
    if SAVE_O:
        tl.store(O + out_offs, o.to(O.dtype.element_ty), mask=out_mask)


# --- forward, two passes (DANET_OPS_TRITON_PAM_FWD=two_pass) -------------------------------


@_tune(_LSE_HALF, _LSE_TF32X3, ieee=_LSE_TF32X3[-1:], small=False, key=_KEY_LSE,
       interpreter={"BLOCK_M": 64, "BLOCK_N": 64})
@triton.jit
def _pam_lse_kernel(
    Q, K, Lse, Stats,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    N, N_LOAD, CQK, N_BUCKET, qk_scale,
    QK_PRECISION: tl.constexpr, TMA: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Pass 1: lse = log Σ_j exp(S_ij) per query row, from q·k alone (2·N²·Cqk FLOPs, an
    eighth of the forward's in DANet), so that pass 2 needs no online rescaling.

    Besides Lse (natural log, the backward's) it writes Stats [B, 2, N]: the row max m and
    log2 l in log2 units, which pass 2 subtracts one after the other. One lse rounded in
    fp32 would carry an error of ε·|lse| into every P of its row (a whole row scaled by
    1 + ε·|lse|: at logits of ~20, 7x the one-pass kernel's output error, and 20x in dq);
    s − m is exact near the max and log2 l < log2 N is small."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    q = _load_tile(Q, b, 0, pid_m * BLOCK_M, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_M, True, TMA)  # [M, D]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        mask_n = start_n + tl.arange(0, BLOCK_N) < N
        kt = _load_tile(K, b, 0, start_n, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_N, False, TMA)  # [D, N]
        s = tl.dot(q, kt, input_precision=QK_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    log_l = tl.log2(l_i)
    tl.store(Lse + b.to(tl.int64) * N + offs_m, (m_i + log_l) * LN2, mask=mask_m)
    tl.store(Stats + b.to(tl.int64) * 2 * N + offs_m, m_i, mask=mask_m)
    tl.store(Stats + (b.to(tl.int64) * 2 + 1) * N + offs_m, log_l, mask=mask_m)


@_tune(_FWD2_HALF, _FWD2_TF32X3)
@triton.jit
def _pam_fwd_normalised_kernel(
    Q, K, V, Gamma, Res, Out, O, Stats,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_rb, stride_rc, stride_rn,
    N, N_LOAD, CQK, CV, N_BUCKET, qk_scale,
    HAS_GAMMA: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SAVE_O: tl.constexpr,
    QK_PRECISION: tl.constexpr, MM_PRECISION: tl.constexpr, TMA: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Pass 2: out[:, c-block, m-block] with P = exp2((S − m) − log2 l) exactly normalised
    (Stats from pass 1).

    The same grid and S recomputation per v block as the one-pass kernel, but no running
    max, no rescaling of the accumulator and no final division: each key step is two
    products and one exp2, with no dependence on the previous step but the accumulator.
    """
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mask_m = offs_m < N
    mask_c = offs_c < CV

    q = _load_tile(Q, b, 0, pid_m * BLOCK_M, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_M, True, TMA)  # [M, D]
    # Padded query rows: q = 0, m = 0 and log2 l = 0 give P = 1, finite, masked on store.
    m_i = tl.load(Stats + b.to(tl.int64) * 2 * N + offs_m, mask=mask_m, other=0.0)  # log2 units
    log_l = tl.load(Stats + (b.to(tl.int64) * 2 + 1) * N + offs_m, mask=mask_m, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        mask_n = start_n + tl.arange(0, BLOCK_N) < N
        kt = _load_tile(K, b, 0, start_n, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_N, False, TMA)  # [D, N]
        s = tl.dot(q, kt, input_precision=QK_PRECISION) * qk_scale
        p = tl.exp2((s - m_i[:, None]) - log_l[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        v = _load_tile(V, b, pid_v * BLOCK_DV, start_n, stride_vb, stride_vc, stride_vn, CV, N_LOAD,
                       BLOCK_DV, BLOCK_N, True, TMA)  # [N, DV]
        acc += tl.dot(p.to(v.dtype), v, input_precision=MM_PRECISION)
    _store_forward(acc, b.to(tl.int64), offs_m, offs_c, mask_m, mask_c, Gamma, Res, Out, O,
                   stride_rb, stride_rc, stride_rn, N, CV, HAS_GAMMA, HAS_RESIDUAL, SAVE_O)


# --- the forward kernels with TMA loads (DANET_OPS_TRITON_LOADS=tma) ------------------------
#
# The same kernels, launched with tensor descriptors for q, k and v and TMA=True. Their own
# autotuners: the descriptors' block shapes are set per config by a pre-hook, which keeps
# Triton from caching the choice on disk, so the pointer launches stay apart and keep theirs.
# Left out, measured with the sm_90 static compile: Triton's automatic warp specialisation
# (`tl.range(..., warp_specialize=True)`). It turns 4-warp TMA configs into a producer warp
# and two consumer groups (12 warps), but its pass fails on triton 3.6 for every 3xTF32
# config and aborts the process (an assertion in WSLowerToken.cpp) on the two-pass kernel
# at M128 N64 DV64 w4 fp16, and triton 3.8 fails the one-pass kernel at that tile: an abort
# is nothing an autotuner, or a user, can recover from.


def _tma_block_shapes(nargs: dict) -> None:
    """Autotuner pre-hook: the descriptors' block shapes for the config about to launch."""
    nargs["Q"].block_shape = [1, nargs["BLOCK_D"], nargs["BLOCK_M"]]
    nargs["K"].block_shape = [1, nargs["BLOCK_D"], nargs["BLOCK_N"]]
    if "V" in nargs:
        nargs["V"].block_shape = [1, nargs["BLOCK_DV"], nargs["BLOCK_N"]]


def _tma(candidates: list) -> list:
    """The candidates a TMA copy can serve: a box is at most 256 elements per dimension."""
    return [c for c in candidates if max(c.kwargs.values()) <= 256]


_pam_fwd_tma_kernel = _tune(_tma(_FWD_HALF), _FWD_TF32X3, pre_hook=_tma_block_shapes)(_pam_fwd_kernel.fn)
_pam_lse_tma_kernel = _tune(_tma(_LSE_HALF), _LSE_TF32X3, ieee=_LSE_TF32X3[-1:], small=False, key=_KEY_LSE,
                            interpreter={"BLOCK_M": 64, "BLOCK_N": 64},
                            pre_hook=_tma_block_shapes)(_pam_lse_kernel.fn)
_pam_fwd_normalised_tma_kernel = _tune(_tma(_FWD2_HALF), _FWD2_TF32X3,
                                       pre_hook=_tma_block_shapes)(_pam_fwd_normalised_kernel.fn)


# --- backward ----------------------------------------------------------------------------


@configs.autotune(half=_PRE, fp32=_PRE, interpreter={"BLOCK_M": 64, "BLOCK_DV": 64},
                  key=["CQK", "CV", "N_BUCKET"], dtype_arg="Dout")
@triton.jit
def _pam_bwd_preprocess_kernel(
    Dout, O, Gamma, Delta, RowDot,
    stride_db, stride_dc, stride_dn,
    stride_ob, stride_oc, stride_on,
    N, CQK, CV, N_BUCKET,
    HAS_GAMMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """row_dot = Σ_c dout·o per query row; delta = gamma·row_dot (the softmax term).

    With dO = gamma·dout the softmax backward needs rowsum(dO∘O) = gamma·row_dot, and
    dgamma = Σ row_dot, summed afterwards by torch (an ordered, deterministic reduction).
    """
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    row_dot = tl.zeros([BLOCK_M], tl.float32)
    for start_c in range(0, CV, BLOCK_DV):
        offs_c = start_c + tl.arange(0, BLOCK_DV)
        mask = mask_m[:, None] & (offs_c < CV)[None, :]
        dout = tl.load(Dout + b * stride_db + offs_c[None, :] * stride_dc + offs_m[:, None] * stride_dn,
                       mask=mask, other=0.0)
        o = tl.load(O + b * stride_ob + offs_c[None, :] * stride_oc + offs_m[:, None] * stride_on,
                    mask=mask, other=0.0)
        row_dot += tl.sum(dout.to(tl.float32) * o.to(tl.float32), 1)
    delta = row_dot
    if HAS_GAMMA:
        delta = row_dot * tl.load(Gamma).to(tl.float32)
        tl.store(RowDot + b * N + offs_m, row_dot, mask=mask_m)
    tl.store(Delta + b * N + offs_m, delta, mask=mask_m)


@_tune(_BWD_DV_HALF, _BWD_DV_TF32X3)
@triton.jit
def _pam_bwd_dv_kernel(
    Q, K, Dout, Gamma, Lse, DV,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_db, stride_dc, stride_dn,
    N, N_LOAD, CQK, CV, N_BUCKET, qk_scale,
    HAS_GAMMA: tl.constexpr, QK_PRECISION: tl.constexpr, MM_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """dV = Pᵀ·dO for one (key block, v-channel block, batch item), looping over queries.

    Works in the transposed orientation, Sᵀ = k·q ([N, M]), so Pᵀ feeds the product
    directly. Like the forward, each v block recomputes P (Cqk is small against Cv).
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mask_n = offs_n < N
    mask_c = offs_c < CV

    k = _load_tile(K, b, 0, pid_n * BLOCK_N, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_N, True, False)  # [N, D]
    acc = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        qt = _load_tile(Q, b, 0, start_m, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_M, False, False)  # [D, M]
        lse = tl.load(Lse + b * N + offs_m, mask=mask_m, other=0.0) * LOG2E  # log2 units
        st = tl.dot(k, qt, input_precision=QK_PRECISION) * qk_scale
        pt = tl.exp2(st - lse[None, :])
        pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0.0)  # [N, M]
        dout = _load_tile(Dout, b, pid_v * BLOCK_DV, start_m, stride_db, stride_dc, stride_dn, CV, N_LOAD,
                          BLOCK_DV, BLOCK_M, True, False)  # [M, DV]
        acc += tl.dot(pt.to(dout.dtype), dout, input_precision=MM_PRECISION)
    if HAS_GAMMA:
        acc = acc * tl.load(Gamma).to(tl.float32)
    tl.store(DV + b * CV * N + offs_c[None, :] * N + offs_n[:, None],
             acc.to(DV.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])


@_tune(_BWD_DK_HALF, _BWD_DK_TF32X3, ieee=_BWD_DK_IEEE, key=_KEY_DQ, reset_to_zero=["DQ"])
@triton.jit
def _pam_bwd_dk_kernel(
    Q, K, V, Dout, Gamma, Lse, Delta, DK, DQ,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    N, N_LOAD, CQK, CV, N_BUCKET, qk_scale, scale,
    HAS_GAMMA: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    QK_PRECISION: tl.constexpr, MM_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """dK for one (key block, batch item), looping over query blocks; with ATOMIC_DQ also dQ.

    Per query block: Pᵀ from the saved lse, dPᵀ = v·dOᵀ reduced over all of Cv in chunks
    of BLOCK_DV, dSᵀ = Pᵀ∘(dPᵀ - delta)·scale, dK += dSᵀ·q. With ATOMIC_DQ the same dSᵀ
    gives this key block's share of dQᵀ = kᵀ·dSᵀ, added atomically into an fp32 buffer
    (fast, but the order of additions, hence the rounding, varies run to run).
    """
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < CQK

    k = _load_tile(K, b, 0, pid_n * BLOCK_N, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_N, True, False)  # [N, D]
    kt = _load_tile(K, b, 0, pid_n * BLOCK_N, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                    BLOCK_D, BLOCK_N, False, False)  # [D, N]
    gamma = 1.0
    if HAS_GAMMA:
        gamma = tl.load(Gamma).to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        qt = _load_tile(Q, b, 0, start_m, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_M, False, False)  # [D, M]
        q = _load_tile(Q, b, 0, start_m, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                       BLOCK_D, BLOCK_M, True, False)  # [M, D]
        lse = tl.load(Lse + b * N + offs_m, mask=mask_m, other=0.0) * LOG2E  # log2 units
        delta = tl.load(Delta + b * N + offs_m, mask=mask_m, other=0.0)
        st = tl.dot(k, qt, input_precision=QK_PRECISION) * qk_scale
        pt = tl.exp2(st - lse[None, :])
        pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0.0)  # [N, M]

        dpt = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for start_c in range(0, CV, BLOCK_DV):
            v = _load_tile(V, b, start_c, pid_n * BLOCK_N, stride_vb, stride_vc, stride_vn, CV, N_LOAD,
                           BLOCK_DV, BLOCK_N, True, False)  # [N, DV]
            doutt = _load_tile(Dout, b, start_c, start_m, stride_db, stride_dc, stride_dn, CV, N_LOAD,
                               BLOCK_DV, BLOCK_M, False, False)  # [DV, M]
            dpt += tl.dot(v, doutt, input_precision=MM_PRECISION)
        dst = pt * (dpt * gamma - delta[None, :]) * scale  # [N, M], fp32
        dk += tl.dot(dst.to(q.dtype), q, input_precision=MM_PRECISION)
        if ATOMIC_DQ:
            dqt = tl.dot(kt, dst.to(kt.dtype), input_precision=MM_PRECISION)  # [D, M]
            tl.atomic_add(DQ + b * CQK * N + offs_d[:, None] * N + offs_m[None, :], dqt,
                          mask=mask_d[:, None] & mask_m[None, :], sem="relaxed")
    tl.store(DK + b * CQK * N + offs_d[None, :] * N + offs_n[:, None],
             dk.to(DK.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@_tune(_BWD_FUSED_HALF, [_SMALL], small=False, key=_KEY_DQ, reset_to_zero=["DQ"])
@triton.jit
def _pam_bwd_fused_kernel(
    Q, K, V, Dout, Gamma, Lse, Delta, DK, DQ, DV,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    N, N_LOAD, CQK, CV, N_BUCKET, qk_scale, scale,
    HAS_GAMMA: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    QK_PRECISION: tl.constexpr, MM_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_CV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """dV, dK (and with ATOMIC_DQ dQ) for one (key block, batch item), whole v width at once.

    FlashAttention-3's structure for wide heads: per query block, Pᵀ and dSᵀ are computed
    once (the split kernels recompute Pᵀ per v block), dPᵀ = v·dOᵀ is one product with
    K = Cv and the v tile stays resident, dV += Pᵀ·dO and dK += dSᵀ·q accumulate in
    registers, and this key block's share of dQ is added atomically (relaxed fp32).
    """
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_CV)
    mask_n = offs_n < N
    mask_d = offs_d < CQK
    mask_c = offs_c < CV

    k = _load_tile(K, b, 0, pid_n * BLOCK_N, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_N, True, False)  # [N, D]
    kt = _load_tile(K, b, 0, pid_n * BLOCK_N, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                    BLOCK_D, BLOCK_N, False, False)  # [D, N]
    v = _load_tile(V, b, 0, pid_n * BLOCK_N, stride_vb, stride_vc, stride_vn, CV, N_LOAD,
                   BLOCK_CV, BLOCK_N, True, False)  # [N, CV], resident
    gamma = 1.0
    if HAS_GAMMA:
        gamma = tl.load(Gamma).to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_CV], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        qt = _load_tile(Q, b, 0, start_m, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_M, False, False)  # [D, M]
        q = _load_tile(Q, b, 0, start_m, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                       BLOCK_D, BLOCK_M, True, False)  # [M, D]
        lse = tl.load(Lse + b * N + offs_m, mask=mask_m, other=0.0) * LOG2E  # log2 units
        delta = tl.load(Delta + b * N + offs_m, mask=mask_m, other=0.0)
        st = tl.dot(k, qt, input_precision=QK_PRECISION) * qk_scale
        pt = tl.exp2(st - lse[None, :])
        pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0.0)  # [N, M]
        dout = _load_tile(Dout, b, 0, start_m, stride_db, stride_dc, stride_dn, CV, N_LOAD,
                          BLOCK_CV, BLOCK_M, True, False)  # [M, CV]
        dv += tl.dot(pt.to(dout.dtype), dout, input_precision=MM_PRECISION)
        dpt = tl.dot(v, tl.trans(dout), input_precision=MM_PRECISION)  # [N, M]
        dst = pt * (dpt * gamma - delta[None, :]) * scale  # [N, M], fp32
        dk += tl.dot(dst.to(q.dtype), q, input_precision=MM_PRECISION)
        if ATOMIC_DQ:
            dqt = tl.dot(kt, dst.to(kt.dtype), input_precision=MM_PRECISION)  # [D, M]
            tl.atomic_add(DQ + b * CQK * N + offs_d[:, None] * N + offs_m[None, :], dqt,
                          mask=mask_d[:, None] & mask_m[None, :], sem="relaxed")
    tl.store(DK + b * CQK * N + offs_d[None, :] * N + offs_n[:, None],
             dk.to(DK.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])
    tl.store(DV + b * CV * N + offs_c[None, :] * N + offs_n[:, None],
             (dv * gamma).to(DV.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])


@_tune(_BWD_DQ_HALF, _BWD_DQ_TF32X3, ieee=_BWD_DQ_FP32)
@triton.jit
def _pam_bwd_dq_kernel(
    Q, K, V, Dout, Gamma, Lse, Delta, DQ,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    N, N_LOAD, CQK, CV, N_BUCKET, qk_scale, scale,
    HAS_GAMMA: tl.constexpr, QK_PRECISION: tl.constexpr, MM_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """dQ for one (query block, batch item), looping over key blocks: the deterministic path.

    Recomputes P and dP (the full Cv reduction again, +2·N²·Cv FLOPs over the atomic path)
    so that each dQ element is summed by one program in a fixed order.
    """
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < CQK

    q = _load_tile(Q, b, 0, pid_m * BLOCK_M, stride_qb, stride_qc, stride_qn, CQK, N_LOAD,
                   BLOCK_D, BLOCK_M, True, False)  # [M, D]
    lse = tl.load(Lse + b * N + offs_m, mask=mask_m, other=0.0) * LOG2E  # log2 units
    delta = tl.load(Delta + b * N + offs_m, mask=mask_m, other=0.0)
    gamma = 1.0
    if HAS_GAMMA:
        gamma = tl.load(Gamma).to(tl.float32)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        kt = _load_tile(K, b, 0, start_n, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                        BLOCK_D, BLOCK_N, False, False)  # [D, N]
        k = _load_tile(K, b, 0, start_n, stride_kb, stride_kc, stride_kn, CQK, N_LOAD,
                       BLOCK_D, BLOCK_N, True, False)  # [N, D]
        s = tl.dot(q, kt, input_precision=QK_PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)  # [M, N]

        dp = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for start_c in range(0, CV, BLOCK_DV):
            dout = _load_tile(Dout, b, start_c, pid_m * BLOCK_M, stride_db, stride_dc, stride_dn, CV,
                              N_LOAD, BLOCK_DV, BLOCK_M, True, False)  # [M, DV]
            vt = _load_tile(V, b, start_c, start_n, stride_vb, stride_vc, stride_vn, CV, N_LOAD,
                            BLOCK_DV, BLOCK_N, False, False)  # [DV, N]
            dp += tl.dot(dout, vt, input_precision=MM_PRECISION)
        ds = p * (dp * gamma - delta[:, None]) * scale  # [M, N], fp32
        dq += tl.dot(ds.to(k.dtype), k, input_precision=MM_PRECISION)
    tl.store(DQ + b * CQK * N + offs_d[None, :] * N + offs_m[:, None],
             dq.to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


# --- launch code -------------------------------------------------------------------------


def _block_d(cqk: int) -> int:
    # tl.dot needs every dimension >= 16.
    return max(16, triton.next_power_of_2(cqk))


def pam_forward(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor],
    scale: float, save_o: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """out = gamma·softmax(scale·qᵀk)·v + residual; see ``danet_ops.backends`` for the contract.

    q, k ``[B, Cqk, N]``, v and residual ``[B, Cv, N]`` (any strides), gamma 0-dim or None.
    Returns (out ``[B, Cv, N]`` in v's dtype, lse ``[B, N]`` float32, raw o or an empty tensor).
    """
    batch, cqk, n = q.shape
    cv = v.shape[1]
    has_gamma, has_residual = gamma is not None, residual is not None
    keep_o = save_o and (has_gamma or has_residual)
    out = torch.empty((batch, cv, n), dtype=v.dtype, device=v.device)
    o = torch.empty_like(out) if keep_o else v.new_empty(0)
    lse = torch.empty((batch, n), dtype=torch.float32, device=q.device)
    res = residual if has_residual else v
    qk_precision, mm_precision = configs.dot_precisions(q.dtype)

    qk_scale = float(scale) * LOG2E.value

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(cv, meta["BLOCK_DV"]), batch)

    q, k, v, n_load = pad_rows(q, k, v)
    # Exact FMA dots keep pointer loads: FMA-bound, and their small tile spills with TMA
    # (sm_90, triton 3.8: 192-324 B).
    tma = load_variant() == "tma" and qk_precision != "ieee" and tma_fits(q, k, v)
    qa, ka, va = (_descriptor(t) for t in (q, k, v)) if tma else (q, k, v)
    # The row statistics the second kernel reads: the one-pass kernel writes lse there; the
    # two-pass kernel reads pass 1's row max and log2 l.
    kernel, row_stats = (_pam_fwd_tma_kernel if tma else _pam_fwd_kernel), lse
    if forward_variant() == "two_pass":
        row_stats = torch.empty((batch, 2, n), dtype=torch.float32, device=q.device)
        lse_kernel = _pam_lse_tma_kernel if tma else _pam_lse_kernel
        lse_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), batch)](
            qa, ka, lse, row_stats, *q.stride(), *k.stride(), n, n_load, cqk, configs.n_bucket(n), qk_scale,
            QK_PRECISION=qk_precision, TMA=tma, BLOCK_D=_block_d(cqk),
        )
        kernel = _pam_fwd_normalised_tma_kernel if tma else _pam_fwd_normalised_kernel
    kernel[grid](
        qa, ka, va, gamma if has_gamma else lse, res, out, o if keep_o else out, row_stats,
        *q.stride(), *k.stride(), *v.stride(), *res.stride(),
        n, n_load, cqk, cv, configs.n_bucket(n), qk_scale,
        HAS_GAMMA=has_gamma, HAS_RESIDUAL=has_residual, SAVE_O=keep_o,
        QK_PRECISION=qk_precision, MM_PRECISION=mm_precision, TMA=tma, BLOCK_D=_block_d(cqk),
    )
    return out, lse, o



def load_variant() -> str:
    """How the forward kernels read q, k and v: ``pointer`` (default: masked loads, any
    strides, any GPU) or ``tma`` (``DANET_OPS_TRITON_LOADS=tma``: tensor descriptors, copied
    by the Hopper TMA unit; only where ``tma_fits`` and not with exact FMA dots, else
    ``pointer``)."""
    return env.choice(LOADS_VARIANT_ENV)


def tma_fits(*tensors: Tensor) -> bool:
    """Whether TMA can read these ``[B, C, N]`` tensors: an sm_90+ GPU (or the
    interpreter), unit stride along N, and a 16-byte aligned start and other strides (so
    N·itemsize a multiple of 16 for contiguous tensors, which ``pad_rows`` gives the
    forward's inputs at any N)."""
    for t in tensors:
        if t.device.type == "cuda" and torch.cuda.get_device_capability(t.device)[0] < 9:
            return False
        size = t.element_size()
        if t.stride(2) != 1 or t.data_ptr() % 16 or any(s <= 0 or s * size % 16 for s in t.stride()[:2]):
            return False
    return True


def _descriptor(t: Tensor) -> TensorDescriptor:
    # A placeholder block shape: the autotuner's pre-hook sets each config's.
    return TensorDescriptor.from_tensor(t, [1, 16, 16])


def forward_variant() -> str:
    """``online`` (default) or ``two_pass`` (``DANET_OPS_TRITON_PAM_FWD=two_pass``)."""
    return env.choice(FWD_VARIANT_ENV)


def backward_variant(cv: int, dtype: torch.dtype = torch.float16) -> str:
    """``split`` (default: the measured one, benchmarks/results/nvidia-h200/) or ``fused``
    (``DANET_OPS_TRITON_PAM_BWD=fused``; fp16/bf16 with value widths up to FUSED_MAX_CV,
    else ``split``)."""
    value = env.choice(BWD_VARIANT_ENV)
    fits = cv <= FUSED_MAX_CV and dtype in (torch.float16, torch.bfloat16)
    return "fused" if value == "fused" and fits else "split"


def pam_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], o: Tensor,
    lse: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``gamma·softmax(scale·qᵀk)·v + residual`` with respect to q, k, v, gamma.

    dout ``[B, Cv, N]`` (any strides, stride 0 included), o the raw attention output, lse
    ``[B, N]`` float32 from the forward. Returns dq, dk, dv in the input dtypes and dgamma
    0-dim in gamma's dtype (an empty tensor when gamma is None); the residual's gradient
    is dout itself.

    Default path: dV kernel, then dK with dQ added atomically. Under
    ``torch.use_deterministic_algorithms(True)``: dV, dK, and a separate dQ kernel that
    recomputes P and dP, so gradients are bitwise identical run to run.
    """
    batch, cqk, n = q.shape
    cv = v.shape[1]
    has_gamma = gamma is not None
    deterministic = torch.are_deterministic_algorithms_enabled()
    qk_precision, mm_precision = configs.dot_precisions(q.dtype)
    precisions = dict(QK_PRECISION=qk_precision, MM_PRECISION=mm_precision, BLOCK_D=_block_d(cqk))
    lse = lse.contiguous()  # indexed as [B, N] (it is, coming from pam_forward)
    gamma_arg = gamma if has_gamma else lse

    delta = torch.empty((batch, n), dtype=torch.float32, device=q.device)
    row_dot = torch.empty_like(delta) if has_gamma else delta
    _pam_bwd_preprocess_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), batch)](
        dout, o, gamma_arg, delta, row_dot, *dout.stride(), *o.stride(), n, cqk, cv, configs.n_bucket(n),
        HAS_GAMMA=has_gamma,
    )

    dv = torch.empty((batch, cv, n), dtype=v.dtype, device=v.device)
    dk = torch.empty((batch, cqk, n), dtype=k.dtype, device=k.device)
    q, k, v, dout, n_load = pad_rows(q, k, v, dout)
    sizes = (n, n_load, cqk, cv, configs.n_bucket(n))
    if deterministic:
        dq = torch.empty((batch, cqk, n), dtype=q.dtype, device=q.device)
        dq_acc = dq  # unused by the dK kernels without ATOMIC_DQ
    else:
        dq_acc = torch.zeros((batch, cqk, n), dtype=torch.float32, device=q.device)
    strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    key_blocks = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), batch)  # noqa: E731

    if backward_variant(cv, q.dtype) == "fused":
        _pam_bwd_fused_kernel[key_blocks](
            q, k, v, dout, gamma_arg, lse, delta, dk, dq_acc, dv, *strides,
            *sizes, float(scale) * LOG2E.value, float(scale),
            HAS_GAMMA=has_gamma, ATOMIC_DQ=not deterministic,
            BLOCK_CV=max(16, triton.next_power_of_2(cv)), **precisions,
        )
    else:
        def dv_grid(meta):
            return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(cv, meta["BLOCK_DV"]), batch)

        _pam_bwd_dv_kernel[dv_grid](
            q, k, dout, gamma_arg, lse, dv, *q.stride(), *k.stride(), *dout.stride(),
            *sizes, float(scale) * LOG2E.value, HAS_GAMMA=has_gamma, **precisions,
        )
        _pam_bwd_dk_kernel[key_blocks](
            q, k, v, dout, gamma_arg, lse, delta, dk, dq_acc, *strides,
            *sizes, float(scale) * LOG2E.value, float(scale),
            HAS_GAMMA=has_gamma, ATOMIC_DQ=not deterministic, **precisions,
        )
    if deterministic:
        _pam_bwd_dq_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), batch)](
            q, k, v, dout, gamma_arg, lse, delta, dq, *strides,
            *sizes, float(scale) * LOG2E.value, float(scale),
            HAS_GAMMA=has_gamma, **precisions,
        )
    else:
        dq = dq_acc.to(q.dtype)

    dgamma = row_dot.sum().to(gamma.dtype) if has_gamma else dout.new_empty(0)
    return dq, dk, dv, dgamma
