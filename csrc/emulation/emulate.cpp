// CPU emulation entry points (fp32, fp16, bf16) for the kernels in ../pam_kernels.cuh and
// ../cam_kernels.cuh, launched with the same grids and arguments as the host wrappers in
// ../pam.cu and ../cam.cu (every dtype on the mma.sync kernels, as on sm_80+, or with
// legacy on the 64x64 tile kernels of older GPUs). Built and compared with the pure-PyTorch backend by
// tests/test_cuda_build.py; plain g++ -std=c++20 -pthread, no CUDA or torch needed.
// Also one warp's mma.sync / ldmatrix / cp.async of ../mma.cuh on given registers and
// matrices (emu_mma_m16n8k16*, emu_ldmatrix_x4, emu_cp_async16), for tests/test_cuda_mma.py.
#include "cuda_shim.h"

#include <initializer_list>
#include <vector>

#include "../pam_kernels.cuh"
#include "../cam_kernels.cuh"

using namespace danet;

// The shim's half types, like c10's in the extension, go to WMMA as themselves.
template <>
struct danet::wmma_elem<__half> { using type = __half; };
template <>
struct danet::wmma_elem<__nv_bfloat16> { using type = __nv_bfloat16; };

// T: the tensors' dtype (float, __half, __nv_bfloat16; the half types have torch's bits);
// lse, gamma, attention and the other fp32 intermediates are float as in ../pam.cu, ../cam.cu.
// q, k, v rows with stride ld (a multiple of 8), zero-padded, as ../pam.cu hands them to
// pam_forward_mma_kernel when N is not a multiple of 8.
template <typename T>
static std::vector<T> padded_rows(const T* x, int rows, int n, int ld) {
  std::vector<T> y((size_t)rows * ld, T(0.0f));
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < n; ++j) y[(size_t)r * ld + j] = x[(size_t)r * n + j];
  return y;
}

static bool aligned16(const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; }

// As ../common.cuh's mma_row_stride: the buffers are read in place when N is a multiple of 8
// and every one is 16-byte aligned, else each is copied with zero padding (MmaRows).
static bool rows_direct(int n, std::initializer_list<const void*> xs) {
  bool direct = n % 8 == 0;
  for (const void* x : xs) direct = direct && aligned16(x);
  return direct;
}

// x [B, C, N] as padded_rows hands it to the kernels: used in place when direct, else
// copied into zero-padded rows of ld = ceil8(N).
template <typename T>
struct MmaRows {
  std::vector<T> copy;
  const T* p;
  int ld;
  MmaRows(const T* x, int rows, int n, bool direct) : p(x), ld(n) {
    if (!direct) {
      ld = (n + 7) / 8 * 8;
      copy = padded_rows(x, rows, n, ld);
      p = copy.data();
    }
  }
};

// Which kernel pam_forward ran (the tests check that the one they meant to test did).
enum PamForwardPath { TILE_KERNEL = 0, CV_BLOCKS_MMA = 1, WHOLE_CV_MMA = 2 };

