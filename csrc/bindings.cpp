// Python bindings of the danet_ops CUDA extension. The functions follow the backend
// contract of danet_ops.backends (danet_ops/cuda/__init__.py calls them).
#include <torch/extension.h>

#include <tuple>

namespace danet {
std::tuple<at::Tensor, at::Tensor, at::Tensor> pam_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& residual,
    double scale, bool save_o, bool tf32, bool whole_cv);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pam_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& gamma, const at::Tensor& o, const at::Tensor& lse,
    double scale, bool tf32, bool fused);
std::tuple<at::Tensor, at::Tensor> cam_forward(const at::Tensor& x,
                                               const c10::optional<at::Tensor>& gamma, bool tf32);
std::tuple<at::Tensor, at::Tensor> cam_backward(const at::Tensor& dout, const at::Tensor& x,
                                                const at::Tensor& attn,
                                                const c10::optional<at::Tensor>& gamma, bool tf32);
}  // namespace danet

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "danet_ops CUDA kernels: PAM and CAM forward and backward (fp32/fp16/bf16)";
  m.def("pam_forward", &danet::pam_forward,
        "(q, k, v [B, C, N], gamma?, residual?, scale, save_o, tf32=False, whole_cv=False) -> "
        "(out, lse fp32 [B, N], o); tf32: fp32 products other than the energies as one TF32 MMA "
        "(else 3xTF32); whole_cv: fp16/bf16 with Cqk <= 64, Cv <= 512 on the kernel that computes "
        "q.k once per pair for all v channels, elsewhere the per-128-channel kernel",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gamma"), py::arg("residual"),
        py::arg("scale"), py::arg("save_o"), py::arg("tf32") = false, py::arg("whole_cv") = false);
  m.def("pam_backward", &danet::pam_backward,
        "(dout, q, k, v, gamma?, o, lse, scale, tf32=False, fused=False) -> (dq, dk, dv, dgamma); "
        "fused: fp16/bf16 with Cqk <= 64, Cv <= 512 on the one-kernel backward (P and dS once per "
        "tile pair, dQ by fp32 atomics: not deterministic), elsewhere the split kernels",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gamma"), py::arg("o"),
        py::arg("lse"), py::arg("scale"), py::arg("tf32") = false, py::arg("fused") = false);
  m.def("cam_forward", &danet::cam_forward,
        "(x [B, C, N], gamma?, tf32=False) -> (out, attn fp32 [B, C, C]); "
        "tf32: fp32 A X as one TF32 MMA (the Gram stays 3xTF32)",
        py::arg("x"), py::arg("gamma"), py::arg("tf32") = false);
  m.def("cam_backward", &danet::cam_backward,
        "(dout, x, attn, gamma?, tf32=False) -> (dx, dgamma); "
        "tf32: fp32 dx's product as one TF32 MMA (G = dout X^T stays 3xTF32)",
        py::arg("dout"), py::arg("x"), py::arg("attn"), py::arg("gamma"), py::arg("tf32") = false);
}
