// PAM kernels (host wrappers in pam.cu). PAM, position attention:
//   out = gamma * softmax(scale * q^T k) v + residual,
// with q, k [B, Cqk, N] and v, residual [B, Cv, N], read channel-first as convolutions
// write them.
//
// Which kernels serve which dtype: on sm_80+ (where the shared memory below fits) the
// mma.sync kernels serve fp32, fp16 and bf16 alike, one kernel text each, with the operand
// handling chosen by the element type in the two warp products they are built from
// (warp_xt_y, warp_p_yt): fp16/bf16 through ldmatrix into m16n8k16 MMAs; fp32 through
// plain 32/64-bit shared loads into m16n8k8 TF32 MMAs, every product as 3xTF32 (each
// operand split into TF32 hi + lo, hi*lo + lo*hi + hi*hi: error at the fp32 level), or,
// with PamArgs::tf32 (torch's matmul precision "high"/"medium"), the products other than
// the energies as one TF32 MMA. Softmax statistics and accumulators are fp32 for all.
// The 64x64 tile kernels (pam_forward_kernel, pam_dv_kernel, pam_dqk_kernel) serve GPUs
// before sm_80 and a Cqk too large for the mma kernels' shared memory: fp32 on SIMT FMAs,
// the half types on WMMA (tile.cuh).
//
// Forward (pam_forward_mma_kernel): FlashAttention-2's structure on the warp-level
// tensor-core instructions of mma.cuh. One block of 4 warps per (query tile of
// 64, v-channel tile of 128, batch item); warp w owns query rows 16w..16w+15 of the tile.
// Per key tile of 64: S = q^T k stays in the warps' registers as mma accumulator
// fragments, the online softmax runs on those fragments (row max and sum over the 4 lanes
// of a fragment row by shuffles), and P is repacked in registers as the A operand of P.V
// (fp32: split into TF32 hi + lo, with the keys of each 8-key step permuted so that the
// accumulator layout is the A layout, see warp_p_yt); nothing of S or P goes through
// shared memory. k and v tiles come in by cp.async, double buffered (tile j+1 loads while
// tile j computes), and reach the mma through ldmatrix (.trans where the channel-first
// layout needs it) for the half types, through 32/64-bit shared loads for fp32. fp32
// stages 4-byte elements: twice the shared memory (129024 bytes at Cqk = 64, one block per
// SM on sm_90 against three for the half types); whether a smaller fp32 tile (fewer v
// channels or one k/v stage) wins needs a GPU to measure. Splitting the 512 v channels of DANet
// over 4 blocks (grid.y) keeps the per-thread accumulator at 64 fp32 registers; the price
// is that each recomputes S (2*N^2*Cqk each): 2*N^2*(4*Cqk + Cv) FLOPs in all, 1.33x the
// minimum 2*N^2*(Cqk + Cv) at Cqk = Cv/8 (64-channel tiles, as pam_forward_kernel's: 1.78x).
// 256 channels per block would halve the recomputation (2*N^2*(2*Cqk + Cv), 1.11x) but
// doubles the accumulator: for sm_90 ptxas gives 247 registers (no spill) against 164, so 2 blocks
// (8 warps) per SM instead of 3; which wins needs a GPU to measure.
// Where this kernel cannot run (GPUs before sm_80, or Cqk so large that q and two k stages
// do not fit in shared memory: over 176 channels for fp32, 448 for the half types on
// sm_90) every dtype takes pam_forward_kernel: one block per (query tile of 64, v-channel
// tile of 64, batch item), 64x64 tiles staged in shared memory, fp32 on SIMT FMAs, half
// types on WMMA (tile.cuh).
// Both write the per-row log-sum-exp (natural log) for backward.
//
// Backward, by default deterministic (no atomics), FA2-style with P recomputed from the LSE
// (the fused variant, pam_bwd_fused_mma_kernel below, trades that for P and dS once per
// tile pair):
//   preprocess: rowdot[i] = sum_c dout[c][i] o[c][i]; delta = gamma * rowdot;
//               dgamma = sum rowdot (fixed-order reduction)
//   dV kernel:  per (key tile, v-channel tile): dV[c][j] = sum_i dO[c][i] P[i][j]
//   dK, dQ:     one kernel, two instantiations: per (key tile | query tile, qk-channel
//               tile) it loops over the other axis, recomputing P and
//               dS = scale * P * (dO^T v - delta), and accumulates q.dS or k.dS^T.
// dO = gamma * dout. All three dtypes run these on mma.sync (pam_dv_mma_kernel,
// pam_dqk_mma_kernel: the forward's building blocks, S, P, dP and dS in registers as
// fragments, fp32 as 3xTF32; dV per 128 v channels as the forward's O, dK / dQ per 64 qk
// channels with dP's reduction over Cv streamed in 64-channel chunks); where those cannot
// run, the 64x64 tile kernels pam_dv_kernel / pam_dqk_kernel. FLOPs of the
// mma backward: dV 2*N^2*(ceil(Cv/128)*Cqk + Cv), dK and dQ 2*N^2*(2*Cqk + Cv) each for
// Cqk <= 64. Ragged N (97*97 = 9409) is masked: out-of-range positions load as zeros, get
// P = 0, and are never stored.
#pragma once

#include "mma.cuh"
#include "tile.cuh"

namespace danet {

template <typename T>
struct PamArgs {
  const T* q;         // [B, Cqk, N]
  const T* k;         // [B, Cqk, N]
  const T* v;         // [B, Cv, N]
  const T* residual;  // [B, Cv, N] or null
  const T* dout;      // [B, Cv, N] (backward)
  const float* gamma; // device scalar or null
  const float* lse;   // [B, N] (backward; written by forward through lse_out)
  const float* delta; // [B, N] (backward)
  int cqk, cv, n;
  int ld;             // row stride of q, k, v (and dout) in the mma kernels (a multiple of 8, >= n)
  float scale;
  // fp32 in the mma kernels: every product but the energies (P.V, P^T.dO, dO^T.v, dS.k,
  // dS^T.q) as one TF32 MMA instead of 3xTF32, as torch's matmul precision "high" and
  // "medium" allow. Energies (q^T k) are always 3xTF32. Ignored for fp16/bf16.
  bool tf32;
};

// Energies of one tile, s[a][b] = scale * sum_c q[c][i] k[c][j] for i = i0 + ty + 16a,
// j = j0 + tx + 16b, staged through qs/ks in channel chunks of KC.
template <typename T>
__device__ __forceinline__ void energy_tile(float (&s)[PER][PER], const T* q, const T* k,
                                            const PamArgs<T>& p, int i0, int j0, T* qs, T* ks,
                                            float* prod) {
  constexpr int LD = ld_of<T>();
  const int n = p.n;
  zero(s);
  for (int c = 0; c < p.cqk; c += KC) {
    const int kv = min(KC, p.cqk - c);
    load_tile<KC, TILE>(qs, LD, q + (int64_t)c * n + i0, n, 1, kv, n - i0);
    load_tile<KC, TILE>(ks, LD, k + (int64_t)c * n + j0, n, 1, kv, n - j0);
    __syncthreads();
    tile_mma<LD, 1, LD, 1>(s, qs, ks, kv, prod);
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < PER; ++a)
#pragma unroll
    for (int b = 0; b < PER; ++b) s[a][b] *= p.scale;
}

// P[i][j] = exp(scale * q_i.k_j - lse_i) of one tile (0 outside N), rows i, columns j.
template <typename T>
__device__ __forceinline__ void prob_tile(float (&pr)[PER][PER], const T* q, const T* k,
                                          const float* lse, const PamArgs<T>& p, int i0, int j0,
                                          T* qs, T* ks, float* prod) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  energy_tile(pr, q, k, p, i0, j0, qs, ks, prod);
#pragma unroll
  for (int a = 0; a < PER; ++a) {
    const int i = i0 + ty + 16 * a;
    const float lse_i = i < p.n ? lse[i] : 0.0f;
#pragma unroll
    for (int b = 0; b < PER; ++b) {
      const int j = j0 + tx + 16 * b;
      pr[a][b] = (i < p.n && j < p.n) ? expf(pr[a][b] - lse_i) : 0.0f;
    }
  }
}

// dS[i][j] = scale * P[i][j] * (sum_c dO[c][i] v[c][j] - delta_i), dO = gamma * dout.
template <typename T>
__device__ __forceinline__ void dscore_tile(float (&ds)[PER][PER], const T* q, const T* k,
                                            const T* v, const T* dout, const float* lse,
                                            const float* delta, float g, const PamArgs<T>& p,
                                            int i0, int j0, T* as, T* bs, float* prod) {
  constexpr int LD = ld_of<T>();
  const int ty = threadIdx.x / 16;
  const int n = p.n;
  float pr[PER][PER];
  prob_tile(pr, q, k, lse, p, i0, j0, as, bs, prod);
  zero(ds);  // dP, reduced over all v channels
  for (int c = 0; c < p.cv; c += KC) {
    const int kv = min(KC, p.cv - c);
    load_tile<KC, TILE>(as, LD, dout + (int64_t)c * n + i0, n, 1, kv, n - i0, g);
    load_tile<KC, TILE>(bs, LD, v + (int64_t)c * n + j0, n, 1, kv, n - j0);
    __syncthreads();
    tile_mma<LD, 1, LD, 1>(ds, as, bs, kv, prod);
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < PER; ++a) {
    const int i = i0 + ty + 16 * a;
    const float delta_i = i < n ? delta[i] : 0.0f;
#pragma unroll
    for (int b = 0; b < PER; ++b) ds[a][b] = p.scale * pr[a][b] * (ds[a][b] - delta_i);
  }
}

// ---- forward ------------------------------------------------------------------------