// legacy: the 64x64 tile kernel (what every dtype takes on GPUs before sm_80 or when q and
// k do not fit in shared memory); whole_cv: pam_forward_whole_cv_kernel where ../pam.cu
// would launch it (pam_wide::fits); otherwise the mma.sync kernel, as ../pam.cu dispatches
// on sm_80+ (fp32 as 3xTF32, or with tf32 its P.V as one TF32 product).
template <typename T>
static PamForwardPath pam_forward(const T* q, const T* k, const T* v, const T* residual,
                                  const float* gamma, T* out, T* o, float* lse, int batch, int cqk,
                                  int cv, int n, float scale, bool legacy = false, bool tf32 = false,
                                  bool whole_cv = false) {
  PamArgs<T> p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.residual = residual;
  p.gamma = gamma;
  p.cqk = cqk;
  p.cv = cv;
  p.n = n;
  p.scale = scale;
  p.tf32 = tf32;
  if (legacy) {
    emu_launch(dim3(ceil_div(n, TILE), ceil_div(cv, TILE), batch), THREADS,
               [&] { pam_forward_kernel<T>(p, out, o, lse); });
    return TILE_KERNEL;
  } else {
    const bool direct = rows_direct(n, {q, k, v});
    const MmaRows<T> qr(q, batch * cqk, n, direct), kr(k, batch * cqk, n, direct), vr(v, batch * cv, n, direct);
    p.q = qr.p;
    p.k = kr.p;
    p.v = vr.p;
    p.ld = qr.ld;
    if constexpr (sizeof(T) == 2) {
      if (whole_cv && pam_wide::fits<T>(cqk, cv)) {
        emu_launch(dim3(ceil_div(n, pam_whole::BQ), batch), pam_whole::BLOCK_THREADS,
                   [&] { pam_forward_whole_cv_kernel<T>(p, out, o, lse); }, pam_whole::smem_bytes<T>(cqk, cv));
        return WHOLE_CV_MMA;
      }
    }
    emu_launch(dim3(ceil_div(n, pam_mma::BM), ceil_div(cv, pam_mma::CVT), batch), pam_mma::BLOCK_THREADS,
               [&] { pam_forward_mma_kernel<T>(p, out, o, lse); }, pam_mma::smem_bytes<T>(cqk));
    return CV_BLOCKS_MMA;
  }
}

// Which kernels pam_backward ran (the tests check that the one they meant to test did).
enum PamBackwardPath { TILE_KERNELS = 0, SPLIT_MMA = 1, FUSED_MMA = 2 };

// legacy: the 64x64 tile kernels, as for the forward; fused: pam_bwd_fused_mma_kernel where
// ../pam.cu would launch it (pam_wide::fits); otherwise the mma.sync dV and dK/dQ kernels;
// the mma kernels on rows padded as ../pam.cu pads them (tf32 as for the forward).
template <typename T>
static PamBackwardPath pam_backward(const T* dout, const T* q, const T* k, const T* v,
                                    const float* gamma, const T* o, const float* lse, T* dq, T* dk,
                                    T* dv, float* rowdot, float* delta, float* dgamma, int batch,
                                    int cqk, int cv, int n, float scale, bool legacy = false,
                                    bool tf32 = false, bool fused = false) {
  PamArgs<T> p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.dout = dout;
  p.gamma = gamma;
  p.lse = lse;
  p.delta = delta;
  p.cqk = cqk;
  p.cv = cv;
  p.n = n;
  p.scale = scale;
  p.tf32 = tf32;
  emu_launch(dim3(ceil_div(n, THREADS), batch), THREADS,
             [&] { pam_delta_kernel<T>(dout, o, gamma, cv, n, rowdot, delta); });
  PamBackwardPath path = TILE_KERNELS;
  // Rows as ../pam.cu hands them to the mma kernels (the tile kernels read them as they are).
  const bool direct = legacy || rows_direct(n, {q, k, v, dout});
  const MmaRows<T> qr(q, batch * cqk, n, direct), kr(k, batch * cqk, n, direct);
  const MmaRows<T> vr(v, batch * cv, n, direct), dr(dout, batch * cv, n, direct);
  if (!legacy && cqk > 0 && cv > 0) {
    p.q = qr.p;
    p.k = kr.p;
    p.v = vr.p;
    p.dout = dr.p;
    p.ld = qr.ld;
    path = SPLIT_MMA;
    if constexpr (sizeof(T) == 2) {
      if (fused && pam_wide::fits<T>(cqk, cv)) path = FUSED_MMA;
    }
  }
  if (path == FUSED_MMA) {
    if constexpr (sizeof(T) == 2) {
      std::vector<float> dq_acc((size_t)batch * cqk * n, 0.0f);
      emu_launch(dim3(ceil_div(n, pam_fused::BK), batch), pam_fused::BLOCK_THREADS,
                 [&] { pam_bwd_fused_mma_kernel<T>(p, dk, dv, dq_acc.data()); },
                 pam_fused::smem_bytes<T>(cqk, cv));
      for (size_t e = 0; e < dq_acc.size(); ++e) dq[e] = T(dq_acc[e]);
    }
  } else if (path == SPLIT_MMA) {
    emu_launch(dim3(ceil_div(n, pam_mma::BM), ceil_div(cv, pam_mma::CVT), batch), pam_mma::BLOCK_THREADS,
               [&] { pam_dv_mma_kernel<T>(p, dv); }, pam_mma::smem_bytes<T>(cqk));
    const dim3 grid(ceil_div(n, pam_mma::BM), ceil_div(cqk, pam_mma::GC), batch);
    emu_launch(grid, pam_mma::BLOCK_THREADS, [&] { pam_dqk_mma_kernel<T, true>(p, dk); },
               pam_mma::dqk_smem_bytes<T>(cqk));
    emu_launch(grid, pam_mma::BLOCK_THREADS, [&] { pam_dqk_mma_kernel<T, false>(p, dq); },
               pam_mma::dqk_smem_bytes<T>(cqk));
  } else {
    emu_launch(dim3(ceil_div(n, TILE), ceil_div(cv, TILE), batch), THREADS,
               [&] { pam_dv_kernel<T>(p, dv); });
    const dim3 grid(ceil_div(n, TILE), ceil_div(cqk, TILE), batch);
    emu_launch(grid, THREADS, [&] { pam_dqk_kernel<T, true>(p, dk); });
    emu_launch(grid, THREADS, [&] { pam_dqk_kernel<T, false>(p, dq); });
  }
  emu_launch(dim3(1), THREADS, [&] { sum_all_kernel<float>(rowdot, (int64_t)batch * n, dgamma); });
  return path;
}

