// CAM kernels (host wrappers in cam.cu). CAM, channel attention, on X = x.view(B, C, N):
//   forward   E = X X^T (fp32), A = softmax(-E) = exp(rowmin(E) - E) / sum (fp32),
//             out = gamma * (A X) + x      (A X alone when gamma is None)
//   backward  G = dout X^T, dgamma = sum(A o G), dE = -gamma * A o (G - rowsum(A o G)),
//             dX = A^T (gamma * dout) + dE X + dE^T X + dout   (no "+ dout" without gamma)
// The C x C part is small (cam_softmax_kernel, cam_softmax_backward_kernel, one warp per
// row); the work is in the products over N. The Gram-type products (E, G: reduction over
// N, a C x C fp32 output) split the reduction across blocks when the output alone would
// leave the GPU idle; the partial sums are added in a fixed order by splitk_reduce_kernel,
// so results are deterministic.
//
// Every dtype on sm_80+ (where its shared memory fits): cam_gemm_mma_kernel, a block GEMM on
// the warp-level tensor-core instructions of mma.cuh (fp32 accumulation; cp.async
// double-buffered 16-byte staging), one kernel text whose operand handling follows the
// element type as the PAM kernels' does: fp16/bf16 through ldmatrix into m16n8k16 MMAs;
// fp32 through plain 32/64-bit shared loads into m16n8k8 TF32 MMAs as 3xTF32 (hi + lo
// splits, fp32-accurate: the Gram entries are unscaled, ~ N x^2, and softmax(-E) needs them
// at fp32 accuracy), or under MmaGemmArgs::tf32 (matmul precision "high"/"medium") A X and
// dx as one TF32 product, the Gram products E and G always 3xTF32. Two layouts: the Gram
// products with both operands k-contiguous rows of X and dout, and the C x N products A X
// and dX with B = X or dout n-contiguous. Its A operands there are the fp32 C x C matrices
// as [C, ceil8(C)] rows by cam_operand_kernel (rounded to the input dtype for the half
// types): A for the forward, and for dX the two terms (gamma A^T) dout + (dE + dE^T) X (one
// product of two terms, dE X + dE^T X folded). cam.cu hands X and dout over as rows padded
// to a multiple of 8 positions (zeros) where N is not one. GPUs before sm_80 (and fp32
// where its 110592 bytes of shared memory do not fit) run gemm_kernel: a batched tiled GEMM
// with generic strides (transposes read in place, up to three products summed into one
// output), 64x64 tiles of tile.cuh, SIMT FMAs for fp32, WMMA for the half types. Both GEMMs
// end in the same epilogue, C = alpha * acc + residual, or partial sums to the split-K
// workspace.
#pragma once

#include "mma.cuh"
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