// Two blocks per SM: ptxas's own register target for 256 threads (80) spilled 24 bytes in
// the fp16 instantiation; at 2 blocks it takes 104 registers and none spill.
template <typename T>
__global__ void __launch_bounds__(THREADS, 2)
pam_forward_kernel(PamArgs<T> p, T* out, T* o_raw, float* lse_out) {
  // Operands staged in T (WMMA reads them as they are); the 32-byte alignment is WMMA's.
  constexpr int LD = ld_of<T>();
  __shared__ __align__(32) T qs[KC * LD], ks[KC * LD];
  __shared__ __align__(32) T ps[TILE * LD];  // P[i][j] of the current key tile
  __shared__ __align__(32) T vs[TILE * LD];  // v[c][j] of the current key tile
  __shared__ __align__(32) float prod[product_tile_size<T>()];  // WMMA product tile
  __shared__ float row_scale[TILE];          // per query row: rescale factor, then 1/l

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int n = p.n, cv = p.cv;
  const int i0 = blockIdx.x * TILE, c0 = blockIdx.y * TILE, b = blockIdx.z;
  const T* q = p.q + (int64_t)b * p.cqk * n;
  const T* k = p.k + (int64_t)b * p.cqk * n;
  const T* v = p.v + ((int64_t)b * cv + c0) * n;

  // Row statistics of rows i = i0 + ty + 16a; all 16 threads of a row hold the same max.
  float m[PER], l[PER];
#pragma unroll
  for (int a = 0; a < PER; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.0f;
  }
  float acc[PER][PER];  // O^T[c][i]: rows c = c0 + ty + 16a, columns i = i0 + tx + 16b
  zero(acc);

  for (int j0 = 0; j0 < n; j0 += TILE) {
    float s[PER][PER];
    energy_tile(s, q, k, p, i0, j0, qs, ks, prod);

    // Online softmax. Every key tile holds at least one valid key, so the new max is
    // finite for finite inputs and exp(m_old - m_new) is 0 on the first tile.
#pragma unroll
    for (int a = 0; a < PER; ++a) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int bb = 0; bb < PER; ++bb)
        if (j0 + tx + 16 * bb < n) tile_max = fmaxf(tile_max, s[a][bb]);
      const float m_new = fmaxf(m[a], row_max16(tile_max));
      const float alpha = expf(m[a] - m_new);
      float row_sum = 0.0f;
#pragma unroll
      for (int bb = 0; bb < PER; ++bb) {
        const float pv = (j0 + tx + 16 * bb < n) ? expf(s[a][bb] - m_new) : 0.0f;
        s[a][bb] = pv;
        row_sum += pv;
      }
      l[a] = l[a] * alpha + row_sum16(row_sum);
      m[a] = m_new;
      if (tx == 0) row_scale[ty + 16 * a] = alpha;
#pragma unroll
      for (int bb = 0; bb < PER; ++bb) ps[(ty + 16 * a) * LD + tx + 16 * bb] = from_float<T>(s[a][bb]);
    }
    load_tile<TILE, TILE>(vs, LD, v + j0, n, 1, cv - c0, n - j0);
    __syncthreads();

    // O^T[c][i] = alpha_i * O^T[c][i] + sum_j v[c][j] P[i][j]
#pragma unroll
    for (int a = 0; a < PER; ++a)
#pragma unroll
      for (int bb = 0; bb < PER; ++bb) acc[a][bb] *= row_scale[tx + 16 * bb];
    tile_mma<1, LD, 1, LD>(acc, vs, ps, min(TILE, n - j0), prod);
    __syncthreads();
  }

#pragma unroll
  for (int a = 0; a < PER; ++a) {
    if (tx == 0) {
      const int i = i0 + ty + 16 * a;
      row_scale[ty + 16 * a] = 1.0f / l[a];
      if (blockIdx.y == 0 && i < n) lse_out[(int64_t)b * n + i] = m[a] + logf(l[a]);
    }
  }
  __syncthreads();

  const float g = scalar_or_one(p.gamma);
#pragma unroll
  for (int a = 0; a < PER; ++a) {
    const int c = c0 + ty + 16 * a;
#pragma unroll
    for (int bb = 0; bb < PER; ++bb) {
      const int i = i0 + tx + 16 * bb;
      if (c < cv && i < n) {
        const int64_t idx = ((int64_t)b * cv + c) * n + i;
        const float o = acc[a][bb] * row_scale[tx + 16 * bb];
        if (o_raw) o_raw[idx] = from_float<T>(o);
        float r = o * g;
        if (p.residual) r += to_float(p.residual[idx]);
        out[idx] = from_float<T>(r);
      }
    }
  }
}

// ---- forward on mma.sync (fp16/bf16 on m16n8k16, fp32 on m16n8k8 TF32) ------------------

namespace pam_mma {
constexpr int WARPS = 4;
constexpr int BLOCK_THREADS = 32 * WARPS;
constexpr int BM = 16 * WARPS;  // query rows per block, 16 per warp
constexpr int BN = 64;          // keys per tile
constexpr int CVT = 128;        // v channels per block: 64 fp32 accumulator registers per thread
// Shared rows run along positions (query or key), padded from 64 to 72 elements, a
// multiple of 16 bytes as ldmatrix and cp.async need. Half types: 144 bytes, so the 8 row
// addresses of an ldmatrix fall on distinct banks. fp32: 288 bytes = 72 banks = 8 mod 32,
// so the 32-bit fragment loads of a warp (rows t + 4 h, columns g: banks 8 t + g + const)
// and its 64-bit ones (per half warp, rows g < 4, columns 2t: banks 8 g + 2 t + 0..1) are
// conflict-free.
constexpr int PITCH = BN + 8;
constexpr int OPITCH = BM + 4;  // fp32 O^T staging for the epilogue (conflict-free writes)
static_assert(BM == BN, "q and k tiles share the shared-memory row layout");
static_assert(CVT * OPITCH * 4 <= 2 * CVT * PITCH * 2, "the O^T staging reuses the two v stages");

// Backward: dK / dQ blocks stream the v / dO channels in chunks of YC (dP = dO^T v reduces
// over all Cv) and hold the gradient of GC qk channels (grid.y tiles larger Cqk).
constexpr int YC = 64;
constexpr int GC = 64;
static_assert(GC * OPITCH * 4 <= 4 * YC * PITCH * 2, "the dK/dQ staging reuses the v/dO chunk stages");

// __launch_bounds__'s minimum blocks per SM. fp32: 1, what its shared memory allows on
// sm_90 (129024 bytes a block at Cqk = 64), so ptxas may use up to 255 registers (without
// it, ptxas keeps the fp32 dV kernel at 128 and spills). Half types: 0, which nvcc treats
// as no bound (no .minnctapersm in the PTX), i.e. their code as before (3 blocks per SM by
// shared memory and by registers).
template <typename T>
constexpr int min_blocks() { return sizeof(T) == 4 ? 1 : 0; }

constexpr int cqk_padded(int cqk) { return (cqk + 15) / 16 * 16; }
// Dynamic shared memory of a block for elements of type T (staged as they are: 2 bytes for
// the half types, 4 for fp32): q, two k stages, two v stages; also pam_dv_mma_kernel's (k,
// two q stages, two dO stages). At Cqk = 64: 64512 bytes (half), 129024 (fp32), within the
// 232448 a block may opt into on sm_90 (the host checks: mma_fits in common.cuh).
template <typename T>
inline size_t smem_bytes(int cqk) {
  return static_cast<size_t>(3 * cqk_padded(cqk) + 2 * CVT) * PITCH * sizeof(T);
}
// pam_dqk_mma_kernel's: own q or k, two stages of the other, two stages each of the own and
// the other v / dO chunk.
template <typename T>
inline size_t dqk_smem_bytes(int cqk) {
  return static_cast<size_t>(3 * cqk_padded(cqk) + 4 * YC) * PITCH * sizeof(T);
}
}  // namespace pam_mma

// Stage rows [0, rows) x positions [p0, p0 + W) of a row-major matrix with row stride ld
// (a multiple of 8, the source 16-byte aligned) into dst[r * P + j] by 16-byte cp.async
// copies (8 half or 4 fp32 elements each), spread over the block's NT threads; rows from
// rows_valid on and positions from ld on are zero-filled.
template <typename T, int W = pam_mma::BN, int P = pam_mma::PITCH, int NT = pam_mma::BLOCK_THREADS>
__device__ __forceinline__ void stage_async(T* dst, const T* src, int rows, int rows_valid, int ld,
                                            int p0) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  for (int e = threadIdx.x; e < rows * (W / V); e += NT) {
    const int r = e / (W / V), pos = p0 + V * (e % (W / V));
    const bool ok = r < rows_valid && pos < ld;
    mma::cp_async_cg16(dst + r * P + (pos - p0), ok ? src + (int64_t)r * ld + pos : src,
                       ok ? 16 : 0);
  }
}

