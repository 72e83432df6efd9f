// PAM host wrappers: input checks and launches. The kernels, and why they are shaped as
// they are, are in pam_kernels.cuh. Which kernels serve which dtype:
//   sm_80+ with the mma kernels' shared memory within the block opt-in limit (Cqk up to 448
//   for fp16/bf16, 176 for fp32 on sm_90): pam_forward_mma_kernel, pam_dv_mma_kernel and
//   pam_dqk_mma_kernel for all three dtypes; fp16/bf16 on m16n8k16 MMAs, fp32 on m16n8k8
//   TF32 MMAs as 3xTF32 (fp32-accurate). `tf32` (torch's float32 matmul precision "high" or
//   "medium", passed by danet_ops/cuda) lets fp32's products other than the energies run
//   as one TF32 MMA, as the Triton backend does.
//   `whole_cv` (danet_ops/cuda: DANET_OPS_CUDA_PAM_FWD=whole_cv): fp16/bf16 forward with
//   Cqk <= 64 and Cv <= 512 on pam_forward_whole_cv_kernel, S once per (query, key) pair.
//   `fused` (danet_ops/cuda: DANET_OPS_CUDA_PAM_BWD=fused, not under torch's deterministic
//   mode): fp16/bf16 backward with Cqk <= 64 and Cv <= 512 on pam_bwd_fused_mma_kernel,
//   one kernel, P and dS once per tile pair, dQ by fp32 atomics.
//   GPUs before sm_80, or a larger Cqk: the 64x64 tile kernels (pam_forward_kernel,
//   pam_dv_kernel, pam_dqk_kernel): fp32 on SIMT FMAs (true fp32), half types on WMMA.
#include "common.cuh"
#include "pam_kernels.cuh"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace danet {
namespace {

void check_pam_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_input(q, "q", 3);
  check_input(k, "k", 3);
  check_input(v, "v", 3);
  check_float_type(q, "q");
  check_dtype(k, "k", q.scalar_type());
  check_dtype(v, "v", q.scalar_type());
  check_same_device(k, "k", q);
  check_same_device(v, "v", q);
  TORCH_CHECK(k.sizes() == q.sizes(), "danet_ops: k must have q's shape ", q.sizes(), ", got ",
              k.sizes());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(2) == q.size(2),
              "danet_ops: v must match q in batch and positions: q ", q.sizes(), ", v ", v.sizes());
  TORCH_CHECK(q.size(0) <= 65535, "danet_ops: batch size over 65535 is not supported, got ",
              q.size(0));
  TORCH_CHECK(q.size(2) <= (int64_t)1 << 30 && q.size(1) <= 65535 * TILE && v.size(1) <= 65535 * TILE,
              "danet_ops: PAM sizes out of range: q ", q.sizes(), ", v ", v.sizes());
}

// Points p's q, k, v (and dout, for the backward) at the rows the mma.sync kernels read
// (mma_row_stride, padded_rows) and sets p.ld; the returned tensors hold any padded copies
// until the launch is queued.
template <typename T>
std::vector<at::Tensor> use_mma_rows(PamArgs<T>& p, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor* dout = nullptr) {
  const int64_t ld = dout ? mma_row_stride({&q, &k, &v, dout}) : mma_row_stride({&q, &k, &v});
  std::vector<at::Tensor> rows{padded_rows(q, ld), padded_rows(k, ld), padded_rows(v, ld)};
  p.q = rows[0].data_ptr<T>();
  p.k = rows[1].data_ptr<T>();
  p.v = rows[2].data_ptr<T>();
  if (dout) {
    rows.push_back(padded_rows(*dout, ld));
    p.dout = rows[3].data_ptr<T>();
  }
  p.ld = static_cast<int>(ld);
  return rows;
}

// Whether pam_forward_mma_kernel<T> can run here (q, two k stages and two v stages in
// shared memory). Returns its byte count, or 0.
template <typename T>
size_t mma_forward_smem(int64_t cqk) {
  const size_t bytes = pam_mma::smem_bytes<T>(static_cast<int>(cqk));
  return mma_fits(bytes) ? bytes : 0;
}

