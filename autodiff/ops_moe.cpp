// autodiff/ops_moe.cpp — selection, dispatch/combine, the Cholesky pieces of
// the full-covariance router and the closed-form KLs of the variational routers.
#include <algorithm>
#include <cmath>

#include "autodiff/ops_common.h"
#include "kernels/cpu/moe.h"  // topk_select

namespace vm::ops {
using namespace detail;

template <class T>
VarT<T> take_cols(const VarT<T>& x, const Indices& idx, int k) {
  VM_CHECK(x.ndim() == 2, "take_cols: x must be (N, E), got " + shape_str(x.shape()));
  int64_t N = x.size(0), E = x.size(1);
  VM_CHECK((int64_t)idx.size() == N * k, "take_cols: " + std::to_string(idx.size()) + " indices for (" +
                                             std::to_string(N) + ", " + std::to_string(k) + ")");
  const Device dev = device_of("take_cols", x);
  if (idx.device() != dev || idx.on_host()) {  // host values (or bound for another device): checked here
    const std::vector<int32_t>& h = idx.host();
    for (size_t i = 0; i < h.size(); ++i)
      VM_CHECK(h[i] >= 0 && h[i] < E, "take_cols: index " + std::to_string(h[i]) + " outside [0, " +
                                          std::to_string(E) + ")");
  }
  TensorT<int32_t> idd = idx.on(dev);
  TensorT<T> out = TensorT<T>::empty({N, (int64_t)k}, dev);
  if (N * k > 0) VM_RUN(dev, take_cols_fwd, x.value().data(), idd.data(), out.data(), N, E, k);
  return make_result<T>(std::move(out), "take_cols", {x}, [idd, N, E, k, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && N * k > 0) VM_RUN(dev, take_cols_bwd, self.grad.data(), idd.data(), g->data(), N, E, k);
  });
}
VM_INSTANTIATE_OP(take_cols)

namespace detail {
template <class T>
std::vector<int32_t> topk_indices(const TensorT<T>& x, int k) {
  std::vector<int32_t> idx((size_t)(x.size(0) * k));
  kernels::topk_select(x.data(), x.size(0), x.size(1), k, idx.data());
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
  // The indices on the host (the dispatch plan consumes them there; for device
  // values a host copy, without a graph), the values gathered on x's device.
  TopK<T> r;
  r.indices = topk_indices(x.value().to(Device::CPU), k);
  r.values = take_cols(x, r.indices, k);
  return r;
}
VM_INSTANTIATE_OP(topk)

template <class T>
VarT<T> gather_rows(const VarT<T>& x, const std::vector<int32_t>& rows) {
  VM_CHECK(x.ndim() == 2, "gather_rows: x must be (N, C), got " + shape_str(x.shape()));
  int64_t N = x.size(0), C = x.size(1), M = (int64_t)rows.size();
  for (int64_t m = 0; m < M; ++m)
    VM_CHECK(rows[m] >= 0 && rows[m] < N, "gather_rows: row " + std::to_string(rows[m]) + " outside [0, " +
                                              std::to_string(N) + ")");
  const Device dev = device_of("gather_rows", x);
  TensorT<int32_t> rd = ints_on(rows, dev);
  TensorT<T> out = TensorT<T>::empty({M, C}, dev);
  if (M * C > 0) VM_RUN(dev, embedding_fwd, x.value().data(), rd.data(), out.data(), M, C);  // out[m] = x[rows[m]]
  return make_result<T>(std::move(out), "gather_rows", {x}, [rd, N, M, C, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);  // dx[rows[m]] += g[m], in m order: deterministic
    if (g && M * C > 0) VM_RUN(dev, embedding_bwd, self.grad.data(), rd.data(), g->data(), M, N, C);
  });
}
VM_INSTANTIATE_OP(gather_rows)