// The epilogue of every mma kernel: the block's fp32 result, staged transposed in shared
// memory (os[c * (COLS + 4) + i] for ROWS channels and COLS positions: OPITCH for the
// 64-position blocks), written by the block's NT threads to the [B, C, N] tensors at
// channels c0.. (< channels) and positions i0.. (< n):
//   out = alpha * os (+ residual), and raw = os where raw is not null.
// Consecutive threads store consecutive positions; with 128-bit loads and stores (V
// positions a thread) where n is a multiple of V and every pointer is 16-byte aligned
// (then every row starts on a 16-byte boundary, and i < n holds for all V once it holds
// for the first), else one element at a time. Not inlined: it runs once per block, after
// the accumulators are dead, and inlined ptxas let its addressing push the half-type dQ
// kernel to 12 bytes of spills (sm_90, nvcc 13).
template <typename T, int ROWS, int COLS = pam_mma::BM, int NT = pam_mma::BLOCK_THREADS>
__device__ __noinline__ void store_staged(const float* os, T* out, T* raw, const T* residual,
                                             float alpha, int b, int c0, int channels, int i0, int n) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 128 bits
  constexpr int OP = COLS + 4;
  const auto aligned = [](const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; };
  if (n % V == 0 && aligned(out) && aligned(raw) && aligned(residual)) {
    for (int e = threadIdx.x; e < ROWS * COLS / V; e += NT) {
      const int cc = e / (COLS / V), ii = V * (e % (COLS / V));
      const int c = c0 + cc, i = i0 + ii;
      if (c >= channels || i >= n) continue;
      const int64_t idx = ((int64_t)b * channels + c) * n + i;
      T res[V], ob[V], rb[V];
      if (residual) {
        const uint4 r = mma::ld_global_128(residual + idx);
        memcpy(res, &r, 16);
      }
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const float ov = os[cc * OP + ii + u];
        ob[u] = from_float<T>(ov);
        rb[u] = from_float<T>(residual ? ov * alpha + to_float(res[u]) : ov * alpha);
      }
      uint4 w;
      if (raw) {
        memcpy(&w, ob, 16);
        mma::st_global_128(raw + idx, w);
      }
      memcpy(&w, rb, 16);
      mma::st_global_128(out + idx, w);
    }
  } else {
    for (int e = threadIdx.x; e < ROWS * COLS; e += NT) {
      const int cc = e / COLS, ii = e % COLS;
      const int c = c0 + cc, i = i0 + ii;
      if (c >= channels || i >= n) continue;
      const int64_t idx = ((int64_t)b * channels + c) * n + i;
      const float ov = os[cc * OP + ii];
      if (raw) raw[idx] = from_float<T>(ov);
      float r = ov * alpha;
      if (residual) r += to_float(residual[idx]);
      out[idx] = from_float<T>(r);
    }
  }
}

// The two warp-level products every mma kernel is made of. Operand handling follows the
// element type: fp16/bf16 through ldmatrix into m16n8k16 MMAs; fp32 by plain 32/64-bit
// shared loads in the m16n8k8 .tf32 layout (ldmatrix moves 16-bit elements), each element
// split into TF32 hi + lo (split_tf32) and multiplied as 3xTF32 (mma_tf32x3), or as one
// TF32 product where `exact` is false. One kernel text serves all three types.

// acc[16 x COLS] += X^T Y for the warp's 16 rows: X and Y are channel-major tiles in shared
// memory (pitches XP and PITCH), the rows are X's columns row0 .. row0 + 15, the COLS
// columns Y's first; channels [0, channels), a multiple of 16. Half types: both operands
// come through ldmatrix.trans: A's matrices (rows, channels) 0-7/0-7, 8-15/0-7, 0-7/8-15,
// 8-15/8-15; B's, for columns 16 np + 0-7 then + 8-15, channels 0-7 and 8-15. fp32: per 8
// channels kc, a = X[kc + t (+4)][row0 + g (+8)] and b = Y[kc + t (+4)][8 nt + g]. The
// energies S = q^T k (forward, dQ), S^T = k^T q (dV, dK), dP = dO^T v and the fused
// backward's dQ = dS k^T are all this product; the energies always with exact = true.
template <typename T, int COLS = pam_mma::BN, int XP = pam_mma::PITCH>
__device__ __forceinline__ void warp_xt_y(float (&acc)[COLS / 8][4], const T* x, int row0, const T* y,
                                          int channels, bool exact) {
  using namespace pam_mma;
  const int lane = threadIdx.x % 32;
  if constexpr (std::is_same<T, float>::value) {
    const int g = lane / 4, t = lane % 4;
    for (int kc = 0; kc < channels; kc += 8) {
      const float* xa = x + (kc + t) * XP + row0 + g;
      uint32_t a_hi[4], a_lo[4];
      mma::split_tf32(xa[0], a_hi[0], a_lo[0]);
      mma::split_tf32(xa[8], a_hi[1], a_lo[1]);
      mma::split_tf32(xa[4 * XP], a_hi[2], a_lo[2]);
      mma::split_tf32(xa[4 * XP + 8], a_hi[3], a_lo[3]);
#pragma unroll
      for (int nt = 0; nt < COLS / 8; ++nt) {
        const float* yb = y + (kc + t) * PITCH + 8 * nt + g;
        uint32_t b_hi[2], b_lo[2];
        mma::split_tf32(yb[0], b_hi[0], b_lo[0]);
        mma::split_tf32(yb[4 * PITCH], b_hi[1], b_lo[1]);
        mma::mma_tf32x3(acc[nt], a_hi, a_lo, b_hi, b_lo, exact);
      }
    }
  } else {
    using E = typename wmma_elem<T>::type;
    const int lr = lane % 8, lm = lane / 8;  // ldmatrix: the row this lane addresses, of matrix lm
    for (int kc = 0; kc < channels; kc += 16) {
      uint32_t a[4];
      mma::ldmatrix_x4_trans(a, x + (kc + lr + 8 * (lm / 2)) * XP + row0 + 8 * (lm % 2));
#pragma unroll
      for (int np = 0; np < COLS / 16; ++np) {
        uint32_t b[4];
        mma::ldmatrix_x4_trans(b, y + (kc + lr + 8 * (lm % 2)) * PITCH + 16 * np + 8 * (lm / 2));
        mma::mma_16816<E>(acc[2 * np], a, b[0], b[1]);
        mma::mma_16816<E>(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
  }
}

// Half types: acc[16 x NC] += A Y^T over one 16-key step: a the m16n8k16 A fragment of the
// warp's 16 rows and the step's 16 keys (y points at the step's first key), Y channel-major
// in shared memory (Y[c][j] at y[c * PITCH + j]), the NC columns Y's channels; 16-channel
// pairs from `valid` on are skipped (warp-uniform). B = Y^T with j contiguous: plain
// ldmatrix, matrices (channels, keys) 0-7/0-7, 0-7/8-15, 8-15/0-7, 8-15/8-15 of pair cp.
template <typename T, int NC>
__device__ __forceinline__ void warp_a_yt_step(float (&acc)[NC / 8][4], const uint32_t (&a)[4], const T* y,
                                               int valid) {
  using E = typename wmma_elem<T>::type;
  const int lane = threadIdx.x % 32, lr = lane % 8, lm = lane / 8;
#pragma unroll
  for (int cp = 0; cp < NC / 16; ++cp) {
    if (16 * cp < valid) {
      uint32_t bv[4];
      mma::ldmatrix_x4(bv, y + (16 * cp + lr + 8 * (lm / 2)) * pam_mma::PITCH + 8 * (lm % 2));
      mma::mma_16816<E>(acc[2 * cp], a, bv[0], bv[1]);
      mma::mma_16816<E>(acc[2 * cp + 1], a, bv[2], bv[3]);
    }
  }
}

// Half types: the m16n8k16 A fragment of rows row0 .. row0 + 15 and columns k0 .. k0 + 15
// of a row-major matrix in shared memory (pitch PITCH), by ldmatrix: matrices (rows,
// columns) 0-7/0-7, 8-15/0-7, 0-7/8-15, 8-15/8-15 (mma.cuh's a[0..3]).
template <typename T>
__device__ __forceinline__ void ldmatrix_a(uint32_t (&a)[4], const T* m, int row0, int k0) {
  const int lane = threadIdx.x % 32, lr = lane % 8, lm = lane / 8;
  mma::ldmatrix_x4(a, m + (row0 + lr + 8 * (lm % 2)) * pam_mma::PITCH + k0 + 8 * (lm / 2));
}

// acc[16 x NC] += P Y^T for the warp's 16 rows: P [16 x BN] is held as the accumulator
// fragments p of a warp_xt_y product (p[nt][2h + e] = P[g + 8h][8 nt + 2t + e]), Y is
// channel-major in shared memory (Y[c][j] at y[c * PITCH + j]), the NC columns are Y's
// channels; 16-channel pairs from `valid` on are skipped (warp-uniform: they hold zeros,
// or lie past what was staged). O = P v^T (forward), dV = P^T dO^T and grad = dS X'^T are
// this product.
// Half types: P's A fragment for keys 16 kj .. 16 kj + 15 is the accumulator fragments of
// S tiles 2 kj and 2 kj + 1 rounded to E in registers; B = Y^T with Y stored [c][j], j
// contiguous: plain ldmatrix, matrices (channels, keys) 0-7/0-7, 0-7/8-15, 8-15/0-7,
// 8-15/8-15 of the 16-channel pair cp.
// fp32, without shuffles: the m16n8k8 A fragment wants columns t and t + 4 of an 8-key
// step, but the accumulator holds keys 2t and 2t + 1. The key order within a step does not
// matter to a sum over keys, so the step's keys are permuted: logical k = t is key 2t,
// k = t + 4 is key 2t + 1. Then a = (p[nt][0], p[nt][2], p[nt][1], p[nt][3]) as it is, and
// B's rows are read with the same permutation: b[0] = Y[c][8 nt + 2t], b[1] = Y[c][8 nt +
// 2t + 1], one 64-bit load. P is split into TF32 hi + lo as well (3xTF32 unless !exact).
template <typename T, int NC>
__device__ __forceinline__ void warp_p_yt(float (&acc)[NC / 8][4], const float (&p)[pam_mma::BN / 8][4],
                                          const T* y, int valid, bool exact) {
  using namespace pam_mma;
  const int lane = threadIdx.x % 32;
  if constexpr (std::is_same<T, float>::value) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      uint32_t a_hi[4], a_lo[4];
      mma::split_tf32(p[nt][0], a_hi[0], a_lo[0]);  // row g, key 2t     (k = t)
      mma::split_tf32(p[nt][2], a_hi[1], a_lo[1]);  // row g + 8, key 2t
      mma::split_tf32(p[nt][1], a_hi[2], a_lo[2]);  // row g, key 2t + 1 (k = t + 4)
      mma::split_tf32(p[nt][3], a_hi[3], a_lo[3]);  // row g + 8, key 2t + 1
#pragma unroll
      for (int cp = 0; cp < NC / 16; ++cp) {
        if (16 * cp < valid) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            uint32_t b_hi[2], b_lo[2];
            mma::ld_split_tf32_f2(y + (16 * cp + 8 * h + g) * PITCH + 8 * nt + 2 * t, b_hi[0], b_lo[0], b_hi[1],
                                  b_lo[1]);
            mma::mma_tf32x3(acc[2 * cp + h], a_hi, a_lo, b_hi, b_lo, exact);
          }
        }
      }
    }
  } else {
    using E = typename wmma_elem<T>::type;
#pragma unroll
    for (int kj = 0; kj < BN / 16; ++kj) {
      uint32_t pa[4];
      pa[0] = mma::pack2<E>(p[2 * kj][0], p[2 * kj][1]);
      pa[1] = mma::pack2<E>(p[2 * kj][2], p[2 * kj][3]);
      pa[2] = mma::pack2<E>(p[2 * kj + 1][0], p[2 * kj + 1][1]);
      pa[3] = mma::pack2<E>(p[2 * kj + 1][2], p[2 * kj + 1][3]);
      warp_a_yt_step<T, NC>(acc, pa, y + 16 * kj, valid);
    }
  }
}

