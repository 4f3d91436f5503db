// autodiff/ops_moe.cpp — selection, dispatch/combine and the Cholesky pieces
// of the full-covariance router.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "autodiff/ops_common.h"
#include "kernels/cpu/gemm.h"

namespace vm::ops {
using namespace detail;

template <class T>
VarT<T> take_cols(const VarT<T>& x, const std::vector<int32_t>& idx, int k) {
  VM_CHECK(x.ndim() == 2, "take_cols: x must be (N, E), got " + shape_str(x.shape()));
  int64_t N = x.size(0), E = x.size(1);
  VM_CHECK((int64_t)idx.size() == N * k, "take_cols: " + std::to_string(idx.size()) + " indices for (" +
                                             std::to_string(N) + ", " + std::to_string(k) + ")");
  for (size_t i = 0; i < idx.size(); ++i)
    VM_CHECK(idx[i] >= 0 && idx[i] < E, "take_cols: index " + std::to_string(idx[i]) + " outside [0, " +
                                            std::to_string(E) + ")");
  VM_CUDA_DISPATCH(on_cuda("take_cols", x), cuda_ops::take_cols(x, idx, k));
  TensorT<T> out({N, (int64_t)k});
  for (int64_t n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) out[n * k + j] = x.value()[n * E + idx[n * k + j]];
  auto ip = std::make_shared<std::vector<int32_t>>(idx);
  return make_result<T>(std::move(out), "take_cols", {x}, [ip, N, E, k](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    for (int64_t n = 0; n < N; ++n)
      for (int j = 0; j < k; ++j) (*g)[n * E + (*ip)[n * k + j]] += self.grad[n * k + j];
  });
}

namespace detail {
template <class T>
std::vector<int32_t> topk_indices(const TensorT<T>& x, int k) {
  int64_t N = x.size(0), E = x.size(1);
  std::vector<int32_t> idx((size_t)(N * k));
  const T* px = x.data();
#pragma omp parallel for schedule(static) if (N * E > 16384)
  for (int64_t n = 0; n < N; ++n) {
    // partial selection, ties broken towards the lower index
    std::vector<int32_t> order((size_t)E);
    std::iota(order.begin(), order.end(), 0);
    const T* row = px + n * E;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    std::copy(order.begin(), order.begin() + k, idx.begin() + n * k);
  }
  return idx;
}
template std::vector<int32_t> topk_indices(const TensorT<float>&, int);
template std::vector<int32_t> topk_indices(const TensorT<double>&, int);
}  // namespace detail

template <class T>
TopK<T> topk(const VarT<T>& x, int k) {
  VM_CHECK(x.ndim() == 2, "topk: x must be (N, E), got " + shape_str(x.shape()));
  int64_t E = x.size(1);
  VM_CHECK(k >= 1 && k <= E, "topk: k = " + std::to_string(k) + " must be in [1, " + std::to_string(E) + "]");
  VM_CUDA_DISPATCH(on_cuda("topk", x), cuda_ops::topk(x, k));
  TopK<T> r;
  r.indices = topk_indices(x.value(), k);
  r.values = take_cols(x, r.indices, k);
  return r;
}

template <class T>
VarT<T> gather_rows(const VarT<T>& x, const std::vector<int32_t>& rows) {
  VM_CHECK(x.ndim() == 2, "gather_rows: x must be (N, C), got " + shape_str(x.shape()));
  int64_t N = x.size(0), C = x.size(1), M = (int64_t)rows.size();
  for (int64_t m = 0; m < M; ++m)
    VM_CHECK(rows[m] >= 0 && rows[m] < N, "gather_rows: row " + std::to_string(rows[m]) + " outside [0, " +
                                              std::to_string(N) + ")");
  VM_CUDA_DISPATCH(on_cuda("gather_rows", x), cuda_ops::gather_rows(x, rows));
  TensorT<T> out = TensorT<T>::empty({M, C});
  const T* px = x.value().data();
#pragma omp parallel for schedule(static) if (M * C > 32768)
  for (int64_t m = 0; m < M; ++m) std::memcpy(out.data() + m * C, px + (int64_t)rows[m] * C, sizeof(T) * C);
  auto rp = std::make_shared<std::vector<int32_t>>(rows);
  return make_result<T>(std::move(out), "gather_rows", {x}, [rp, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    for (size_t m = 0; m < rp->size(); ++m) {  // in order: deterministic accumulation
      T* dst = g->data() + (int64_t)(*rp)[m] * C;
      const T* src = self.grad.data() + (int64_t)m * C;
      for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
    }
  });
}

template <class T>
VarT<T> scatter_add_rows(const VarT<T>& src, const std::vector<int32_t>& rows, int64_t n_rows) {
  VM_CHECK(src.ndim() == 2, "scatter_add_rows: src must be (M, C), got " + shape_str(src.shape()));
  int64_t M = src.size(0), C = src.size(1);
  VM_CHECK((int64_t)rows.size() == M, "scatter_add_rows: " + std::to_string(rows.size()) +
                                          " row indices for src " + shape_str(src.shape()));
  for (int64_t m = 0; m < M; ++m)
    VM_CHECK(rows[m] >= 0 && rows[m] < n_rows, "scatter_add_rows: row " + std::to_string(rows[m]) +
                                                   " outside [0, " + std::to_string(n_rows) + ")");
  VM_CUDA_DISPATCH(on_cuda("scatter_add_rows", src), cuda_ops::scatter_add_rows(src, rows, n_rows));
  TensorT<T> out({n_rows, C});
  const T* ps = src.value().data();
  for (int64_t m = 0; m < M; ++m) {  // in order: deterministic accumulation
    T* dst = out.data() + (int64_t)rows[m] * C;
    const T* s = ps + m * C;
    for (int64_t c = 0; c < C; ++c) dst[c] += s[c];
  }
  auto rp = std::make_shared<std::vector<int32_t>>(rows);
  return make_result<T>(std::move(out), "scatter_add_rows", {src}, [rp, C, M](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
#pragma omp parallel for schedule(static) if (M * C > 32768)
    for (int64_t m = 0; m < M; ++m) {
      const T* s = self.grad.data() + (int64_t)(*rp)[m] * C;
      T* dst = g->data() + m * C;
      for (int64_t c = 0; c < C; ++c) dst[c] += s[c];
    }
  });
}

template <class T>
VarT<T> grouped_matmul(const VarT<T>& x, const VarT<T>& w, const std::vector<int64_t>& offsets) {
  VM_CHECK(x.ndim() == 2 && w.ndim() == 3 && x.size(1) == w.size(1),
           "grouped_matmul: x (M, C) and w (E, C, F) needed, got " + shape_str(x.shape()) + " and " +
               shape_str(w.shape()));
  int64_t M = x.size(0), C = x.size(1), E = w.size(0), F = w.size(2);
  VM_CHECK((int64_t)offsets.size() == E + 1 && offsets[0] == 0 && offsets[E] == M,
           "grouped_matmul: offsets must have E+1 = " + std::to_string(E + 1) + " entries from 0 to M = " +
               std::to_string(M));
  for (int64_t e = 0; e < E; ++e)
    VM_CHECK(offsets[e] <= offsets[e + 1], "grouped_matmul: offsets must not decrease");
  VM_CUDA_DISPATCH(on_cuda("grouped_matmul", x, w), cuda_ops::grouped_matmul(x, w, offsets));
  TensorT<T> out = TensorT<T>::empty({M, F});  // the groups cover every row exactly once
  // One expert after another; each GEMM's tiles use the whole OpenMP pool.
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m == 0) continue;
    kernels::gemm(out.data() + r0 * F, x.value().data() + r0 * C, w.value().data() + e * C * F, m, F, C, false,
                  false, false);
  }
  return make_result<T>(std::move(out), "grouped_matmul", {x, w}, [offsets, E, C, F](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gw = grad_of(self, 1);
    const T *px = self.parents[0]->value.data(), *pw = self.parents[1]->value.data(), *g = self.grad.data();
    for (int64_t e = 0; e < E; ++e) {
      int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
      if (m == 0) continue;
      if (gx) kernels::gemm(gx->data() + r0 * C, g + r0 * F, pw + e * C * F, m, C, F, false, true, true);
      if (gw) kernels::gemm(gw->data() + e * C * F, px + r0 * C, g + r0 * F, C, F, m, true, false, true);
    }
  });
}

