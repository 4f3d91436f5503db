// autodiff/ops_cuda.cpp — the GPU half of the ops (see ops_cuda.h). Each
// function mirrors its CPU op in ops_basic.cpp / ops_nn.cpp / ops_moe.cpp line
// for line, with the CPU kernel call replaced by its CUDA twin; shapes and
// arguments were validated by the CPU op before it dispatched here.
//
// Compiled only with the CUDA backend (VMOER_HAVE_CUDA). Status: compiled in
// CI; its parity with the CPU ops is checked by the op-case table's CUDA
// column and the training-step test in tests/test_cuda.cpp, which need a GPU.
#ifdef VMOER_HAVE_CUDA
#include "autodiff/ops_cuda.h"

#include <memory>

#include "autodiff/ops_common.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/nn.h"
#include "kernels/cuda/rowwise.h"

namespace vm::ops::cuda_ops {
namespace kc = vm::kernels::cuda;
using detail::grad_of;

namespace {
template <class T>
TensorT<T> dev_empty(const Shape& s) {
  return TensorT<T>(s, Device::CUDA, false);
}
template <class T>
TensorT<T> dev_zeros(const Shape& s) {
  return TensorT<T>(s, Device::CUDA, true);
}
// Integer arguments live on the host; the kernels read a device copy, kept
// alive by the backward closure.
std::shared_ptr<TensorT<int32_t>> dev_ints(const std::vector<int32_t>& v) {
  auto t = TensorT<int32_t>::from(v, {(int64_t)v.size()});
  return std::make_shared<TensorT<int32_t>>(t.to(Device::CUDA));
}
template <class T>
T* ptr(TensorT<T>* t) {
  return t ? t->data() : nullptr;
}
}  // namespace

template <class T>
void accumulate(TensorT<T>& y, const TensorT<T>& x) {
  kc::add_inplace(y.data(), x.data(), y.numel());
}

// ---- matmul --------------------------------------------------------------------
template <class T>
VarT<T> matmul(const VarT<T>& a, const VarT<T>& b) {
  const Shape &sa = a.shape(), &sb = b.shape();
  int64_t M = sa[sa.size() - 2], K = sa.back(), N = sb.back();
  bool shared_b = sb.size() == 2;
  int64_t batch = shape_numel(Shape(sa.begin(), sa.end() - 2));
  Shape so(sa.begin(), sa.end() - 1);
  so.push_back(N);
  TensorT<T> out = K == 0 ? dev_zeros<T>(so) : dev_empty<T>(so);
  bool work = batch * M * N * K > 0;
  if (work && shared_b) {  // one GEMM over all rows: (batch*M, K) x (K, N)
    kc::gemm(out.data(), a.value().data(), b.value().data(), batch * M, N, K, false, false, false);
  } else if (work) {
    kc::gemm_strided_batched(out.data(), a.value().data(), b.value().data(), batch, M, N, K, false, false, false,
                             M * K, K * N, M * N);
  }
  return make_result<T>(std::move(out), "matmul", {a, b}, [=](Node<T>& self) {
    TensorT<T>* ga = grad_of(self, 0);  // allocated (zero) even when there is no work, as on the CPU
    TensorT<T>* gb = grad_of(self, 1);
    if (!work) return;
    const T* g = self.grad.data();
    const T* pa = self.parents[0]->value.data();
    const T* pb = self.parents[1]->value.data();
    if (shared_b) {
      if (ga) kc::gemm(ga->data(), g, pb, batch * M, K, N, false, true, true);  // dA = G Bᵀ
      if (gb) kc::gemm(gb->data(), pa, g, K, N, batch * M, true, false, true);  // dB = Aᵀ G
    } else {
      if (ga) kc::gemm_strided_batched(ga->data(), g, pb, batch, M, K, N, false, true, true, M * N, K * N, M * K);
      if (gb) kc::gemm_strided_batched(gb->data(), pa, g, batch, K, N, M, true, false, true, M * K, M * N, K * N);
    }
  });
}

// ---- broadcasting binary ops ------------------------------------------------------
template <class T>
VarT<T> binary(const VarT<T>& a, const VarT<T>& b, kc::Binary op, const char* name) {
  Shape so = detail::broadcast_shape(a.shape(), b.shape(), name);
  TensorT<T> out = dev_empty<T>(so);
  if (out.numel()) kc::binary_fwd(op, a.value().data(), a.shape(), b.value().data(), b.shape(), out.data());
  return make_result<T>(std::move(out), name, {a, b}, [op](Node<T>& self) {
    TensorT<T>*ga = grad_of(self, 0), *gb = grad_of(self, 1);
    if (self.grad.numel() == 0 || (!ga && !gb)) return;
    kc::binary_bwd(op, self.parents[0]->value.data(), self.parents[0]->value.shape(), self.parents[1]->value.data(),
                   self.parents[1]->value.shape(), self.grad.data(), ptr(ga), ptr(gb));
  });
}


// ---- unary and scalar ops ---------------------------------------------------------------
template <class T>
VarT<T> unary(const VarT<T>& a, kc::Unary op, double alpha, const char* name) {
  TensorT<T> out = dev_empty<T>(a.shape());
  int64_t n = out.numel();
  if (n) kc::unary_fwd(op, a.value().data(), out.data(), n, alpha);
  return make_result<T>(std::move(out), name, {a}, [op, alpha, n](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (!gp || !n) return;
    kc::unary_bwd(op, self.parents[0]->value.data(), self.value.data(), self.grad.data(), gp->data(), n, alpha);
  });
}

// ---- reductions ------------------------------------------------------------------------
template <class T>
VarT<T> sum(const VarT<T>& a, int axis, bool keepdim) {
  const Shape& s = a.shape();
  int ax = norm_axis(axis, a.ndim(), "sum");
  int64_t outer, n, inner;
  detail::split_axis(s, ax, outer, n, inner);
  Shape so = s;
  if (keepdim) so[ax] = 1;
  else so.erase(so.begin() + ax);
  TensorT<T> out = dev_zeros<T>(so);
  kc::sum_axis(a.value().data(), out.data(), outer, n, inner, /*accumulate=*/false);
  return make_result<T>(std::move(out), "sum", {a}, [outer, n, inner](Node<T>& self) {
    if (TensorT<T>* gp = grad_of(self, 0)) kc::sum_axis_bwd(self.grad.data(), gp->data(), outer, n, inner);
  });
}

template <class T>
VarT<T> sum_all(const VarT<T>& a) {
  TensorT<T> out = dev_zeros<T>(Shape{});
  int64_t n = a.numel();
  if (n) kc::sum_all(a.value().data(), out.data(), n);
  return make_result<T>(std::move(out), "sum_all", {a}, [n](Node<T>& self) {
    if (TensorT<T>* gp = grad_of(self, 0)) kc::sum_axis_bwd(self.grad.data(), gp->data(), 1, n, 1);  // dx += g
  });
}

// ---- softmax family and norms --------------------------------------------------------------
template <class T>
VarT<T> softmax(const VarT<T>& a) {
  int64_t rows, C;
  detail::rows_cols(a.shape(), rows, C);
  TensorT<T> y = dev_empty<T>(a.shape());
  if (rows * C > 0) kc::softmax_fwd(a.value().data(), y.data(), rows, C);
  return make_result<T>(std::move(y), "softmax", {a}, [rows, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && rows * C > 0) kc::softmax_bwd(self.value.data(), self.grad.data(), g->data(), rows, C);
  });
}