// S^T fragments of a warp_xt_y product (keys j = j_row0 + g + 8h in element 2h + e,
// queries i = i0 + 8 nt + 2t + e) turned into P^T[j][i] = exp(scale * S^T[j][i] - lse_i)
// in place, from the forward's LSE; 0 past N on either axis (the zero padding alone would
// give exp(0 - lse)). The backward kernels that own keys recompute P this way.
__device__ __forceinline__ void probs_t(float (&s)[pam_mma::BN / 8][4], const float* lse, float scale,
                                        int j_row0, int i0, int n) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < pam_mma::BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int i = i0 + 8 * nt + 2 * t + e;
      const float lse_i = i < n ? lse[i] : 0.0f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = j_row0 + g + 8 * h;
        float& x = s[nt][2 * h + e];
        x = i < n && j < n ? expf(x * scale - lse_i) : 0.0f;
      }
    }
}

// In the fragments below, g = lane / 4 and t = lane % 4 (mma.cuh); the warp's rows are
// i0 + 16 warp + g (fragment elements 0, 1) and + g + 8 (elements 2, 3).
// q, k, v are read with row stride p.ld (pam.cu pads them to a multiple of 8 positions,
// with zeros, where N is not one); out, o_raw, residual are dense [B, Cv, N].
template <typename T>
__global__ void __launch_bounds__(pam_mma::BLOCK_THREADS, pam_mma::min_blocks<T>())
pam_forward_mma_kernel(PamArgs<T> p, T* out, T* o_raw, float* lse_out) {
#if DANET_HAS_MMA
  using namespace pam_mma;
  DANET_DYNAMIC_SMEM(smem);
  const int cqk = p.cqk, cv = p.cv, n = p.n, ld = p.ld;
  const int cqkp = cqk_padded(cqk);
  const bool exact = !p.tf32;  // P.V as 3xTF32 (fp32; ignored for half types)
  T* qs = reinterpret_cast<T*>(smem);  // q[c][i0 + i], c < cqkp
  T* ks = qs + cqkp * PITCH;           // two stages of k[c][j0 + j]
  T* vs = ks + 2 * cqkp * PITCH;       // two stages of v[c0 + c][j0 + j], c < CVT
  float* os = reinterpret_cast<float*>(vs);  // after the key loop: O^T[c][i], pitch OPITCH

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int i0 = blockIdx.x * BM, c0 = blockIdx.y * CVT, b = blockIdx.z;
  const T* q = p.q + (int64_t)b * cqk * ld;
  const T* k = p.k + (int64_t)b * cqk * ld;
  const T* v = p.v + ((int64_t)b * cv + c0) * ld;
  const int tiles = (n + BN - 1) / BN;

  stage_async(qs, q, cqkp, cqk, ld, i0);
  stage_async(ks, k, cqkp, cqk, ld, 0);
  stage_async(vs, v, CVT, cv - c0, ld, 0);
  mma::cp_async_commit();

  float m[2] = {-INFINITY, -INFINITY};  // running row max (identical in the row's 4 lanes)
  float l[2] = {0.0f, 0.0f};            // this lane's part of the running row sum
  float o[CVT / 8][4];                  // O[i][c0 + 8 nc + 2t + e % 2]
  mma::zero(o);

  for (int tile = 0; tile < tiles; ++tile) {
    const int j0 = tile * BN, st = tile % 2;
    if (tile + 1 < tiles) {  // prefetch the next tile into the other stage
      stage_async(ks + (st ^ 1) * cqkp * PITCH, k, cqkp, cqk, ld, j0 + BN);
      stage_async(vs + (st ^ 1) * CVT * PITCH, v, CVT, cv - c0, ld, j0 + BN);
    }
    mma::cp_async_wait_stage(tile + 1 < tiles);
    const T* kt = ks + st * cqkp * PITCH;
    const T* vt = vs + st * CVT * PITCH;

    // S[i][j] = sum_c q[c][i] k[c][j] (q and k channel-major).
    float s[BN / 8][4];
    mma::zero(s);
    warp_xt_y(s, qs, 16 * warp, kt, cqkp, true);

    // Online softmax on the fragments: row g (h = 0) and g + 8 (h = 1) of the warp, key
    // j0 + 8 nt + 2t + e % 2. Every key tile holds at least one valid key, so the new max
    // is finite for finite inputs and alpha = exp(m_old - m_new) is 0 on the first tile.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[nt][2 * h + e] *= p.scale;
          if (j0 + 8 * nt + 2 * t + e < n) tile_max = fmaxf(tile_max, s[nt][2 * h + e]);
        }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float m_new = fmaxf(m[h], tile_max);
      const float alpha = expf(m[h] - m_new);
      float row_sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = j0 + 8 * nt + 2 * t + e < n ? expf(s[nt][2 * h + e] - m_new) : 0.0f;
          s[nt][2 * h + e] = pv;
          row_sum += pv;
        }
      l[h] = l[h] * alpha + row_sum;
      m[h] = m_new;
#pragma unroll
      for (int nc = 0; nc < CVT / 8; ++nc) {
        o[nc][2 * h] *= alpha;
        o[nc][2 * h + 1] *= alpha;
      }
    }

    // O[i][c] += sum_j P[i][j] v[c][j] (channel pairs past Cv hold zeros only: skipped).
    warp_p_yt<T, CVT>(o, s, vt, cv - c0, exact);
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // Row sums over the row's 4 lanes; lse = m + log(l) (natural log) from block column 0.
  float inv_l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    inv_l[h] = 1.0f / l[h];
    const int i = i0 + 16 * warp + g + 8 * h;
    if (blockIdx.y == 0 && t == 0 && i < n) lse_out[(int64_t)b * n + i] = m[h] + logf(l[h]);
  }
  // O^T through shared fp32 (the v stages are free: the loop ended on a barrier and no
  // copy is in flight), so that consecutive threads store consecutive positions.
#pragma unroll
  for (int nc = 0; nc < CVT / 8; ++nc)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      os[(8 * nc + 2 * t + e % 2) * OPITCH + 16 * warp + g + 8 * (e / 2)] = o[nc][e] * inv_l[e / 2];
  __syncthreads();
  store_staged<T, CVT>(os, out, o_raw, p.residual, scalar_or_one(p.gamma), b, c0, cv, i0, n);
#else
  __trap();  // the host dispatch launches this kernel on sm_80 and newer only
#endif
}

// ---- forward, the whole v width per block (fp16/bf16; the "whole_cv" variant) ----------
// pam_forward_whole_cv_kernel: S computed once per (query, key) pair, where
// pam_forward_mma_kernel computes it once per 128-channel block (2*N^2*(4*Cqk + Cv) FLOPs
// at Cv = 512; here the minimum 2*N^2*(Cqk + Cv), 0.75x). One block of 8 warps per (query
// tile of BQ = 32, batch item), all v channels; warp w = 4 qg + cw owns queries
// i0 + 16 qg .. + 15 and v channels 128 cw .. + 127 (O: 64 fp32 registers, as the other
// forward's). Per key tile of 64 (k and v double buffered by cp.async):
//   S for the group's 16 queries x the warp's 16 keys 16 cw .. + 15 (each pair once);
//   the row maxima of the four warps' keys meet in shared memory, so all four hold the
//   same running max m; P = exp(scale S - m) on the warp's keys, its row sums kept per
//   warp (summed over the four at the end); P rounded to T into a shared [32 x 64] tile;
//   O += P v^T for the warp's channels, P's A fragments by ldmatrix from that tile.
// Three barriers a key tile against one, and one block (8 warps) per SM by shared memory
// (176128 bytes at Cqk = 64, Cv = 512) against three of 4 warps: whether the saved S products pay
// for that needs a GPU to measure. fp32 is left out (its v stages would not fit).
// The reach of the two variant kernels (this one and pam_bwd_fused_mma_kernel below): 8 warps
// of which 4 share a block's rows, each holding 128 of the v channels and 16 of the qk
// channels: fp16/bf16 with Cqk <= 64 and Cv <= 512.
namespace pam_wide {
constexpr int CQK_MAX = 64;
constexpr int CV_MAX = 512;
constexpr int CVW = CV_MAX / 4;  // v channels a warp
template <typename T>
constexpr bool fits(int cqk, int cv) {
  return sizeof(T) == 2 && cqk > 0 && cqk <= CQK_MAX && cv > 0 && cv <= CV_MAX;
}
}  // namespace pam_wide