template <class T>
VarT<T> fill_tril_expdiag(const VarT<T>& v, int E) {
  int64_t P = (int64_t)E * (E + 1) / 2;
  VM_CHECK(v.ndim() == 2 && v.size(1) == P, "fill_tril_expdiag: v must be (N, " + std::to_string(P) +
                                                ") for E = " + std::to_string(E) + ", got " + shape_str(v.shape()));
  VM_CUDA_DISPATCH(on_cuda("fill_tril_expdiag", v), cuda_ops::fill_tril_expdiag(v, E));
  int64_t N = v.size(0);
  TensorT<T> L({N, (int64_t)E, (int64_t)E});
  for (int64_t n = 0; n < N; ++n) {
    const T* pv = v.value().data() + n * P;
    T* pl = L.data() + n * E * E;
    int64_t t = 0;
    for (int i = 0; i < E; ++i)
      for (int j = 0; j <= i; ++j, ++t) pl[i * E + j] = i == j ? std::exp(pv[t]) : pv[t];
  }
  return make_result<T>(std::move(L), "fill_tril_expdiag", {v}, [N, E, P](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    for (int64_t n = 0; n < N; ++n) {
      const T* gl = self.grad.data() + n * E * E;
      const T* pl = self.value.data() + n * E * E;
      T* gv = g->data() + n * P;
      int64_t t = 0;
      for (int i = 0; i < E; ++i)
        for (int j = 0; j <= i; ++j, ++t) gv[t] += i == j ? gl[i * E + j] * pl[i * E + j] : gl[i * E + j];
    }
  });
}

