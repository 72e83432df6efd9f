"""The warp-level tensor-core building blocks of csrc/mma.cuh, through the CPU emulation.

csrc/emulation/cuda_shim.h implements mma.sync m16n8k16, ldmatrix .x4 (.trans) and
cp.async as warp collectives; the PAM forward kernel (csrc/pam_kernels.cuh) is checked
through them against float64 in tests/test_cuda_build.py. Those checks would pass with any
self-consistent layout, so here one warp's instructions run on registers laid out in
Python from the PTX ISA's own description of the fragments (written independently of the
C++ emulation), and the results are decoded the same way: a fragment layout that differs
from the documented one fails against a plain matrix product.

Documented layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .f16/.bf16, and
"ldmatrix"), with g = lane // 4 (groupID) and t = lane % 4 (threadID_in_group):
  A 16x16: a0 = A[g, 2t:2t+2], a1 = A[g+8, 2t:2t+2], a2 = A[g, 2t+8:2t+10], a3 = A[g+8, 2t+8:2t+10]
  B 16x8:  b0 = B[2t:2t+2, g], b1 = B[2t+8:2t+10, g]
  C, D 16x8: c0, c1 = C[g, 2t:2t+2], c2, c3 = C[g+8, 2t:2t+2]
  ldmatrix .x4: register m of a lane = M_m[g, 2t:2t+2], with .trans M_m[2t:2t+2, g]
(the lower index of each pair in the low 16 bits of the register).

For m16n8k8 with .tf32 inputs ("Matrix Fragments for mma.m16n8k8", .tf32), one element per
32-bit register:
  A 16x8:  a0 = A[g, t], a1 = A[g+8, t], a2 = A[g, t+4], a3 = A[g+8, t+4]
  B 8x8:   b0 = B[t, g], b1 = B[t+4, g]
  C, D 16x8: as for m16n8k16.
The tensor cores read only the upper 19 bits of a .tf32 register (sign, exponent, 10
mantissa bits); the emulation truncates the rest, so fp32 operands given as they are lose
accuracy as on the GPU, and the kernels' 3xTF32 (split_tf32 + mma_tf32x3) is what restores it.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

HALF = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
SUFFIX = {torch.float16: "_f16", torch.bfloat16: "_bf16"}


def _ptr(t):
    # The caller keeps t alive across the call (a temporary would be freed before it).
    return ctypes.c_void_p(t.data_ptr())


def _pack(pairs: torch.Tensor) -> torch.Tensor:
    """[..., 2] of a 16-bit dtype -> [...] int32: element 0 in the low half (little-endian)."""
    return pairs.contiguous().view(torch.int32).squeeze(-1)


def _unpack(regs: torch.Tensor, dtype) -> torch.Tensor:
    """[...] int32 -> [..., 2] of dtype."""
    return regs.contiguous().unsqueeze(-1).view(dtype)


def _lanes():
    lane = torch.arange(32)
    return lane // 4, lane % 4


def encode_a(a: torch.Tensor) -> torch.Tensor:
    """A 16x16 -> [32, 4] registers."""
    g, t = _lanes()
    regs = []
    for row_off, col_off in ((0, 0), (8, 0), (0, 8), (8, 8)):
        rows = (g + row_off)[:, None]
        cols = (2 * t + col_off)[:, None] + torch.arange(2)
        regs.append(_pack(a[rows, cols]))
    return torch.stack(regs, 1)


def encode_b(b: torch.Tensor) -> torch.Tensor:
    """B 16x8 (K x N) -> [32, 2] registers."""
    g, t = _lanes()
    regs = []
    for k_off in (0, 8):
        ks = (2 * t + k_off)[:, None] + torch.arange(2)
        regs.append(_pack(b[ks, g[:, None]]))
    return torch.stack(regs, 1)


def encode_c(c: torch.Tensor) -> torch.Tensor:
    """C 16x8 fp32 -> [32, 4]."""
    g, t = _lanes()
    cols = (2 * t)[:, None] + torch.arange(2)
    return torch.cat([c[g[:, None], cols], c[(g + 8)[:, None], cols]], 1)


def decode_d(d: torch.Tensor) -> torch.Tensor:
    """[32, 4] fp32 -> D 16x8."""
    g, t = _lanes()
    out = torch.full((16, 8), float("nan"))
    cols = (2 * t)[:, None] + torch.arange(2)
    out[g[:, None], cols] = d[:, :2]
    out[(g + 8)[:, None], cols] = d[:, 2:]
    return out


@HALF
@pytest.mark.parametrize("seed", [0, 1])
def test_mma_m16n8k16_is_a_matrix_product(emulated_kernels, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(16, 16, generator=gen).to(dtype)
    b = torch.randn(16, 8, generator=gen).to(dtype)
    c = torch.randn(16, 8, generator=gen)
    regs_a, regs_b, regs_d = encode_a(a), encode_b(b), encode_c(c).contiguous()
    getattr(emulated_kernels, "emu_mma_m16n8k16" + SUFFIX[dtype])(_ptr(regs_a), _ptr(regs_b), _ptr(regs_d))
    got = decode_d(regs_d)
    ref = a.double() @ b.double() + c.double()
    # Products of two fp16 / bf16 values are exact in fp32; only the fp32 sums round.
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@HALF
def test_mma_accumulates_and_sees_every_element(emulated_kernels, dtype):
    """Unit matrices: each A[i, k] B[k, j] lands in exactly one D element, once."""
    fn = getattr(emulated_kernels, "emu_mma_m16n8k16" + SUFFIX[dtype])
    for i in range(0, 16, 5):
        for k in range(16):
            a = torch.zeros(16, 16, dtype=dtype)
            a[i, k] = 1
            b = torch.arange(16 * 8, dtype=torch.float32).reshape(16, 8).to(dtype)
            c = torch.full((16, 8), 0.5)
            regs_a, regs_b, regs_d = encode_a(a), encode_b(b), encode_c(c).contiguous()
            fn(_ptr(regs_a), _ptr(regs_b), _ptr(regs_d))
            ref = c.clone()
            ref[i] += b[k].float()
            assert torch.equal(decode_d(regs_d), ref), (i, k)


@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
def test_ldmatrix_x4_gives_the_documented_elements(emulated_kernels, trans):
    gen = torch.Generator().manual_seed(3)
    mats = torch.randn(4, 8, 8, generator=gen).half()  # 4 matrices, row r of m at row 8m + r
    # Lanes may give their rows in any order: lane l addresses matrix l // 8, row perm[l % 8].
    perm = torch.randperm(8, generator=gen)
    rows_of_lane = (torch.arange(32) // 8 * 8 + perm[torch.arange(32) % 8]).int()
    regs = torch.zeros(32, 4, dtype=torch.int32)
    rows = mats.reshape(32, 8)
    emulated_kernels.emu_ldmatrix_x4(_ptr(rows), _ptr(rows_of_lane), ctypes.c_int(int(trans)),
                                     _ptr(regs))
    got = _unpack(regs, torch.float16)  # [32 lanes, 4 matrices, 2]
    # What lane l's address points at: row perm[l % 8] of matrix l // 8; so "row r of
    # matrix m" in the ISA's terms is the row given by lane 8m + r.
    seen = mats[torch.arange(32) // 8, perm[torch.arange(32) % 8]].reshape(4, 8, 8)
    g, t = _lanes()
    for m in range(4):
        for h in range(2):
            want = seen[m, 2 * t + h, g] if trans else seen[m, g, 2 * t + h]
            assert torch.equal(got[:, m, h], want), (m, h)


@HALF
def test_ldmatrix_trans_fragments_feed_the_mma(emulated_kernels, dtype):
    """The kernel's S = q^T k: q [16 c, 16 i] and k [16 c, 8 j] channel-major, loaded with
    ldmatrix.trans into A (rows i) and B (columns j), then one mma, against q^T k."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(16, 16, generator=gen).to(dtype)
    k = torch.randn(16, 8, generator=gen).to(dtype)
    # A = q^T: matrices (i 0-7, c 0-7), (i 8-15, c 0-7), (i 0-7, c 8-15), (i 8-15, c 8-15),
    # each given as 8 rows of q (channels) at an i offset, as the kernel addresses them.
    blocks_a = [q[c0:c0 + 8, i0:i0 + 8] for i0, c0 in ((0, 0), (8, 0), (0, 8), (8, 8))]
    # B = k: matrices (c 0-7, j 0-7), (c 8-15, j 0-7) for b0, b1 (two more copies fill x4).
    blocks_b = [k[0:8], k[8:16], k[0:8], k[8:16]]
    regs = {}
    for name, blocks in (("a", blocks_a), ("b", blocks_b)):
        rows = torch.cat(blocks).contiguous().view(torch.int16)
        out = torch.zeros(32, 4, dtype=torch.int32)
        lanes = torch.arange(32, dtype=torch.int32)
        emulated_kernels.emu_ldmatrix_x4(_ptr(rows), _ptr(lanes), ctypes.c_int(1), _ptr(out))
        regs[name] = out
    regs_d = torch.zeros(32, 4)
    regs_b = regs["b"][:, :2].contiguous()
    getattr(emulated_kernels, "emu_mma_m16n8k16" + SUFFIX[dtype])(_ptr(regs["a"]), _ptr(regs_b), _ptr(regs_d))
    torch.testing.assert_close(decode_d(regs_d).double(), q.double().T @ k.double(), rtol=1e-5, atol=1e-5)
    # And the same registers from the documented layouts directly:
    assert torch.equal(regs["a"], encode_a(q.T.contiguous()))
    assert torch.equal(regs["b"][:, :2], encode_b(k))