// pam_forward_mma_kernel for p (its q, k, v, ld set here), if it can run on this GPU.
template <typename T>
bool launch_mma_forward(PamArgs<T> p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        at::Tensor& out, T* o_raw, at::Tensor& lse, cudaStream_t stream) {
  const size_t smem = mma_forward_smem<T>(p.cqk);
  if (smem == 0) return false;
  const auto rows = use_mma_rows(p, q, k, v);
  const auto kernel = pam_forward_mma_kernel<T>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const dim3 grid(ceil_div(p.n, pam_mma::BM), ceil_div(p.cv, pam_mma::CVT), q.size(0));
  kernel<<<grid, pam_mma::BLOCK_THREADS, smem, stream>>>(p, out.data_ptr<T>(), o_raw,
                                                         lse.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// pam_forward_whole_cv_kernel for p (its q, k, v, ld set here), if it serves this dtype and
// these widths (pam_wide::fits) and its shared memory fits.
template <typename T>
bool launch_whole_cv_forward(PamArgs<T> p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             at::Tensor& out, T* o_raw, at::Tensor& lse, cudaStream_t stream) {
  if constexpr (sizeof(T) != 2) {
    return false;  // fp32: pam_forward_mma_kernel (pam_kernels.cuh says why)
  } else {
    const size_t smem = pam_whole::smem_bytes<T>(p.cqk, p.cv);
    if (!pam_wide::fits<T>(p.cqk, p.cv) || !mma_fits(smem)) return false;
    const auto rows = use_mma_rows(p, q, k, v);
    const auto kernel = pam_forward_whole_cv_kernel<T>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    const dim3 grid(ceil_div(p.n, pam_whole::BQ), q.size(0));
    kernel<<<grid, pam_whole::BLOCK_THREADS, smem, stream>>>(p, out.data_ptr<T>(), o_raw, lse.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
}

// pam_dv_mma_kernel and pam_dqk_mma_kernel for p (its q, k, v, dout, ld set here), if both
// can run on this GPU; p.delta must be written first (pam_delta_kernel).
template <typename T>
bool launch_mma_backward(PamArgs<T> p, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                         cudaStream_t stream) {
  const int cqk = p.cqk;
  const size_t dv_smem = pam_mma::smem_bytes<T>(cqk), dqk_smem = pam_mma::dqk_smem_bytes<T>(cqk);
  if (p.cqk == 0 || p.cv == 0 || !mma_fits(std::max(dv_smem, dqk_smem))) return false;
  const auto rows = use_mma_rows(p, q, k, v, &dout);
  const auto dv_kernel = pam_dv_mma_kernel<T>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(dv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(dv_smem)));
  const dim3 dv_grid(ceil_div(p.n, pam_mma::BM), ceil_div(p.cv, pam_mma::CVT), q.size(0));
  dv_kernel<<<dv_grid, pam_mma::BLOCK_THREADS, dv_smem, stream>>>(p, dv.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto dk_kernel = pam_dqk_mma_kernel<T, true>;
  const auto dq_kernel = pam_dqk_mma_kernel<T, false>;
  for (const auto kernel : {dk_kernel, dq_kernel})
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(dqk_smem)));
  const dim3 grid(ceil_div(p.n, pam_mma::BM), ceil_div(cqk, pam_mma::GC), q.size(0));
  dk_kernel<<<grid, pam_mma::BLOCK_THREADS, dqk_smem, stream>>>(p, dk.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  dq_kernel<<<grid, pam_mma::BLOCK_THREADS, dqk_smem, stream>>>(p, dq.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// pam_bwd_fused_mma_kernel for p (its q, k, v, dout, ld set here), if it serves this dtype
// and these widths (pam_wide::fits) and its shared memory fits; dq through an fp32
// buffer that the kernel's atomics add into. p.delta must be written first.
template <typename T>
bool launch_fused_backward(PamArgs<T> p, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                           const at::Tensor& v, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                           cudaStream_t stream) {
  if constexpr (sizeof(T) != 2) {
    return false;  // fp32: the split kernels (pam_kernels.cuh says why)
  } else {
    const size_t smem = pam_fused::smem_bytes<T>(p.cqk, p.cv);
    if (!pam_wide::fits<T>(p.cqk, p.cv) || !mma_fits(smem)) return false;
    const auto rows = use_mma_rows(p, q, k, v, &dout);
    auto dq_acc = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
    const auto kernel = pam_bwd_fused_mma_kernel<T>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    const dim3 grid(ceil_div(p.n, pam_fused::BK), q.size(0));
    kernel<<<grid, pam_fused::BLOCK_THREADS, smem, stream>>>(p, dk.data_ptr<T>(), dv.data_ptr<T>(),
                                                       dq_acc.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dq.copy_(dq_acc);
    return true;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pam_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& residual,
    double scale, bool save_o, bool tf32, bool whole_cv) {
  check_pam_inputs(q, k, v);
  if (residual.has_value()) {
    check_input(*residual, "residual", 3);
    check_dtype(*residual, "residual", v.scalar_type());
    check_same_device(*residual, "residual", q);
    TORCH_CHECK(residual->sizes() == v.sizes(), "danet_ops: residual must have v's shape ",
                v.sizes(), ", got ", residual->sizes());
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const auto g = gamma_fp32(gamma, q);
  const int64_t batch = q.size(0), cqk = q.size(1), cv = v.size(1), n = q.size(2);
  auto out = at::empty_like(v);
  auto lse = at::empty({batch, n}, q.options().dtype(at::kFloat));
  const bool keep_o = save_o && (gamma.has_value() || residual.has_value());
  auto o = keep_o ? at::empty_like(v) : at::empty({0}, v.options());
  if (out.numel() == 0 || n == 0) {
    lse.fill_(-INFINITY);
    return {out, lse, o};
  }
  const dim3 grid(ceil_div(n, TILE), ceil_div(cv, TILE), batch);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DANET_DISPATCH(v.scalar_type(), "danet_ops.pam_forward", [&] {
    PamArgs<scalar_t> p{};
    p.q = q.data_ptr<scalar_t>();
    p.k = k.data_ptr<scalar_t>();
    p.v = v.data_ptr<scalar_t>();
    p.residual = residual.has_value() ? residual->data_ptr<scalar_t>() : nullptr;
    p.gamma = ptr_or_null(g);
    p.cqk = cqk;
    p.cv = cv;
    p.n = n;
    p.scale = static_cast<float>(scale);
    p.tf32 = tf32;
    scalar_t* o_ptr = keep_o ? o.data_ptr<scalar_t>() : nullptr;
    // whole_cv (fp16/bf16, Cqk <= 64, Cv <= 512): S once per pair, all v channels a block;
    // else every dtype on tensor cores through mma.sync where the GPU (sm_80+) and shared
    // memory allow (pam_kernels.cuh; fp32 as 3xTF32); elsewhere the 64x64 tile kernel.
    if (whole_cv && launch_whole_cv_forward(p, q, k, v, out, o_ptr, lse, stream)) return;
    if (launch_mma_forward(p, q, k, v, out, o_ptr, lse, stream)) return;
    pam_forward_kernel<scalar_t><<<grid, THREADS, 0, stream>>>(p, out.data_ptr<scalar_t>(), o_ptr,
                                                               lse.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse, o};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pam_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& gamma, const at::Tensor& o, const at::Tensor& lse,
    double scale, bool tf32, bool fused) {
  check_pam_inputs(q, k, v);
  check_input(dout, "dout", 3);
  check_input(o, "o", 3);
  check_input(lse, "lse", 2);
  check_dtype(dout, "dout", v.scalar_type());
  check_dtype(o, "o", v.scalar_type());
  check_dtype(lse, "lse", at::kFloat);
  check_same_device(dout, "dout", q);
  check_same_device(o, "o", q);
  check_same_device(lse, "lse", q);
  TORCH_CHECK(dout.sizes() == v.sizes(), "danet_ops: dout must have v's shape ", v.sizes(),
              ", got ", dout.sizes());
  TORCH_CHECK(o.sizes() == v.sizes(), "danet_ops: o (the raw attention output) must have v's shape ",
              v.sizes(), ", got ", o.sizes());
  TORCH_CHECK(lse.size(0) == q.size(0) && lse.size(1) == q.size(2),
              "danet_ops: lse must be [B, N] = [", q.size(0), ", ", q.size(2), "], got ", lse.sizes());
  const c10::cuda::CUDAGuard guard(q.device());
  const auto g = gamma_fp32(gamma, q);
  const int64_t batch = q.size(0), cqk = q.size(1), cv = v.size(1), n = q.size(2);
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  auto rowdot = at::empty({batch, n}, q.options().dtype(at::kFloat));
  auto delta = at::empty({batch, n}, q.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (batch == 0 || n == 0) {
    rowdot.zero_();
    dq.zero_();
    dk.zero_();
    dv.zero_();
  } else {
    DANET_DISPATCH(v.scalar_type(), "danet_ops.pam_backward", [&] {
      PamArgs<scalar_t> p{};
      p.q = q.data_ptr<scalar_t>();
      p.k = k.data_ptr<scalar_t>();
      p.v = v.data_ptr<scalar_t>();
      p.dout = dout.data_ptr<scalar_t>();
      p.gamma = ptr_or_null(g);
      p.lse = lse.data_ptr<float>();
      p.delta = delta.data_ptr<float>();
      p.cqk = cqk;
      p.cv = cv;
      p.n = n;
      p.scale = static_cast<float>(scale);
      p.tf32 = tf32;

      pam_delta_kernel<scalar_t><<<dim3(ceil_div(n, THREADS), batch), THREADS, 0, stream>>>(
          p.dout, o.data_ptr<scalar_t>(), p.gamma, cv, n, rowdot.data_ptr<float>(),
          delta.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // fused (fp16/bf16, Cqk <= 64, Cv <= 512): the one-kernel backward; else every dtype
      // on the split mma.sync kernels where the GPU and shared memory allow
      // (pam_kernels.cuh; fp32 as 3xTF32); elsewhere the 64x64 tile kernels.
      if (fused && launch_fused_backward(p, dout, q, k, v, dq, dk, dv, stream)) return;
      if (launch_mma_backward(p, dout, q, k, v, dq, dk, dv, stream)) return;
      if (cv > 0) {
        pam_dv_kernel<scalar_t><<<dim3(ceil_div(n, TILE), ceil_div(cv, TILE), batch), THREADS, 0, stream>>>(
            p, dv.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (cqk > 0) {
        const dim3 grid(ceil_div(n, TILE), ceil_div(cqk, TILE), batch);
        pam_dqk_kernel<scalar_t, true><<<grid, THREADS, 0, stream>>>(p, dk.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        pam_dqk_kernel<scalar_t, false><<<grid, THREADS, 0, stream>>>(p, dq.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  at::Tensor dgamma = gamma.has_value() ? sum_to_scalar(rowdot, gamma->scalar_type(), stream)
                                        : at::empty({0}, dout.options());
  return {dq, dk, dv, dgamma};
}

}  // namespace danet
