// CAM host wrappers: input checks, the split-K choice for the Gram products, launches.
// Every dtype runs on the mma.sync kernels where the GPU allows (sm_80+, and their shared
// memory: fp32's is twice the half types'; X and dout padded to rows of a multiple of 8
// positions where needed, the fp32 attention and dE as [C, ceil8(C)] operands, rounded to
// the input dtype for fp16/bf16). fp32 runs as 3xTF32; with tf32 (torch's matmul precision
// "high"/"medium", passed from Python) A X and dx as one TF32 product, the Gram products
// E and G always 3xTF32. GPUs before sm_80, and fp32 where its shared memory does not fit,
// take the 64x64 tile GEMM. The kernels and the math are in cam_kernels.cuh.
#include "common.cuh"
#include "cam_kernels.cuh"

#include <tuple>
#include <utility>

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

// How a Gram-type product (reduction over n positions, tiles output tiles over the whole
// batch) splits its reduction: about two blocks per SM, at least 512 positions per split,
// each split a whole number of `chunk` positions, batch * splits within the grid's z limit.
// Returns {splits, positions per split}; splits == 1 means no split.
std::pair<int, int> gram_splits(const at::Tensor& t, int64_t tiles, int64_t batch, int64_t n, int chunk) {
  const int64_t want = (2 * sm_count(t) + tiles - 1) / tiles;
  const int64_t most = (n + 511) / 512;  // keep at least 512 positions per split
  int64_t splits = std::max<int64_t>(1, std::min(want, most));
  splits = std::min<int64_t>(splits, 65535 / std::max<int64_t>(1, batch));
  if (splits <= 1) return {1, 0};
  int64_t per = (n + splits - 1) / splits;
  per = (per + chunk - 1) / chunk * chunk;
  splits = (n + per - 1) / per;
  return {static_cast<int>(splits), static_cast<int>(per)};
}