// splits > 1 exercises the split-K path of the Gram products (ws: splits * B * C * C);
// the split length is rounded up to the kernel's reduction chunk as in ../cam.cu.
template <typename T>
static void emu_gram(const T* xa, const T* xb, float* out, float* ws, int batch, int c,
                     int n, int splits) {
  GemmArgs<T, T, float, float> p{};
  p.term[0] = GemmTerm<T, T>{xa, (int64_t)c * n, n, 1, xb, (int64_t)c * n, 1, n, n, nullptr};
  p.nterms = 1;
  p.batch = batch;
  p.m = c;
  p.n = c;
  p.c = out;
  p.c_b = (int64_t)c * c;
  p.c_m = c;
  p.c_n = 1;
  p.splits = 1;
  if (splits > 1) {
    int per = (n + splits - 1) / splits;
    per = (per + KC - 1) / KC * KC;
    p.splits = (n + per - 1) / per;
    p.k_per_split = per;
    p.ws = ws;
  }
  emu_launch(dim3(ceil_div(c, TILE), ceil_div(c, TILE), batch * p.splits), THREADS,
             [&] { gemm_kernel<T, T, float, float>(p); });
  if (p.splits > 1) {
    const int64_t total = (int64_t)batch * c * c;
    emu_launch(dim3(ceil_div(total, THREADS)), THREADS,
               [&] { splitk_reduce_kernel(ws, p.splits, total, out); });
  }
}

// ---- CAM on mma.sync (fp32 as 3xTF32), as ../cam.cu runs it on sm_80+ ----


// B_N_MAJOR: the C x N products (A X, dx); else the Gram products.
template <bool B_N_MAJOR, typename T, typename TC>
static void emu_launch_mma(const MmaGemmArgs<T, TC>& p) {
  emu_launch(dim3(ceil_div(p.n, cam_mma::BN), ceil_div(p.m, cam_mma::BM), p.batch * p.splits),
             cam_mma::BLOCK_THREADS, [&] { cam_gemm_mma_kernel<T, TC, B_N_MAJOR>(p); },
             cam_mma::smem_bytes<T>(B_N_MAJOR));
}

