// kernels/gemm_groups.h — the grouped (per-expert) products of kernels/gemm.h
// as a list of single GEMMs, one per non-empty group, on either device: the
// CPU runs the list one product at a time (kernels/cpu/gemm.cpp), the GPU in
// one cuBLAS grouped call (kernels/cuda/gemm.cu). Plain arithmetic on
// pointers: tests/test_moe.cpp checks the lists on the CPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace vm::kernels {

// C (M, N) = op(A) op(B) [+ C], row-major: the arguments of kernels::gemm.
template <class T>
struct GemmProblem {
  T* C;
  const T* A;
  const T* B;
  int64_t M, N, K;
  bool transA, transB, accumulate;
};

// grouped_gemm: rows [offsets[e], offsets[e+1]) of x (M, C) times w[e] (C, F)
// into the same rows of out (M, F); empty groups make no product.
template <class T>
std::vector<GemmProblem<T>> grouped_gemm_problems(T* out, const T* x, const T* w, const std::vector<int64_t>& offsets,
                                                  int64_t C, int64_t F) {
  std::vector<GemmProblem<T>> ps;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m <= 0) continue;
    ps.push_back({out + r0 * F, x + r0 * C, w + (int64_t)e * C * F, m, F, C, false, false, false});
  }
  return ps;
}

// grouped_gemm_bwd, per non-empty group e (r0 = offsets[e], m rows):
//   dx rows (m, C) += g rows (m, F) · w[e]ᵀ      dw[e] (C, F) += x rowsᵀ (C, m) · g rows
// dx or dw may be null (no products for it); per group dx before dw.
template <class T>
std::vector<GemmProblem<T>> grouped_gemm_bwd_problems(const T* x, const T* w, const T* g, T* dx, T* dw,
                                                      const std::vector<int64_t>& offsets, int64_t C, int64_t F) {
  std::vector<GemmProblem<T>> ps;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m <= 0) continue;
    if (dx) ps.push_back({dx + r0 * C, g + r0 * F, w + (int64_t)e * C * F, m, C, F, false, true, true});
    if (dw) ps.push_back({dw + (int64_t)e * C * F, x + r0 * C, g + r0 * F, C, F, m, true, false, true});
  }
  return ps;
}

}  // namespace vm::kernels