template <class T>
VarT<T> log_softmax(const VarT<T>& a) {
  int64_t rows, C;
  detail::rows_cols(a.shape(), rows, C);
  TensorT<T> y = dev_empty<T>(a.shape());
  if (rows * C > 0) kc::log_softmax_fwd(a.value().data(), y.data(), rows, C);
  return make_result<T>(std::move(y), "log_softmax", {a}, [rows, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && rows * C > 0) kc::log_softmax_bwd(self.value.data(), self.grad.data(), g->data(), rows, C);
  });
}

template <class T>
VarT<T> logsumexp(const VarT<T>& a) {
  int64_t rows, C;
  detail::rows_cols(a.shape(), rows, C);
  Shape so(a.shape().begin(), a.shape().end() - (a.ndim() ? 1 : 0));
  TensorT<T> out = dev_zeros<T>(so);  // rows of an empty last axis stay 0, as on the CPU
  kc::logsumexp_fwd(a.value().data(), out.data(), rows, C);
  return make_result<T>(std::move(out), "logsumexp", {a}, [rows, C](Node<T>& self) {
    if (auto* g = grad_of(self, 0))
      kc::logsumexp_bwd(self.parents[0]->value.data(), self.value.data(), self.grad.data(), g->data(), rows, C);
  });
}