template <typename T>
static void emu_gram_mma(const MmaRows<T>& xa, const MmaRows<T>& xb, float* out, float* ws, int batch,
                         int c, int n, int splits) {
  MmaGemmArgs<T, float> p{};
  p.term[0] = MmaTerm<T>{xa.p, (int64_t)c * xa.ld, xa.ld, xb.p, (int64_t)c * xb.ld, xb.ld, n};
  p.nterms = 1;
  p.batch = batch;
  p.m = c;
  p.n = c;
  p.c = out;
  p.splits = 1;
  if (splits > 1) {
    int per = (n + splits - 1) / splits;
    per = (per + cam_mma::BK - 1) / cam_mma::BK * cam_mma::BK;
    p.splits = (n + per - 1) / per;
    p.k_per_split = per;
    p.ws = ws;
  }
  emu_launch_mma<false>(p);
  if (p.splits > 1) {
    const int64_t total = (int64_t)batch * c * c;
    emu_launch(dim3(ceil_div(total, THREADS)), THREADS,
               [&] { splitk_reduce_kernel(ws, p.splits, total, out); });
  }
}

// ../cam.cu's operand(): an fp32 [B, C, C] matrix as [B, C, ceil8(C)] of T.
template <typename T, CamOperand OP>
static std::vector<T> emu_operand(const float* src, const float* scale, int batch, int c) {
  const int ld = (c + 7) / 8 * 8;
  std::vector<T> dst((size_t)batch * c * ld);
  emu_launch(dim3(ceil_div(ld, 32), ceil_div(c, 32), batch), THREADS,
             [&] { cam_operand_kernel<T, OP>(src, scale, c, ld, dst.data()); });
  return dst;
}

template <typename T>
static MmaTerm<T> emu_channel_term(const std::vector<T>& a, const MmaRows<T>& x, int c) {
  const int lda = (c + 7) / 8 * 8;
  return MmaTerm<T>{a.data(), (int64_t)c * lda, lda, x.p, (int64_t)c * x.ld, x.ld, c};
}

// legacy: the 64x64 tile kernel (GPUs before sm_80, and fp32 where the mma kernel's shared
// memory does not fit); otherwise the mma.sync kernels, as ../cam.cu dispatches on sm_80+
// (fp32 as 3xTF32; with tf32 its A X, and dx in the backward, as one TF32 product).
template <typename T>
static void cam_forward(const T* x, const float* gamma, T* out, float* attn, float* ws,
                        int batch, int c, int n, int splits, bool legacy = false, bool tf32 = false) {
  const int64_t rows = (int64_t)batch * c;
  if (!legacy) {
    const MmaRows<T> xr(x, batch * c, n, rows_direct(n, {x}));
    emu_gram_mma(xr, xr, attn, ws, batch, c, n, splits);
    emu_launch(dim3(ceil_div(rows, THREADS / 32)), THREADS, [&] { cam_softmax_kernel(attn, rows, c); });
    const auto a = emu_operand<T, CamOperand::copy>(attn, nullptr, batch, c);
    MmaGemmArgs<T, T> p{};
    p.term[0] = emu_channel_term(a, xr, c);
    p.nterms = 1;
    p.batch = batch;
    p.m = c;
    p.n = n;
    p.c = out;
    p.alpha = gamma;
    p.r = gamma ? x : nullptr;
    p.splits = 1;
    p.tf32 = tf32;
    emu_launch_mma<true>(p);
    return;
  }
  emu_gram(x, x, attn, ws, batch, c, n, splits);
  emu_launch(dim3(ceil_div(rows, THREADS / 32)), THREADS,
             [&] { cam_softmax_kernel(attn, rows, c); });
  GemmArgs<float, T, T, T> p{};
  p.term[0] = GemmTerm<float, T>{attn, (int64_t)c * c, c, 1, x, (int64_t)c * n, n, 1, c, nullptr};
  p.nterms = 1;
  p.batch = batch;
  p.m = c;
  p.n = n;
  p.c = out;
  p.c_b = (int64_t)c * n;
  p.c_m = n;
  p.c_n = 1;
  p.alpha = gamma;
  if (gamma) {
    p.r = x;
    p.r_b = (int64_t)c * n;
    p.r_m = n;
    p.r_n = 1;
  }
  p.splits = 1;
  emu_launch(dim3(ceil_div(n, TILE), ceil_div(c, TILE), batch), THREADS,
             [&] { gemm_kernel<float, T, T, T>(p); });
}

