// Bounds check of the kernels on the CPU: runs every emulated kernel over ragged shapes
// with exactly-sized heap buffers. Build with -fsanitize=address (see
// tests/test_cuda_build.py): any out-of-bounds global or __shared__ access aborts.
// A stand-in for compute-sanitizer memcheck where no GPU exists.
#include <cstdio>
#include <random>
#include <vector>

#include "emulate.cpp"

static std::vector<float> rnd(size_t n, std::mt19937& g) {
  std::normal_distribution<float> d(0.f, 0.5f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

int main() {
  std::mt19937 g(0);
  const int pam_shapes[][4] = {{1, 5, 70, 131}, {2, 3, 9, 17}, {1, 64, 64, 64}, {1, 1, 1, 1}};
  for (const auto& s : pam_shapes) {
    const int b = s[0], cqk = s[1], cv = s[2], n = s[3];
    auto q = rnd((size_t)b * cqk * n, g), k = rnd((size_t)b * cqk * n, g);
    auto v = rnd((size_t)b * cv * n, g), res = rnd((size_t)b * cv * n, g), dout = rnd((size_t)b * cv * n, g);
    std::vector<float> gamma{0.5f}, out((size_t)b * cv * n), o((size_t)b * cv * n), lse((size_t)b * n);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), rowdot((size_t)b * n), delta((size_t)b * n), dg(1);
    emu_pam_forward(q.data(), k.data(), v.data(), res.data(), gamma.data(), out.data(), o.data(), lse.data(), b, cqk, cv, n, 1.0f);
    emu_pam_backward(dout.data(), q.data(), k.data(), v.data(), gamma.data(), o.data(), lse.data(), dq.data(), dk.data(),
                     dv.data(), rowdot.data(), delta.data(), dg.data(), b, cqk, cv, n, 1.0f);
  }
  const int cam_shapes[][4] = {{1, 70, 131, 3}, {2, 3, 17, 1}, {1, 64, 64, 2}, {1, 1, 1, 1}};
  for (const auto& s : cam_shapes) {
    const int b = s[0], c = s[1], n = s[2], splits = s[3];
    auto x = rnd((size_t)b * c * n, g), dout = rnd((size_t)b * c * n, g);
    std::vector<float> gamma{0.5f}, out(x.size()), attn((size_t)b * c * c), dx(x.size()), de((size_t)b * c * c);
    std::vector<float> rowpart((size_t)b * c), dg(1), ws((size_t)splits * b * c * c);
    emu_cam_forward(x.data(), gamma.data(), out.data(), attn.data(), ws.data(), b, c, n, splits);
    emu_cam_backward(dout.data(), x.data(), attn.data(), gamma.data(), dx.data(), de.data(), rowpart.data(), dg.data(),
                     ws.data(), b, c, n, splits);
  }
  std::printf("memcheck ok\n");
  return 0;
}