template <class T>
VarT<T> layernorm(const VarT<T>& x, const VarT<T>& gamma, const VarT<T>& beta, double eps) {
  int64_t rows, C;
  detail::rows_cols(x.shape(), rows, C);
  TensorT<T> y = dev_empty<T>(x.shape());
  auto stats = std::make_shared<std::pair<TensorT<T>, TensorT<T>>>(dev_empty<T>({rows}), dev_empty<T>({rows}));
  if (rows * C > 0)
    kc::layernorm_fwd(x.value().data(), gamma.value().data(), beta.value().data(), y.data(), stats->first.data(),
                      stats->second.data(), rows, C, eps);
  return make_result<T>(std::move(y), "layernorm", {x, gamma, beta}, [rows, C, stats](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gg = grad_of(self, 1), *gb = grad_of(self, 2);
    if (rows * C == 0) return;
    kc::layernorm_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), stats->first.data(),
                      stats->second.data(), self.grad.data(), ptr(gx), ptr(gg), ptr(gb), rows, C);
  });
}

template <class T>
VarT<T> rmsnorm(const VarT<T>& x, const VarT<T>& gamma, double eps) {
  int64_t rows, C;
  detail::rows_cols(x.shape(), rows, C);
  TensorT<T> y = dev_empty<T>(x.shape());
  auto rstd = std::make_shared<TensorT<T>>(dev_empty<T>({rows}));
  if (rows * C > 0) kc::rmsnorm_fwd(x.value().data(), gamma.value().data(), y.data(), rstd->data(), rows, C, eps);
  return make_result<T>(std::move(y), "rmsnorm", {x, gamma}, [rows, C, rstd](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gg = grad_of(self, 1);
    if (rows * C == 0) return;
    kc::rmsnorm_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), rstd->data(), self.grad.data(),
                    ptr(gx), ptr(gg), rows, C);
  });
}

// ---- indexing and layout ---------------------------------------------------------------------
template <class T>
VarT<T> embedding(const VarT<T>& table, const std::vector<int32_t>& ids, Shape out_shape) {
  int64_t V = table.size(0), C = table.size(1), n = (int64_t)ids.size();
  Shape so = out_shape;
  so.push_back(C);
  TensorT<T> out = dev_empty<T>(so);
  auto idd = dev_ints(ids);
  if (n * C > 0) kc::embedding_fwd(table.value().data(), idd->data(), out.data(), n, C);
  return make_result<T>(std::move(out), "embedding", {table}, [idd, n, V, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && n * C > 0) kc::embedding_bwd(self.grad.data(), idd->data(), g->data(), n, V, C);  // position order
  });
}

template <class T>
VarT<T> transpose(const VarT<T>& a, int d0, int d1) {
  int nd = a.ndim();
  int x0 = norm_axis(d0, nd, "transpose"), x1 = norm_axis(d1, nd, "transpose");
  Shape so = a.shape();
  std::swap(so[x0], so[x1]);
  int off = 4 - nd;
  detail::Dims4 din = detail::dims4(a.shape()), dout = detail::dims4(so);
  std::array<int64_t, 4> in4 = din.d, out4 = dout.d;
  int p0 = off + x0, p1 = off + x1;
  TensorT<T> out = dev_empty<T>(so);
  kc::swap_dims(a.value().data(), in4.data(), p0, p1, out.data(), false);
  return make_result<T>(std::move(out), "transpose", {a}, [out4, p0, p1](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) kc::swap_dims(self.grad.data(), out4.data(), p0, p1, g->data(), true);
  });
}