template <typename T>
static void cam_backward(const T* dout, const T* x, const float* attn, const float* gamma,
                         T* dx, float* de, float* rowpart, float* dgamma, float* ws, int batch,
                         int c, int n, int splits, bool legacy = false, bool tf32 = false) {
  const int64_t rows = (int64_t)batch * c;
  const int64_t cc = (int64_t)c * c, cn = (int64_t)c * n;
  if (!legacy) {
    const bool direct = rows_direct(n, {x, dout});
    const MmaRows<T> xr(x, batch * c, n, direct), dr(dout, batch * c, n, direct);
    emu_gram_mma(dr, xr, de, ws, batch, c, n, splits);
    emu_launch(dim3(ceil_div(rows, THREADS / 32)), THREADS,
               [&] { cam_softmax_backward_kernel(attn, de, rowpart, gamma, rows, c); });
    const auto a_t = emu_operand<T, CamOperand::transpose>(attn, gamma, batch, c);
    const auto sym = emu_operand<T, CamOperand::symmetric>(de, nullptr, batch, c);
    MmaGemmArgs<T, T> p{};
    p.term[0] = emu_channel_term(a_t, dr, c);
    p.term[1] = emu_channel_term(sym, xr, c);
    p.nterms = 2;
    p.batch = batch;
    p.m = c;
    p.n = n;
    p.c = dx;
    p.r = gamma ? dout : nullptr;
    p.splits = 1;
    p.tf32 = tf32;
    emu_launch_mma<true>(p);
  } else {
    emu_gram(dout, x, de, ws, batch, c, n, splits);
    emu_launch(dim3(ceil_div(rows, THREADS / 32)), THREADS,
               [&] { cam_softmax_backward_kernel(attn, de, rowpart, gamma, rows, c); });
    using Term = GemmTerm<float, T>;
    GemmArgs<float, T, T, T> p{};
    p.term[0] = Term{attn, cc, 1, c, dout, cn, n, 1, c, gamma};
    p.term[1] = Term{de, cc, c, 1, x, cn, n, 1, c, nullptr};
    p.term[2] = Term{de, cc, 1, c, x, cn, n, 1, c, nullptr};
    p.nterms = 3;
    p.batch = batch;
    p.m = c;
    p.n = n;
    p.c = dx;
    p.c_b = cn;
    p.c_m = n;
    p.c_n = 1;
    if (gamma) {
      p.r = dout;
      p.r_b = cn;
      p.r_m = n;
      p.r_n = 1;
    }
    p.splits = 1;
    emu_launch(dim3(ceil_div(n, TILE), ceil_div(c, TILE), batch), THREADS,
               [&] { gemm_kernel<float, T, T, T>(p); });
  }
  emu_launch(dim3(1), THREADS, [&] { sum_all_kernel<float>(rowpart, rows, dgamma); });
}

