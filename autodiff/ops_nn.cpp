// autodiff/ops_nn.cpp — softmax family, norms, embedding, layout ops,
// attention, cross-entropy, dropout.
#include <array>
#include <memory>
#include <utility>

#include "autodiff/ops_common.h"

namespace vm::ops {
using namespace detail;

// softmax and log_softmax over the last axis: the same shapes and closure,
// each with its kernel pair.
namespace {
template <class T>
VarT<T> softmax_or_log(const VarT<T>& a, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  const Device dev = device_of(name, a);
  TensorT<T> y = TensorT<T>::empty(a.shape(), dev);
  if (rows * C > 0) {
    if (log) VM_RUN(dev, log_softmax_fwd, a.value().data(), y.data(), rows, C);
    else VM_RUN(dev, softmax_fwd, a.value().data(), y.data(), rows, C);
  }
  return make_result<T>(std::move(y), name, {a}, [rows, C, log, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g || rows * C == 0) return;
    if (log) VM_RUN(dev, log_softmax_bwd, self.value.data(), self.grad.data(), g->data(), rows, C);
    else VM_RUN(dev, softmax_bwd, self.value.data(), self.grad.data(), g->data(), rows, C);
  });
}
}  // namespace

template <class T>
VarT<T> softmax(const VarT<T>& a) {
  return softmax_or_log(a, false);
}
VM_INSTANTIATE_OP(softmax)

template <class T>
VarT<T> log_softmax(const VarT<T>& a) {
  return softmax_or_log(a, true);
}
VM_INSTANTIATE_OP(log_softmax)

template <class T>
VarT<T> logsumexp(const VarT<T>& a) {
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  const Device dev = device_of("logsumexp", a);
  Shape so(a.shape().begin(), a.shape().end() - (a.ndim() ? 1 : 0));
  TensorT<T> out(so, dev);  // rows of an empty last axis stay 0
  if (rows > 0) VM_RUN(dev, logsumexp_fwd, a.value().data(), out.data(), rows, C);
  return make_result<T>(std::move(out), "logsumexp", {a}, [rows, C, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && rows * C > 0)
      VM_RUN(dev, logsumexp_bwd, self.parents[0]->value.data(), self.value.data(), self.grad.data(), g->data(), rows,
             C);
  });
}
VM_INSTANTIATE_OP(logsumexp)

template <class T>
VarT<T> layernorm(const VarT<T>& x, const VarT<T>& gamma, const VarT<T>& beta, double eps) {
  int64_t rows, C;
  rows_cols(x.shape(), rows, C);
  VM_CHECK(gamma.shape() == Shape{C} && beta.shape() == Shape{C},
           "layernorm: x " + shape_str(x.shape()) + " needs gamma and beta of shape (" + std::to_string(C) +
               "), got " + shape_str(gamma.shape()) + " and " + shape_str(beta.shape()));
  const Device dev = device_of("layernorm", x, gamma, beta);
  TensorT<T> y = TensorT<T>::empty(x.shape(), dev);
  auto stats = std::make_shared<std::pair<TensorT<T>, TensorT<T>>>(TensorT<T>({rows}, dev), TensorT<T>({rows}, dev));
  if (rows * C > 0)
    VM_RUN(dev, layernorm_fwd, x.value().data(), gamma.value().data(), beta.value().data(), y.data(),
           stats->first.data(), stats->second.data(), rows, C, eps);
  return make_result<T>(std::move(y), "layernorm", {x, gamma, beta}, [rows, C, stats, dev](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gg = grad_of(self, 1), *gb = grad_of(self, 2);
    if (rows * C == 0) return;
    VM_RUN(dev, layernorm_bwd, self.parents[0]->value.data(), self.parents[1]->value.data(), stats->first.data(),
           stats->second.data(), self.grad.data(), ptr(gx), ptr(gg), ptr(gb), rows, C);
  });
}
VM_INSTANTIATE_OP(layernorm)

template <class T>
VarT<T> rmsnorm(const VarT<T>& x, const VarT<T>& gamma, double eps) {
  int64_t rows, C;
  rows_cols(x.shape(), rows, C);
  VM_CHECK(gamma.shape() == Shape{C}, "rmsnorm: x " + shape_str(x.shape()) + " needs gamma of shape (" +
                                          std::to_string(C) + "), got " + shape_str(gamma.shape()));
  const Device dev = device_of("rmsnorm", x, gamma);
  TensorT<T> y = TensorT<T>::empty(x.shape(), dev);
  auto rstd = std::make_shared<TensorT<T>>(Shape{rows}, dev);
  if (rows * C > 0)
    VM_RUN(dev, rmsnorm_fwd, x.value().data(), gamma.value().data(), y.data(), rstd->data(), rows, C, eps);
  return make_result<T>(std::move(y), "rmsnorm", {x, gamma}, [rows, C, rstd, dev](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gg = grad_of(self, 1);
    if (rows * C == 0) return;
    VM_RUN(dev, rmsnorm_bwd, self.parents[0]->value.data(), self.parents[1]->value.data(), rstd->data(),
           self.grad.data(), ptr(gx), ptr(gg), rows, C);
  });
}
VM_INSTANTIATE_OP(rmsnorm)

