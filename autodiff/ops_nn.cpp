// autodiff/ops_nn.cpp — softmax family, norms, embedding, layout ops,
// attention, cross-entropy, dropout.
#include <cmath>
#include <cstring>
#include <memory>

#include "autodiff/ops_common.h"
#include "core/philox.h"
#include "kernels/cpu/rowwise.h"

namespace vm::ops {
using namespace detail;

template <class T>
VarT<T> softmax(const VarT<T>& a) {
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  VM_CUDA_DISPATCH(on_cuda("softmax", a), cuda_ops::softmax(a));
  TensorT<T> y = TensorT<T>::empty(a.shape());
  kernels::softmax_fwd(a.value().data(), y.data(), rows, C);
  return make_result<T>(std::move(y), "softmax", {a}, [rows, C](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) kernels::softmax_bwd(self.value.data(), self.grad.data(), g->data(), rows, C);
  });
}

template <class T>
VarT<T> log_softmax(const VarT<T>& a) {
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  VM_CUDA_DISPATCH(on_cuda("log_softmax", a), cuda_ops::log_softmax(a));
  TensorT<T> y = TensorT<T>::empty(a.shape());
  kernels::log_softmax_fwd(a.value().data(), y.data(), rows, C);
  return make_result<T>(std::move(y), "log_softmax", {a}, [rows, C](Node<T>& self) {
    if (auto* g = grad_of(self, 0))
      kernels::log_softmax_bwd(self.value.data(), self.grad.data(), g->data(), rows, C);
  });
}

template <class T>
VarT<T> logsumexp(const VarT<T>& a) {
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  VM_CUDA_DISPATCH(on_cuda("logsumexp", a), cuda_ops::logsumexp(a));
  Shape so(a.shape().begin(), a.shape().end() - (a.ndim() ? 1 : 0));
  TensorT<T> out(so);
  const T* x = a.value().data();
  for (int64_t r = 0; r < rows; ++r) {
    T mx = x[r * C];
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, x[r * C + c]);
    T s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(x[r * C + c] - mx);
    out[r] = mx + std::log(s);
  }
  return make_result<T>(std::move(out), "logsumexp", {a}, [rows, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    const T* x = self.parents[0]->value.data();
    for (int64_t r = 0; r < rows; ++r)  // d lse / dx = softmax(x)
      for (int64_t c = 0; c < C; ++c) (*g)[r * C + c] += self.grad[r] * std::exp(x[r * C + c] - self.value[r]);
  });
}

template <class T>
VarT<T> layernorm(const VarT<T>& x, const VarT<T>& gamma, const VarT<T>& beta, double eps) {
  int64_t rows, C;
  rows_cols(x.shape(), rows, C);
  VM_CHECK(gamma.shape() == Shape{C} && beta.shape() == Shape{C},
           "layernorm: x " + shape_str(x.shape()) + " needs gamma and beta of shape (" + std::to_string(C) +
               "), got " + shape_str(gamma.shape()) + " and " + shape_str(beta.shape()));
  VM_CUDA_DISPATCH(on_cuda("layernorm", x, gamma, beta), cuda_ops::layernorm(x, gamma, beta, eps));
  TensorT<T> y = TensorT<T>::empty(x.shape());
  auto stats = std::make_shared<std::pair<TensorT<T>, TensorT<T>>>(TensorT<T>({rows}), TensorT<T>({rows}));
  kernels::layernorm_fwd(x.value().data(), gamma.value().data(), beta.value().data(), y.data(),
                         stats->first.data(), stats->second.data(), rows, C, eps);
  return make_result<T>(std::move(y), "layernorm", {x, gamma, beta}, [rows, C, stats](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gg = grad_of(self, 1), *gb = grad_of(self, 2);
    kernels::layernorm_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), stats->first.data(),
                           stats->second.data(), self.grad.data(), gx ? gx->data() : nullptr,
                           gg ? gg->data() : nullptr, gb ? gb->data() : nullptr, rows, C);
  });
}