template <class T>
VarT<T> slice(const VarT<T>& a, int axis, int64_t start, int64_t stop) {
  int ax = norm_axis(axis, a.ndim(), "slice");
  int64_t outer, n, inner;
  detail::split_axis(a.shape(), ax, outer, n, inner);
  Shape so = a.shape();
  int64_t m = stop - start;
  so[ax] = m;
  TensorT<T> out = dev_empty<T>(so);
  kc::copy_band(a.value().data(), n, start, out.data(), m, 0, outer, m, inner, false);
  return make_result<T>(std::move(out), "slice", {a}, [outer, n, inner, start, m](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) kc::copy_band(self.grad.data(), m, 0, g->data(), n, start, outer, m, inner, true);
  });
}

template <class T>
VarT<T> concat(const std::vector<VarT<T>>& xs, int axis) {
  int ax = norm_axis(axis, xs[0].ndim(), "concat");
  Shape so = xs[0].shape();
  so[ax] = 0;
  for (auto& x : xs) so[ax] += x.shape()[ax];
  int64_t outer, ntot, inner;
  detail::split_axis(so, ax, outer, ntot, inner);
  TensorT<T> out = dev_empty<T>(so);
  std::vector<int64_t> sizes;
  int64_t at = 0;
  for (auto& x : xs) {
    int64_t m = x.shape()[ax];
    kc::copy_band(x.value().data(), m, 0, out.data(), ntot, at, outer, m, inner, false);
    sizes.push_back(m);
    at += m;
  }
  return make_result<T>(std::move(out), "concat", xs, [outer, ntot, inner, sizes](Node<T>& self) {
    int64_t at = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      int64_t m = sizes[k];
      if (auto* g = grad_of(self, k)) kc::copy_band(self.grad.data(), ntot, at, g->data(), m, 0, outer, m, inner, true);
      at += m;
    }
  });
}

// ---- attention, cross-entropy, dropout -----------------------------------------------------------
template <class T>
VarT<T> attention(const VarT<T>& q, const VarT<T>& k, const VarT<T>& v, bool causal) {
  int64_t B = q.size(0), H = q.size(1), Tn = q.size(2), D = q.size(3);
  auto P = std::make_shared<TensorT<T>>(dev_empty<T>(Shape{B, H, Tn, Tn}));  // softmax weights, kept for backward
  TensorT<T> out = dev_empty<T>(q.shape());
  bool work = B * H * Tn * D > 0;
  if (work)
    kc::attention_fwd(q.value().data(), k.value().data(), v.value().data(), P->data(), out.data(), B * H, Tn, D,
                      causal);
  return make_result<T>(std::move(out), "attention", {q, k, v}, [P, B, H, Tn, D, causal, work](Node<T>& self) {
    auto *gq = grad_of(self, 0), *gk = grad_of(self, 1), *gv = grad_of(self, 2);
    if (!work) return;
    kc::attention_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), self.parents[2]->value.data(),
                      P->data(), self.grad.data(), ptr(gq), ptr(gk), ptr(gv), B * H, Tn, D, causal);
  });
}

template <class T>
VarT<T> cross_entropy(const VarT<T>& logits, const std::vector<int32_t>& targets, int32_t ignore_index) {
  int64_t N = logits.size(0), C = logits.size(1);
  auto probs = std::make_shared<TensorT<T>>(dev_empty<T>(logits.shape()));
  auto tg = dev_ints(targets);
  int64_t count = 0;
  double total = N * C > 0 ? kc::cross_entropy_fwd(logits.value().data(), tg->data(), probs->data(), N, C,
                                               ignore_index, &count)
                       : 0.0;  // synchronises: the loss comes back to the host
  TensorT<T> out = TensorT<T>::scalar(count ? T(total / (double)count) : T(0)).to(Device::CUDA);
  return make_result<T>(std::move(out), "cross_entropy", {logits},
                        [probs, tg, N, C, count, ignore_index](Node<T>& self) {
                          auto* g = grad_of(self, 0);
                          if (!g || count == 0) return;
                          T gout = self.grad.item();  // the scalar output gradient (host round-trip)
                          kc::cross_entropy_bwd(probs->data(), tg->data(), g->data(), N, C, ignore_index,
                                                T(gout / (T)count));
                        });
}

