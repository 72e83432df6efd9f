// Device-side building blocks shared by the kernels: the 64x64 block tile, its loader and
// its multiply-accumulate, row reductions, a fixed-order sum. Nothing here touches ATen,
// so the kernels can also be compiled as plain C++ for the CPU emulation check
// (csrc/emulation/), where the CUDA keywords and intrinsics are shims.
//
// Every kernel here works on one 64x64 output tile per block of 256 threads (16x16).
// Thread (ty, tx) owns the 4x4 elements at rows ty + 16*a and columns tx + 16*b
// (a, b in 0..3). The strided ownership keeps shared-memory reads conflict-free
// (16 consecutive threads read 16 consecutive columns) and global writes coalesced
// along the column index. Operands are staged in shared memory as fp32 whatever the
// input dtype, and all products accumulate in fp32: this is a plain SIMT
// implementation (no tensor cores, no TF32), chosen because it is simple enough to be
// reasoned correct for every dtype and shape.
#pragma once

#include <cstdint>

namespace danet {

constexpr int TILE = 64;          // output tile edge (rows and columns)
constexpr int LD = TILE + 1;      // padded leading dimension of 64-wide shared tiles
constexpr int KC = 16;            // reduction chunk staged per step (channels or positions)
constexpr int THREADS = 256;      // 16 x 16 threads, 4 x 4 outputs each
constexpr int PER = 4;            // outputs per thread along each axis

// float <-> storage conversions that work for float, c10::Half and c10::BFloat16 in
// device code (torch compiles extensions with the half operators disabled, so convert
// explicitly instead of relying on arithmetic overloads).
template <typename T>
__device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x) { return static_cast<T>(x); }

// Stage a ROWS x COLS tile into shared memory as fp32: dst[r * ld + c] = mul * src(r, c),
// where src(r, c) = src[r * sr + c * sc], and zero outside rows_valid x cols_valid, so
// ragged edges contribute nothing to the products. Consecutive threads walk the index
// whose global stride is 1, so the global reads coalesce whichever way the tile lies.
// Callers synchronise (__syncthreads) before reading dst.
template <int ROWS, int COLS, typename T>
__device__ __forceinline__ void load_tile(
    float* dst, int ld, const T* src, int64_t sr, int64_t sc, int rows_valid, int cols_valid,
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
    dst[r * ld + c] = val;
  }
}

// The one tile product every kernel uses:
//   acc[a][b] += sum_{k < kn} A(k, ty + 16a) * B(k, tx + 16b)
// with A(k, r) = A[k * A_K + r * A_R] and B(k, c) = B[k * B_K + c * B_C] in shared memory.
// The strides are compile-time so each caller picks the layout it staged (k-major or
// row-major) without copying a transposed tile.
template <int A_K, int A_R, int B_K, int B_C>
__device__ __forceinline__ void tile_mma(
    float (&acc)[PER][PER], const float* A, const float* B, int kn) {
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
#pragma unroll 4
  for (int k = 0; k < kn; ++k) {
    float a[PER], b[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) a[i] = A[k * A_K + (ty + 16 * i) * A_R];
#pragma unroll
    for (int j = 0; j < PER; ++j) b[j] = B[k * B_K + (tx + 16 * j) * B_C];
#pragma unroll
    for (int i = 0; i < PER; ++i)
#pragma unroll
      for (int j = 0; j < PER; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
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