namespace pam_whole {
using namespace pam_wide;
constexpr int WARPS = 8;
constexpr int BLOCK_THREADS = 32 * WARPS;
constexpr int BQ = 32;           // queries per block: two groups of 16 (warp / 4)
constexpr int QPITCH = BQ + 8;   // q rows: 80 bytes, conflict-free ldmatrix
// Dynamic shared memory: q (pitch QPITCH), two k stages and two v stages (pitch PITCH), the
// P tile, then the warps' fp32 row maxima (at the end, row sums) of 16 rows each.
template <typename T>
inline size_t smem_bytes(int cqk, int cv) {
  const int cqkp = pam_mma::cqk_padded(cqk), cvp = pam_mma::cqk_padded(cv);
  const int elems = cqkp * QPITCH + 2 * (cqkp + cvp) * pam_mma::PITCH + BQ * pam_mma::PITCH;
  return static_cast<size_t>(elems) * sizeof(T) + WARPS * 16 * sizeof(float);
}
}  // namespace pam_whole

template <typename T>
__global__ void __launch_bounds__(pam_whole::BLOCK_THREADS, 1)
pam_forward_whole_cv_kernel(PamArgs<T> p, T* out, T* o_raw, float* lse_out) {
#if DANET_HAS_MMA
  static_assert(sizeof(T) == 2, "fp16/bf16 only (pam_wide::fits)");
  using namespace pam_whole;
  using pam_mma::BN;
  using pam_mma::PITCH;
  using E = typename wmma_elem<T>::type;
  DANET_DYNAMIC_SMEM(smem);
  const int cqk = p.cqk, cv = p.cv, n = p.n, ld = p.ld;
  const int cqkp = pam_mma::cqk_padded(cqk), cvp = pam_mma::cqk_padded(cv);
  T* qs = reinterpret_cast<T*>(smem);  // q[c][i0 + i], pitch QPITCH
  T* ks = qs + cqkp * QPITCH;          // two stages of k[c][j0 + j]
  T* vs = ks + 2 * cqkp * PITCH;       // two stages of v[c][j0 + j], c < cvp
  T* ps = vs + 2 * cvp * PITCH;        // P[i][j] of the current key tile, rounded to T
  float* rows = reinterpret_cast<float*>(ps + BQ * PITCH);  // [warp][16]: row maxima, then sums
  float* os = reinterpret_cast<float*>(vs);  // after the key loop: O^T[c][i], pitch BQ + 4

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int qg = warp / 4, cw = warp % 4;  // query group, key quarter and channel quarter
  const int i0 = blockIdx.x * BQ, b = blockIdx.y;
  const T* q = p.q + (int64_t)b * cqk * ld;
  const T* k = p.k + (int64_t)b * cqk * ld;
  const T* v = p.v + (int64_t)b * cv * ld;
  const int tiles = (n + BN - 1) / BN;

  stage_async<T, BQ, QPITCH, BLOCK_THREADS>(qs, q, cqkp, cqk, ld, i0);
  stage_async<T, BN, PITCH, BLOCK_THREADS>(ks, k, cqkp, cqk, ld, 0);
  stage_async<T, BN, PITCH, BLOCK_THREADS>(vs, v, cvp, cv, ld, 0);
  mma::cp_async_commit();

  float m[2] = {-INFINITY, -INFINITY};  // running row max, the same in the group's 4 warps
  float l[2] = {0.0f, 0.0f};            // this lane's part of the row sum over the warp's keys
  float o[CVW / 8][4];                  // O[i][128 cw + 8 nc + 2t + e % 2]
  mma::zero(o);

  for (int tile = 0; tile < tiles; ++tile) {
    const int j0 = tile * BN, st = tile % 2;
    if (tile + 1 < tiles) {
      stage_async<T, BN, PITCH, BLOCK_THREADS>(ks + (st ^ 1) * cqkp * PITCH, k, cqkp, cqk, ld, j0 + BN);
      stage_async<T, BN, PITCH, BLOCK_THREADS>(vs + (st ^ 1) * cvp * PITCH, v, cvp, cv, ld, j0 + BN);
    }
    mma::cp_async_wait_stage(tile + 1 < tiles);
    const T* kt = ks + st * cqkp * PITCH;
    const T* vt = vs + st * cvp * PITCH;

    // S[i][j] for rows i0 + 16 qg + g + 8h (element 2h + e) and keys j0 + 16 cw + 8 nt + 2t + e.
    float s[2][4];
    mma::zero(s);
    warp_xt_y<T, 16, QPITCH>(s, qs, 16 * qg, kt + 16 * cw, cqkp, true);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[nt][2 * h + e] *= p.scale;
          if (j0 + 16 * cw + 8 * nt + 2 * t + e < n) tile_max = fmaxf(tile_max, s[nt][2 * h + e]);
        }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      if (t == 0) rows[warp * 16 + g + 8 * h] = tile_max;
    }
    __syncthreads();
    // The group's tile max (key 0 of every tile is valid, so it is finite for finite inputs
    // and alpha is 0 on the first tile); P on the warp's keys, rounded to T into ps.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = rows[(4 * qg) * 16 + g + 8 * h];
#pragma unroll
      for (int w = 1; w < 4; ++w) tile_max = fmaxf(tile_max, rows[(4 * qg + w) * 16 + g + 8 * h]);
      const float m_new = fmaxf(m[h], tile_max);
      const float alpha = expf(m[h] - m_new);
      float row_sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const bool valid = j0 + 16 * cw + 8 * nt + 2 * t + e < n;
          const float pv = valid ? expf(s[nt][2 * h + e] - m_new) : 0.0f;
          s[nt][2 * h + e] = pv;
          row_sum += pv;
        }
        *reinterpret_cast<uint32_t*>(ps + (16 * qg + g + 8 * h) * PITCH + 16 * cw + 8 * nt + 2 * t) =
            mma::pack2<E>(s[nt][2 * h], s[nt][2 * h + 1]);
      }
      l[h] = l[h] * alpha + row_sum;
      m[h] = m_new;
#pragma unroll
      for (int nc = 0; nc < CVW / 8; ++nc) {
        o[nc][2 * h] *= alpha;
        o[nc][2 * h + 1] *= alpha;
      }
    }
    __syncthreads();
    // O[i][c] += sum_j P[i][j] v[c][j] over the warp's channels and all 64 keys.
#pragma unroll
    for (int kj = 0; kj < BN / 16; ++kj) {
      uint32_t a[4];
      ldmatrix_a(a, ps, 16 * qg, 16 * kj);
      warp_a_yt_step<T, CVW>(o, a, vt + cw * CVW * PITCH + 16 * kj, cv - cw * CVW);
    }
    __syncthreads();  // every warp is done with this stage, ps and rows before they are reused
  }

  // Row sums: over the row's 4 lanes, then the group's 4 warps; lse = m + log(l) (natural
  // log) from the key quarter 0 warps.
  float inv_l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    if (t == 0) rows[warp * 16 + g + 8 * h] = l[h];
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) sum += rows[(4 * qg + w) * 16 + g + 8 * h];
    inv_l[h] = 1.0f / sum;
    const int i = i0 + 16 * qg + g + 8 * h;
    if (cw == 0 && t == 0 && i < n) lse_out[(int64_t)b * n + i] = m[h] + logf(sum);
  }
  // O^T through shared fp32 (the v stages are free: the loop ended on a barrier and no copy
  // is in flight), so that consecutive threads store consecutive positions.
#pragma unroll
  for (int nc = 0; nc < CVW / 8; ++nc)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = cw * CVW + 8 * nc + 2 * t + e % 2;
      if (c < cvp) os[c * (BQ + 4) + 16 * qg + g + 8 * (e / 2)] = o[nc][e] * inv_l[e / 2];
    }
  __syncthreads();
  store_staged<T, CV_MAX, BQ, BLOCK_THREADS>(os, out, o_raw, p.residual, scalar_or_one(p.gamma), b, 0, cv, i0, n);
#else
  __trap();  // the host dispatch launches this kernel on sm_80 and newer only
#endif
}

// ---- backward -----------------------------------------------------------------------

// rowdot[b, i] = sum_c dout[c][i] o[c][i]; delta = gamma * rowdot. One thread per row;
// neighbouring threads read neighbouring positions, so the channel loop coalesces.
template <typename T>
__global__ void __launch_bounds__(THREADS)
pam_delta_kernel(const T* dout, const T* o, const float* gamma, int cv, int n, float* rowdot,
                 float* delta) {
  const int i = blockIdx.x * THREADS + threadIdx.x;
  const int b = blockIdx.y;
  if (i >= n) return;
  const int64_t base = (int64_t)b * cv * n + i;
  float s = 0.0f;
  for (int c = 0; c < cv; ++c) s += to_float(dout[base + (int64_t)c * n]) * to_float(o[base + (int64_t)c * n]);
  rowdot[(int64_t)b * n + i] = s;
  delta[(int64_t)b * n + i] = s * scalar_or_one(gamma);
}

// ---- backward on mma.sync (fp16/bf16 on m16n8k16, fp32 on m16n8k8 TF32) ----------------
// Both kernels read q, k, v, dout with row stride p.ld (zero-padded by pam.cu as for the
// forward) and write dense [B, C, N] gradients. Warp w owns the block's positions
// o0 + 16w .. + 15 (keys for dV and dK, queries for dQ) as the rows of its fragments; the
// other axis streams in tiles of 64 (double-buffered cp.async), and P is recomputed from
// the LSE in registers as in the forward. Positions past N get P = 0 explicitly (the zero
// padding alone would give exp(0 - lse)). dO = gamma * dout enters as an fp32 factor on
// the products, not as rounded operands.