template <class T>
VarT<T> embedding(const VarT<T>& table, const std::vector<int32_t>& ids, Shape out_shape) {
  VM_CHECK(table.ndim() == 2, "embedding: table must be (V, C), got " + shape_str(table.shape()));
  VM_CHECK(shape_numel(out_shape) == (int64_t)ids.size(),
           "embedding: " + std::to_string(ids.size()) + " ids for output shape " + shape_str(out_shape));
  int64_t V = table.size(0), C = table.size(1), n = (int64_t)ids.size();
  for (size_t i = 0; i < ids.size(); ++i)
    VM_CHECK(ids[i] >= 0 && ids[i] < V, "embedding: id " + std::to_string(ids[i]) + " at position " +
                                            std::to_string(i) + " outside vocabulary of " + std::to_string(V));
  const Device dev = device_of("embedding", table);
  Shape so = out_shape;
  so.push_back(C);
  TensorT<T> out = TensorT<T>::empty(so, dev);
  TensorT<int32_t> idd = ints_on(ids, dev);
  if (n * C > 0) VM_RUN(dev, embedding_fwd, table.value().data(), idd.data(), out.data(), n, C);
  return make_result<T>(std::move(out), "embedding", {table}, [idd, n, V, C, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);  // scatter-add in position order (deterministic; repeated ids accumulate)
    if (g && n * C > 0) VM_RUN(dev, embedding_bwd, self.grad.data(), idd.data(), g->data(), n, V, C);
  });
}
VM_INSTANTIATE_OP(embedding)

template <class T>
VarT<T> reshape(const VarT<T>& a, Shape shape) {
  TensorT<T> out = a.value().reshaped(std::move(shape));  // shares storage: values are never written after creation
  return make_result<T>(std::move(out), "reshape", {a}, [](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) accumulate(*g, self.grad);
  });
}
VM_INSTANTIATE_OP(reshape)

template <class T>
VarT<T> transpose(const VarT<T>& a, int d0, int d1) {
  int nd = a.ndim();
  int x0 = norm_axis(d0, nd, "transpose"), x1 = norm_axis(d1, nd, "transpose");
  const Device dev = device_of("transpose", a);
  Shape so = a.shape();
  std::swap(so[x0], so[x1]);
  // the shapes left-padded to 4 dims, the swapped dims in that padding
  const int off = 4 - nd, p0 = off + x0, p1 = off + x1;
  std::array<int64_t, 4> in4{1, 1, 1, 1}, out4{1, 1, 1, 1};
  for (int i = 0; i < nd; ++i) {
    in4[off + i] = a.shape()[i];
    out4[off + i] = so[i];
  }
  TensorT<T> out = TensorT<T>::empty(so, dev);
  if (out.numel()) VM_RUN(dev, swap_dims, a.value().data(), in4.data(), p0, p1, out.data(), false);
  return make_result<T>(std::move(out), "transpose", {a}, [out4, p0, p1, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);  // the same swap of the gradient, accumulating
    if (g && self.grad.numel()) VM_RUN(dev, swap_dims, self.grad.data(), out4.data(), p0, p1, g->data(), true);
  });
}
VM_INSTANTIATE_OP(transpose)

template <class T>
VarT<T> slice(const VarT<T>& a, int axis, int64_t start, int64_t stop) {
  int ax = norm_axis(axis, a.ndim(), "slice");
  int64_t outer, n, inner;
  split_axis(a.shape(), ax, outer, n, inner);
  VM_CHECK(0 <= start && start <= stop && stop <= n,
           "slice: [" + std::to_string(start) + ", " + std::to_string(stop) + ") out of range for axis " +
               std::to_string(axis) + " of " + shape_str(a.shape()));
  const Device dev = device_of("slice", a);
  const int64_t m = stop - start;
  Shape so = a.shape();
  so[ax] = m;
  TensorT<T> out = TensorT<T>::empty(so, dev);
  if (out.numel()) VM_RUN(dev, copy_band, a.value().data(), n, start, out.data(), m, int64_t(0), outer, m, inner, false);
  return make_result<T>(std::move(out), "slice", {a}, [outer, n, inner, start, m, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && self.grad.numel())
      VM_RUN(dev, copy_band, self.grad.data(), m, int64_t(0), g->data(), n, start, outer, m, inner, true);
  });
}
VM_INSTANTIATE_OP(slice)

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
  const Device dev = device_of("concat", xs);
  int64_t outer, ntot, inner;
  split_axis(so, ax, outer, ntot, inner);
  TensorT<T> out = TensorT<T>::empty(so, dev);
  std::vector<int64_t> sizes;
  int64_t at = 0;
  for (auto& x : xs) {
    int64_t m = x.shape()[ax];
    if (x.numel()) VM_RUN(dev, copy_band, x.value().data(), m, int64_t(0), out.data(), ntot, at, outer, m, inner, false);
    sizes.push_back(m);
    at += m;
  }
  return make_result<T>(std::move(out), "concat", xs, [outer, ntot, inner, sizes, dev](Node<T>& self) {
    int64_t at = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      int64_t m = sizes[k];
      auto* g = grad_of(self, k);
      if (g && g->numel())
        VM_RUN(dev, copy_band, self.grad.data(), ntot, at, g->data(), m, int64_t(0), outer, m, inner, true);
      at += m;
    }
  });
}
VM_INSTANTIATE_OP(concat)

