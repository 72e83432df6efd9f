// Just enough of CUDA to run the kernels of ../*_kernels.cuh as plain C++ on the CPU:
// one std::thread per CUDA thread, blocks run one after another, __shared__ arrays are
// function statics (one block at a time, so that is exactly block-shared memory),
// __syncthreads is a barrier over the block, and __shfl_xor_sync exchanges through
// memory with a barrier over the warp. Slow, but it executes the real kernel code, with
// its indexing, masking and synchronisation, where no GPU exists (CI).
// The half types and nvcuda::wmma are emulated too (below), so the tensor-core path of the
// fp16/bf16 kernels runs here as well, and so are the warp-level instructions of ../mma.cuh
// (mma.sync m16n8k16 and m16n8k8 .tf32, cvt.rna.tf32.f32, ldmatrix, cp.async, the copies
// deferred to the wait that retires them; fp32 atomicAdd) with the fragment layouts the PTX ISA documents,
// and the block's dynamic shared memory (sized per launch, exactly, so AddressSanitizer
// sees overruns).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
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
#define __noinline__
#define __launch_bounds__(...)
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
inline unsigned char* dynamic_smem = nullptr;
inline int block_threads = 0;

// cp.async (../mma.cuh): a thread's copies are queued as issued, grouped by commit, and
// carried out by the wait that retires their group, so a read that the kernel does not
// order after the right wait sees the destination's old contents (on the GPU it might).
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;
};
inline thread_local std::vector<AsyncCopy> cp_open;                // issued, not committed
inline thread_local std::deque<std::vector<AsyncCopy>> cp_groups;  // committed, not waited for
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

struct uint4 {
  unsigned x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// The threads of a block run at once: atomicAdd is a real atomic read-modify-write.
inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}

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
// dynamic_smem: the bytes of the block's dynamic shared memory (DANET_DYNAMIC_SMEM in
// ../mma.cuh), allocated to exactly that size and filled with 0xff bytes (NaN as fp16/bf16
// and fp32) before every block, so a read of what the block never wrote shows.
template <typename F>
void emu_launch(dim3 grid, int threads, F&& body, size_t dynamic_smem = 0) {
  struct AlignedFree {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(128)); }
  };
  std::unique_ptr<unsigned char[], AlignedFree> smem;
  if (dynamic_smem)
    smem.reset(static_cast<unsigned char*>(::operator new[](dynamic_smem, std::align_val_t(128))));
  emu::dynamic_smem = smem.get();
  emu::block_threads = threads;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        emu::block_barrier = std::make_unique<std::barrier<>>(threads);
        if (dynamic_smem) std::memset(smem.get(), 0xff, dynamic_smem);
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
            if (!emu::cp_open.empty() || !emu::cp_groups.empty()) {
              std::fprintf(stderr, "thread %d ended with cp.async copies never waited for\n", t);
              std::abort();
            }
          });
        for (auto& th : pool) th.join();
      }
  emu::dynamic_smem = nullptr;
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

// ---- the warp-level instructions of ../mma.cuh, as warp collectives. Each lane deposits
// what it holds (fragment registers, row addresses) in its warp's exchange slot, the warp
// meets at a barrier, each lane computes what the PTX ISA says it receives from the
// gathered values, and a second barrier keeps the slot until every lane has read it. All
// 32 lanes must call (the instructions are .sync.aligned on the GPU too).
namespace emu {

struct WarpSlots {
  uint32_t a[32][4];
  uint32_t b[32][2];
  const unsigned char* row[32];
};
inline WarpSlots warp_slots[32];

// A warp collective needs all 32 lanes (a partial last warp would read slots nobody wrote).
inline void warp_sync_all() {
  if (static_cast<int>(threadIdx.x / 32 + 1) * 32 > block_threads) {
    std::fprintf(stderr, "warp collective in a warp of fewer than 32 threads (block of %d)\n", block_threads);
    std::abort();
  }
  warp_barriers[threadIdx.x / 32]->arrive_and_wait();
}

inline void check_aligned16(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "%s: address %p is not 16-byte aligned\n", what, p);
    std::abort();
  }
}

template <typename E>
inline float half_lo(uint32_t r) {
  E e;
  e.bits = static_cast<uint16_t>(r & 0xffffu);
  return static_cast<float>(e);
}
template <typename E>
inline float half_hi(uint32_t r) {
  E e;
  e.bits = static_cast<uint16_t>(r >> 16);
  return static_cast<float>(e);
}