template <class T>
VarT<T> dropout(const VarT<T>& a, double p, uint64_t seed, uint64_t stream, uint64_t offset) {
  int64_t n = a.numel();
  auto mask = std::make_shared<TensorT<T>>(dev_empty<T>(a.shape()));  // 0 or 1/(1-p), same Philox numbers as the CPU
  TensorT<T> out = dev_empty<T>(a.shape());
  if (n) kc::dropout_fwd(a.value().data(), out.data(), mask->data(), n, p, seed, stream, offset);
  return make_result<T>(std::move(out), "dropout", {a}, [mask, n](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && n) kc::dropout_bwd(self.grad.data(), mask->data(), g->data(), n);
  });
}

// ---- selection, dispatch, combine -------------------------------------------------------------------
template <class T>
VarT<T> take_cols(const VarT<T>& x, const std::vector<int32_t>& idx, int k) {
  int64_t N = x.size(0), E = x.size(1);
  auto idd = dev_ints(idx);
  TensorT<T> out = dev_empty<T>({N, (int64_t)k});
  kc::take_cols_fwd(x.value().data(), idd->data(), out.data(), N, E, k);
  return make_result<T>(std::move(out), "take_cols", {x}, [idd, N, E, k](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) kc::take_cols_bwd(self.grad.data(), idd->data(), g->data(), N, E, k);
  });
}

template <class T>
TopK<T> topk(const VarT<T>& x, int k) {
  // Indices on the host (the dispatch plan consumes them there): the CPU op on
  // a host copy of the values, without a graph; the values gathered on the GPU.
  std::vector<int32_t> idx = detail::topk_indices(x.value().to(Device::CPU), k);
  TopK<T> r;
  r.values = take_cols(x, idx, k);
  r.indices = std::move(idx);
  return r;
}

template <class T>
VarT<T> gather_rows(const VarT<T>& x, const std::vector<int32_t>& rows) {
  int64_t N = x.size(0), C = x.size(1), M = (int64_t)rows.size();
  auto rd = dev_ints(rows);
  TensorT<T> out = dev_empty<T>({M, C});
  if (M * C > 0) kc::embedding_fwd(x.value().data(), rd->data(), out.data(), M, C);  // out[m] = x[rows[m]]
  return make_result<T>(std::move(out), "gather_rows", {x}, [rd, N, M, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && M * C > 0) kc::embedding_bwd(self.grad.data(), rd->data(), g->data(), M, N, C);  // in m order
  });
}

template <class T>
VarT<T> scatter_add_rows(const VarT<T>& src, const std::vector<int32_t>& rows, int64_t n_rows) {
  int64_t M = src.size(0), C = src.size(1);
  auto rd = dev_ints(rows);
  TensorT<T> out = dev_zeros<T>({n_rows, C});
  if (M * C > 0) kc::embedding_bwd(src.value().data(), rd->data(), out.data(), M, n_rows, C);  // out[rows[m]] += src[m]
  return make_result<T>(std::move(out), "scatter_add_rows", {src}, [rd, M, C](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g || M * C == 0) return;
    TensorT<T> picked = dev_empty<T>({M, C});  // dsrc[m] += g[rows[m]]
    kc::embedding_fwd(self.grad.data(), rd->data(), picked.data(), M, C);
    kc::add_inplace(g->data(), picked.data(), M * C);
  });
}

template <class T>
VarT<T> grouped_matmul(const VarT<T>& x, const VarT<T>& w, const std::vector<int64_t>& offsets) {
  int64_t M = x.size(0), C = x.size(1), F = w.size(2);
  TensorT<T> out = dev_empty<T>({M, F});  // the groups cover every row exactly once
  if (C == 0) out = dev_zeros<T>({M, F});
  else kc::grouped_gemm(out.data(), x.value().data(), w.value().data(), offsets, C, F);
  return make_result<T>(std::move(out), "grouped_matmul", {x, w}, [offsets, C, F](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gw = grad_of(self, 1);
    if (C == 0 || F == 0) return;
    kc::grouped_gemm_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), self.grad.data(), ptr(gx),
                         ptr(gw), offsets, C, F);
  });
}

// ---- Cholesky pieces --------------------------------------------------------------------------------
template <class T>
VarT<T> fill_tril_expdiag(const VarT<T>& v, int E) {
  int64_t N = v.size(0);
  TensorT<T> L = dev_empty<T>({N, (int64_t)E, (int64_t)E});  // every entry written (0 above the diagonal)
  kc::fill_tril_expdiag_fwd(v.value().data(), L.data(), N, E);
  return make_result<T>(std::move(L), "fill_tril_expdiag", {v}, [N, E](Node<T>& self) {
    if (auto* g = grad_of(self, 0)) kc::fill_tril_expdiag_bwd(self.value.data(), self.grad.data(), g->data(), N, E);
  });
}

