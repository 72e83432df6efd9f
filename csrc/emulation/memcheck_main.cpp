// Bounds check of the kernels on the CPU: runs every emulated kernel over the tile edge
// cases (each size one under and over the tile and the reduction chunk, 1, and more than
// two tiles) with exactly-sized heap buffers. Build with -fsanitize=address (see
// tests/test_cuda_build.py): any out-of-bounds global or __shared__ access aborts.
// A stand-in for compute-sanitizer memcheck where no GPU exists.
#include <array>
#include <cstdio>
#include <random>
#include <vector>

#include "emulate.cpp"

template <typename T>
static std::vector<T> rnd(size_t n, std::mt19937& g) {
  std::normal_distribution<float> d(0.f, 0.5f);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(g));
  return v;
}

// One dtype: PAM forward and backward on the mma.sync kernels (bf16 also on the variant
// kernels, whole_cv forward and fused backward; their dynamic shared memory allocated to the exact size; fp32 with its own 4-byte layout and fragment loads, also in
// the one-TF32-product mode), CAM's products on their mma.sync kernel likewise (fp32 with its
// own pitches and 3xTF32 fragment loads, also in the one-TF32-product mode), and both ops on
// the 64x64 tile kernels of GPUs before sm_80 (fp32 SIMT, the half types emulated WMMA), so
// each layout is bounds-checked.
template <typename T>
static void run_all(std::mt19937& g) {
  // Every tile edge, one size at a time around a ragged base: one under and over the output
  // tile (TILE) and the reduction chunk (KC), a single element, more than two tiles.
  std::vector<std::array<int, 4>> pam_shapes{{2, 3, 9, 17}, {1, 64, 64, 64}, {1, 1, 1, 1}};
  for (int cqk : {KC - 1, KC + 1, TILE + 1}) pam_shapes.push_back({1, cqk, TILE + 1, TILE - 1});
  for (int cv : {1, TILE - 1, 2 * TILE + 1}) pam_shapes.push_back({1, KC + 1, cv, TILE + 1});
  for (int n : {TILE - 1, 2 * TILE + 1}) pam_shapes.push_back({1, KC - 1, TILE + 1, n});
  for (const auto& s : pam_shapes) {
    const int b = s[0], cqk = s[1], cv = s[2], n = s[3];
    auto q = rnd<T>((size_t)b * cqk * n, g), k = rnd<T>((size_t)b * cqk * n, g);
    auto v = rnd<T>((size_t)b * cv * n, g), res = rnd<T>((size_t)b * cv * n, g), dout = rnd<T>((size_t)b * cv * n, g);
    std::vector<T> out((size_t)b * cv * n), o((size_t)b * cv * n);
    std::vector<float> gamma{0.5f}, lse((size_t)b * n);
    std::vector<T> dq(q.size()), dk(k.size()), dv(v.size());
    std::vector<float> rowdot((size_t)b * n), delta((size_t)b * n), dg(1);
    const bool tf32 = std::is_same<T, float>::value && cqk % 2 == 1;  // both fp32 modes, by shape
    pam_forward<T>(q.data(), k.data(), v.data(), res.data(), gamma.data(), out.data(), o.data(), lse.data(), b, cqk,
                   cv, n, 1.0f, /*legacy=*/true);
    pam_forward<T>(q.data(), k.data(), v.data(), res.data(), gamma.data(), out.data(), o.data(), lse.data(), b, cqk, cv,
                   n, 1.0f, /*legacy=*/false, tf32);
    pam_backward<T>(dout.data(), q.data(), k.data(), v.data(), gamma.data(), o.data(), lse.data(), dq.data(), dk.data(),
                    dv.data(), rowdot.data(), delta.data(), dg.data(), b, cqk, cv, n, 1.0f, /*legacy=*/false, tf32);
    pam_backward<T>(dout.data(), q.data(), k.data(), v.data(), gamma.data(), o.data(), lse.data(), dq.data(),
                    dk.data(), dv.data(), rowdot.data(), delta.data(), dg.data(), b, cqk, cv, n, 1.0f,
                    /*legacy=*/true);
    // bf16 on the variant kernels too, where they serve the widths (elsewhere the calls
    // would repeat the default kernels above).
    const bool variants = std::is_same<T, __nv_bfloat16>::value && pam_wide::fits<T>(cqk, cv);
    if (variants)
      pam_forward<T>(q.data(), k.data(), v.data(), res.data(), gamma.data(), out.data(), o.data(), lse.data(), b,
                     cqk, cv, n, 1.0f, /*legacy=*/false, /*tf32=*/false, /*whole_cv=*/true);
    if (variants)
      pam_backward<T>(dout.data(), q.data(), k.data(), v.data(), gamma.data(), o.data(), lse.data(), dq.data(),
                      dk.data(), dv.data(), rowdot.data(), delta.data(), dg.data(), b, cqk, cv, n, 1.0f,
                      /*legacy=*/false, /*tf32=*/false, /*fused=*/true);
  }
  if (std::is_same<T, __nv_bfloat16>::value) {  // the variant kernels at their widest: Cqk 64, Cv 512
    const int b = 1, cqk = 64, cv = 512, n = 40;
    auto q = rnd<T>((size_t)b * cqk * n, g), k = rnd<T>((size_t)b * cqk * n, g);
    auto v = rnd<T>((size_t)b * cv * n, g), dout = rnd<T>((size_t)b * cv * n, g), o = rnd<T>((size_t)b * cv * n, g);
    std::vector<float> gamma{0.5f}, lse((size_t)b * n, 1.0f), rowdot((size_t)b * n), delta((size_t)b * n), dg(1);
    std::vector<T> dq(q.size()), dk(k.size()), dv(v.size()), out(v.size());
    pam_forward<T>(q.data(), k.data(), v.data(), nullptr, gamma.data(), out.data(), o.data(), lse.data(), b, cqk,
                   cv, n, 1.0f, /*legacy=*/false, /*tf32=*/false, /*whole_cv=*/true);
    pam_backward<T>(dout.data(), q.data(), k.data(), v.data(), gamma.data(), o.data(), lse.data(), dq.data(),
                    dk.data(), dv.data(), rowdot.data(), delta.data(), dg.data(), b, cqk, cv, n, 1.0f,
                    /*legacy=*/false, /*tf32=*/false, /*fused=*/true);
  }
  std::vector<std::array<int, 4>> cam_shapes{{1, 70, 131, 3}, {2, 3, 17, 1}, {1, 64, 64, 2}, {1, 1, 1, 1}};
  for (int c : {KC - 1, TILE - 1, TILE + 1, 2 * TILE + 1}) cam_shapes.push_back({1, c, KC + 1, 1});
  for (int n : {TILE - 1, TILE + 1}) cam_shapes.push_back({1, TILE + 1, n, 3});
  for (const auto& s : cam_shapes) {
    const int b = s[0], c = s[1], n = s[2], splits = s[3];
    auto x = rnd<T>((size_t)b * c * n, g), dout = rnd<T>((size_t)b * c * n, g);
    std::vector<T> out(x.size()), dx(x.size());
    std::vector<float> gamma{0.5f}, attn((size_t)b * c * c), de((size_t)b * c * c);
    std::vector<float> rowpart((size_t)b * c), dg(1), ws((size_t)splits * b * c * c);
    const bool tf32 = std::is_same<T, float>::value && c % 2 == 1;  // both fp32 modes, by shape
    cam_forward<T>(x.data(), gamma.data(), out.data(), attn.data(), ws.data(), b, c, n, splits, /*legacy=*/false,
                   tf32);
    cam_backward<T>(dout.data(), x.data(), attn.data(), gamma.data(), dx.data(), de.data(), rowpart.data(), dg.data(),
                    ws.data(), b, c, n, splits, /*legacy=*/false, tf32);
    cam_forward<T>(x.data(), gamma.data(), out.data(), attn.data(), ws.data(), b, c, n, splits, /*legacy=*/true);
    cam_backward<T>(dout.data(), x.data(), attn.data(), gamma.data(), dx.data(), de.data(), rowpart.data(), dg.data(),
                    ws.data(), b, c, n, splits, /*legacy=*/true);
  }
}

int main() {
  std::mt19937 g(0);
  run_all<float>(g);
  run_all<__nv_bfloat16>(g);  // fp16 shares bf16's layout and code path
  std::printf("memcheck ok\n");
  return 0;
}