@pytest.mark.parametrize("src_bytes", [0, 16])
def test_cp_async_copies_or_zero_fills_at_the_wait(emulated_kernels, src_bytes):
    """The emulation carries a copy out at the wait that retires its group, not before: a
    kernel that reads a stage without waiting for it reads stale data there too."""
    src = torch.arange(1, 9, dtype=torch.int16)
    dst = torch.full((8,), -1, dtype=torch.int16)
    before = torch.zeros(8, dtype=torch.int16)
    emulated_kernels.emu_cp_async16(_ptr(dst), _ptr(src), ctypes.c_int(src_bytes), _ptr(before))
    assert torch.equal(before, torch.full((8,), -1, dtype=torch.int16))
    assert torch.equal(dst, src if src_bytes else torch.zeros_like(src))


# --- m16n8k8 with TF32 inputs (the fp32 kernels) ------------------------------------------------


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def encode_a_tf32(a: torch.Tensor) -> torch.Tensor:
    """A 16x8 fp32 -> [32, 4] registers (the fp32 bit patterns)."""
    g, t = _lanes()
    return _bits(torch.stack([a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4]], 1))


def encode_b_tf32(b: torch.Tensor) -> torch.Tensor:
    """B 8x8 (K x N) fp32 -> [32, 2] registers."""
    g, t = _lanes()
    return _bits(torch.stack([b[t, g], b[t + 4, g]], 1))