// mma.sync.aligned.m16n8k16.row.col.f32.E.E.f32 d, a, {b0, b1}, d. The products of two
// fp16 or two bf16 values are exact in fp32; the sum runs in fp32 in k order (the GPU's
// order and intermediate precision are unspecified, hence the tests' tolerances).
template <typename E>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const unsigned lane = threadIdx.x % 32;
  WarpSlots& w = warp_slots[threadIdx.x / 32];
  for (int r = 0; r < 4; ++r) w.a[lane][r] = a[r];
  w.b[lane][0] = b0;
  w.b[lane][1] = b1;
  warp_sync_all();
  // A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row / 8) + 2 (k / 8), half k % 2.
  auto A = [&](int row, int k) {
    const uint32_t r = w.a[4 * (row % 8) + (k % 8) / 2][row / 8 + 2 * (k / 8)];
    return k % 2 ? half_hi<E>(r) : half_lo<E>(r);
  };
  // B[k][col]: lane 4 col + (k % 8) / 2, register k / 8, half k % 2.
  auto B = [&](int k, int col) {
    const uint32_t r = w.b[4 * col + (k % 8) / 2][k / 8];
    return k % 2 ? half_hi<E>(r) : half_lo<E>(r);
  };
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float s = d[e];
    for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
    out[e] = s;
  }
  warp_sync_all();
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// The value the tensor cores see of a .tf32 operand: the upper 19 bits of the register
// (sign, exponent, 10 mantissa bits); the low 13 are ignored, i.e. truncated.
inline float tf32_operand(uint32_t r) {
  const uint32_t u = r & 0xffffe000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest, ties away from zero (adding half
// an ulp to the magnitude bits carries into the exponent where needed, up to infinity);
// the low 13 bits of the result are zero. Infinities stay, NaN stays NaN.
inline uint32_t cvt_rna_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? (u | 0x00400000u) & 0xffffe000u : u;
  return (u + 0x1000u) & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, {a0..a3}, {b0, b1}, d: one TF32
// element per register (layouts in ../mma.cuh), each truncated as the hardware reads it.
// Products of two TF32 values are exact in fp32; the sum runs in fp32 in k order.
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const unsigned lane = threadIdx.x % 32;
  WarpSlots& w = warp_slots[threadIdx.x / 32];
  for (int r = 0; r < 4; ++r) w.a[lane][r] = a[r];
  w.b[lane][0] = b[0];
  w.b[lane][1] = b[1];
  warp_sync_all();
  // A[row][k]: lane 4 (row % 8) + k % 4, register row / 8 + 2 (k / 4).
  auto A = [&](int row, int k) { return tf32_operand(w.a[4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]); };
  // B[k][col]: lane 4 col + k % 4, register k / 4.
  auto B = [&](int k, int col) { return tf32_operand(w.b[4 * col + k % 4][k / 4]); };
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float s = d[e];
    for (int k = 0; k < 8; ++k) s += A(row, k) * B(k, col);
    out[e] = s;
  }
  warp_sync_all();
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// A 64-bit shared-memory load (ld.shared.v2.f32): the address must be 8-byte aligned.
inline void ld_shared_f2(const float* p, float& x0, float& x1) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) {
    std::fprintf(stderr, "64-bit shared load: address %p is not 8-byte aligned\n", static_cast<const void*>(p));
    std::abort();
  }
  x0 = p[0];
  x1 = p[1];
}

// Two fp32 atomic adds to neighbouring addresses (../mma.cuh red_add_f32x2; one float2
// atomicAdd on sm_90): the address must be 8-byte aligned.
inline void red_add_f32x2(float* p, float a, float b) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) {
    std::fprintf(stderr, "float2 atomic add: address %p is not 8-byte aligned\n", static_cast<void*>(p));
    std::abort();
  }
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8m..8m+7 address the 8 rows
// (16 bytes each) of matrix m; r[m] of a lane gets M_m[lane/4][2(lane%4)..+1], or
// M_m[2(lane%4)..+1][lane/4] with .trans.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  check_aligned16(row, "ldmatrix");
  const unsigned lane = threadIdx.x % 32;
  WarpSlots& w = warp_slots[threadIdx.x / 32];
  w.row[lane] = static_cast<const unsigned char*>(row);
  warp_sync_all();
  auto elem = [&](int m, int rr, int cc) {  // element (rr, cc) of matrix m, 16 raw bits
    uint16_t v;
    std::memcpy(&v, w.row[8 * m + rr] + 2 * cc, 2);
    return static_cast<uint32_t>(v);
  };
  const int g = lane / 4, t = lane % 4;
  uint32_t out[4];
  for (int m = 0; m < 4; ++m)
    out[m] = trans ? elem(m, 2 * t, g) | (elem(m, 2 * t + 1, g) << 16)
                   : elem(m, g, 2 * t) | (elem(m, g, 2 * t + 1) << 16);
  warp_sync_all();
  for (int m = 0; m < 4; ++m) r[m] = out[m];
}

// cp.async 16 bytes, zero-filled past src_bytes; both addresses must be 16-byte aligned,
// as on the GPU. Queued until a cp_async_wait retires its group (see AsyncCopy above).
inline void cp_async16(void* dst, const void* src, int src_bytes) {
  check_aligned16(dst, "cp.async destination");
  check_aligned16(src, "cp.async source");
  if (src_bytes < 0 || src_bytes > 16) {
    std::fprintf(stderr, "cp.async: src-size %d out of 0..16\n", src_bytes);
    std::abort();
  }
  cp_open.push_back(AsyncCopy{dst, src, src_bytes});
}
inline void cp_async_commit() {
  cp_groups.push_back(std::move(cp_open));
  cp_open.clear();
}
// cp.async.wait_group n: complete all but the n most recently committed groups.
inline void cp_async_wait(int n) {
  while (static_cast<int>(cp_groups.size()) > n) {
    for (const AsyncCopy& c : cp_groups.front()) {
      std::memcpy(c.dst, c.src, c.bytes);
      std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
    }
    cp_groups.pop_front();
  }
}

inline uint4 ld_global_128(const void* p) {
  check_aligned16(p, "128-bit load");
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline void st_global_128(void* p, uint4 v) {
  check_aligned16(p, "128-bit store");
  std::memcpy(p, &v, 16);
}

}  // namespace emu