template <class T>
VarT<T> attention(const VarT<T>& q, const VarT<T>& k, const VarT<T>& v, bool causal) {
  VM_CHECK(q.ndim() == 4 && q.shape() == k.shape() && q.shape() == v.shape(),
           "attention: q, k, v must share a (B, H, T, D) shape, got " + shape_str(q.shape()) + ", " +
               shape_str(k.shape()) + ", " + shape_str(v.shape()));
  const Device dev = device_of("attention", q, k, v);
  int64_t B = q.size(0), H = q.size(1), Tn = q.size(2), D = q.size(3);
  // softmax weights, kept for backward
  auto P = std::make_shared<TensorT<T>>(TensorT<T>::empty(Shape{B, H, Tn, Tn}, dev));
  TensorT<T> out = TensorT<T>::empty(q.shape(), dev);
  const bool work = B * H * Tn * D > 0;
  if (work)
    VM_RUN(dev, attention_fwd, q.value().data(), k.value().data(), v.value().data(), P->data(), out.data(), B * H, Tn,
           D, causal);
  return make_result<T>(std::move(out), "attention", {q, k, v}, [P, B, H, Tn, D, causal, work, dev](Node<T>& self) {
    auto *gq = grad_of(self, 0), *gk = grad_of(self, 1), *gv = grad_of(self, 2);
    if (!work) return;
    VM_RUN(dev, attention_bwd, self.parents[0]->value.data(), self.parents[1]->value.data(),
           self.parents[2]->value.data(), P->data(), self.grad.data(), ptr(gq), ptr(gk), ptr(gv), B * H, Tn, D, causal);
  });
}
VM_INSTANTIATE_OP(attention)

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
  const Device dev = device_of("cross_entropy", logits);
  auto probs = std::make_shared<TensorT<T>>(TensorT<T>::empty(logits.shape(), dev));  // every row written
  TensorT<int32_t> tg = ints_on(targets, dev);
  int64_t count = 0;  // the rows that count, from the host targets: the loss stays on the device
  for (int32_t t : targets) count += t != ignore_index;
  TensorT<T> out = TensorT<T>::empty({}, dev);
  VM_RUN(dev, cross_entropy_fwd, logits.value().data(), tg.data(), probs->data(), N, C, ignore_index, count,
         out.data());
  return make_result<T>(std::move(out), "cross_entropy", {logits},
                        [probs, tg, N, C, count, ignore_index, dev](Node<T>& self) {
                          auto* g = grad_of(self, 0);
                          if (!g || count == 0) return;
                          // the scalar output gradient read where backward left it
                          VM_RUN(dev, cross_entropy_bwd, probs->data(), tg.data(), g->data(), N, C, ignore_index,
                                 self.grad.data(), count);
                        });
}
VM_INSTANTIATE_OP(cross_entropy)

template <class T>
VarT<T> dropout(const VarT<T>& a, double p, uint64_t seed, uint64_t stream, uint64_t offset) {
  VM_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0) return a;
  const Device dev = device_of("dropout", a);
  const int64_t n = a.numel();
  auto mask = std::make_shared<TensorT<T>>(TensorT<T>::empty(a.shape(), dev));  // 0 or 1/(1-p)
  TensorT<T> out = TensorT<T>::empty(a.shape(), dev);
  if (n) VM_RUN(dev, dropout_fwd, a.value().data(), out.data(), mask->data(), n, p, seed, stream, offset);
  return make_result<T>(std::move(out), "dropout", {a}, [mask, n, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && n) VM_RUN(dev, dropout_bwd, self.grad.data(), mask->data(), g->data(), n);
  });
}
VM_INSTANTIATE_OP(dropout)

}  // namespace vm::ops