template <class T>
VarT<T> scatter_add_rows(const VarT<T>& src, const std::vector<int32_t>& rows, int64_t n_rows) {
  VM_CHECK(src.ndim() == 2, "scatter_add_rows: src must be (M, C), got " + shape_str(src.shape()));
  int64_t M = src.size(0), C = src.size(1);
  VM_CHECK((int64_t)rows.size() == M, "scatter_add_rows: " + std::to_string(rows.size()) +
                                          " row indices for src " + shape_str(src.shape()));
  for (int64_t m = 0; m < M; ++m)
    VM_CHECK(rows[m] >= 0 && rows[m] < n_rows, "scatter_add_rows: row " + std::to_string(rows[m]) +
                                                   " outside [0, " + std::to_string(n_rows) + ")");
  const Device dev = device_of("scatter_add_rows", src);
  TensorT<int32_t> rd = ints_on(rows, dev);
  TensorT<T> out({n_rows, C}, dev);
  // out[rows[m]] += src[m], in m order: deterministic
  if (M * C > 0) VM_RUN(dev, embedding_bwd, src.value().data(), rd.data(), out.data(), M, n_rows, C);
  return make_result<T>(std::move(out), "scatter_add_rows", {src}, [rd, M, C, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (!g || M * C == 0) return;
    TensorT<T> picked = TensorT<T>::empty({M, C}, dev);  // dsrc[m] += g[rows[m]]
    VM_RUN(dev, embedding_fwd, self.grad.data(), rd.data(), picked.data(), M, C);
    VM_RUN(dev, add_inplace, g->data(), picked.data(), M * C);
  });
}
VM_INSTANTIATE_OP(scatter_add_rows)

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
  const Device dev = device_of("grouped_matmul", x, w);
  // the groups cover every row exactly once (zeros when C = 0)
  TensorT<T> out = C == 0 ? TensorT<T>({M, F}, dev) : TensorT<T>::empty({M, F}, dev);
  if (C > 0 && F > 0) VM_RUN(dev, grouped_gemm, out.data(), x.value().data(), w.value().data(), offsets, C, F);
  return make_result<T>(std::move(out), "grouped_matmul", {x, w}, [offsets, C, F, dev](Node<T>& self) {
    auto *gx = grad_of(self, 0), *gw = grad_of(self, 1);
    if (C == 0 || F == 0) return;
    VM_RUN(dev, grouped_gemm_bwd, self.parents[0]->value.data(), self.parents[1]->value.data(), self.grad.data(),
           ptr(gx), ptr(gw), offsets, C, F);
  });
}
VM_INSTANTIATE_OP(grouped_matmul)

template <class T>
TopK<T> topk_gates(const VarT<T>& probs, int k) {
  VM_CHECK(probs.ndim() == 2, "topk_gates: probs must be (N, E), got " + shape_str(probs.shape()));
  int64_t N = probs.size(0), E = probs.size(1);
  VM_CHECK(k >= 1 && k <= E, "topk_gates: k = " + std::to_string(k) + " must be in [1, " + std::to_string(E) + "]");
  const Device dev = device_of("topk_gates", probs);
  if (dev == Device::CUDA && (E > 2048 || k > 16)) {  // past the GPU kernel's warp top-K: the same formula in ops
    TopK<T> tk = topk(probs, k);
    return {div(tk.values, sum(tk.values, 1, true)), std::move(tk.indices)};
  }
  TensorT<int32_t> experts({N, (int64_t)k}, dev, false);
  TensorT<T> gates = TensorT<T>::empty({N, (int64_t)k}, dev);
  if (N > 0) VM_RUN(dev, topk_gates, probs.value().data(), experts.data(), gates.data(), N, (int)E, k);
  TopK<T> r;
  r.indices = Indices(experts);  // where the kernel wrote them: the GPU's dispatch plan reads them there
  r.values = make_result<T>(std::move(gates), "topk_gates", {probs}, [experts, N, E, k, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);  // allocated even for N = 0
    if (g && N > 0)
      VM_RUN(dev, topk_gates_bwd, self.parents[0]->value.data(), experts.data(), self.grad.data(), g->data(), N,
             (int)E, k);
  });
  return r;
}
VM_INSTANTIATE_OP(topk_gates)

MoEDispatch moe_dispatch(const std::vector<int32_t>& token, const std::vector<int32_t>& slot, int64_t n, int k,
                         Device dev) {
  VM_CHECK(token.size() == slot.size() && n >= 0 && k >= 1,
           "moe_dispatch: " + std::to_string(token.size()) + " tokens and " + std::to_string(slot.size()) +
               " slots for N = " + std::to_string(n) + ", K = " + std::to_string(k));
  std::vector<int32_t> pos((size_t)(n * k), -1);
  for (size_t m = 0; m < slot.size(); ++m) {
    VM_CHECK(slot[m] >= 0 && slot[m] < n * k && token[m] == slot[m] / k && pos[(size_t)slot[m]] < 0,
             "moe_dispatch: row " + std::to_string(m) + " has token " + std::to_string(token[m]) + " and slot " +
                 std::to_string(slot[m]) + " (slots n·K + j, each at most once)");
    pos[(size_t)slot[m]] = (int32_t)m;
  }
  MoEDispatch d;
  d.token = ints_on(token, dev);
  d.slot = ints_on(slot, dev);
  d.pos = ints_on(pos, dev);
  d.n = n;
  d.m = (int64_t)token.size();
  d.k = k;
  return d;
}

namespace {
void check_dispatch(const char* op, const MoEDispatch& d, Device dev) {
  VM_CHECK(d.pos.defined() && d.pos.device() == dev, std::string(op) + ": the dispatch is not on " +
                                                          device_name(dev) + ", the data's device");
  VM_CHECK(dev == Device::CPU || d.k <= 16, std::string(op) + ": K = " + std::to_string(d.k) + " > 16 on cuda");
}
}  // namespace

