// CAM kernels (host wrappers in cam.cu). CAM, channel attention, on X = x.view(B, C, N):
//   forward   E = X X^T (fp32), A = softmax(-E) = exp(rowmin(E) - E) / sum (fp32),
//             out = gamma * (A X) + x      (A X alone when gamma is None)
//   backward  G = dout X^T, dgamma = sum(A o G), dE = -gamma * A o (G - rowsum(A o G)),
//             dX = A^T (gamma * dout) + dE X + dE^T X + dout   (no "+ dout" without gamma)
// The C x C part is small; the work is in four products over N, all run by one batched
// tiled GEMM kernel (generic strides, so transposes are read in place, up to three
// products summed into one output, an optional alpha * acc + residual epilogue). The
// Gram-type products (reduction over N, a C x C output) split the reduction across
// blocks when the output alone would leave the GPU idle; the partial sums are added in a
// fixed order by a second kernel, so results are deterministic.
#pragma once

#include "tile.cuh"

namespace danet {

// One product term: sum_k A(m, k) B(k, n) for batch item b, with
// A(m, k) = a[b * a_b + m * a_m + k * a_k] and B(k, n) = b[b * b_b + k * b_k + n * b_n].
template <typename TA, typename TB>
struct GemmTerm {
  const TA* a;
  int64_t a_b, a_m, a_k;
  const TB* b;
  int64_t b_b, b_k, b_n;
  int k;                 // reduction length
  const float* b_scale;  // device scalar multiplying B, or null
};

constexpr int MAX_TERMS = 3;

template <typename TA, typename TB, typename TC, typename TR>
struct GemmArgs {
  GemmTerm<TA, TB> term[MAX_TERMS];
  int nterms;
  int batch, m, n;
  TC* c;  // C(m, n) = alpha * acc + R(m, n) at c[b * c_b + m * c_m + n * c_n]
  int64_t c_b, c_m, c_n;
  const float* alpha;  // device scalar or null (1)
  const TR* r;         // residual or null, same indexing as C through r_b, r_m, r_n
  int64_t r_b, r_m, r_n;
  int splits;          // > 1: term[0]'s reduction split; partial sums to ws [splits, batch, m, n]
  int k_per_split;
  float* ws;
};

template <typename TA, typename TB, typename TC, typename TR>
__global__ void __launch_bounds__(THREADS) gemm_kernel(GemmArgs<TA, TB, TC, TR> p) {
  // Both operands are staged in B's dtype, the input's: A is the fp32 attention or dE of
  // the second products, rounded to fp16/bf16 for the tensor cores in the half paths.
  using S = TB;
  constexpr int LD = ld_of<S>();
  __shared__ __align__(32) S as[KC * LD];  // A(m, k) staged k-major: as[k][m]
  __shared__ __align__(32) S bs[KC * LD];  // B(k, n): bs[k][n]
  __shared__ __align__(32) float prod[product_tile_size<S>()];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int n0 = blockIdx.x * TILE, m0 = blockIdx.y * TILE;
  const int b = blockIdx.z / p.splits, split = blockIdx.z % p.splits;

  float acc[PER][PER];  // rows m, columns n
  zero(acc);
  for (int t = 0; t < p.nterms; ++t) {
    const GemmTerm<TA, TB> term = p.term[t];
    int k_begin = 0, k_end = term.k;
    if (p.splits > 1) {
      k_begin = split * p.k_per_split;
      k_end = min(term.k, k_begin + p.k_per_split);
    }
    const float scale = scalar_or_one(term.b_scale);
    const TA* a = term.a + b * term.a_b + m0 * term.a_m;
    const TB* bb = term.b + b * term.b_b + n0 * term.b_n;
    for (int k0 = k_begin; k0 < k_end; k0 += KC) {
      const int kv = min(KC, k_end - k0);
      load_tile<KC, TILE>(as, LD, a + k0 * term.a_k, term.a_k, term.a_m, kv, p.m - m0);
      load_tile<KC, TILE>(bs, LD, bb + k0 * term.b_k, term.b_k, term.b_n, kv, p.n - n0, scale);
      __syncthreads();
      tile_mma<LD, 1, LD, 1>(acc, as, bs, kv, prod);
      __syncthreads();
    }
  }

  const float alpha = scalar_or_one(p.alpha);
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int m = m0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int n = n0 + tx + 16 * j;
      if (m >= p.m || n >= p.n) continue;
      if (p.splits > 1) {
        p.ws[(((int64_t)split * p.batch + b) * p.m + m) * p.n + n] = acc[i][j];
      } else {
        float val = alpha * acc[i][j];
        if (p.r) val += to_float(p.r[b * p.r_b + m * p.r_m + n * p.r_n]);
        p.c[b * p.c_b + m * p.c_m + n * p.c_n] = from_float<TC>(val);
      }
    }
  }
}

// c[e] = sum_s ws[s, e], in split order (deterministic).
__global__ void __launch_bounds__(THREADS)
splitk_reduce_kernel(const float* ws, int splits, int64_t total, float* c) {
  const int64_t e = (int64_t)blockIdx.x * THREADS + threadIdx.x;
  if (e >= total) return;
  float s = 0.0f;
  for (int sp = 0; sp < splits; ++sp) s += ws[sp * total + e];
  c[e] = s;
}

// One warp per row, fp32: attn = exp(rowmin(E) - E) / sum, in place over E.
__global__ void __launch_bounds__(THREADS)
cam_softmax_kernel(float* e, int64_t rows, int cols) {
  const int64_t row = (int64_t)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together, so the shuffles below are full
  float* er = e + row * cols;
  float mn = INFINITY, mx = -INFINITY;
  for (int c = lane; c < cols; c += 32) {
    mn = fminf(mn, er[c]);
    mx = fmaxf(mx, er[c]);
  }
  for (int off = 16; off > 0; off >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, off));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  }
  // (mx - mx) is 0, or NaN on a row holding +inf: eager's softmax(rowmax(E) - E) is NaN on
  // such a row, where rowmin(E) - E alone would give +inf weight 0.
  mn += mx - mx;
  float sum = 0.0f;
  for (int c = lane; c < cols; c += 32) sum += expf(mn - er[c]);
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  for (int c = lane; c < cols; c += 32) er[c] = expf(mn - er[c]) / sum;
}

// Backward through the softmax, one warp per row, in place over G:
//   r = sum_n A o G (saved per row for dgamma), dE = -gamma * A o (G - r).
__global__ void __launch_bounds__(THREADS)
cam_softmax_backward_kernel(const float* attn, float* g_de, float* rowpart, const float* gamma,
                            int64_t rows, int cols) {
  const int64_t row = (int64_t)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* ar = attn + row * cols;
  float* gr = g_de + row * cols;
  float r = 0.0f;
  for (int c = lane; c < cols; c += 32) r += ar[c] * gr[c];
  for (int off = 16; off > 0; off >>= 1) r += __shfl_xor_sync(0xffffffffu, r, off);
  if (lane == 0) rowpart[row] = r;
  const float gm = scalar_or_one(gamma);
  for (int c = lane; c < cols; c += 32) gr[c] = -gm * ar[c] * (gr[c] - r);
}

}  // namespace danet
