// PAM kernels (host wrappers in pam.cu). PAM, position attention:
//   out = gamma * softmax(scale * q^T k) v + residual,
// with q, k [B, Cqk, N] and v, residual [B, Cv, N], read channel-first as convolutions
// write them.
//
// Forward: one block per (query tile of 64, v-channel tile of 64, batch item). It walks
// the key tiles with an online softmax (running row max and sum in fp32) and keeps the
// 64x64 output tile O^T[c][i] in registers. Tiling the v channels keeps that accumulator
// at 16 registers per thread whatever Cv is (DANet: 512); the price is that each of the
// Cv/64 channel tiles recomputes the energies (2*N^2*Cqk each, a fraction of the
// 2*N^2*Cv of P.V when Cqk = Cv/8). The per-row log-sum-exp is written for backward.
//
// Backward is deterministic (no atomics), FA2-style with P recomputed from the LSE:
//   preprocess: rowdot[i] = sum_c dout[c][i] o[c][i]; delta = gamma * rowdot;
//               dgamma = sum rowdot (fixed-order reduction)
//   dV kernel:  per (key tile, v-channel tile): dV[c][j] = sum_i dO[c][i] P[i][j]
//   dK, dQ:     one kernel, two instantiations: per (key tile | query tile, qk-channel
//               tile) it loops over the other axis, recomputing P and
//               dS = scale * P * (dO^T v - delta), and accumulates q.dS or k.dS^T.
// dO = gamma * dout. Ragged N (97*97 = 9409) is masked: out-of-range positions load as
// zeros, get P = 0, and are never stored.
#pragma once

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
  float scale;
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

template <typename T>
__global__ void __launch_bounds__(THREADS)
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