def truncate_tf32(x: torch.Tensor) -> torch.Tensor:
    """What the tensor cores read of an fp32 register given as a .tf32 operand."""
    return (x.contiguous().view(torch.int32) & -8192).view(torch.float32)  # -8192 = 0xffffe000


def rna_tf32(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32 in float64 arithmetic: nearest TF32 value, ties away from zero."""
    xd = x.double()
    exp = torch.floor(torch.log2(xd.abs()))
    ulp = torch.pow(2.0, exp - 10)
    r = torch.sign(xd) * torch.floor(xd.abs() / ulp + 0.5) * ulp
    return torch.where(xd == 0, xd, r).float()


def _mma_tf32(lib, a, b, c, passes):
    regs_a, regs_b, regs_d = encode_a_tf32(a), encode_b_tf32(b), encode_c(c).contiguous()
    lib.emu_mma_m16n8k8_tf32(_ptr(regs_a), _ptr(regs_b), _ptr(regs_d), ctypes.c_int(passes))
    return decode_d(regs_d)


@pytest.mark.parametrize("seed", [0, 1])
def test_mma_m16n8k8_tf32_is_a_matrix_product(emulated_kernels, seed):
    """On values that are TF32 already, one MMA is the matrix product (fp32 sums)."""
    gen = torch.Generator().manual_seed(seed)
    a = truncate_tf32(torch.randn(16, 8, generator=gen))
    b = truncate_tf32(torch.randn(8, 8, generator=gen))
    c = torch.randn(16, 8, generator=gen)
    got = _mma_tf32(emulated_kernels, a, b, c, passes=0)
    torch.testing.assert_close(got.double(), a.double() @ b.double() + c.double(), rtol=1e-6, atol=1e-6)


def test_mma_m16n8k8_tf32_sees_every_element_once(emulated_kernels):
    b = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    c = torch.full((16, 8), 0.5)
    for i in range(16):
        for k in range(8):
            a = torch.zeros(16, 8)
            a[i, k] = 1
            ref = c.clone()
            ref[i] += b[k]
            assert torch.equal(_mma_tf32(emulated_kernels, a, b, c, passes=0), ref), (i, k)


def test_mma_m16n8k8_tf32_reads_only_the_upper_19_bits(emulated_kernels):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(16, 8, generator=gen), torch.randn(8, 8, generator=gen)
    c = torch.zeros(16, 8)
    got = _mma_tf32(emulated_kernels, a, b, c, passes=0)
    ref = truncate_tf32(a).double() @ truncate_tf32(b).double()
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got.double(), a.double() @ b.double(), rtol=1e-5, atol=0)


def test_split_tf32_rounds_to_nearest_away_and_sums_back(emulated_kernels):
    gen = torch.Generator().manual_seed(4)
    x = torch.cat([
        torch.randn(4000, generator=gen) * torch.logspace(-20, 20, 4000),
        # ties: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 (and likewise negative)
        torch.tensor([1 + 2.0**-11, -(1 + 2.0**-11), 3 * 2.0**-12, 0.0, -0.0, 1.0]),
    ]).contiguous()
    hi = torch.zeros(x.numel(), dtype=torch.int32)
    lo = torch.zeros_like(hi)
    emulated_kernels.emu_split_tf32(_ptr(x), _ptr(hi), _ptr(lo), ctypes.c_int(x.numel()))
    assert ((hi & 8191) == 0).all() and ((lo & 8191) == 0).all()  # TF32 bit patterns
    hi_f, lo_f = hi.view(torch.float32), lo.view(torch.float32)
    assert torch.equal(hi_f, rna_tf32(x))
    assert hi_f[-6].item() == 1 + 2.0**-10 and hi_f[-5].item() == -(1 + 2.0**-10)
    assert torch.equal(lo_f, rna_tf32(x - hi_f))
    # hi + lo carries 22 significant bits: |x - hi - lo| <= 2^-22 |x|
    err = (x.double() - hi_f.double() - lo_f.double()).abs()
    assert (err <= 2.0**-22 * x.double().abs()).all()


def test_3xtf32_is_fp32_accurate_and_one_tf32_is_not(emulated_kernels):
    """The project's fp32 rule (1e-5 against float64) holds for 3xTF32 and fails for a plain
    TF32 product on the same fp32 operands, which is why the fp32 kernels split P too."""
    gen = torch.Generator().manual_seed(6)
    errs = {1: [], 3: []}
    for _ in range(4):
        a, b = torch.randn(16, 8, generator=gen), torch.randn(8, 8, generator=gen)
        c = torch.zeros(16, 8)
        ref = a.double() @ b.double()
        for passes in (1, 3):
            got = _mma_tf32(emulated_kernels, a, b, c, passes)
            errs[passes].append(((got.double() - ref).norm() / ref.norm()).item())
    assert max(errs[3]) <= 1e-6, errs
    assert min(errs[1]) > 1e-5, errs