// Four blocks per SM (64 registers): ptxas's own target for fp32 (48) spilled 8 bytes.
template <typename TA, typename TB, typename TC, typename TR>
__global__ void __launch_bounds__(THREADS, 4) gemm_kernel(GemmArgs<TA, TB, TC, TR> p) {
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

// ---- the products on mma.sync (fp16/bf16 on m16n8k16, fp32 as 3xTF32 on m16n8k8) ---------

namespace cam_mma {
constexpr int WARPS = 4;
constexpr int BLOCK_THREADS = 32 * WARPS;
constexpr int BM = 64;   // output rows per block; 2 x 2 warps, each 32 rows x 64 columns
constexpr int BN = 128;  // output columns per block
constexpr int BK = 64;   // reduction chunk of one pipeline stage
// Shared rows padded so that every row starts on a 16-byte boundary (ldmatrix, cp.async)
// and the fragment loads are free of bank conflicts:
//   rows along k, A [BM][KPITCH] and a k-contiguous B [BN][KPITCH]: BK + 8 elements for
//   every type. Half types: 144 bytes, the 8 row addresses of an ldmatrix on distinct banks.
//   fp32: 288 bytes = 8 banks mod 32, so the 64-bit loads of a half warp (rows g < 4 or
//   g >= 4, columns 2t..2t+1: banks 8 g + 2 t + 0..1) are conflict-free.
//   rows along n, an n-contiguous B [BK][NPITCH]: half types BN + 8 (272 bytes, ldmatrix as
//   above); fp32 BN + 4 (528 bytes = 4 banks mod 32: the 32-bit loads of a warp, rows 2t
//   (+1), columns g, fall on banks 8 t + g (+4), all distinct).
constexpr int KPITCH = BK + 8;
template <typename T>
constexpr int npitch() { return sizeof(T) == 4 ? BN + 4 : BN + 8; }
// Elements of one stage (A tile and B tile); two stages in dynamic shared memory.
template <typename T>
constexpr int stage_elems(bool b_n_major) {
  return BM * KPITCH + (b_n_major ? BK * npitch<T>() : BN * KPITCH);
}
// Bytes: half types 55296 for the Gram products, 53248 for A X and dx; fp32 110592 and
// 104448 (within the 232448 a block may opt into on sm_90, 166912 on sm_80; the host checks,
// cam_mma_fits in cam.cu).
template <typename T>
inline size_t smem_bytes(bool b_n_major) {
  return static_cast<size_t>(2 * stage_elems<T>(b_n_major)) * sizeof(T);
}
}  // namespace cam_mma

// One product term of cam_gemm_mma_kernel: sum_k A(m, k) B(k, n) for batch item b with
// A(m, k) = a[b * a_b + m * lda + k] and, per the kernel's B_N_MAJOR,
// B(k, n) = b[b * b_b + k * ldb + n] (n-contiguous: X in A X and dx) or
// B(k, n) = b[b * b_b + n * ldb + k] (k-contiguous: the second X of a Gram product).
// a, b are 16-byte aligned, lda and ldb multiples of 8, and every k-contiguous row reads as
// zeros from k up to k rounded up to 8 (cam.cu pads so; n-contiguous rows likewise past n).
template <typename T>
struct MmaTerm {
  const T* a;
  int64_t a_b;
  int lda;
  const T* b;
  int64_t b_b;
  int ldb;
  int k;  // reduction length
};

// C = alpha * sum_terms A B + R for dense [batch, m, n] C and R.
template <typename T, typename TC>
struct MmaGemmArgs {
  MmaTerm<T> term[2];
  int nterms;
  int batch, m, n;
  TC* c;
  const float* alpha;  // device scalar or null (1)
  const T* r;          // residual or null
  int splits;          // > 1: term[0]'s reduction split; partial sums to ws [splits, batch, m, n]
  int k_per_split;     // a multiple of BK when splits > 1
  float* ws;
  // fp32, n-contiguous B (A X, dx): one TF32 MMA instead of 3xTF32, as torch's matmul
  // precision "high" and "medium" allow. The Gram products (E, and G = dout X^T, the
  // gradient of the energies) are always 3xTF32. Ignored for fp16/bf16.
  bool tf32;
};

// dst[0] = x0 and, if both, dst[1] = x1, converted to T: one 2-element store when both
// and paired (dst then aligned to two elements), else element by element.
template <typename T>
struct alignas(2 * sizeof(T)) TwoOf {
  T v[2];
};
template <typename T>
__device__ __forceinline__ void store_two(T* dst, float x0, float x1, bool both, bool paired) {
  if (both && paired) {
    *reinterpret_cast<TwoOf<T>*>(dst) = TwoOf<T>{{from_float<T>(x0), from_float<T>(x1)}};
  } else {
    dst[0] = from_float<T>(x0);
    if (both) dst[1] = from_float<T>(x1);
  }
}

// One block per (64-row x 128-column output tile, batch item x split); warp w owns rows
// 32 (w / 2) .. + 31 and columns 64 (w % 2) .. + 63 as 2 x 8 m16n8 accumulator fragments
// (64 fp32 registers per thread). The reduction runs in chunks of BK over the terms in turn,
// staged by 16-byte cp.async (8 half or 4 fp32 elements) into two alternating stages (chunk
// j + 1 loads while chunk j computes; one barrier before and one after each chunk's
// products), zero-filled past the valid rows and columns. Fragment layouts as in mma.cuh
// (g = lane / 4, t = lane % 4). One kernel text for the three types; the operand handling
// follows the element type, as in pam_kernels.cuh:
//   fp16/bf16: ldmatrix into m16n8k16 MMAs: A, and a k-contiguous B, plain; an
//     n-contiguous B with .trans.
//   fp32: m16n8k8 TF32 MMAs on operands read by plain 32/64-bit shared loads (ldmatrix
//     moves 16-bit elements), each split into TF32 hi + lo (split_tf32) and multiplied as
//     3xTF32 (mma_tf32x3: error at the fp32 level, what softmax(-E) of unscaled Gram
//     entries ~ N x^2 needs), or for A X and dx under p.tf32 as one TF32 product. The k
//     order within each 8-step is permuted, as warp_p_yt does for P: logical k = t is
//     position 2t, k = t + 4 is 2t + 1 (a sum over k does not care, as long as A and B
//     agree). Then A's fragment is two 64-bit loads (rows g and g + 8, positions 2t, 2t + 1),
//     a k-contiguous B's one (row n = g), an n-contiguous B's two 32-bit loads (rows 2t and
//     2t + 1, column g); the pitches of cam_mma make all of them conflict-free.
// Dynamic shared memory: cam_mma::smem_bytes<T>(B_N_MAJOR). __launch_bounds__'s minimum
// blocks: fp32 2 (what its shared memory allows on sm_90), so that ptxas may use up to 255
// registers (as pam_mma::min_blocks); the half types 0, no bound.
template <typename T, typename TC, bool B_N_MAJOR>
__global__ void __launch_bounds__(cam_mma::BLOCK_THREADS, sizeof(T) == 4 ? 2 : 0)
    cam_gemm_mma_kernel(MmaGemmArgs<T, TC> p) {
#if DANET_HAS_MMA
  using namespace cam_mma;
  constexpr bool FP32 = std::is_same<T, float>::value;
  constexpr int STAGE = stage_elems<T>(B_N_MAJOR);
  constexpr int NPITCH = npitch<T>();
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte cp.async
  DANET_DYNAMIC_SMEM(smem);
  T* stages = reinterpret_cast<T*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = warp / 2, wn = warp % 2;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
  const int b = blockIdx.z / p.splits, split = blockIdx.z % p.splits;

  // The chunks: term 0's over [k_begin, k_end0) (this split's part), then term 1's.
  int k_begin = 0, k_end0 = p.term[0].k;
  if (p.splits > 1) {
    k_begin = split * p.k_per_split;
    k_end0 = min(k_end0, k_begin + p.k_per_split);
  }
  const int chunks0 = max(0, (k_end0 - k_begin + BK - 1) / BK);
  const int total = chunks0 + (p.nterms > 1 ? (p.term[1].k + BK - 1) / BK : 0);
  // Chunk j: its term, first k and end of the term's range.
  const auto chunk = [&](int j, int& term, int& k0, int& kend) {
    term = j < chunks0 ? 0 : 1;
    k0 = term == 0 ? k_begin + j * BK : (j - chunks0) * BK;
    kend = term == 0 ? k_end0 : p.term[1].k;
  };
  const int n_pad = (p.n + 7) / 8 * 8;

  // Stage chunk j into dst: A rows m0.., B rows k0.. (n-contiguous) or n0.. (k-contiguous).
  const auto stage = [&](int j, T* dst) {
    int term, k0, kend;
    chunk(j, term, k0, kend);
    const MmaTerm<T>& tm = p.term[term];
    const int k_pad = (kend + 7) / 8 * 8;
    const T* a = tm.a + b * tm.a_b;
    const T* bb = tm.b + b * tm.b_b;
    for (int e = threadIdx.x; e < BM * (BK / V); e += BLOCK_THREADS) {
      const int r = e / (BK / V), kk = V * (e % (BK / V));
      const bool ok = m0 + r < p.m && k0 + kk < k_pad;
      mma::cp_async_cg16(dst + r * KPITCH + kk, ok ? a + (int64_t)(m0 + r) * tm.lda + k0 + kk : tm.a,
                         ok ? 16 : 0);
    }
    T* bs = dst + BM * KPITCH;
    if constexpr (B_N_MAJOR) {
      for (int e = threadIdx.x; e < BK * (BN / V); e += BLOCK_THREADS) {
        const int r = e / (BN / V), nn = V * (e % (BN / V));
        const bool ok = k0 + r < kend && n0 + nn < n_pad;
        mma::cp_async_cg16(bs + r * NPITCH + nn, ok ? bb + (int64_t)(k0 + r) * tm.ldb + n0 + nn : tm.b,
                           ok ? 16 : 0);
      }
    } else {
      for (int e = threadIdx.x; e < BN * (BK / V); e += BLOCK_THREADS) {
        const int r = e / (BK / V), kk = V * (e % (BK / V));
        const bool ok = n0 + r < p.n && k0 + kk < k_pad;
        mma::cp_async_cg16(bs + r * KPITCH + kk, ok ? bb + (int64_t)(n0 + r) * tm.ldb + k0 + kk : tm.b,
                           ok ? 16 : 0);
      }
    }
  };

  float acc[2][BN / 16][4];  // rows 32 wm + 16 i + g (+ 8), columns 64 wn + 8 nt + 2t (+ 1)
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int nt = 0; nt < BN / 16; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][nt][e] = 0.0f;

  if (total > 0) {
    stage(0, stages);
    mma::cp_async_commit();
  }
  for (int j = 0; j < total; ++j) {
    if (j + 1 < total) {  // prefetch the next chunk into the other stage
      stage(j + 1, stages + ((j + 1) % 2) * STAGE);
    }
    mma::cp_async_wait_stage(j + 1 < total);  // chunk j's group has landed
    const T* as = stages + (j % 2) * STAGE;
    const T* bs = as + BM * KPITCH;
    int term, k0, kend;
    chunk(j, term, k0, kend);
    const int kv = min(BK, kend - k0);  // block-uniform; the staged tiles are zero from kv on
    if constexpr (FP32) {
      const bool exact = !B_N_MAJOR || !p.tf32;  // the Gram products always 3xTF32
      for (int kk = 0; kk < kv; kk += 8) {
        uint32_t a_hi[2][4], a_lo[2][4];  // a[0], a[2]: row g, positions 2t, 2t + 1; a[1], a[3]: row g + 8
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float* ar = as + (32 * wm + 16 * i + g) * KPITCH + kk + 2 * t;
          mma::ld_split_tf32_f2(ar, a_hi[i][0], a_lo[i][0], a_hi[i][2], a_lo[i][2]);
          mma::ld_split_tf32_f2(ar + 8 * KPITCH, a_hi[i][1], a_lo[i][1], a_hi[i][3], a_lo[i][3]);
        }
#pragma unroll
        for (int nt = 0; nt < BN / 16; ++nt) {  // the warp's 8-column tiles
          uint32_t b_hi[2], b_lo[2];  // b[0]: position 2t, b[1]: 2t + 1, column g
          if constexpr (B_N_MAJOR) {
            const float* br = bs + (kk + 2 * t) * NPITCH + 64 * wn + 8 * nt + g;
            mma::split_tf32(br[0], b_hi[0], b_lo[0]);
            mma::split_tf32(br[NPITCH], b_hi[1], b_lo[1]);
          } else {
            mma::ld_split_tf32_f2(bs + (64 * wn + 8 * nt + g) * KPITCH + kk + 2 * t, b_hi[0], b_lo[0], b_hi[1],
                                  b_lo[1]);
          }
#pragma unroll
          for (int i = 0; i < 2; ++i) mma::mma_tf32x3(acc[i][nt], a_hi[i], a_lo[i], b_hi, b_lo, exact);
        }
      }
    } else {
      using E = typename wmma_elem<T>::type;
      const int lr = lane % 8, lm = lane / 8;  // ldmatrix: the row this lane addresses, of matrix lm
      for (int kk = 0; kk < kv; kk += 16) {
        uint32_t a[2][4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          mma::ldmatrix_x4(a[i], as + (32 * wm + 16 * i + lr + 8 * (lm % 2)) * KPITCH + kk + 8 * (lm / 2));
#pragma unroll
        for (int np = 0; np < BN / 32; ++np) {  // 16 of the warp's columns: n tiles 2 np, 2 np + 1
          uint32_t bf[4];
          if constexpr (B_N_MAJOR) {
            mma::ldmatrix_x4_trans(bf, bs + (kk + lr + 8 * (lm % 2)) * NPITCH + 64 * wn + 16 * np + 8 * (lm / 2));
          } else {
            mma::ldmatrix_x4(bf, bs + (64 * wn + 16 * np + lr + 8 * (lm / 2)) * KPITCH + kk + 8 * (lm % 2));
          }
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            mma::mma_16816<E>(acc[i][2 * np], a[i], bf[0], bf[1]);
            mma::mma_16816<E>(acc[i][2 * np + 1], a[i], bf[2], bf[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // Each fragment row holds two adjacent columns (2t, 2t + 1): one paired store where n is
  // even (then every even column starts a pair aligned to two elements), else one by one.
  const float alpha = scalar_or_one(p.alpha);
  const bool paired = p.n % 2 == 0;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int nt = 0; nt < BN / 16; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + 32 * wm + 16 * i + g + 8 * h;
        const int col = n0 + 64 * wn + 8 * nt + 2 * t;
        if (row >= p.m || col >= p.n) continue;
        const bool both = col + 1 < p.n;
        const int64_t idx = ((int64_t)b * p.m + row) * p.n + col;
        float v0 = acc[i][nt][2 * h], v1 = acc[i][nt][2 * h + 1];
        if (p.splits > 1) {
          store_two(p.ws + (int64_t)split * p.batch * p.m * p.n + idx, v0, v1, both, paired);
        } else {
          v0 *= alpha;
          v1 *= alpha;
          if (p.r) {
            v0 += to_float(p.r[idx]);
            if (both) v1 += to_float(p.r[idx + 1]);
          }
          store_two(p.c + idx, v0, v1, both, paired);
        }
      }
#else
  __trap();  // the host dispatch launches this kernel on sm_80 and newer only
#endif
}

// The fp32 C x C matrices as A operands of cam_gemm_mma_kernel: dst[b][m][k] for k < ld
// (C rounded up to 8; zeros for k >= C), rounded to T:
//   CamOperand::copy       src[m][k]                    (attention, forward A X)
//   CamOperand::transpose  scale * src[k][m]            (gamma A^T, dx's first term)
//   CamOperand::symmetric  src[m][k] + src[k][m]        (dE + dE^T: dE X + dE^T X in one)
// One block of 256 threads per 32 x 32 tile; the transposed reads go through shared memory
// so that global reads and writes both run along rows.
enum class CamOperand { copy, transpose, symmetric };

template <typename T, CamOperand OP>
__global__ void __launch_bounds__(THREADS)
cam_operand_kernel(const float* src, const float* scale, int c, int ld, T* dst) {
  __shared__ float tr[32][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int k0 = blockIdx.x * 32, m0 = blockIdx.y * 32;
  const float* s = src + (int64_t)blockIdx.z * c * c;
  if (OP != CamOperand::copy) {
    for (int r = ty; r < 32; r += THREADS / 32) {  // tr[k - k0][m - m0] = src[k][m]
      const int k = k0 + r, m = m0 + tx;
      tr[r][tx] = (k < c && m < c) ? s[(int64_t)k * c + m] : 0.0f;
    }
    __syncthreads();
  }
  const float sc = scalar_or_one(scale);
  for (int r = ty; r < 32; r += THREADS / 32) {
    const int m = m0 + r, k = k0 + tx;
    if (m >= c || k >= ld) continue;
    float v = 0.0f;
    if (k < c) {
      if (OP == CamOperand::copy) v = s[(int64_t)m * c + k];
      if (OP == CamOperand::transpose) v = sc * tr[tx][r];
      if (OP == CamOperand::symmetric) v = s[(int64_t)m * c + k] + tr[tx][r];
    }
    dst[((int64_t)blockIdx.z * c + m) * ld + k] = from_float<T>(v);
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