template <class T>
VarT<T> tril_matvec(const VarT<T>& L, const VarT<T>& eps) {
  VM_CHECK(L.ndim() == 3 && L.size(1) == L.size(2) && eps.ndim() == 2 && eps.size(0) == L.size(0) &&
               eps.size(1) == L.size(1),
           "tril_matvec: L must be (N, E, E) and eps (N, E), got " + shape_str(L.shape()) + " and " +
               shape_str(eps.shape()));
  VM_CUDA_DISPATCH(on_cuda("tril_matvec", L, eps), cuda_ops::tril_matvec(L, eps));
  int64_t N = L.size(0), E = L.size(1);
  TensorT<T> out({N, E});
  const T *pl = L.value().data(), *pe = eps.value().data();
#pragma omp parallel for schedule(static) if (N * E * E > 32768)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < E; ++i) {
      T s = 0;
      for (int64_t j = 0; j <= i; ++j) s += pl[(n * E + i) * E + j] * pe[n * E + j];  // lower triangle only
      out[n * E + i] = s;
    }
  return make_result<T>(std::move(out), "tril_matvec", {L, eps}, [N, E](Node<T>& self) {
    auto *gL = grad_of(self, 0), *ge = grad_of(self, 1);
    const T *pl = self.parents[0]->value.data(), *pe = self.parents[1]->value.data();
    const T* g = self.grad.data();
#pragma omp parallel for schedule(static) if (N * E * E > 32768)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < E; ++i)
        for (int64_t j = 0; j <= i; ++j) {
          if (gL) (*gL)[(n * E + i) * E + j] += g[n * E + i] * pe[n * E + j];  // dL = g εᵀ (lower)
          if (ge) (*ge)[n * E + j] += pl[(n * E + i) * E + j] * g[n * E + i];  // dε = Lᵀ g
        }
  });
}

template <class T>
VarT<T> sum_log_diag(const VarT<T>& L) {
  VM_CHECK(L.ndim() == 3 && L.size(1) == L.size(2),
           "sum_log_diag: L must be (N, E, E), got " + shape_str(L.shape()));
  VM_CUDA_DISPATCH(on_cuda("sum_log_diag", L), cuda_ops::sum_log_diag(L));
  int64_t N = L.size(0), E = L.size(1);
  TensorT<T> out({N});
  for (int64_t n = 0; n < N; ++n) {
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::log(L.value()[(n * E + e) * E + e]);
    out[n] = s;
  }
  return make_result<T>(std::move(out), "sum_log_diag", {L}, [N, E](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    const T* pl = self.parents[0]->value.data();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < E; ++e) (*g)[(n * E + e) * E + e] += self.grad[n] / pl[(n * E + e) * E + e];
  });
}

template <class T>
VarT<T> straight_through(const VarT<T>& hard, const VarT<T>& soft) {
  VM_CHECK(hard.shape() == soft.shape(), "straight_through: hard " + shape_str(hard.shape()) + " and soft " +
                                             shape_str(soft.shape()) + " differ");
  on_cuda("straight_through", hard, soft);  // same device (clone and accumulate work on either)
  return make_result<T>(hard.value().clone(), "straight_through", {hard, soft}, [](Node<T>& self) {
    if (auto* g = grad_of(self, 1)) accumulate(*g, self.grad);
  });
}

#define VM_INST(T)                                                                      \
  template TopK<T> topk(const VarT<T>&, int);                                           \
  template VarT<T> take_cols(const VarT<T>&, const std::vector<int32_t>&, int);         \
  template VarT<T> gather_rows(const VarT<T>&, const std::vector<int32_t>&);            \
  template VarT<T> scatter_add_rows(const VarT<T>&, const std::vector<int32_t>&, int64_t); \
  template VarT<T> grouped_matmul(const VarT<T>&, const VarT<T>&, const std::vector<int64_t>&); \
  template VarT<T> fill_tril_expdiag(const VarT<T>&, int);                              \
  template VarT<T> tril_matvec(const VarT<T>&, const VarT<T>&);                         \
  template VarT<T> sum_log_diag(const VarT<T>&);                                        \
  template VarT<T> straight_through(const VarT<T>&, const VarT<T>&);
VM_INST(float)
VM_INST(double)

}  // namespace vm::ops
