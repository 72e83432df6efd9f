// Host-side pieces shared by the extension's .cu files: ATen includes, input checks,
// the dtype dispatch, and the device building blocks of tile.cuh.
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
