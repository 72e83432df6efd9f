// Just enough of CUDA to run the kernels of ../*_kernels.cuh as plain C++ on the CPU:
// one std::thread per CUDA thread, blocks run one after another, __shared__ arrays are
// function statics (one block at a time, so that is exactly block-shared memory),
// __syncthreads is a barrier over the block, and __shfl_xor_sync exchanges through
// memory with a barrier over the warp. Slow, but it executes the real kernel code, with
// its indexing, masking and synchronisation, where no GPU exists (CI).
// The half types and nvcuda::wmma are emulated too (below), so the tensor-core path of the
// fp16/bf16 kernels runs here as well.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct EmuIndex {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local EmuIndex threadIdx, blockIdx;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// tile.cuh: take the WMMA path (emulated below) for both half types.
#define DANET_EMULATION 1

using std::max;
using std::min;

namespace emu {
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float exchange[1024];
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned t = threadIdx.x;
  auto& bar = *emu::warp_barriers[t / 32];
  emu::exchange[t] = v;
  bar.arrive_and_wait();
  const float r = emu::exchange[t ^ lane_mask];
  bar.arrive_and_wait();
  return r;
}

// Run body() as kernel<<<grid, threads>>>: every block in turn, all its threads at once.
template <typename F>
void emu_launch(dim3 grid, int threads, F&& body) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        emu::block_barrier = std::make_unique<std::barrier<>>(threads);
        emu::warp_barriers.clear();
        for (int w = 0; w < (threads + 31) / 32; ++w)
          emu::warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = EmuIndex{static_cast<unsigned>(t), 0, 0};
            blockIdx = EmuIndex{x, y, z};
            body();
          });
        for (auto& th : pool) th.join();
      }
}

// ---- half types: 2-byte storage with the same bits as torch.float16 / torch.bfloat16,
// so torch tensors of those dtypes are passed in directly; rounding to nearest even.
struct __half {
  uint16_t bits;
  __half() = default;
  __half(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    std::memcpy(&bits, &h, 2);
  }
  operator float() const {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
  }
};

struct __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = 0x7fc0;
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// ---- nvcuda::wmma, 16x16x16 only: every thread of the warp holds the whole tile in its
// fragment and computes the whole product, so all lanes agree and the stores of the warp
// write identical values. The hardware's preconditions (32-byte aligned pointers, ldm a
// multiple of 16 bytes) are checked, since a GPU would fault or silently misread.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only the 16x16x16 shape is emulated");
  float x[16][16];  // x[row][col] of the fragment's matrix (M x K, K x N or M x N)
};

inline void emu_check(const void* p, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * elem) % 16 != 0) {
    std::fprintf(stderr, "wmma: misaligned pointer %p or ldm %u\n", p, ldm);
    std::abort();
  }
}

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float v) {
  for (auto& row : f.x)
    for (auto& e : row) e = v;
}

// Element (r, c) sits at p[r * ldm + c] (row-major) or p[c * ldm + r] (column-major).
template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  emu_check(p, ldm, sizeof(T));
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r][c] = static_cast<float>(row ? p[r * ldm + c] : p[c * ldm + r]);
}

template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  fragment<accumulator, 16, 16, 16, float> r;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[m][n];
      for (int k = 0; k < 16; ++k) s += a.x[m][k] * b.x[k][n];
      r.x[m][n] = s;
    }
  d = r;  // d may be c
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  emu_check(p, ldm, sizeof(float));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r][c];
}
}  // namespace wmma
}  // namespace nvcuda
