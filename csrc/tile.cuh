// Device-side building blocks shared by the kernels: the 64x64 block tile, its loader and
// its multiply-accumulate, row reductions, a fixed-order sum. Nothing here touches ATen,
// so the kernels can also be compiled as plain C++ for the CPU emulation check
// (csrc/emulation/), where the CUDA keywords and intrinsics are shims.
//
// Every kernel here works on one 64x64 output tile per block of 256 threads (16x16).
// Thread (ty, tx) owns the 4x4 elements at rows ty + 16*a and columns tx + 16*b
// (a, b in 0..3). The strided ownership keeps shared-memory reads conflict-free
// (16 consecutive threads read 16 consecutive columns) and global writes coalesced
// along the column index. Operands are staged in shared memory in the input dtype (fp32
// for fp32, fp16/bf16 for the half types) and every product accumulates in fp32. fp32
// runs on plain SIMT FMAs (true fp32: no tensor cores, no TF32). The half types run each
// 64x64 tile product on tensor cores through WMMA (16x16x16 fragments, fp32
// accumulator); the product goes through a shared fp32 tile into the same per-thread
// 4x4 layout, so the epilogues and the online softmax are one code for every dtype.
// (On sm_80 and newer, PAM for every dtype where its shared memory fits, and CAM's half-type
// products, do not use these tiles: they run on the register-resident mma.sync fragments of
// mma.cuh, see pam_kernels.cuh and cam_kernels.cuh. The tile paths here serve older GPUs,
// PAM's too-large Cqk and CAM's fp32.)
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

// WMMA for fp16 needs sm_70+, for bf16 sm_80+; older targets keep the SIMT product on
// the same half-precision shared tiles. The CPU emulation defines DANET_EMULATION and
// shims nvcuda::wmma, so it runs the tensor-core path.
#if defined(DANET_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700)
#define DANET_WMMA_FP16 1
#else
#define DANET_WMMA_FP16 0
#endif
#if defined(DANET_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define DANET_WMMA_BF16 1
#else
#define DANET_WMMA_BF16 0
#endif

namespace danet {

constexpr int TILE = 64;          // output tile edge (rows and columns)
constexpr int KC = 16;            // reduction chunk staged per step (channels or positions)
constexpr int THREADS = 256;      // 16 x 16 threads, 4 x 4 outputs each
constexpr int PER = 4;            // outputs per thread along each axis
constexpr int CLD = TILE + 4;     // leading dimension of the fp32 product tile (WMMA path)

// Padded leading dimension of the 64-wide shared operand tiles. fp32: 65, so the SIMT
// column walks are conflict-free. Half types: 72, because WMMA wants 32-byte aligned
// fragment pointers and a leading dimension that is a multiple of 8 elements (72 * 2 bytes
// keeps every 16-row and 16-column offset on a 32-byte boundary).
template <typename S>
constexpr int ld_of() { return std::is_same<S, float>::value ? TILE + 1 : TILE + 8; }

// The fp32 tile the WMMA path writes its 64x64 product to (size 1 where it is unused).
template <typename S>
constexpr int product_tile_size() { return std::is_same<S, float>::value ? 1 : TILE * CLD; }

// The CUDA element type WMMA takes for a staged type: the half types map to __half /
// __nv_bfloat16 (common.cuh specialises this for c10::Half / c10::BFloat16, which are
// layout-compatible); void means no tensor-core path.
template <typename S>
struct wmma_elem { using type = void; };

// Whether the tile product of staged type S runs on tensor cores in this compilation.
template <typename S>
constexpr bool use_wmma() {
  using E = typename wmma_elem<S>::type;
  return (std::is_same<E, __half>::value && DANET_WMMA_FP16) ||
         (std::is_same<E, __nv_bfloat16>::value && DANET_WMMA_BF16);
}

// float <-> storage conversions that work for float, c10::Half and c10::BFloat16 in
// device code (torch compiles extensions with the half operators disabled, so convert
// explicitly instead of relying on arithmetic overloads).
template <typename T>
__device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x) { return static_cast<T>(x); }