// C entry points: emu_pam_forward (fp32), emu_pam_forward_f16, emu_pam_forward_bf16, ...
// The T-typed tensors are void* so that the three share one signature; tf32 (mma path) is
// ignored for the half types and with legacy.
#define DANET_EMU_EXPORT(SUFFIX, T)                                                             \
  extern "C" int emu_pam_forward##SUFFIX(const void* q, const void* k, const void* v,           \
                                         const void* residual, const float* gamma, void* out,   \
                                         void* o, float* lse, int batch, int cqk, int cv,       \
                                         int n, float scale, int tf32, int whole_cv) {          \
    return pam_forward<T>((const T*)q, (const T*)k, (const T*)v, (const T*)residual, gamma,     \
                          (T*)out, (T*)o, lse, batch, cqk, cv, n, scale, false, tf32 != 0,      \
                          whole_cv != 0);                                                       \
  }                                                                                             \
  extern "C" void emu_pam_forward_legacy##SUFFIX(                                               \
      const void* q, const void* k, const void* v, const void* residual, const float* gamma,    \
      void* out, void* o, float* lse, int batch, int cqk, int cv, int n, float scale) {         \
    pam_forward<T>((const T*)q, (const T*)k, (const T*)v, (const T*)residual, gamma, (T*)out,   \
                   (T*)o, lse, batch, cqk, cv, n, scale, true);                                 \
  }                                                                                             \
  extern "C" int emu_pam_backward##SUFFIX(                                                      \
      const void* dout, const void* q, const void* k, const void* v, const float* gamma,        \
      const void* o, const float* lse, void* dq, void* dk, void* dv, float* rowdot,             \
      float* delta, float* dgamma, int batch, int cqk, int cv, int n, float scale, int tf32,    \
      int fused) {                                                                              \
    return pam_backward<T>((const T*)dout, (const T*)q, (const T*)k, (const T*)v, gamma,        \
                           (const T*)o, lse, (T*)dq, (T*)dk, (T*)dv, rowdot, delta, dgamma,     \
                           batch, cqk, cv, n, scale, false, tf32 != 0, fused != 0);             \
  }                                                                                             \
  extern "C" void emu_pam_backward_legacy##SUFFIX(                                              \
      const void* dout, const void* q, const void* k, const void* v, const float* gamma,        \
      const void* o, const float* lse, void* dq, void* dk, void* dv, float* rowdot,             \
      float* delta, float* dgamma, int batch, int cqk, int cv, int n, float scale) {            \
    pam_backward<T>((const T*)dout, (const T*)q, (const T*)k, (const T*)v, gamma, (const T*)o,  \
                    lse, (T*)dq, (T*)dk, (T*)dv, rowdot, delta, dgamma, batch, cqk, cv, n,      \
                    scale, true);                                                               \
  }                                                                                             \
  extern "C" void emu_cam_forward##SUFFIX(const void* x, const float* gamma, void* out,         \
                                          float* attn, float* ws, int batch, int c, int n,      \
                                          int splits, int legacy, int tf32) {                   \
    cam_forward<T>((const T*)x, gamma, (T*)out, attn, ws, batch, c, n, splits, legacy != 0,     \
                   tf32 != 0);                                                                  \
  }                                                                                             \
  extern "C" void emu_cam_backward##SUFFIX(                                                     \
      const void* dout, const void* x, const float* attn, const float* gamma, void* dx,         \
      float* de, float* rowpart, float* dgamma, float* ws, int batch, int c, int n,             \
      int splits, int legacy, int tf32) {                                                       \
    cam_backward<T>((const T*)dout, (const T*)x, attn, gamma, (T*)dx, de, rowpart, dgamma, ws,  \
                    batch, c, n, splits, legacy != 0, tf32 != 0);                               \
  }

DANET_EMU_EXPORT(, float)
DANET_EMU_EXPORT(_f16, __half)
DANET_EMU_EXPORT(_bf16, __nv_bfloat16)

// ---- one warp of ../mma.cuh ----------------------------------------------------------------
// a [32][4], b [32][2], d [32][4]: each lane's fragment registers (d holds C on entry, D on
// return); the caller lays the matrices out in them by the PTX ISA's m16n8k16 layout.
template <typename E>
static void emu_mma(const uint32_t* a, const uint32_t* b, float* d) {
  emu_launch(dim3(1), 32, [&] {
    const int lane = threadIdx.x;
    uint32_t ra[4];
    float rd[4];
    for (int r = 0; r < 4; ++r) {
      ra[r] = a[4 * lane + r];
      rd[r] = d[4 * lane + r];
    }
    danet::mma::mma_16816<E>(rd, ra, b[2 * lane], b[2 * lane + 1]);
    for (int r = 0; r < 4; ++r) d[4 * lane + r] = rd[r];
  });
}
extern "C" void emu_mma_m16n8k16_f16(const uint32_t* a, const uint32_t* b, float* d) { emu_mma<__half>(a, b, d); }
extern "C" void emu_mma_m16n8k16_bf16(const uint32_t* a, const uint32_t* b, float* d) {
  emu_mma<__nv_bfloat16>(a, b, d);
}

