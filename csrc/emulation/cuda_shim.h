// Just enough of CUDA to run the kernels of ../*_kernels.cuh as plain C++ on the CPU:
// one std::thread per CUDA thread, blocks run one after another, __shared__ arrays are
// function statics (one block at a time, so that is exactly block-shared memory),
// __syncthreads is a barrier over the block, and __shfl_xor_sync exchanges through
// memory with a barrier over the warp. Slow, but it executes the real kernel code, with
// its indexing, masking and synchronisation, where no GPU exists (CI).
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
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