// dV[c][j] = gamma * sum_i dout[c][i] P[i][j]: one block per (key tile of 64, v-channel
// tile of CVT, batch item), looping over query tiles: the forward's kernel with q and k
// exchanged, P^T[j][i] = exp(scale * k_j.q_i - lse_i) in place of the online softmax, and
// dout for v. Shared memory: pam_mma::smem_bytes(cqk).
template <typename T>
__global__ void __launch_bounds__(pam_mma::BLOCK_THREADS, pam_mma::min_blocks<T>())
pam_dv_mma_kernel(PamArgs<T> p, T* dv) {
#if DANET_HAS_MMA
  using namespace pam_mma;
  DANET_DYNAMIC_SMEM(smem);
  const int cqk = p.cqk, cv = p.cv, n = p.n, ld = p.ld;
  const int cqkp = cqk_padded(cqk);
  const bool exact = !p.tf32;
  T* ks = reinterpret_cast<T*>(smem);  // k[c][j0 + j], c < cqkp
  T* qs = ks + cqkp * PITCH;           // two stages of q[c][i0 + i]
  T* ds = qs + 2 * cqkp * PITCH;       // two stages of dout[c0 + c][i0 + i], c < CVT
  float* os = reinterpret_cast<float*>(ds);  // after the query loop: dV^T[c][j], pitch OPITCH

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int j0 = blockIdx.x * BM, c0 = blockIdx.y * CVT, b = blockIdx.z;
  const T* q = p.q + (int64_t)b * cqk * ld;
  const T* k = p.k + (int64_t)b * cqk * ld;
  const T* dout = p.dout + ((int64_t)b * cv + c0) * ld;
  const float* lse = p.lse + (int64_t)b * n;
  const int tiles = (n + BN - 1) / BN;

  stage_async(ks, k, cqkp, cqk, ld, j0);
  stage_async(qs, q, cqkp, cqk, ld, 0);
  stage_async(ds, dout, CVT, cv - c0, ld, 0);
  mma::cp_async_commit();

  float acc[CVT / 8][4];  // dV[j][c0 + 8 nc + 2t + e % 2] / gamma
  mma::zero(acc);

  for (int tile = 0; tile < tiles; ++tile) {
    const int i0 = tile * BN, st = tile % 2;
    if (tile + 1 < tiles) {
      stage_async(qs + (st ^ 1) * cqkp * PITCH, q, cqkp, cqk, ld, i0 + BN);
      stage_async(ds + (st ^ 1) * CVT * PITCH, dout, CVT, cv - c0, ld, i0 + BN);
    }
    mma::cp_async_wait_stage(tile + 1 < tiles);
    const T* qt = qs + st * cqkp * PITCH;
    const T* dt = ds + st * CVT * PITCH;

    // S^T[j][i] = sum_c k[c][j] q[c][i], addressed as the forward's q^T k.
    float s[BN / 8][4];
    mma::zero(s);
    warp_xt_y(s, ks, 16 * warp, qt, cqkp, true);
    probs_t(s, lse, p.scale, j0 + 16 * warp, i0, n);
    // dV[j][c] += sum_i P^T[j][i] dout[c][i] (dout stored [c][i]).
    warp_p_yt<T, CVT>(acc, s, dt, cv - c0, exact);
    __syncthreads();
  }

#pragma unroll
  for (int nc = 0; nc < CVT / 8; ++nc)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      os[(8 * nc + 2 * t + e % 2) * OPITCH + 16 * warp + g + 8 * (e / 2)] = acc[nc][e];
  __syncthreads();
  store_staged<T, CVT>(os, dv, nullptr, nullptr, scalar_or_one(p.gamma), b, c0, cv, j0, n);
#else
  __trap();  // the host dispatch launches this kernel on sm_80 and newer only
#endif
}

// FOR_DK: dK[c][j] = sum_i q[c][i] dS[i][j], one block per (key tile of 64, qk-channel tile
//         of GC, batch item), looping over query tiles;
// else:   dQ[c][i] = sum_j k[c][j] dS[i][j], one block per (query tile, qk-channel tile),
//         looping over key tiles;
// dS[i][j] = scale * P[i][j] * (gamma * sum_c dout[c][i] v[c][j] - delta_i). With "own" the
// block's positions and "other" the streamed ones: X = (k | q) and Y = (v | dout) of the own
// positions, X' = (q | k) and Y' = (dout | v) of the other. Per other tile: S = X^T X'
// (Cqk), dP = Y^T Y' over Cv in chunks of YC (own and other chunk both staged, double
// buffered over the flattened (tile, chunk) steps), then grad[o][c] += dS[o][u] X'[c][u].
// Shared memory: pam_mma::dqk_smem_bytes(cqk).
template <typename T, bool FOR_DK>
__global__ void __launch_bounds__(pam_mma::BLOCK_THREADS, pam_mma::min_blocks<T>())
pam_dqk_mma_kernel(PamArgs<T> p, T* grad) {
#if DANET_HAS_MMA
  using namespace pam_mma;
  DANET_DYNAMIC_SMEM(smem);
  const int cqk = p.cqk, cv = p.cv, n = p.n, ld = p.ld;
  const int cqkp = cqk_padded(cqk);
  const bool exact = !p.tf32;  // dP and grad as 3xTF32 (fp32); S always
  T* xo = reinterpret_cast<T*>(smem);  // X[c][o0 + o], c < cqkp
  T* xu = xo + cqkp * PITCH;           // two stages of X'[c][u0 + u] (by tile parity)
  T* yo = xu + 2 * cqkp * PITCH;       // two stages of Y[ch + c][o0 + o], c < YC (by step parity)
  T* yu = yo + 2 * YC * PITCH;         // two stages of Y'[ch + c][u0 + u]
  float* os = reinterpret_cast<float*>(yo);  // after the loop: grad^T[c][o], pitch OPITCH

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int o0 = blockIdx.x * BM, c0 = blockIdx.y * GC, b = blockIdx.z;
  const T* q = p.q + (int64_t)b * cqk * ld;
  const T* k = p.k + (int64_t)b * cqk * ld;
  const T* v = p.v + (int64_t)b * cv * ld;
  const T* dout = p.dout + (int64_t)b * cv * ld;
  const T* x_own = FOR_DK ? k : q;
  const T* x_oth = FOR_DK ? q : k;
  const T* y_own = FOR_DK ? v : dout;
  const T* y_oth = FOR_DK ? dout : v;
  const float* lse = p.lse + (int64_t)b * n;
  const float* delta = p.delta + (int64_t)b * n;
  const float gm = scalar_or_one(p.gamma);
  const int tiles = (n + BN - 1) / BN;
  const int chunks = (cv + YC - 1) / YC;  // cv > 0 (pam.cu)
  const int steps = tiles * chunks;

  const auto load_step = [&](int step) {
    const int u = step / chunks, ch = step % chunks, buf = step % 2;
    if (ch == 0) stage_async(xu + (u % 2) * cqkp * PITCH, x_oth, cqkp, cqk, ld, u * BN);
    stage_async(yo + buf * YC * PITCH, y_own + (int64_t)ch * YC * ld, YC, cv - ch * YC, ld, o0);
    stage_async(yu + buf * YC * PITCH, y_oth + (int64_t)ch * YC * ld, YC, cv - ch * YC, ld, u * BN);
  };
  stage_async(xo, x_own, cqkp, cqk, ld, o0);
  load_step(0);
  mma::cp_async_commit();

  // dQ: the rows are queries, their lse and delta fixed for the block.
  float lse_r[2] = {0.0f, 0.0f}, delta_r[2] = {0.0f, 0.0f};
  if constexpr (!FOR_DK) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = o0 + 16 * warp + g + 8 * h;
      if (i < n) {
        lse_r[h] = lse[i];
        delta_r[h] = delta[i];
      }
    }
  }

  float s[BN / 8][4], dp[BN / 8][4];  // S and dP of the own rows and the other tile
  float acc[GC / 8][4];               // grad[o][c0 + 8 nc + 2t + e % 2]
  mma::zero(acc);

  for (int step = 0; step < steps; ++step) {
    const int u = step / chunks, ch = step % chunks, buf = step % 2;
    if (step + 1 < steps) {
      load_step(step + 1);
    }
    mma::cp_async_wait_stage(step + 1 < steps);
    const T* xut = xu + (u % 2) * cqkp * PITCH;

    if (ch == 0) {  // S = X^T X' over all Cqk; dP starts
      mma::zero(s);
      mma::zero(dp);
      warp_xt_y(s, xo, 16 * warp, xut, cqkp, true);
    }
    {  // dP += Y^T Y' over this chunk's channels (chunk pairs past Cv hold zeros: skipped)
      const T* yot = yo + buf * YC * PITCH;
      const T* yut = yu + buf * YC * PITCH;
      warp_xt_y(dp, yot, 16 * warp, yut, min(YC, (cv - ch * YC + 15) / 16 * 16), exact);
    }
    if (ch == chunks - 1) {
      // dS in place of S: own position o0 + 16 warp + g + 8h (element 2h + e), other
      // position u * BN + 8 nt + 2t + e; the query is the column for dK, the row for dQ.
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int uu = u * BN + 8 * nt + 2 * t + e;
          float lse_c = 0.0f, delta_c = 0.0f;
          if constexpr (FOR_DK) {
            if (uu < n) {
              lse_c = lse[uu];
              delta_c = delta[uu];
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int oo = o0 + 16 * warp + g + 8 * h;
            const float lse_i = FOR_DK ? lse_c : lse_r[h];
            const float delta_i = FOR_DK ? delta_c : delta_r[h];
            float& x = s[nt][2 * h + e];
            const float pr = uu < n && oo < n ? expf(x * p.scale - lse_i) : 0.0f;
            x = p.scale * pr * (gm * dp[nt][2 * h + e] - delta_i);
          }
        }
      // grad[o][c] += sum_u dS[o][u] X'[c][u] (X' stored [c][u]; it holds cqkp channel
      // rows, so pairs from there on are skipped).
      warp_p_yt<T, GC>(acc, s, xut + c0 * PITCH, cqkp - c0, exact);
    }
    __syncthreads();  // every warp is done with this step's stages before they are refilled
  }

  // grad^T through shared fp32 (the chunk stages are free: no copy is in flight).
