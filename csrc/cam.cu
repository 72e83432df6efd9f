// CAM host wrappers: input checks, the split-K choice for the Gram products, launches.
// The kernels and the math are in cam_kernels.cuh.
#include "common.cuh"
#include "cam_kernels.cuh"

#include <tuple>

namespace danet {
namespace {

int sm_count(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device()));
  return count > 0 ? count : 1;
}

template <typename TA, typename TB, typename TC, typename TR>
void launch_gemm(GemmArgs<TA, TB, TC, TR> p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.n, TILE), ceil_div(p.m, TILE), p.batch * p.splits);
  gemm_kernel<TA, TB, TC, TR><<<grid, THREADS, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[b] = X_a[b] X_b[b]^T, both [C, N] row-major, into a contiguous fp32 [B, C, C]: the
// Gram E = X X^T (forward) and G = dout X^T (backward). The reduction over N is split
// across blocks so that there are about two blocks per SM.
template <typename T>
void gram(const at::Tensor& xa, const at::Tensor& xb, at::Tensor& out, cudaStream_t stream) {
  const int64_t batch = xa.size(0), c = xa.size(1), n = xa.size(2);
  GemmArgs<T, T, float, float> p{};
  p.term[0] = GemmTerm<T, T>{xa.data_ptr<T>(), c * n, n, 1, xb.data_ptr<T>(), c * n, 1, n,
                             static_cast<int>(n), nullptr};
  p.nterms = 1;
  p.batch = batch;
  p.m = c;
  p.n = c;
  p.c = out.data_ptr<float>();
  p.c_b = c * c;
  p.c_m = c;
  p.c_n = 1;
  const int64_t tiles = (int64_t)ceil_div(c, TILE) * ceil_div(c, TILE) * batch;
  const int64_t want = (2 * sm_count(xa) + tiles - 1) / tiles;
  const int64_t most = (n + 511) / 512;  // keep at least 512 positions per split
  int64_t splits = std::max<int64_t>(1, std::min(want, most));
  splits = std::min<int64_t>(splits, 65535 / std::max<int64_t>(1, batch));
  at::Tensor ws;
  if (splits > 1) {
    int64_t per = (n + splits - 1) / splits;
    per = (per + KC - 1) / KC * KC;
    splits = (n + per - 1) / per;
    p.k_per_split = static_cast<int>(per);
  }
  p.splits = static_cast<int>(std::max<int64_t>(1, splits));
  if (p.splits > 1) {
    ws = at::empty({p.splits, batch, c, c}, out.options());
    p.ws = ws.data_ptr<float>();
  }
  launch_gemm(p, stream);
  if (p.splits > 1) {
    const int64_t total = batch * c * c;
    splitk_reduce_kernel<<<ceil_div(total, THREADS), THREADS, 0, stream>>>(p.ws, p.splits, total,
                                                                           p.c);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void check_cam_x(const at::Tensor& x) {
  check_input(x, "x", 3);
  check_float_type(x, "x");
  TORCH_CHECK(x.size(0) <= 65535 && x.size(1) <= 65535 * TILE && x.size(2) <= ((int64_t)1 << 30),
              "danet_ops: CAM sizes out of range: x ", x.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cam_forward(const at::Tensor& x,
                                               const c10::optional<at::Tensor>& gamma) {
  check_cam_x(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto g = gamma_fp32(gamma, x);
  const int64_t batch = x.size(0), c = x.size(1), n = x.size(2);
  auto attn = at::empty({batch, c, c}, x.options().dtype(at::kFloat));
  auto out = at::empty_like(x);
  if (x.numel() == 0) {
    attn.fill_(c > 0 ? 1.0 / c : 0.0);  // E = 0 when N = 0: a uniform softmax
    return {out, attn};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DANET_DISPATCH(x.scalar_type(), "danet_ops.cam_forward", [&] {
    gram<scalar_t>(x, x, attn, stream);
    const int64_t rows = batch * c;
    cam_softmax_kernel<<<ceil_div(rows, THREADS / 32), THREADS, 0, stream>>>(
        attn.data_ptr<float>(), rows, c);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // out[m][n] = gamma * sum_k A[m][k] x[k][n] + x[m][n]
    GemmArgs<float, scalar_t, scalar_t, scalar_t> p{};
    p.term[0] = GemmTerm<float, scalar_t>{attn.data_ptr<float>(), c * c, c, 1,
                                          x.data_ptr<scalar_t>(), c * n, n, 1,
                                          static_cast<int>(c), nullptr};
    p.nterms = 1;
    p.batch = batch;
    p.m = c;
    p.n = n;
    p.c = out.data_ptr<scalar_t>();
    p.c_b = c * n;
    p.c_m = n;
    p.c_n = 1;
    p.alpha = ptr_or_null(g);
    if (g.has_value()) {
      p.r = x.data_ptr<scalar_t>();
      p.r_b = c * n;
      p.r_m = n;
      p.r_n = 1;
    }
    p.splits = 1;
    launch_gemm(p, stream);
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor> cam_backward(const at::Tensor& dout, const at::Tensor& x,
                                                const at::Tensor& attn,
                                                const c10::optional<at::Tensor>& gamma) {
  check_cam_x(x);
  check_input(dout, "dout", 3);
  check_input(attn, "attn", 3);
  check_dtype(dout, "dout", x.scalar_type());
  check_dtype(attn, "attn", at::kFloat);
  check_same_device(dout, "dout", x);
  check_same_device(attn, "attn", x);
  TORCH_CHECK(dout.sizes() == x.sizes(), "danet_ops: dout must have x's shape ", x.sizes(),
              ", got ", dout.sizes());
  const int64_t batch = x.size(0), c = x.size(1), n = x.size(2);
  TORCH_CHECK(attn.size(0) == batch && attn.size(1) == c && attn.size(2) == c,
              "danet_ops: attn must be [B, C, C] = [", batch, ", ", c, ", ", c, "], got ",
              attn.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto g = gamma_fp32(gamma, x);
  auto dx = at::empty_like(x);
  auto de = at::empty({batch, c, c}, x.options().dtype(at::kFloat));  // G, then dE in place
  auto rowpart = at::zeros({batch * c}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (x.numel() > 0) {
    DANET_DISPATCH(x.scalar_type(), "danet_ops.cam_backward", [&] {
      gram<scalar_t>(dout, x, de, stream);
      const int64_t rows = batch * c;
      cam_softmax_backward_kernel<<<ceil_div(rows, THREADS / 32), THREADS, 0, stream>>>(
          attn.data_ptr<float>(), de.data_ptr<float>(), rowpart.data_ptr<float>(), ptr_or_null(g),
          rows, c);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      // dx[m][n] = sum_k A[k][m] (gamma dout[k][n]) + dE[m][k] x[k][n] + dE[k][m] x[k][n] + dout
      using Term = GemmTerm<float, scalar_t>;
      const float* a = attn.data_ptr<float>();
      const float* d = de.data_ptr<float>();
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* dp = dout.data_ptr<scalar_t>();
      const int kc = static_cast<int>(c);
      GemmArgs<float, scalar_t, scalar_t, scalar_t> p{};
      p.term[0] = Term{a, c * c, 1, c, dp, c * n, n, 1, kc, ptr_or_null(g)};
      p.term[1] = Term{d, c * c, c, 1, xp, c * n, n, 1, kc, nullptr};
      p.term[2] = Term{d, c * c, 1, c, xp, c * n, n, 1, kc, nullptr};
      p.nterms = 3;
      p.batch = batch;
      p.m = c;
      p.n = n;
      p.c = dx.data_ptr<scalar_t>();
      p.c_b = c * n;
      p.c_m = n;
      p.c_n = 1;
      if (g.has_value()) {
        p.r = dp;
        p.r_b = c * n;
        p.r_m = n;
        p.r_n = 1;
      }
      p.splits = 1;
      launch_gemm(p, stream);
    });
  } else {
    dx.zero_();
  }
  at::Tensor dgamma = gamma.has_value() ? sum_to_scalar(rowpart, gamma->scalar_type(), stream)
                                        : at::empty({0}, dout.options());
  return {dx, dgamma};
}

}  // namespace danet