template <class T>
VarT<T> moe_gather(const VarT<T>& x, const MoEDispatch& d) {
  VM_CHECK(x.ndim() == 2 && x.size(0) == d.n, "moe_gather: x must be (N, C) with N = " + std::to_string(d.n) +
                                                  " dispatched tokens, got " + shape_str(x.shape()));
  const Device dev = device_of("moe_gather", x);
  check_dispatch("moe_gather", d, dev);
  const int64_t N = d.n, M = d.m, C = x.size(1);
  const int K = d.k;
  TensorT<T> xs = TensorT<T>::empty({M, C}, dev);
  if (M * C > 0) VM_RUN(dev, moe_gather, x.value().data(), d.token.data(), xs.data(), M, C);
  return make_result<T>(std::move(xs), "moe_gather", {x}, [d, N, K, C, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);  // dx[n] += the rows of n's kept slots, in grouped order (no atomics)
    if (g && N * C > 0) VM_RUN(dev, moe_gather_bwd, self.grad.data(), d.pos.data(), g->data(), N, K, C);
  });
}
VM_INSTANTIATE_OP(moe_gather)

template <class T>
VarT<T> moe_combine(const VarT<T>& ys, const VarT<T>& gates, const MoEDispatch& d) {
  VM_CHECK(ys.ndim() == 2 && ys.size(0) == d.m && gates.shape() == Shape({d.n, (int64_t)d.k}),
           "moe_combine: ys (M, C) and gates (N, K) needed for M = " + std::to_string(d.m) + ", N = " +
               std::to_string(d.n) + ", K = " + std::to_string(d.k) + ", got " + shape_str(ys.shape()) + " and " +
               shape_str(gates.shape()));
  const Device dev = device_of("moe_combine", ys, gates);
  check_dispatch("moe_combine", d, dev);
  const int64_t N = d.n, M = d.m, C = ys.size(1);
  TensorT<T> out = TensorT<T>::empty({N, C}, dev);  // every row written (0 for a token without a kept slot)
  if (N * C > 0) VM_RUN(dev, moe_combine, ys.value().data(), gates.value().data(), d.pos.data(), out.data(), N, d.k, C);
  return make_result<T>(std::move(out), "moe_combine", {ys, gates}, [d, M, C, dev](Node<T>& self) {
    auto *dys = grad_of(self, 0), *dg = grad_of(self, 1);
    if ((dys || dg) && M > 0)
      VM_RUN(dev, moe_combine_bwd, self.parents[0]->value.data(), self.parents[1]->value.data(), d.token.data(),
             d.slot.data(), self.grad.data(), ptr(dys), ptr(dg), M, C);
  });
}
VM_INSTANTIATE_OP(moe_combine)

template <class T>
VarT<T> fill_tril_expdiag(const VarT<T>& v, int E) {
  int64_t P = (int64_t)E * (E + 1) / 2;
  VM_CHECK(v.ndim() == 2 && v.size(1) == P, "fill_tril_expdiag: v must be (N, " + std::to_string(P) +
                                                ") for E = " + std::to_string(E) + ", got " + shape_str(v.shape()));
  const Device dev = device_of("fill_tril_expdiag", v);
  int64_t N = v.size(0);
  TensorT<T> L = TensorT<T>::empty({N, (int64_t)E, (int64_t)E}, dev);  // every entry written (0 above the diagonal)
  if (N * E > 0) VM_RUN(dev, fill_tril_expdiag_fwd, v.value().data(), L.data(), N, E);
  return make_result<T>(std::move(L), "fill_tril_expdiag", {v}, [N, E, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && N * E > 0) VM_RUN(dev, fill_tril_expdiag_bwd, self.value.data(), self.grad.data(), g->data(), N, E);
  });
}
VM_INSTANTIATE_OP(fill_tril_expdiag)

template <class T>
VarT<T> tril_matvec(const VarT<T>& L, const VarT<T>& eps) {
  VM_CHECK(L.ndim() == 3 && L.size(1) == L.size(2) && eps.ndim() == 2 && eps.size(0) == L.size(0) &&
               eps.size(1) == L.size(1),
           "tril_matvec: L must be (N, E, E) and eps (N, E), got " + shape_str(L.shape()) + " and " +
               shape_str(eps.shape()));
  const Device dev = device_of("tril_matvec", L, eps);
  int64_t N = L.size(0);
  int E = (int)L.size(1);
  TensorT<T> out = TensorT<T>::empty({N, (int64_t)E}, dev);
  if (N * E > 0) VM_RUN(dev, tril_matvec_fwd, L.value().data(), eps.value().data(), out.data(), N, E);
  return make_result<T>(std::move(out), "tril_matvec", {L, eps}, [N, E, dev](Node<T>& self) {
    auto *gL = grad_of(self, 0), *ge = grad_of(self, 1);
    if ((!gL && !ge) || N * E == 0) return;
    VM_RUN(dev, tril_matvec_bwd, self.parents[0]->value.data(), self.parents[1]->value.data(), self.grad.data(),
           ptr(gL), ptr(ge), N, E);
  });
}
VM_INSTANTIATE_OP(tril_matvec)