template <class T>
VarT<T> rmsnorm(const VarT<T>& x, const VarT<T>& gamma, double eps) {
  int64_t rows, C;
  rows_cols(x.shape(), rows, C);
  VM_CHECK(gamma.shape() == Shape{C}, "rmsnorm: x " + shape_str(x.shape()) + " needs gamma of shape (" +
                                          std::to_string(C) + "), got " + shape_str(gamma.shape()));
  VM_CUDA_DISPATCH(on_cuda("rmsnorm", x, gamma), cuda_ops::rmsnorm(x, gamma, eps));
  TensorT<T> y = TensorT<T>::empty(x.shape());
  auto rstd = std::make_shared<TensorT<T>>(Shape{rows});
  kernels::rmsnorm_fwd(x.value().data(), gamma.value().data(), y.data(), rstd->data(), rows, C, eps);
  return make_result<T>(std::move(y), "rmsnorm", {x, gamma}, [rows, C, rstd](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gg = grad_of(self, 1);
    kernels::rmsnorm_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), rstd->data(),
                         self.grad.data(), gx ? gx->data() : nullptr, gg ? gg->data() : nullptr, rows, C);
  });
}

template <class T>
VarT<T> embedding(const VarT<T>& table, const std::vector<int32_t>& ids, Shape out_shape) {
  VM_CHECK(table.ndim() == 2, "embedding: table must be (V, C), got " + shape_str(table.shape()));
  VM_CHECK(shape_numel(out_shape) == (int64_t)ids.size(),
           "embedding: " + std::to_string(ids.size()) + " ids for output shape " + shape_str(out_shape));
  int64_t V = table.size(0), C = table.size(1);
  for (size_t i = 0; i < ids.size(); ++i)
    VM_CHECK(ids[i] >= 0 && ids[i] < V, "embedding: id " + std::to_string(ids[i]) + " at position " +
                                            std::to_string(i) + " outside vocabulary of " + std::to_string(V));
  VM_CUDA_DISPATCH(on_cuda("embedding", table), cuda_ops::embedding(table, ids, out_shape));
  Shape so = out_shape;
  so.push_back(C);
  TensorT<T> out = TensorT<T>::empty(so);
  const T* w = table.value().data();
  int64_t n = (int64_t)ids.size();
#pragma omp parallel for schedule(static) if (n * C > 32768)
  for (int64_t i = 0; i < n; ++i) std::memcpy(out.data() + i * C, w + (int64_t)ids[i] * C, sizeof(T) * C);
  auto idp = std::make_shared<std::vector<int32_t>>(ids);
  return make_result<T>(std::move(out), "embedding", {table}, [idp, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    // scatter-add in position order (deterministic; repeated ids accumulate)
    for (size_t i = 0; i < idp->size(); ++i) {
      T* dst = g->data() + (int64_t)(*idp)[i] * C;
      const T* src = self.grad.data() + (int64_t)i * C;
      for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
    }
  });
}

template <class T>
VarT<T> reshape(const VarT<T>& a, Shape shape) {
  TensorT<T> out = a.value().reshaped(std::move(shape));  // shares storage: values are never written after creation
  return make_result<T>(std::move(out), "reshape", {a}, [](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) accumulate(*g, self.grad);
  });
}

template <class T>
VarT<T> transpose(const VarT<T>& a, int d0, int d1) {
  int nd = a.ndim();
  int x0 = norm_axis(d0, nd, "transpose"), x1 = norm_axis(d1, nd, "transpose");
  VM_CUDA_DISPATCH(on_cuda("transpose", a), cuda_ops::transpose(a, d0, d1));
  Shape si = a.shape();
  Shape so = si;
  std::swap(so[x0], so[x1]);
  Dims4 in = dims4(si);
  int off = 4 - nd;
  // strides of the input, permuted into output order (stride 0 never used: full strides here)
  std::array<int64_t, 4> full{};
  int64_t st = 1;
  for (int i = 3; i >= 0; --i) { full[i] = st; st *= in.d[i]; }
  std::array<int64_t, 4> perm_stride = full;
  std::swap(perm_stride[off + x0], perm_stride[off + x1]);
  Dims4 o = dims4(so);
  auto run = [o, perm_stride](const T* src, T* dst, bool forward) {
    int64_t i = 0;
    for (int64_t a0 = 0; a0 < o.d[0]; ++a0)
      for (int64_t a1 = 0; a1 < o.d[1]; ++a1)
        for (int64_t a2 = 0; a2 < o.d[2]; ++a2) {
          int64_t base = a0 * perm_stride[0] + a1 * perm_stride[1] + a2 * perm_stride[2];
          for (int64_t a3 = 0; a3 < o.d[3]; ++a3, ++i) {
            if (forward) dst[i] = src[base + a3 * perm_stride[3]];
            else dst[base + a3 * perm_stride[3]] += src[i];
          }
        }
  };
  TensorT<T> out = TensorT<T>::empty(so);
  run(a.value().data(), out.data(), true);
  return make_result<T>(std::move(out), "transpose", {a}, [run](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) run(self.grad.data(), g->data(), false);
  });
}

