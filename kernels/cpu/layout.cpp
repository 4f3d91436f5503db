// kernels/cpu/layout.cpp — in-place add, band copies, dimension swaps and the
// small row ops on the CPU (the table: kernels/layout.h). Loops over
// independent elements may split across the OpenMP pool; every sum runs in
// one fixed order.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/layout.h"

namespace vm::kernels {

template <class T>
void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <class T>
void copy_band(const T* src, int64_t src_n, int64_t src_start, T* dst, int64_t dst_n, int64_t dst_start,
               int64_t outer, int64_t len, int64_t inner, bool accumulate) {
  const int64_t band = len * inner;
  for (int64_t o = 0; o < outer; ++o) {
    const T* s = src + (o * src_n + src_start) * inner;
    T* d = dst + (o * dst_n + dst_start) * inner;
    if (!accumulate) {
      if (band) std::memcpy(d, s, sizeof(T) * band);
    } else {
      for (int64_t i = 0; i < band; ++i) d[i] += s[i];
    }
  }
}

template <class T>
void swap_dims(const T* in, const int64_t* d4, int d0, int d1, T* out, bool accumulate) {
  // strides of the input, permuted into output order
  std::array<int64_t, 4> o{d4[0], d4[1], d4[2], d4[3]}, stride{};
  int64_t st = 1;
  for (int i = 3; i >= 0; --i) {
    stride[i] = st;
    st *= d4[i];
  }
  std::swap(o[d0], o[d1]);
  std::swap(stride[d0], stride[d1]);
  int64_t i = 0;
  for (int64_t a0 = 0; a0 < o[0]; ++a0)
    for (int64_t a1 = 0; a1 < o[1]; ++a1)
      for (int64_t a2 = 0; a2 < o[2]; ++a2) {
        const T* base = in + a0 * stride[0] + a1 * stride[1] + a2 * stride[2];
        for (int64_t a3 = 0; a3 < o[3]; ++a3, ++i) {
          if (accumulate) out[i] += base[a3 * stride[3]];
          else out[i] = base[a3 * stride[3]];
        }
      }
}

template <class T>
void take_cols_fwd(const T* x, const int32_t* idx, T* out, int64_t N, int64_t E, int k) {
  for (int64_t n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) out[n * k + j] = x[n * E + idx[n * k + j]];
}

template <class T>
void take_cols_bwd(const T* g, const int32_t* idx, T* dx, int64_t N, int64_t E, int k) {
  for (int64_t n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) dx[n * E + idx[n * k + j]] += g[n * k + j];
}

template <class T>
void logsumexp_fwd(const T* x, T* out, int64_t rows, int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    T mx = x[r * C];
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, x[r * C + c]);
    T s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(x[r * C + c] - mx);
    out[r] = mx + std::log(s);
  }
}

template <class T>
void logsumexp_bwd(const T* x, const T* out, const T* g, T* dx, int64_t rows, int64_t C) {
  for (int64_t r = 0; r < rows; ++r)  // d lse / dx = softmax(x)
    for (int64_t c = 0; c < C; ++c) dx[r * C + c] += g[r] * std::exp(x[r * C + c] - out[r]);
}

template <class T>
void sum_log_diag_fwd(const T* L, T* out, int64_t N, int64_t E) {
  for (int64_t n = 0; n < N; ++n) {
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::log(L[(n * E + e) * E + e]);
    out[n] = s;
  }
}

template <class T>
void sum_log_diag_bwd(const T* L, const T* g, T* dL, int64_t N, int64_t E) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) dL[(n * E + e) * E + e] += g[n] / L[(n * E + e) * E + e];
}

VM_INSTANTIATE_KERNELS(VM_LAYOUT_KERNELS)

}  // namespace vm::kernels