template <class T>
VarT<T> tril_matvec(const VarT<T>& L, const VarT<T>& eps) {
  int64_t N = L.size(0), E = L.size(1);
  TensorT<T> out = dev_empty<T>({N, E});
  kc::tril_matvec_fwd(L.value().data(), eps.value().data(), out.data(), N, (int)E);
  return make_result<T>(std::move(out), "tril_matvec", {L, eps}, [N, E](Node<T>& self) {
    auto *gL = grad_of(self, 0), *ge = grad_of(self, 1);
    if (!gL && !ge) return;
    kc::tril_matvec_bwd(self.parents[0]->value.data(), self.parents[1]->value.data(), self.grad.data(), ptr(gL),
                        ptr(ge), N, (int)E);
  });
}

template <class T>
VarT<T> sum_log_diag(const VarT<T>& L) {
  int64_t N = L.size(0), E = L.size(1);
  TensorT<T> out = dev_empty<T>({N});
  kc::sum_log_diag_fwd(L.value().data(), out.data(), N, E);
  return make_result<T>(std::move(out), "sum_log_diag", {L}, [N, E](Node<T>& self) {
    if (auto* g = grad_of(self, 0))
      kc::sum_log_diag_bwd(self.parents[0]->value.data(), self.grad.data(), g->data(), N, E);
  });
}

#define VM_INST(T)                                                                                     \
  template void accumulate(TensorT<T>&, const TensorT<T>&);                                            \
  template VarT<T> matmul(const VarT<T>&, const VarT<T>&);                                             \
  template VarT<T> binary(const VarT<T>&, const VarT<T>&, kc::Binary, const char*);                   \
  template VarT<T> unary(const VarT<T>&, kc::Unary, double, const char*);                              \
  template VarT<T> sum(const VarT<T>&, int, bool);                                                     \
  template VarT<T> sum_all(const VarT<T>&);                                                            \
  template VarT<T> softmax(const VarT<T>&);                                                            \
  template VarT<T> log_softmax(const VarT<T>&);                                                        \
  template VarT<T> logsumexp(const VarT<T>&);                                                          \
  template VarT<T> layernorm(const VarT<T>&, const VarT<T>&, const VarT<T>&, double);                  \
  template VarT<T> rmsnorm(const VarT<T>&, const VarT<T>&, double);                                    \
  template VarT<T> embedding(const VarT<T>&, const std::vector<int32_t>&, Shape);                      \
  template VarT<T> transpose(const VarT<T>&, int, int);                                                \
  template VarT<T> slice(const VarT<T>&, int, int64_t, int64_t);                                       \
  template VarT<T> concat(const std::vector<VarT<T>>&, int);                                           \
  template VarT<T> attention(const VarT<T>&, const VarT<T>&, const VarT<T>&, bool);                    \
  template VarT<T> cross_entropy(const VarT<T>&, const std::vector<int32_t>&, int32_t);                \
  template VarT<T> dropout(const VarT<T>&, double, uint64_t, uint64_t, uint64_t);                     \
  template TopK<T> topk(const VarT<T>&, int);                                                          \
  template VarT<T> take_cols(const VarT<T>&, const std::vector<int32_t>&, int);                        \
  template VarT<T> gather_rows(const VarT<T>&, const std::vector<int32_t>&);                           \
  template VarT<T> scatter_add_rows(const VarT<T>&, const std::vector<int32_t>&, int64_t);             \
  template VarT<T> grouped_matmul(const VarT<T>&, const VarT<T>&, const std::vector<int64_t>&);        \
  template VarT<T> fill_tril_expdiag(const VarT<T>&, int);                                             \
  template VarT<T> tril_matvec(const VarT<T>&, const VarT<T>&);                                        \
  template VarT<T> sum_log_diag(const VarT<T>&);
VM_INST(float)
VM_INST(double)

}  // namespace vm::ops::cuda_ops
#endif  // VMOER_HAVE_CUDA