template <class T>
VarT<T> slice(const VarT<T>& a, int axis, int64_t start, int64_t stop) {
  int ax = norm_axis(axis, a.ndim(), "slice");
  int64_t outer, n, inner;
  split_axis(a.shape(), ax, outer, n, inner);
  VM_CHECK(0 <= start && start <= stop && stop <= n,
           "slice: [" + std::to_string(start) + ", " + std::to_string(stop) + ") out of range for axis " +
               std::to_string(axis) + " of " + shape_str(a.shape()));
  VM_CUDA_DISPATCH(on_cuda("slice", a), cuda_ops::slice(a, axis, start, stop));
  Shape so = a.shape();
  so[ax] = stop - start;
  TensorT<T> out(so);
  int64_t m = stop - start;
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(out.data() + o * m * inner, a.value().data() + (o * n + start) * inner, sizeof(T) * m * inner);
  return make_result<T>(std::move(out), "slice", {a}, [outer, n, inner, start, m](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    for (int64_t o = 0; o < outer; ++o) {
      T* dst = g->data() + (o * n + start) * inner;
      const T* src = self.grad.data() + o * m * inner;
      for (int64_t i = 0; i < m * inner; ++i) dst[i] += src[i];
    }
  });
}

template <class T>
VarT<T> concat(const std::vector<VarT<T>>& xs, int axis) {
  VM_CHECK(!xs.empty(), "concat: no inputs");
  int ax = norm_axis(axis, xs[0].ndim(), "concat");
  Shape so = xs[0].shape();
  so[ax] = 0;
  for (auto& x : xs) {
    Shape a = x.shape(), b = xs[0].shape();
    VM_CHECK(a.size() == b.size(), "concat: " + shape_str(a) + " and " + shape_str(b) + " differ in rank");
    a[ax] = b[ax] = 0;
    VM_CHECK(a == b, "concat: " + shape_str(x.shape()) + " and " + shape_str(xs[0].shape()) +
                         " differ outside axis " + std::to_string(axis));
    so[ax] += x.shape()[ax];
  }
  VM_CUDA_DISPATCH(on_cuda("concat", xs), cuda_ops::concat(xs, axis));
  int64_t outer, ntot, inner;
  split_axis(so, ax, outer, ntot, inner);
  TensorT<T> out(so);
  std::vector<int64_t> sizes;
  int64_t at = 0;
  for (auto& x : xs) {
    int64_t m = x.shape()[ax];
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(out.data() + (o * ntot + at) * inner, x.value().data() + o * m * inner, sizeof(T) * m * inner);
    sizes.push_back(m);
    at += m;
  }
  return make_result<T>(std::move(out), "concat", xs, [outer, ntot, inner, sizes](Node<T>& self) {
    int64_t at = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      int64_t m = sizes[k];
      if (auto* g = grad_of(self, k))
        for (int64_t o = 0; o < outer; ++o) {
          T* dst = g->data() + o * m * inner;
          const T* src = self.grad.data() + (o * ntot + at) * inner;
          for (int64_t i = 0; i < m * inner; ++i) dst[i] += src[i];
        }
      at += m;
    }
  });
}

template <class T>
VarT<T> attention(const VarT<T>& q, const VarT<T>& k, const VarT<T>& v, bool causal) {
  VM_CHECK(q.ndim() == 4 && q.shape() == k.shape() && q.shape() == v.shape(),
           "attention: q, k, v must share a (B, H, T, D) shape, got " + shape_str(q.shape()) + ", " +
               shape_str(k.shape()) + ", " + shape_str(v.shape()));
  VM_CUDA_DISPATCH(on_cuda("attention", q, k, v), cuda_ops::attention(q, k, v, causal));
  int64_t B = q.size(0), H = q.size(1), Tn = q.size(2), D = q.size(3);
  auto P = std::make_shared<TensorT<T>>(TensorT<T>::empty(Shape{B, H, Tn, Tn}));  // softmax weights, kept for backward
  TensorT<T> out = TensorT<T>::empty(q.shape());
  kernels::attention_fwd(q.value().data(), k.value().data(), v.value().data(), P->data(), out.data(), B * H, Tn,
                         D, causal);
  return make_result<T>(std::move(out), "attention", {q, k, v}, [P, B, H, Tn, D, causal](Node<T>& self) {
    auto *gq = grad_of(self, 0), *gk = grad_of(self, 1), *gv = grad_of(self, 2);
    kernels::attention_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(),
                           self.parents[2]->value.data(), P->data(), self.grad.data(), gq ? gq->data() : nullptr,
                           gk ? gk->data() : nullptr, gv ? gv->data() : nullptr, B * H, Tn, D, causal);
  });
}