template <class T>
VarT<T> sum_log_diag(const VarT<T>& L) {
  VM_CHECK(L.ndim() == 3 && L.size(1) == L.size(2),
           "sum_log_diag: L must be (N, E, E), got " + shape_str(L.shape()));
  const Device dev = device_of("sum_log_diag", L);
  int64_t N = L.size(0), E = L.size(1);
  TensorT<T> out = TensorT<T>::empty({N}, dev);
  if (N > 0) VM_RUN(dev, sum_log_diag_fwd, L.value().data(), out.data(), N, E);
  return make_result<T>(std::move(out), "sum_log_diag", {L}, [N, E, dev](Node<T>& self) {
    auto* g = grad_of(self, 0);
    if (g && N > 0) VM_RUN(dev, sum_log_diag_bwd, self.parents[0]->value.data(), self.grad.data(), g->data(), N, E);
  });
}
VM_INSTANTIATE_OP(sum_log_diag)

// The two closed-form KLs: d (N, E) and b (lv or L) -> (N), one kernel per
// direction on either device. The tape's parents are listed in the order the
// formula's own ops reached them (b, then d), so a graph visits everything
// above in the same order as it did with those ops.
namespace {
template <class T>
VarT<T> kl_op(const char* name, bool full, const VarT<T>& d, const VarT<T>& b, double s2) {
  VM_CHECK(s2 > 0, std::string(name) + ": the prior variance s2 must be > 0, got " + std::to_string(s2));
  const Device dev = device_of(name, d, b);
  const int64_t N = d.size(0);
  const int E = (int)d.size(1);
  TensorT<T> kl = TensorT<T>::empty({N}, dev);
  if (N > 0) {
    if (full) VM_RUN(dev, kl_fc_fwd, d.value().data(), b.value().data(), kl.data(), N, E, s2);
    else VM_RUN(dev, kl_mf_fwd, d.value().data(), b.value().data(), kl.data(), N, E, s2);
  }
  return make_result<T>(std::move(kl), name, {b, d}, [full, N, E, s2, dev](Node<T>& self) {
    auto *gb = grad_of(self, 0), *gd = grad_of(self, 1);
    if ((!gd && !gb) || N * E == 0) return;
    const T *pd = self.parents[1]->value.data(), *pb = self.parents[0]->value.data(), *g = self.grad.data();
    if (full) VM_RUN(dev, kl_fc_bwd, pd, pb, g, ptr(gd), ptr(gb), N, E, s2);
    else VM_RUN(dev, kl_mf_bwd, pd, pb, g, ptr(gd), ptr(gb), N, E, s2);
  });
}
}  // namespace

template <class T>
VarT<T> kl_mf(const VarT<T>& d, const VarT<T>& lv, double s2) {
  VM_CHECK(d.ndim() == 2 && lv.shape() == d.shape(), "kl_mf: d " + shape_str(d.shape()) + " and lv " +
                                                         shape_str(lv.shape()) + " must be the same (N, E) shape");
  return kl_op("kl_mf", false, d, lv, s2);
}
VM_INSTANTIATE_OP(kl_mf)

template <class T>
VarT<T> kl_fc(const VarT<T>& d, const VarT<T>& L, double s2) {
  VM_CHECK(d.ndim() == 2 && L.shape() == Shape({d.size(0), d.size(1), d.size(1)}),
           "kl_fc: d " + shape_str(d.shape()) + " and L " + shape_str(L.shape()) + " must be (N, E) and (N, E, E)");
  return kl_op("kl_fc", true, d, L, s2);
}
VM_INSTANTIATE_OP(kl_fc)

template <class T>
VarT<T> straight_through(const VarT<T>& hard, const VarT<T>& soft) {
  VM_CHECK(hard.shape() == soft.shape(), "straight_through: hard " + shape_str(hard.shape()) + " and soft " +
                                             shape_str(soft.shape()) + " differ");
  device_of("straight_through", hard, soft);  // same device (clone and accumulate work on either)
  return make_result<T>(hard.value().clone(), "straight_through", {hard, soft}, [](Node<T>& self) {
    if (auto* g = grad_of(self, 1)) accumulate(*g, self.grad);
  });
}
VM_INSTANTIATE_OP(straight_through)

}  // namespace vm::ops
