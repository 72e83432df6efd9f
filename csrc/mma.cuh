// Warp-level tensor-core building blocks (sm_80+; the sm_80 instructions run on sm_90):
//
//   mma_16816<E>(d, a, b0, b1)   mma.sync.aligned.m16n8k16.row.col.f32.E.E.f32, d += a b
//   mma_1688_tf32(d, a, b)       mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, d += a b
//   tf32_rna(x)                  cvt.rna.tf32.f32: x rounded to TF32 (10 mantissa bits, to
//                                nearest, ties away from zero), low 13 bits of the .b32 zero
//   split_tf32(x, hi, lo)        x = hi + lo + O(2^-22 |x|): hi = tf32_rna(x), lo = tf32_rna(x - hi)
//   mma_tf32x3(d, a_hi, a_lo, b_hi, b_lo, exact)
//                                d += a b of fp32 operands given as TF32 pairs (split_tf32):
//                                three m16n8k8 MMAs a_lo b_hi + a_hi b_lo + a_hi b_hi (the
//                                small terms first, dropped where their sum is NaN: inf
//                                inputs), fp32-accurate; with exact = false the single TF32
//                                product a_hi b_hi
//   ld_shared_f2(p, x0, x1)      one 64-bit shared-memory load of two floats (8-byte aligned)
//   ld_split_tf32_f2(p, hi0, lo0, hi1, lo1)
//                                ld_shared_f2 of p[0], p[1], each split_tf32: the fp32 operand
//                                loads of the PAM and CAM mma kernels
//   ldmatrix_x4(r, row)          ldmatrix.sync.aligned.m8n8.x4.shared.b16
//   ldmatrix_x4_trans(r, row)    ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
//   cp_async_cg16 / _ca16        cp.async.{cg,ca}.shared.global 16 bytes, zero-filled past
//                                src_bytes; cp_async_commit / cp_async_wait<N> for pipelines
//   ld_global_128, st_global_128 one 128-bit global load / store (16-byte aligned addresses)
//   red_add_f32x2(p, a, b)       p[0] += a, p[1] += b atomically (global, 8-byte aligned): one
//                                float2 atomicAdd on sm_90, two fp32 ones before
//   cp_async_wait_stage(next)    a two-stage pipeline's wait and barrier (below)
//   zero(f)                      accumulator fragments set to zero
//   pack2<E>(lo, hi)             two fp32 -> one .b32 register of two E (lo in bits 0..15)
//
// E is __half or __nv_bfloat16 (wmma_elem<T>::type of the staged type T).
// Fragment layouts, exactly as the PTX ISA documents them for m16n8k16 with 16-bit inputs,
// lane = 4 * groupID + threadID_in_group (g = lane / 4, t = lane % 4):
//   A (16 x 16, row): a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]
//                     a[2] = A[g][2t+8..2t+9]  a[3] = A[g+8][2t+8..2t+9]
//   B (16 x 8, col):  b0 = B[2t..2t+1][g]      b1 = B[2t+8..2t+9][g]
//   C, D (16 x 8):    d[0], d[1] = D[g][2t..2t+1]   d[2], d[3] = D[g+8][2t..2t+1]
// (each .b32 register holds the element of the lower column / row in its low half).
// For m16n8k8 with .tf32 inputs (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32), one
// element per .b32 register:
//   A (16 x 8, row):  a[0] = A[g][t]   a[1] = A[g+8][t]   a[2] = A[g][t+4]   a[3] = A[g+8][t+4]
//   B (8 x 8, col):   b[0] = B[t][g]   b[1] = B[t+4][g]
//   C, D (16 x 8):    as for m16n8k16: d[0], d[1] = D[g][2t..2t+1]   d[2], d[3] = D[g+8][2t..2t+1]
// The tensor cores read only the upper 19 bits of a .tf32 operand (sign, 8 exponent and 10
// mantissa bits); the products of two TF32 values are exact in fp32, the sums are fp32.
// ldmatrix .x4: lanes 8m..8m+7 give the row addresses (16 bytes each, 16-byte aligned) of
// 8x8 matrix m; register r[m] of lane receives M_m[lane / 4][2 (lane % 4) .. +1], or with
// .trans M_m[2 (lane % 4) .. +1][lane / 4].
//
// The CPU emulation (DANET_EMULATION, csrc/emulation/cuda_shim.h) implements the same
// functions as warp collectives over these layouts, so kernel code is one text for both.
#pragma once

#include <cstdint>

#include "tile.cuh"

// Where the instructions exist: the emulation, and device code for sm_80 and newer. The
// host pass and older targets see the declarations but must not call them (the kernels
// built on them compile to a trap there, and the host dispatch never launches them).
#if defined(DANET_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define DANET_HAS_MMA 1
#else
#define DANET_HAS_MMA 0
#endif