template <class T>
VarT<T> cross_entropy(const VarT<T>& logits, const std::vector<int32_t>& targets, int32_t ignore_index) {
  VM_CHECK(logits.ndim() == 2, "cross_entropy: logits must be (N, C), got " + shape_str(logits.shape()));
  int64_t N = logits.size(0), C = logits.size(1);
  VM_CHECK((int64_t)targets.size() == N, "cross_entropy: " + std::to_string(targets.size()) +
                                             " targets for logits " + shape_str(logits.shape()));
  for (int64_t i = 0; i < N; ++i)
    VM_CHECK(targets[i] == ignore_index || (targets[i] >= 0 && targets[i] < C),
             "cross_entropy: target " + std::to_string(targets[i]) + " at row " + std::to_string(i) +
                 " outside [0, " + std::to_string(C) + ")");
  VM_CUDA_DISPATCH(on_cuda("cross_entropy", logits), cuda_ops::cross_entropy(logits, targets, ignore_index));
  auto probs = std::make_shared<TensorT<T>>(logits.shape());
  int64_t count = 0;
  double total = kernels::cross_entropy_fwd(logits.value().data(), targets.data(), probs->data(), N, C,
                                            ignore_index, &count);
  TensorT<T> out = TensorT<T>::scalar(count ? T(total / (double)count) : T(0));
  auto tg = std::make_shared<std::vector<int32_t>>(targets);
  return make_result<T>(std::move(out), "cross_entropy", {logits},
                        [probs, tg, N, C, count, ignore_index](Node<T>& self) {
                          auto* g = grad_of(self, 0);
                          if (!g || count == 0) return;
                          kernels::cross_entropy_bwd(probs->data(), tg->data(), g->data(), N, C, ignore_index,
                                                     T(self.grad[0] / (T)count));
                        });
}

template <class T>
VarT<T> dropout(const VarT<T>& a, double p, uint64_t seed, uint64_t stream, uint64_t offset) {
  VM_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0) return a;
  VM_CUDA_DISPATCH(on_cuda("dropout", a), cuda_ops::dropout(a, p, seed, stream, offset));
  int64_t n = a.numel();
  auto mask = std::make_shared<TensorT<T>>(a.shape());  // 0 or 1/(1-p)
  TensorT<T> out(a.shape());
  const T keep = T(1) / T(1 - p);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    (*mask)[i] = philox_uniform(seed, stream, offset + (uint64_t)i) >= (float)p ? keep : T(0);
    out[i] = a.value()[i] * (*mask)[i];
  }
  return make_result<T>(std::move(out), "dropout", {a}, [mask](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g) return;
    for (int64_t i = 0; i < g->numel(); ++i) (*g)[i] += self.grad[i] * (*mask)[i];
  });
}

#define VM_INST(T)                                                                                       \
  template VarT<T> softmax(const VarT<T>&);                                                              \
  template VarT<T> log_softmax(const VarT<T>&);                                                          \
  template VarT<T> logsumexp(const VarT<T>&);                                                            \
  template VarT<T> layernorm(const VarT<T>&, const VarT<T>&, const VarT<T>&, double);                    \
  template VarT<T> rmsnorm(const VarT<T>&, const VarT<T>&, double);                                      \
  template VarT<T> embedding(const VarT<T>&, const std::vector<int32_t>&, Shape);                        \
  template VarT<T> reshape(const VarT<T>&, Shape);                                                       \
  template VarT<T> transpose(const VarT<T>&, int, int);                                                  \
  template VarT<T> slice(const VarT<T>&, int, int64_t, int64_t);                                         \
  template VarT<T> concat(const std::vector<VarT<T>>&, int);                                             \
  template VarT<T> attention(const VarT<T>&, const VarT<T>&, const VarT<T>&, bool);                      \
  template VarT<T> cross_entropy(const VarT<T>&, const std::vector<int32_t>&, int32_t);                  \
  template VarT<T> dropout(const VarT<T>&, double, uint64_t, uint64_t, uint64_t);
VM_INST(float)
VM_INST(double)

}  // namespace vm::ops