// Stage a ROWS x COLS tile into shared memory as S: dst[r * ld + c] = mul * src(r, c),
// where src(r, c) = src[r * sr + c * sc], and zero outside rows_valid x cols_valid, so
// ragged edges contribute nothing to the products. Consecutive threads walk the index
// whose global stride is 1, so the global reads coalesce whichever way the tile lies.
// Callers synchronise (__syncthreads) before reading dst.
template <int ROWS, int COLS, typename S, typename T>
__device__ __forceinline__ void load_tile(
    S* dst, int ld, const T* src, int64_t sr, int64_t sc, int rows_valid, int cols_valid,
    float mul = 1.0f) {
  const bool cols_fast = (sc == 1) || (sr != 1);
  for (int e = threadIdx.x; e < ROWS * COLS; e += THREADS) {
    int r, c;
    if (cols_fast) {
      r = e / COLS;
      c = e % COLS;
    } else {
      c = e / ROWS;
      r = e % ROWS;
    }
    float val = 0.0f;
    if (r < rows_valid && c < cols_valid) {
      val = mul * to_float(src[r * sr + c * sc]);
    }
    dst[r * ld + c] = from_float<S>(val);
  }
}

// SIMT form of the tile product (fp32 FMAs; half operands are widened as they are read).
template <int A_K, int A_R, int B_K, int B_C, typename S>
__device__ __forceinline__ void tile_mma_simt(
    float (&acc)[PER][PER], const S* A, const S* B, int kn) {
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
#pragma unroll 4
  for (int k = 0; k < kn; ++k) {
    float a[PER], b[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) a[i] = to_float(A[k * A_K + (ty + 16 * i) * A_R]);
#pragma unroll
    for (int j = 0; j < PER; ++j) b[j] = to_float(B[k * B_K + (tx + 16 * j) * B_C]);
#pragma unroll
    for (int i = 0; i < PER; ++i)
#pragma unroll
      for (int j = 0; j < PER; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// Tensor-core form: the 64x64 product is 4x4 WMMA sub-tiles of 16x16; warp w (of 8) owns
// row block w / 2 and column blocks 2 (w % 2) and 2 (w % 2) + 1, sharing its A fragment.
// The reduction runs in steps of 16 over kn rounded up: the staged tiles are zero past kn
// (load_tile zero-fills, P and dS are 0 outside N), so the extra terms add nothing. The
// result goes through the fp32 tile `prod` (row-major, CLD) into the caller's per-thread
// 4x4 layout, so no code depends on the accumulator fragment's register layout.
// The strides say which WMMA layout each operand has: A(k, r) with A_K == 1 is row-major
// M x K (leading dimension A_R), else column-major (leading dimension A_K); likewise B(k, c)
// is row-major K x N when B_C == 1.
// Its body exists only where WMMA does (the host pass and old targets never call it).
template <int A_K, int A_R, int B_K, int B_C, typename S>
__device__ __forceinline__ void tile_mma_wmma(
    float (&acc)[PER][PER], const S* A, const S* B, int kn, float* prod) {
#if DANET_WMMA_FP16 || DANET_WMMA_BF16
  namespace wmma = nvcuda::wmma;
  using E = typename wmma_elem<S>::type;
  static_assert((A_K == 1) != (A_R == 1) && (B_K == 1) != (B_C == 1), "one unit stride each");
  using LayoutA = typename std::conditional<A_K == 1, wmma::row_major, wmma::col_major>::type;
  using LayoutB = typename std::conditional<B_C == 1, wmma::row_major, wmma::col_major>::type;
  constexpr unsigned lda = A_K == 1 ? A_R : A_K;
  constexpr unsigned ldb = B_C == 1 ? B_K : B_C;
  const int warp = threadIdx.x / 32;
  const int mi = warp / 2, ni = 2 * (warp % 2);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c0, c1;
  wmma::fill_fragment(c0, 0.0f);
  wmma::fill_fragment(c1, 0.0f);
  for (int k = 0; k < kn; k += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, E, LayoutA> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, E, LayoutB> b0, b1;
    wmma::load_matrix_sync(a, reinterpret_cast<const E*>(A + k * A_K + 16 * mi * A_R), lda);
    wmma::load_matrix_sync(b0, reinterpret_cast<const E*>(B + k * B_K + 16 * ni * B_C), ldb);
    wmma::load_matrix_sync(b1, reinterpret_cast<const E*>(B + k * B_K + 16 * (ni + 1) * B_C), ldb);
    wmma::mma_sync(c0, a, b0, c0);
    wmma::mma_sync(c1, a, b1, c1);
  }
  wmma::store_matrix_sync(prod + 16 * mi * CLD + 16 * ni, c0, CLD, wmma::mem_row_major);
  wmma::store_matrix_sync(prod + 16 * mi * CLD + 16 * (ni + 1), c1, CLD, wmma::mem_row_major);
  __syncthreads();
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < PER; ++i)
#pragma unroll
    for (int j = 0; j < PER; ++j) acc[i][j] += prod[(ty + 16 * i) * CLD + tx + 16 * j];
  __syncthreads();  // prod is rewritten by the next call
#endif
}

// The one tile product every kernel uses:
//   acc[a][b] += sum_{k < kn} A(k, ty + 16a) * B(k, tx + 16b)
// with A(k, r) = A[k * A_K + r * A_R] and B(k, c) = B[k * B_K + c * B_C] in shared memory.
// The strides are compile-time so each caller picks the layout it staged (k-major or
// row-major) without copying a transposed tile. All threads of the block call it with
// the same kn. `prod` is the caller's product_tile_size<S>() fp32 scratch (32-byte
// aligned; used by the tensor-core path only).
template <int A_K, int A_R, int B_K, int B_C, typename S>
__device__ __forceinline__ void tile_mma(
    float (&acc)[PER][PER], const S* A, const S* B, int kn, float* prod) {
  if constexpr (use_wmma<S>()) {
    tile_mma_wmma<A_K, A_R, B_K, B_C>(acc, A, B, kn, prod);
  } else {
    (void)prod;
    tile_mma_simt<A_K, A_R, B_K, B_C>(acc, A, B, kn);
  }
}

__device__ __forceinline__ void zero(float (&acc)[PER][PER]) {
#pragma unroll
  for (int i = 0; i < PER; ++i)
#pragma unroll
    for (int j = 0; j < PER; ++j) acc[i][j] = 0.0f;
}

// Reductions across the 16 threads that share a row (tx = 0..15 of one ty): they are 16
// consecutive lanes of one warp, so xor-shuffles with offsets < 16 stay inside the row.
__device__ __forceinline__ float row_max16(float x) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}
__device__ __forceinline__ float row_sum16(float x) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// A device-side scalar (gamma) or 1 when absent; read in the kernel so the host never
// synchronises on it.
__device__ __forceinline__ float scalar_or_one(const float* p) { return p ? *p : 1.0f; }

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Sum of x[0..n) into *out, by one block in a fixed order, so the result is the same on
// every run (a deterministic replacement for atomics; the inputs here are per-row partial
// sums, a few thousand values at most per batch item). Launch with <<<1, THREADS>>>.
template <typename T>
__global__ void __launch_bounds__(THREADS) sum_all_kernel(const T* x, int64_t n, float* out) {
  __shared__ float part[THREADS];
  float s = 0.0f;
  for (int64_t e = threadIdx.x; e < n; e += THREADS) s += to_float(x[e]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int width = THREADS / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) part[threadIdx.x] += part[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = part[0];
}

}  // namespace danet
