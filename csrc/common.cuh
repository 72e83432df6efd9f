// Host-side pieces shared by the extension's .cu files: ATen includes, input checks,
// the dtype dispatch, the mma.sync kernels' launch conditions and row padding, and the
// device building blocks of tile.cuh.
#pragma once

// The narrow ATen headers rather than <ATen/ATen.h>: the same API for what is used here,
// and a noticeably shorter nvcc front end (build time matters: first use and CI).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "tile.cuh"

namespace danet {

// torch's half types are bit- and layout-compatible with CUDA's, so shared tiles of them
// are handed to WMMA (tile_mma) and to the mma.sync instructions of mma.cuh as __half /
// __nv_bfloat16.
template <>
struct wmma_elem<c10::Half> { using type = __half; };
template <>
struct wmma_elem<c10::BFloat16> { using type = __nv_bfloat16; };

// ---- host-side helpers -------------------------------------------------------------

inline void check_input(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.is_cuda(), "danet_ops: ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == dim, "danet_ops: ", name, " must have ", dim, " dimensions, got shape ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "danet_ops: ", name, " must be contiguous");
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, "danet_ops: ", name, " must be ", expected, ", got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "danet_ops: ", name, " is on ", t.device(),
              " but the inputs are on ", ref.device());
}

inline void check_float_type(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, "danet_ops: ", name,
              " must be float32, float16 or bfloat16 (the CUDA backend has no float64), got ", s);
}

// gamma as a one-element fp32 tensor on the inputs' device (the kernels read it there).
inline c10::optional<at::Tensor> gamma_fp32(const c10::optional<at::Tensor>& gamma,
                                            const at::Tensor& ref) {
  if (!gamma.has_value()) return c10::nullopt;
  TORCH_CHECK(gamma->numel() == 1, "danet_ops: gamma must have one element, got shape ",
              gamma->sizes());
  check_same_device(*gamma, "gamma", ref);
  return gamma->to(at::kFloat).contiguous();
}

inline const float* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// ---- the mma.sync kernels' (pam_kernels.cuh, cam_kernels.cuh) host side ----------------

// Whether an mma.sync kernel needing `bytes` of dynamic shared memory can run here: sm_80
// or newer, and no more than a block may opt in to.
inline bool mma_fits(size_t bytes) {
  int dev = 0, major = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return major >= 8 && bytes <= static_cast<size_t>(optin);
}

// The [B, C, N] inputs as the mma.sync kernels read them: rows of a 16-byte aligned buffer
// with a stride (ld) that is a multiple of 8 positions. Dense inputs that are already so are
// used as they are; otherwise each is copied once into a zero-padded [B, C, ld] buffer
// (O(C*N) bytes against the kernels' O(N^2*C) or O(C^2*N) work), so every load is a 16-byte
// cp.async and the padding reads as zeros (the PAM kernels give P = 0 there, and 0 * v
// stays 0; in CAM's products the zero positions add nothing).
inline int64_t mma_row_stride(std::initializer_list<const at::Tensor*> ts) {
  const int64_t n = (*ts.begin())->size(2);
  bool direct = n % 8 == 0;
  for (const at::Tensor* t : ts) direct = direct && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0;
  return direct ? n : (n + 7) / 8 * 8;
}

inline at::Tensor padded_rows(const at::Tensor& t, int64_t ld) {
  if (ld == t.size(2) && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) return t;
  auto buffer = at::zeros({t.size(0), t.size(1), ld}, t.options());
  buffer.narrow(2, 0, t.size(2)).copy_(t);
  return buffer;
}

}  // namespace danet

// float32, float16, bfloat16 only: float64 runs on the pure-PyTorch backends, and leaving
// it out keeps the template instantiations (and the build time) down.
#define DANET_DISPATCH(TYPE, NAME, ...)                                   \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                          \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

namespace danet {

// dgamma: the sum of per-row partials as a 0-dim tensor of gamma's dtype.
inline at::Tensor sum_to_scalar(const at::Tensor& partials, at::ScalarType dtype, cudaStream_t stream) {
  auto total = at::empty({}, partials.options().dtype(at::kFloat));
  sum_all_kernel<float><<<1, THREADS, 0, stream>>>(partials.data_ptr<float>(), partials.numel(),
                                                   total.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return total.to(dtype);
}

}  // namespace danet