#pragma unroll
  for (int nc = 0; nc < GC / 8; ++nc)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      os[(8 * nc + 2 * t + e % 2) * OPITCH + 16 * warp + g + 8 * (e / 2)] = acc[nc][e];
  __syncthreads();
  store_staged<T, GC>(os, grad, nullptr, nullptr, 1.0f, b, c0, cqk, o0, n);
#else
  __trap();  // the host dispatch launches this kernel on sm_80 and newer only
#endif
}

// ---- fused backward on mma.sync (fp16/bf16; the "fused" variant) -----------------------
// pam_bwd_fused_mma_kernel: P and dS computed once per (key, query) tile pair, where the
// split kernels above compute P three times and dP twice (2*N^2*(ceil(Cv/128)*Cqk + Cv)
// + 2 * 2*N^2*(2*Cqk + Cv) FLOPs; here 2*N^2*(4*Cqk + 2*Cv + 2*Cqk), the S^T product
// repeated by the 4 warps of a key group: 1.24x the minimum at Cqk = Cv/8, against 1.68x).
// FlashAttention-2's backward for a wide v (Cv = 512): one block of 8 warps per (key tile
// of BK = 32, batch item), looping over query tiles of 64 (q and dout double buffered by
// cp.async, k and v resident). Warp w = 4 kw + cw owns keys j0 + 16 kw .. + 15 and v
// channels 128 cw .. + 127, so dV (16 x 128 fp32, 64 registers, as the forward's O) and
// its share of dK (16 x 16) stay in registers. Per query tile:
//   S^T = k^T q (each warp, its 16 keys x 64 queries), P^T = exp(scale S^T - lse) in place;
//   dV^T += P^T dout^T over the warp's channels;
//   dP^T = v^T dout: each warp's 128 channels, the key group's 4 partials summed through
//   shared memory (in the dout stage, once every warp is done reading it): warp cw sums
//   queries 16 cw .. + 15 and writes dS^T = scale P^T (gamma dP^T - delta) there as T;
//   dK^T += dS^T q^T (the key group's 16 keys, 16 qk channels a warp);
//   dQ^T += k dS^T (qk channels 16 cw .. + 15, queries 32 kw .. + 31; k^T staged once),
//   added atomically (a float2 atomicAdd on sm_90 for two neighbouring queries) to an fp32
//   [B, Cqk, N] buffer the host zeroes and converts:
//   not deterministic, so danet_ops.cuda takes the split kernels under
//   torch.use_deterministic_algorithms.
// fp32 is left out: its stages would need twice the shared memory (there is none left) and
// the 3xTF32 fragments twice the registers. Cqk <= 64, Cv <= 512 (pam_wide::fits).
namespace pam_fused {
using namespace pam_wide;
constexpr int WARPS = 8;
constexpr int BLOCK_THREADS = 32 * WARPS;
constexpr int BK = 32;               // keys per block: two groups of 16 (warp / 4)
constexpr int KPITCH = BK + 8;       // resident k, v rows: 80 bytes, conflict-free ldmatrix
constexpr int EXCHANGE_BYTES = WARPS * (pam_mma::BN / 8) * 32 * 16;  // dP^T partials, float4 a lane
static_assert(CQK_MAX <= pam_mma::BN, "k^T rows (pitch PITCH) hold the qk channels");

// Elements of T in one stage's dout part: cv rows of the query tile, and room for the dP^T
// exchange where cv is small.
template <typename T>
constexpr int dout_stage_elems(int cv) {
  return pam_mma::cqk_padded(cv) * pam_mma::PITCH * static_cast<int>(sizeof(T)) >= EXCHANGE_BYTES
             ? pam_mma::cqk_padded(cv) * pam_mma::PITCH
             : EXCHANGE_BYTES / static_cast<int>(sizeof(T));
}
// Dynamic shared memory: resident k and v (pitch KPITCH), k^T and dS^T (BK rows of PITCH),
// two stages of (dout, q). At Cqk = 64, Cv = 512: 221184 bytes (sm_90 allows 232448).
template <typename T>
inline size_t smem_bytes(int cqk, int cv) {
  const int resident = (pam_mma::cqk_padded(cqk) + pam_mma::cqk_padded(cv)) * KPITCH + 2 * BK * pam_mma::PITCH;
  const int stage = dout_stage_elems<T>(cv) + pam_mma::cqk_padded(cqk) * pam_mma::PITCH;
  return static_cast<size_t>(resident + 2 * stage) * sizeof(T);
}
}  // namespace pam_fused

// dK, dV and dQ (into dq_acc, fp32 [B, Cqk, N], zeroed) of one (key tile, batch item); dk,
// dv dense [B, C, N]; q, k, v, dout with row stride p.ld as for the split kernels.
template <typename T>
__global__ void __launch_bounds__(pam_fused::BLOCK_THREADS, 1)
pam_bwd_fused_mma_kernel(PamArgs<T> p, T* dk, T* dv, float* dq_acc) {
#if DANET_HAS_MMA
  static_assert(sizeof(T) == 2, "fp16/bf16 only (pam_wide::fits)");
  using namespace pam_fused;
  using pam_mma::BN;
  using pam_mma::PITCH;
  using E = typename wmma_elem<T>::type;
  DANET_DYNAMIC_SMEM(smem);
  const int cqk = p.cqk, cv = p.cv, n = p.n, ld = p.ld;
  const int cqkp = pam_mma::cqk_padded(cqk), cvp = pam_mma::cqk_padded(cv);
  const int dout_elems = dout_stage_elems<T>(cv), stage_elems = dout_elems + cqkp * PITCH;
  T* ks = reinterpret_cast<T*>(smem);  // k[c][j0 + j], pitch KPITCH
  T* vs = ks + cqkp * KPITCH;          // v[c][j0 + j], pitch KPITCH
  T* kts = vs + cvp * KPITCH;          // k^T[j][c], c < CQK_MAX (zero from cqk on)
  T* dsts = kts + BK * PITCH;          // dS^T[j][i] of the current query tile
  T* stages = dsts + BK * PITCH;       // two stages of (dout[c][i0 + i], then q[c][i0 + i])
  float* os = reinterpret_cast<float*>(stages);  // after the loop: dV^T then dK^T [c][j]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int kw = warp / 4, cw = warp % 4;  // key group, channel (and query) quarter
  const int j0 = blockIdx.x * BK, b = blockIdx.y;
  const T* q = p.q + (int64_t)b * cqk * ld;
  const T* k = p.k + (int64_t)b * cqk * ld;
  const T* v = p.v + (int64_t)b * cv * ld;
  const T* dout = p.dout + (int64_t)b * cv * ld;
  const float* lse = p.lse + (int64_t)b * n;
  const float* delta = p.delta + (int64_t)b * n;
  const float gm = scalar_or_one(p.gamma);
  const int tiles = (n + BN - 1) / BN;

  const auto load_tile = [&](int tile) {
    T* st = stages + (tile % 2) * stage_elems;
    stage_async<T, BN, PITCH, BLOCK_THREADS>(st, dout, cvp, cv, ld, tile * BN);
    stage_async<T, BN, PITCH, BLOCK_THREADS>(st + dout_elems, q, cqkp, cqk, ld, tile * BN);
  };
  stage_async<T, BK, KPITCH, BLOCK_THREADS>(ks, k, cqkp, cqk, ld, j0);
  stage_async<T, BK, KPITCH, BLOCK_THREADS>(vs, v, cvp, cv, ld, j0);
  load_tile(0);
  mma::cp_async_commit();

  float dva[CVW / 8][4];  // dV^T[j][128 cw + 8 nc + 2t + e % 2] / gamma
  float dka[2][4];        // dK^T[j][16 cw + 8 nc + 2t + e % 2]
  mma::zero(dva);
  mma::zero(dka);

  for (int tile = 0; tile < tiles; ++tile) {
    const int i0 = tile * BN;
    if (tile + 1 < tiles) load_tile(tile + 1);
    mma::cp_async_wait_stage(tile + 1 < tiles);
    T* dot = stages + (tile % 2) * stage_elems;
    const T* qt = dot + dout_elems;
    if (tile == 0) {  // k^T, once (read by dQ after this tile's barriers)
      for (int e = threadIdx.x; e < BK * CQK_MAX; e += BLOCK_THREADS) {
        const int j = e / CQK_MAX, c = e % CQK_MAX;
        kts[j * PITCH + c] = c < cqkp ? ks[c * KPITCH + j] : from_float<T>(0.0f);
      }
    }

    // P^T of the key group's 16 keys and the 64 queries of the tile.
    float s[BN / 8][4];
    mma::zero(s);
    warp_xt_y<T, BN, KPITCH>(s, ks, 16 * kw, qt, cqkp, true);
    probs_t(s, lse, p.scale, j0 + 16 * kw, i0, n);
    // dV^T[j][c] += sum_i P^T[j][i] dout[c][i] over the warp's 128 channels.
    warp_p_yt<T, CVW>(dva, s, dot + cw * CVW * PITCH, cv - cw * CVW, true);
    // dP^T[j][i] = sum_c v[c][j] dout[c][i], this warp's part of the channels.
    float dp[BN / 8][4];
    mma::zero(dp);
    const int part = min(CVW, cvp - cw * CVW);
    if (part > 0) warp_xt_y<T, BN, KPITCH>(dp, vs + cw * CVW * KPITCH, 16 * kw, dot + cw * CVW * PITCH, part, true);
    __syncthreads();  // every warp is done with this dout stage: it holds the exchange now
    float4* exchange = reinterpret_cast<float4*>(dot);  // [warp][nt][lane]
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
      exchange[(warp * (BN / 8) + nt) * 32 + lane] = make_float4(dp[nt][0], dp[nt][1], dp[nt][2], dp[nt][3]);
    __syncthreads();
    // dS^T of the key group's 16 keys and queries 16 cw .. + 15 (fragment tiles 2 cw and
    // 2 cw + 1; the loop runs over all eight so that s is indexed by constants).
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      if (nt / 2 != cw) continue;  // warp-uniform
      float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float4 x = exchange[((4 * kw + w) * (BN / 8) + nt) * 32 + lane];
        d[0] += x.x;
        d[1] += x.y;
        d[2] += x.z;
        d[3] += x.w;
      }
      float dlt[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = i0 + 8 * nt + 2 * t + e;
        dlt[e] = i < n ? delta[i] : 0.0f;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float ds[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) ds[e] = p.scale * s[nt][2 * h + e] * (gm * d[2 * h + e] - dlt[e]);
        *reinterpret_cast<uint32_t*>(dsts + (16 * kw + g + 8 * h) * PITCH + 8 * nt + 2 * t) =
            mma::pack2<E>(ds[0], ds[1]);
      }
    }
    __syncthreads();
    // dK^T[j][c] += sum_i dS^T[j][i] q[c][i], dS^T's A fragments by ldmatrix.
