// Warp-level tensor-core building blocks (sm_80+; the sm_80 instructions run on sm_90):
//
//   mma_16816<E>(d, a, b0, b1)   mma.sync.aligned.m16n8k16.row.col.f32.E.E.f32, d += a b
//   ldmatrix_x4(r, row)          ldmatrix.sync.aligned.m8n8.x4.shared.b16
//   ldmatrix_x4_trans(r, row)    ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
//   cp_async_cg16 / _ca16        cp.async.{cg,ca}.shared.global 16 bytes, zero-filled past
//                                src_bytes; cp_async_commit / cp_async_wait<N> for pipelines
//   ld_global_128, st_global_128 one 128-bit global load / store (16-byte aligned addresses)
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

__device__ __forceinline__ uint4 ld_global_128(const void* p) {
  return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void st_global_128(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

#endif  // DANET_EMULATION

}  // namespace mma
}  // namespace danet