// The block's dynamic shared memory as `unsigned char* name` (16-byte aligned).
#if defined(DANET_EMULATION)
#define DANET_DYNAMIC_SMEM(name) unsigned char* name = emu::dynamic_smem
#else
#define DANET_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace danet {
namespace mma {

#if defined(DANET_EMULATION)

template <typename E>
inline uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(E(lo).bits) | (static_cast<uint32_t>(E(hi).bits) << 16);
}
template <typename E>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::mma_m16n8k16<E>(d, a, b0, b1);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { emu::ldmatrix_x4(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { emu::ldmatrix_x4(r, row, true); }
inline void cp_async_cg16(void* dst, const void* src, int src_bytes) { emu::cp_async16(dst, src, src_bytes); }
inline void cp_async_ca16(void* dst, const void* src, int src_bytes) { emu::cp_async16(dst, src, src_bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { emu::cp_async_wait(N); }
inline uint4 ld_global_128(const void* p) { return emu::ld_global_128(p); }
inline void st_global_128(void* p, uint4 v) { emu::st_global_128(p, v); }
inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma_m16n8k8_tf32(d, a, b);
}
inline uint32_t tf32_rna(float x) { return emu::cvt_rna_tf32(x); }
inline float uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void ld_shared_f2(const float* p, float& x0, float& x1) { emu::ld_shared_f2(p, x0, x1); }
inline void red_add_f32x2(float* p, float a, float b) { emu::red_add_f32x2(p, a, b); }

#else  // CUDA

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <typename E>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
#if DANET_HAS_MMA
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
#else
  return 0u;
#endif
}

template <typename E>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                  uint32_t b1) {
#if DANET_HAS_MMA
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
#if DANET_HAS_MMA
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if DANET_HAS_MMA
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if DANET_HAS_MMA
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#endif
}

// 16 bytes global -> shared, bypassing L1 (.cg) or through it (.ca). Bytes past src_bytes
// (0 or 16 here) are zero-filled; with src_bytes = 0 nothing is read, but src must still
// be a valid, 16-byte aligned address.
__device__ __forceinline__ void cp_async_cg16(void* dst, const void* src, int src_bytes) {
#if DANET_HAS_MMA
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_ca16(void* dst, const void* src, int src_bytes) {
#if DANET_HAS_MMA
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if DANET_HAS_MMA
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Wait until at most N of this thread's committed groups are still in flight. Other
// threads' copies are visible only after a __syncthreads that follows the wait.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if DANET_HAS_MMA
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// p[0] += a, p[1] += b atomically in global memory (p 8-byte aligned): one float2 atomicAdd
// on sm_90 (vector atomics need compute capability 9.x), two fp32 atomicAdds before.
__device__ __forceinline__ void red_add_f32x2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

__device__ __forceinline__ uint4 ld_global_128(const void* p) {
  return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void st_global_128(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if DANET_HAS_MMA
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
__device__ __forceinline__ uint32_t tf32_rna(float x) {
  uint32_t r = 0u;
#if DANET_HAS_MMA
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
#endif
  return r;
}
__device__ __forceinline__ float uint_as_float(uint32_t u) { return __uint_as_float(u); }
__device__ __forceinline__ void ld_shared_f2(const float* p, float& x0, float& x1) {
  const float2 v = *reinterpret_cast<const float2*>(p);
  x0 = v.x;
  x1 = v.y;
}

#endif  // DANET_EMULATION

// fp32 x as the sum of two TF32 values (hi carries the top 11 significant bits, lo the
// next 11): what 3xTF32 multiplies.
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = tf32_rna(x);
  lo = tf32_rna(x - uint_as_float(hi));
}

// Two consecutive fp32 elements of shared memory (8-byte aligned), p[0] and p[1], by one
// 64-bit load, each split as split_tf32: the fp32 fragment loads of pam_kernels.cuh's
// warp_p_yt (B) and cam_kernels.cuh's GEMM (A, and a k-contiguous B).
__device__ __forceinline__ void ld_split_tf32_f2(const float* p, uint32_t& hi0, uint32_t& lo0, uint32_t& hi1,
                                                 uint32_t& lo1) {
  float x0, x1;
  ld_shared_f2(p, x0, x1);
  split_tf32(x0, hi0, lo0);
  split_tf32(x1, hi1, lo1);
}

// d += a b with a = a_hi + a_lo, b = b_hi + b_lo (split_tf32 of each element): the lo * lo
// term (2^-22 relative) is dropped, so the error is that of an fp32 product. exact = false
// (fp32 under matmul precision "high"/"medium", products other than the energies): a_hi b_hi.
// The two small terms are summed apart and dropped where that sum is NaN, as Triton's
// tf32x3 does: for x = +-inf, split_tf32 gives hi = x and lo = inf - inf = NaN (and
// inf * a zero lo is NaN too), so without the mask one inf input would turn the whole row
// NaN where an fp32 product gives +-inf; a NaN input still propagates through a_hi b_hi.
__device__ __forceinline__ void mma_tf32x3(float (&d)[4], const uint32_t (&a_hi)[4], const uint32_t (&a_lo)[4],
                                           const uint32_t (&b_hi)[2], const uint32_t (&b_lo)[2], bool exact) {
  if (exact) {
    float small[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_1688_tf32(small, a_lo, b_hi);
    mma_1688_tf32(small, a_hi, b_lo);
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] += small[i] == small[i] ? small[i] : 0.0f;
  }
  mma_1688_tf32(d, a_hi, b_hi);
}

// The wait of a two-stage cp.async pipeline, once the caller has issued the next step's
// copies into the other stage (next_issued) or has none left to issue (the last step):
// this step's copies have landed and, after the barrier, every thread's are visible.
__device__ __forceinline__ void cp_async_wait_stage(bool next_issued) {
  if (next_issued) {
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// Accumulator fragments (N m16n8 tiles of 4 floats per lane) set to zero.
template <int N>
__device__ __forceinline__ void zero(float (&f)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) f[i][e] = 0.0f;
}

}  // namespace mma
}  // namespace danet