#pragma unroll
    for (int kj = 0; kj < BN / 16; ++kj) {
      uint32_t a[4];
      ldmatrix_a(a, dsts, 16 * kw, 16 * kj);
      warp_a_yt_step<T, 16>(dka, a, qt + 16 * cw * PITCH + 16 * kj, cqkp - 16 * cw);
    }
    // dQ^T[c][i] += sum_j k^T[j][c] dS^T[j][i] for qk channels 16 cw .. + 15 and queries
    // i0 + 32 kw .. + 31: this key tile's share, added atomically, two neighbouring queries
    // (one fragment register pair) at a time where their address is 8-byte aligned.
    if (16 * cw < cqk) {
      float dqa[4][4];
      mma::zero(dqa);
      warp_xt_y<T, 32>(dqa, kts, 16 * cw, dsts + 32 * kw, BK, true);
#pragma unroll
      for (int nc = 0; nc < 4; ++nc)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int c = 16 * cw + g + 8 * h, i = i0 + 32 * kw + 8 * nc + 2 * t;
          if (c >= cqk || i >= n) continue;
          float* dst = dq_acc + ((int64_t)b * cqk + c) * n + i;
          if (i + 1 < n && n % 2 == 0) {
            mma::red_add_f32x2(dst, dqa[nc][2 * h], dqa[nc][2 * h + 1]);
          } else {
            atomicAdd(dst, dqa[nc][2 * h]);
            if (i + 1 < n) atomicAdd(dst + 1, dqa[nc][2 * h + 1]);
          }
        }
    }
    __syncthreads();  // every warp is done with this stage and dS^T before they are refilled
  }

  // dV^T and dK^T through shared fp32 (the stages are free: no copy is in flight), then
  // stored with consecutive threads on consecutive keys.
  float* dks = os + cvp * (BK + 4);
#pragma unroll
  for (int nc = 0; nc < CVW / 8; ++nc)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = cw * CVW + 8 * nc + 2 * t + e % 2;
      if (c < cvp) os[c * (BK + 4) + 16 * kw + g + 8 * (e / 2)] = dva[nc][e];
    }
#pragma unroll
  for (int nc = 0; nc < 2; ++nc)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 16 * cw + 8 * nc + 2 * t + e % 2;
      if (c < cqkp) dks[c * (BK + 4) + 16 * kw + g + 8 * (e / 2)] = dka[nc][e];
    }
  __syncthreads();
  store_staged<T, CV_MAX, BK, BLOCK_THREADS>(os, dv, nullptr, nullptr, gm, b, 0, cv, j0, n);
  store_staged<T, CQK_MAX, BK, BLOCK_THREADS>(dks, dk, nullptr, nullptr, 1.0f, b, 0, cqk, j0, n);
#else
  __trap();  // the host dispatch launches this kernel on sm_80 and newer only
#endif
}

// ---- backward on the 64x64 tile kernels (every dtype before sm_80 or with a Cqk too large
// for the mma kernels' shared memory) -----------------------------------------------------

// dV[c][j] = sum_i dO[c][i] P[i][j]: one block per (key tile, v-channel tile, batch item).
template <typename T>
__global__ void __launch_bounds__(THREADS) pam_dv_kernel(PamArgs<T> p, T* dv) {
  constexpr int LD = ld_of<T>();
  __shared__ __align__(32) T as[KC * LD], bs[KC * LD];
  __shared__ __align__(32) T ps[TILE * LD];   // P[i][j]
  __shared__ __align__(32) T dos[TILE * LD];  // dO[c][i]
  __shared__ __align__(32) float prod[product_tile_size<T>()];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int n = p.n, cv = p.cv;
  const int j0 = blockIdx.x * TILE, c0 = blockIdx.y * TILE, b = blockIdx.z;
  const T* q = p.q + (int64_t)b * p.cqk * n;
  const T* k = p.k + (int64_t)b * p.cqk * n;
  const T* dout = p.dout + ((int64_t)b * cv + c0) * n;
  const float* lse = p.lse + (int64_t)b * n;
  const float g = scalar_or_one(p.gamma);

  float acc[PER][PER];  // dV[c][j]: rows c, columns j
  zero(acc);
  for (int i0 = 0; i0 < n; i0 += TILE) {
    float pr[PER][PER];
    prob_tile(pr, q, k, lse, p, i0, j0, as, bs, prod);
#pragma unroll
    for (int a = 0; a < PER; ++a)
#pragma unroll
      for (int bb = 0; bb < PER; ++bb) ps[(ty + 16 * a) * LD + tx + 16 * bb] = from_float<T>(pr[a][bb]);
    load_tile<TILE, TILE>(dos, LD, dout + i0, n, 1, cv - c0, n - i0, g);
    __syncthreads();
    tile_mma<1, LD, LD, 1>(acc, dos, ps, min(TILE, n - i0), prod);
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < PER; ++a) {
    const int c = c0 + ty + 16 * a;
#pragma unroll
    for (int bb = 0; bb < PER; ++bb) {
      const int j = j0 + tx + 16 * bb;
      if (c < cv && j < n) dv[((int64_t)b * cv + c) * n + j] = from_float<T>(acc[a][bb]);
    }
  }
}

// FOR_DK: dK[c][j] = sum_i q[c][i] dS[i][j], one block per (key tile, qk-channel tile),
//         looping over query tiles.
// else:   dQ[c][i] = sum_j k[c][j] dS[i][j], one block per (query tile, qk-channel tile),
//         looping over key tiles.
template <typename T, bool FOR_DK>
__global__ void __launch_bounds__(THREADS) pam_dqk_kernel(PamArgs<T> p, T* grad) {
  constexpr int LD = ld_of<T>();
  __shared__ __align__(32) T as[KC * LD], bs[KC * LD];
  __shared__ __align__(32) T dss[TILE * LD];  // dS[i][j]
  __shared__ __align__(32) T xs[TILE * LD];   // q[c][i] (dK) or k[c][j] (dQ)
  __shared__ __align__(32) float prod[product_tile_size<T>()];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int n = p.n, cqk = p.cqk;
  const int t0 = blockIdx.x * TILE, c0 = blockIdx.y * TILE, b = blockIdx.z;
  const T* q = p.q + (int64_t)b * cqk * n;
  const T* k = p.k + (int64_t)b * cqk * n;
  const T* v = p.v + (int64_t)b * p.cv * n;
  const T* dout = p.dout + (int64_t)b * p.cv * n;
  const float* lse = p.lse + (int64_t)b * n;
  const float* delta = p.delta + (int64_t)b * n;
  const float g = scalar_or_one(p.gamma);

  float acc[PER][PER];  // rows c, columns j (dK) or i (dQ)
  zero(acc);
  for (int u0 = 0; u0 < n; u0 += TILE) {
    const int i0 = FOR_DK ? u0 : t0;
    const int j0 = FOR_DK ? t0 : u0;
    float ds[PER][PER];
    dscore_tile(ds, q, k, v, dout, lse, delta, g, p, i0, j0, as, bs, prod);
#pragma unroll
    for (int a = 0; a < PER; ++a)
#pragma unroll
      for (int bb = 0; bb < PER; ++bb) dss[(ty + 16 * a) * LD + tx + 16 * bb] = from_float<T>(ds[a][bb]);
    const T* x = FOR_DK ? q : k;
    load_tile<TILE, TILE>(xs, LD, x + (int64_t)c0 * n + u0, n, 1, cqk - c0, n - u0);
    __syncthreads();
    if (FOR_DK) {
      tile_mma<1, LD, LD, 1>(acc, xs, dss, min(TILE, n - u0), prod);  // sum_i q[c][i] dS[i][j]
    } else {
      tile_mma<1, LD, 1, LD>(acc, xs, dss, min(TILE, n - u0), prod);  // sum_j k[c][j] dS[i][j]
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < PER; ++a) {
    const int c = c0 + ty + 16 * a;
#pragma unroll
    for (int bb = 0; bb < PER; ++bb) {
      const int t = t0 + tx + 16 * bb;
      if (c < cqk && t < n) grad[((int64_t)b * cqk + c) * n + t] = from_float<T>(acc[a][bb]);
    }
  }
}

}  // namespace danet
