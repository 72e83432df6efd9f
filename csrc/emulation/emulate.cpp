// CPU emulation entry points (fp32) for the kernels in ../pam_kernels.cuh and
// ../cam_kernels.cuh, launched with the same grids and arguments as the host wrappers in
// ../pam.cu and ../cam.cu. Built and compared with the pure-PyTorch backend by
// tests/test_cuda_build.py; plain g++ -std=c++20 -pthread, no CUDA or torch needed.
#include "cuda_shim.h"

#include "../pam_kernels.cuh"
#include "../cam_kernels.cuh"

using namespace danet;

extern "C" {

void emu_pam_forward(const float* q, const float* k, const float* v, const float* residual,
                     const float* gamma, float* out, float* o, float* lse, int batch, int cqk,
                     int cv, int n, float scale) {
  PamArgs<float> p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.residual = residual;
  p.gamma = gamma;
  p.cqk = cqk;
  p.cv = cv;
  p.n = n;
  p.scale = scale;
  emu_launch(dim3(ceil_div(n, TILE), ceil_div(cv, TILE), batch), THREADS,
             [&] { pam_forward_kernel<float>(p, out, o, lse); });
}

void emu_pam_backward(const float* dout, const float* q, const float* k, const float* v,
                      const float* gamma, const float* o, const float* lse, float* dq, float* dk,
                      float* dv, float* rowdot, float* delta, float* dgamma, int batch, int cqk,
                      int cv, int n, float scale) {
  PamArgs<float> p{};
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
  emu_launch(dim3(ceil_div(n, THREADS), batch), THREADS,
             [&] { pam_delta_kernel<float>(dout, o, gamma, cv, n, rowdot, delta); });
  emu_launch(dim3(ceil_div(n, TILE), ceil_div(cv, TILE), batch), THREADS,
             [&] { pam_dv_kernel<float>(p, dv); });
  const dim3 grid(ceil_div(n, TILE), ceil_div(cqk, TILE), batch);
  emu_launch(grid, THREADS, [&] { pam_dqk_kernel<float, true>(p, dk); });
  emu_launch(grid, THREADS, [&] { pam_dqk_kernel<float, false>(p, dq); });
  emu_launch(dim3(1), THREADS, [&] { sum_all_kernel<float>(rowdot, (int64_t)batch * n, dgamma); });
}

// splits > 1 exercises the split-K path of the Gram products (ws: splits * B * C * C).
static void emu_gram(const float* xa, const float* xb, float* out, float* ws, int batch, int c,
                     int n, int splits) {
  GemmArgs<float, float, float, float> p{};
  p.term[0] = GemmTerm<float, float>{xa, (int64_t)c * n, n, 1, xb, (int64_t)c * n, 1, n, n, nullptr};
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
             [&] { gemm_kernel<float, float, float, float>(p); });
  if (p.splits > 1) {
    const int64_t total = (int64_t)batch * c * c;
    emu_launch(dim3(ceil_div(total, THREADS)), THREADS,
               [&] { splitk_reduce_kernel(ws, p.splits, total, out); });
  }
}

void emu_cam_forward(const float* x, const float* gamma, float* out, float* attn, float* ws,
                     int batch, int c, int n, int splits) {
  emu_gram(x, x, attn, ws, batch, c, n, splits);
  const int64_t rows = (int64_t)batch * c;
  emu_launch(dim3(ceil_div(rows, THREADS / 32)), THREADS,
             [&] { cam_softmax_kernel(attn, rows, c); });
  GemmArgs<float, float, float, float> p{};
  p.term[0] = GemmTerm<float, float>{attn, (int64_t)c * c, c, 1, x, (int64_t)c * n, n, 1, c, nullptr};
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
             [&] { gemm_kernel<float, float, float, float>(p); });
}

void emu_cam_backward(const float* dout, const float* x, const float* attn, const float* gamma,
                      float* dx, float* de, float* rowpart, float* dgamma, float* ws, int batch,
                      int c, int n, int splits) {
  emu_gram(dout, x, de, ws, batch, c, n, splits);
  const int64_t rows = (int64_t)batch * c;
  emu_launch(dim3(ceil_div(rows, THREADS / 32)), THREADS,
             [&] { cam_softmax_backward_kernel(attn, de, rowpart, gamma, rows, c); });
  using Term = GemmTerm<float, float>;
  const int64_t cc = (int64_t)c * c, cn = (int64_t)c * n;
  GemmArgs<float, float, float, float> p{};
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
             [&] { gemm_kernel<float, float, float, float>(p); });
  emu_launch(dim3(1), THREADS, [&] { sum_all_kernel<float>(rowpart, rows, dgamma); });
}

}  // extern "C"