// c[e] = sum_s ws[s, e] over total elements, in split order.
void splitk_reduce(const at::Tensor& ws, int splits, int64_t total, float* c, cudaStream_t stream) {
  splitk_reduce_kernel<<<ceil_div(total, THREADS), THREADS, 0, stream>>>(ws.data_ptr<float>(), splits, total, c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[b] = X_a[b] X_b[b]^T, both [C, N] row-major, into a contiguous fp32 [B, C, C]: the
// Gram E = X X^T (forward) and G = dout X^T (backward), on the 64x64 tile kernel. The
// reduction over N is split across blocks so that there are about two blocks per SM.
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
  const auto [splits, per] = gram_splits(xa, tiles, batch, n, KC);
  p.splits = splits;
  p.k_per_split = per;
  at::Tensor ws;
  if (splits > 1) {
    ws = at::empty({splits, batch, c, c}, out.options());
    p.ws = ws.data_ptr<float>();
  }
  launch_gemm(p, stream);
  if (splits > 1) splitk_reduce(ws, splits, batch * c * c, p.c, stream);
}

// ---- every dtype on mma.sync (sm_80+) --------------------------------------------------------

template <typename T, typename TC, bool B_N_MAJOR>
void launch_gemm_mma(const MmaGemmArgs<T, TC>& p, cudaStream_t stream) {
  const size_t smem = cam_mma::smem_bytes<T>(B_N_MAJOR);
  const auto kernel = cam_gemm_mma_kernel<T, TC, B_N_MAJOR>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(ceil_div(p.n, cam_mma::BN), ceil_div(p.m, cam_mma::BM), p.batch * p.splits);
  kernel<<<grid, cam_mma::BLOCK_THREADS, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether the mma.sync kernels for T can run here (sm_80+, their shared memory: fp32 needs
// twice the half types', 110592 bytes, so e.g. sm_86's 101376 leave it on the tile kernel).
template <typename T>
bool cam_mma_fits() {
  return mma_fits(std::max(cam_mma::smem_bytes<T>(false), cam_mma::smem_bytes<T>(true)));
}

// The Gram product of gram() on cam_gemm_mma_kernel: xa, xb [B, C, ld] as padded_rows gives
// them (ld a multiple of 8, zeros past N), n = N.
template <typename T>
void gram_mma(const at::Tensor& xa, const at::Tensor& xb, int64_t n, at::Tensor& out, cudaStream_t stream) {
  const int64_t batch = xa.size(0), c = xa.size(1), ld = xa.size(2);
  MmaGemmArgs<T, float> p{};
  p.term[0] = MmaTerm<T>{xa.data_ptr<T>(), c * ld, static_cast<int>(ld), xb.data_ptr<T>(), c * ld,
                         static_cast<int>(ld), static_cast<int>(n)};
  p.nterms = 1;
  p.batch = batch;
  p.m = c;
  p.n = c;
  p.c = out.data_ptr<float>();
  const int64_t tiles = (int64_t)ceil_div(c, cam_mma::BM) * ceil_div(c, cam_mma::BN) * batch;
  const auto [splits, per] = gram_splits(xa, tiles, batch, n, cam_mma::BK);
  p.splits = splits;
  p.k_per_split = per;
  at::Tensor ws;
  if (splits > 1) {
    ws = at::empty({splits, batch, c, c}, out.options());
    p.ws = ws.data_ptr<float>();
  }
  launch_gemm_mma<T, float, false>(p, stream);
  if (splits > 1) splitk_reduce(ws, splits, batch * c * c, p.c, stream);
}

// An fp32 [B, C, C] matrix as an A operand of cam_gemm_mma_kernel (cam_operand_kernel):
// [B, C, ceil8(C)] in T. fp32 has nothing to round, but the kernel's 16-byte cp.async needs
// rows of a multiple of 8 (and the transposed and symmetric forms are needed anyway); one
// O(C^2) pass against the product's O(C^2 N), so every dtype takes it.
template <typename T, CamOperand OP>
at::Tensor operand(const at::Tensor& src, const float* scale, const at::Tensor& like, cudaStream_t stream) {
  const int64_t batch = src.size(0), c = src.size(1), ld = (c + 7) / 8 * 8;
  auto dst = at::empty({batch, c, ld}, like.options());
  const dim3 grid(ceil_div(ld, 32), ceil_div(c, 32), batch);
  cam_operand_kernel<T, OP><<<grid, THREADS, 0, stream>>>(src.data_ptr<float>(), scale, static_cast<int>(c),
                                                          static_cast<int>(ld), dst.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dst;
}

// A term of the C x N products: A = a [B, C, ceil8(C)] (operand()), B = X-like [B, C, ld]
// (padded_rows), reduction over the C channels.
template <typename T>
MmaTerm<T> channel_term(const at::Tensor& a, const at::Tensor& x) {
  const int64_t c = x.size(1), ld = x.size(2), lda = a.size(2);
  return MmaTerm<T>{a.data_ptr<T>(), c * lda, static_cast<int>(lda), x.data_ptr<T>(), c * ld,
                    static_cast<int>(ld), static_cast<int>(c)};
}

// Forward on mma.sync: attn = softmax(-X X^T), out = gamma * (A X) + x. False (nothing
// launched) where the kernels cannot run.
template <typename T>
bool cam_forward_mma(const at::Tensor& x, const c10::optional<at::Tensor>& g, at::Tensor& attn, at::Tensor& out,
                     bool tf32, cudaStream_t stream) {
  if (!cam_mma_fits<T>()) return false;
  const int64_t batch = x.size(0), c = x.size(1), n = x.size(2);
  const auto xp = padded_rows(x, mma_row_stride({&x}));
  gram_mma<T>(xp, xp, n, attn, stream);
  const int64_t rows = batch * c;
  cam_softmax_kernel<<<ceil_div(rows, THREADS / 32), THREADS, 0, stream>>>(attn.data_ptr<float>(), rows, c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto a = operand<T, CamOperand::copy>(attn, nullptr, x, stream);
  MmaGemmArgs<T, T> p{};
  p.term[0] = channel_term<T>(a, xp);
  p.nterms = 1;
  p.batch = batch;
  p.m = c;
  p.n = n;
  p.c = out.data_ptr<T>();
  p.alpha = ptr_or_null(g);
  p.r = g.has_value() ? x.data_ptr<T>() : nullptr;
  p.splits = 1;
  p.tf32 = tf32;
  launch_gemm_mma<T, T, true>(p, stream);
  return true;
}

// Backward on mma.sync: G = dout X^T, dE in place (cam_softmax_backward_kernel), then
// dx = (gamma A^T) dout + (dE + dE^T) X + dout as two terms of one product.
template <typename T>
bool cam_backward_mma(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& attn,
                      const c10::optional<at::Tensor>& g, at::Tensor& de, at::Tensor& rowpart, at::Tensor& dx,
                      bool tf32, cudaStream_t stream) {
  if (!cam_mma_fits<T>()) return false;
  const int64_t batch = x.size(0), c = x.size(1), n = x.size(2);
  const int64_t ld = mma_row_stride({&x, &dout});
  const auto xp = padded_rows(x, ld), dp = padded_rows(dout, ld);
  gram_mma<T>(dp, xp, n, de, stream);
  const int64_t rows = batch * c;
  cam_softmax_backward_kernel<<<ceil_div(rows, THREADS / 32), THREADS, 0, stream>>>(
      attn.data_ptr<float>(), de.data_ptr<float>(), rowpart.data_ptr<float>(), ptr_or_null(g), rows, c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto a_t = operand<T, CamOperand::transpose>(attn, ptr_or_null(g), x, stream);
  const auto sym = operand<T, CamOperand::symmetric>(de, nullptr, x, stream);
  MmaGemmArgs<T, T> p{};
  p.term[0] = channel_term<T>(a_t, dp);
  p.term[1] = channel_term<T>(sym, xp);
  p.nterms = 2;
  p.batch = batch;
  p.m = c;
  p.n = n;
  p.c = dx.data_ptr<T>();
  p.r = g.has_value() ? dout.data_ptr<T>() : nullptr;
  p.splits = 1;
  p.tf32 = tf32;
  launch_gemm_mma<T, T, true>(p, stream);
  return true;
}

void check_cam_x(const at::Tensor& x) {
  check_input(x, "x", 3);
  check_float_type(x, "x");
  TORCH_CHECK(x.size(0) <= 65535 && x.size(1) <= 65535 * TILE && x.size(2) <= ((int64_t)1 << 30),
              "danet_ops: CAM sizes out of range: x ", x.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cam_forward(const at::Tensor& x,
                                               const c10::optional<at::Tensor>& gamma, bool tf32) {
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
    // Every dtype on mma.sync where the GPU allows (fp32 as 3xTF32); GPUs before sm_80, and
    // fp32 where its shared memory does not fit, on the 64x64 tile kernel.
    if (cam_forward_mma<scalar_t>(x, g, attn, out, tf32, stream)) return;
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
                                                const c10::optional<at::Tensor>& gamma, bool tf32) {
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
      if (cam_backward_mma<scalar_t>(dout, x, attn, g, de, rowpart, dx, tf32, stream)) return;
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