// rows: 32 rows of 8 16-bit elements, row 8m + r being row r of matrix m. They are placed in
// a shared buffer with a padded pitch, lane l gives the address of row rows_of_lane[l], and
// regs [32][4] receives each lane's registers from ldmatrix.x4 (.trans if trans).
extern "C" void emu_ldmatrix_x4(const uint16_t* rows, const int* rows_of_lane, int trans, uint32_t* regs) {
  constexpr int PITCH = 24;  // elements: 48 bytes, rows 16-byte aligned, not contiguous
  emu_launch(dim3(1), 32, [&] {
    __shared__ __align__(16) uint16_t buf[32 * PITCH];
    const int lane = threadIdx.x;
    for (int c = 0; c < 8; ++c) buf[lane * PITCH + c] = rows[8 * lane + c];
    __syncthreads();
    uint32_t r[4];
    const uint16_t* row = buf + rows_of_lane[lane] * PITCH;
    if (trans) {
      danet::mma::ldmatrix_x4_trans(r, row);
    } else {
      danet::mma::ldmatrix_x4(r, row);
    }
    for (int m = 0; m < 4; ++m) regs[4 * lane + m] = r[m];
  });
}

// One cp.async of 16 bytes with src_bytes (0..16) read, as a one-thread launch; before[16]
// receives the destination as it is between the commit and the wait.
extern "C" void emu_cp_async16(void* dst, const void* src, int src_bytes, unsigned char* before) {
  emu_launch(dim3(1), 1, [&] {
    danet::mma::cp_async_cg16(dst, src, src_bytes);
    danet::mma::cp_async_commit();
    std::memcpy(before, dst, 16);
    danet::mma::cp_async_wait<0>();
  });
}

// ---- m16n8k8 TF32 -------------------------------------------------------------------------
// a [32][4], b [32][2], d [32][4]: each lane's registers in the PTX ISA's m16n8k8 .tf32
// layout (one fp32 bit pattern per register), d C on entry, D on return. passes = 3: the
// 3xTF32 product of fp32 operands (split_tf32 of each register's value, mma_tf32x3);
// passes = 1: mma_tf32x3 with exact = false; passes = 0: one mma_1688_tf32 on the registers
// as given (the hardware's truncation of their low 13 bits shows).
extern "C" void emu_mma_m16n8k8_tf32(const uint32_t* a, const uint32_t* b, float* d, int passes) {
  emu_launch(dim3(1), 32, [&] {
    const int lane = threadIdx.x;
    uint32_t ra[4], rb[2];
    float rd[4];
    for (int r = 0; r < 4; ++r) {
      ra[r] = a[4 * lane + r];
      rd[r] = d[4 * lane + r];
    }
    rb[0] = b[2 * lane];
    rb[1] = b[2 * lane + 1];
    if (passes == 0) {
      danet::mma::mma_1688_tf32(rd, ra, rb);
    } else {
      uint32_t a_hi[4], a_lo[4], b_hi[2], b_lo[2];
      for (int r = 0; r < 4; ++r) danet::mma::split_tf32(danet::mma::uint_as_float(ra[r]), a_hi[r], a_lo[r]);
      for (int r = 0; r < 2; ++r) danet::mma::split_tf32(danet::mma::uint_as_float(rb[r]), b_hi[r], b_lo[r]);
      danet::mma::mma_tf32x3(rd, a_hi, a_lo, b_hi, b_lo, passes == 3);
    }
    for (int r = 0; r < 4; ++r) d[4 * lane + r] = rd[r];
  });
}

// split_tf32 of x[0..n): hi[i], lo[i] the two TF32 bit patterns.
extern "C" void emu_split_tf32(const float* x, uint32_t* hi, uint32_t* lo, int n) {
  for (int i = 0; i < n; ++i) danet::mma::split_tf32(x[i], hi[i], lo[i]);
}
