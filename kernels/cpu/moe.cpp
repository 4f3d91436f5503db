// kernels/cpu/moe.cpp — the kernels of the MoE and router ops on the CPU (the
// table: kernels/moe.h).
//
// topk_gates, moe_gather / moe_combine and the two KLs are one op each, but on
// the CPU each runs the element-wise, layout and embedding kernels of its
// formula, step by step through buffers, in the order the composed ops would
// (forward, and backward in the tape's order): the same float arithmetic, bit
// for bit, as the graph of ops the models built before these ops existed
// (tests/test_ops.cpp compares them). The GPU fuses each into one or two kernels.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/tensor.h"  // Shape
#include "kernels/cpu/moe.h"
#include "kernels/elementwise.h"
#include "kernels/layout.h"
#include "kernels/nn.h"

namespace vm::kernels {

template <class T>
void topk_select(const T* x, int64_t N, int64_t E, int k, int32_t* idx) {
#pragma omp parallel for schedule(static) if (N * E > 16384)
  for (int64_t n = 0; n < N; ++n) {
    // partial selection, ties broken towards the lower index
    std::vector<int32_t> order((size_t)E);
    std::iota(order.begin(), order.end(), 0);
    const T* row = x + n * E;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
      const T ka = topk_key(row[a]), kb = topk_key(row[b]);  // NaN ranks as −inf: a strict weak order
      return ka > kb || (ka == kb && a < b);
    });
    std::copy(order.begin(), order.begin() + k, idx + n * k);
  }
}

// ---- top-K with renormalised gates: div(v, sum(v, 1, keepdim)), v = take_cols(p, top-K) ----
template <class T>
void topk_gates(const T* probs, int32_t* experts, T* gates, int64_t N, int E, int K) {
  topk_select(probs, N, (int64_t)E, K, experts);
  std::vector<T> v((size_t)(N * K)), S((size_t)N);
  take_cols_fwd(probs, experts, v.data(), N, (int64_t)E, K);
  sum_axis(v.data(), S.data(), N, (int64_t)K, int64_t(1), false);
  binary_fwd(Binary::Div, v.data(), {N, (int64_t)K}, S.data(), {N, int64_t(1)}, gates);
}

template <class T>
void topk_gates_bwd(const T* probs, const int32_t* experts, const T* dgates, T* dprobs, int64_t N, int E, int K) {
  const Shape sv{N, (int64_t)K}, sS{N, 1};
  std::vector<T> v((size_t)(N * K)), S((size_t)N), dv((size_t)(N * K), T(0)), dS((size_t)N, T(0));
  take_cols_fwd(probs, experts, v.data(), N, (int64_t)E, K);
  sum_axis(v.data(), S.data(), N, (int64_t)K, int64_t(1), false);
  binary_bwd(Binary::Div, v.data(), sv, S.data(), sS, dgates, dv.data(), dS.data());  // the div
  sum_axis_bwd(dS.data(), dv.data(), N, (int64_t)K, int64_t(1));                        // the sum
  take_cols_bwd(dv.data(), experts, dprobs, N, (int64_t)E, K);                          // the take
}

// ---- MoE dispatch: gather_rows(x, token) and
//      scatter_add_rows(mul(ys, gather_rows(reshape(gates, {N·K, 1}), slot)), token, N) ----
namespace {
// token[m], slot[m] of the grouped rows from pos_of_slot (N·K entries, −1 = not kept).
void rows_of(const int32_t* pos_of_slot, int64_t N, int K, std::vector<int32_t>& token, std::vector<int32_t>& slot) {
  int64_t M = 0;
  for (int64_t s = 0; s < N * K; ++s) M = std::max<int64_t>(M, (int64_t)pos_of_slot[s] + 1);
  token.assign((size_t)M, 0);
  slot.assign((size_t)M, 0);
  for (int64_t s = 0; s < N * K; ++s)
    if (pos_of_slot[s] >= 0) {
      token[(size_t)pos_of_slot[s]] = (int32_t)(s / K);
      slot[(size_t)pos_of_slot[s]] = (int32_t)s;
    }
}
}  // namespace

template <class T>
void moe_gather(const T* x, const int32_t* token, T* xs, int64_t M, int64_t C) {
  embedding_fwd(x, token, xs, M, C);
}

template <class T>
void moe_gather_bwd(const T* dxs, const int32_t* pos_of_slot, T* dx, int64_t N, int K, int64_t C) {
  std::vector<int32_t> token, slot;
  rows_of(pos_of_slot, N, K, token, slot);
  embedding_bwd(dxs, token.data(), dx, (int64_t)token.size(), N, C);  // grouped rows in increasing order
}

template <class T>
void moe_combine(const T* ys, const T* gates, const int32_t* pos_of_slot, T* out, int64_t N, int K, int64_t C) {
  std::vector<int32_t> token, slot;
  rows_of(pos_of_slot, N, K, token, slot);
  const int64_t M = (int64_t)token.size();
  std::vector<T> g((size_t)M), prod((size_t)(M * C));
  embedding_fwd(gates, slot.data(), g.data(), M, int64_t(1));              // the gate of each row
  binary_fwd(Binary::Mul, ys, {M, C}, g.data(), {M, int64_t(1)}, prod.data());  // rounded products
  std::fill(out, out + N * C, T(0));
  embedding_bwd(prod.data(), token.data(), out, M, N, C);  // added to their token in row order
}

template <class T>
void moe_combine_bwd(const T* ys, const T* gates, const int32_t* token, const int32_t* slot, const T* dout, T* dys,
                     T* dgates, int64_t M, int64_t C) {
  std::vector<T> g((size_t)M), dprod((size_t)(M * C), T(0)), picked((size_t)(M * C)), dg((size_t)M, T(0));
  embedding_fwd(gates, slot, g.data(), M, int64_t(1));
  embedding_fwd(dout, token, picked.data(), M, C);  // the scatter: dprod[m] += dout[token[m]]
  add_inplace(dprod.data(), picked.data(), M * C);
  binary_bwd(Binary::Mul, ys, {M, C}, g.data(), {M, int64_t(1)}, dprod.data(), dys, dgates ? dg.data() : nullptr);
  if (dgates)  // the gather of the gates: dgates[slot[m]] += dg[m] (each slot kept at most once)
    for (int64_t m = 0; m < M; ++m) dgates[slot[m]] += dg[(size_t)m];
}

// ---- closed-form KLs, as the composed ops compute them ----------------------------------
namespace {
// MF: t = (exp(lv) + d·d) · (1/s²) + lv · (−1);  kl = (Σ_e t + E (log s² − 1)) · ½
template <class T>
struct KlMf {
  int64_t N, n;
  Shape sh;
  double inv, c;
  std::vector<T> e, q, s, m, nl, t, r, r2, kl;
  KlMf(const T* d, const T* lv, int64_t N_, int E, double s2)
      : N(N_), n(N_ * E), sh{N_, (int64_t)E}, inv(1.0 / s2), c((double)E * (std::log(s2) - 1.0)),
        e(n), q(n), s(n), m(n), nl(n), t(n), r(N), r2(N), kl(N) {
    unary_fwd(Unary::Exp, lv, e.data(), n, 0.0);
    binary_fwd(Binary::Mul, d, sh, d, sh, q.data());
    binary_fwd(Binary::Add, e.data(), sh, q.data(), sh, s.data());
    unary_fwd(Unary::MulScalar, s.data(), m.data(), n, inv);
    unary_fwd(Unary::MulScalar, lv, nl.data(), n, -1.0);
    binary_fwd(Binary::Add, m.data(), sh, nl.data(), sh, t.data());
    sum_axis(t.data(), r.data(), N, (int64_t)E, int64_t(1), false);
    unary_fwd(Unary::AddScalar, r.data(), r2.data(), N, c);
    unary_fwd(Unary::MulScalar, r2.data(), kl.data(), N, 0.5);
  }
};

// FC: kl = ((Σ_ij L_ij² + Σ_e d_e²) · (1/s²) − (Σ_e log L_ee) · 2 + E (log s² − 1)) · ½
template <class T>
struct KlFc {
  int64_t N, n, nL;
  Shape sh, shL;
  double inv, c;
  std::vector<T> sqL, tr, sqd, sd, a, p0, sld, p1, t, r2, kl;
  KlFc(const T* d, const T* L, int64_t N_, int E, double s2)
      : N(N_), n(N_ * E), nL(N_ * E * E), sh{N_, (int64_t)E}, shL{N_, (int64_t)E * E}, inv(1.0 / s2),
        c((double)E * (std::log(s2) - 1.0)), sqL(nL), tr(N), sqd(n), sd(N), a(N), p0(N), sld(N), p1(N), t(N),
        r2(N), kl(N) {
    const Shape s1{N};
    binary_fwd(Binary::Mul, L, shL, L, shL, sqL.data());
    sum_axis(sqL.data(), tr.data(), N, (int64_t)E * E, int64_t(1), false);
    binary_fwd(Binary::Mul, d, sh, d, sh, sqd.data());
    sum_axis(sqd.data(), sd.data(), N, (int64_t)E, int64_t(1), false);
    binary_fwd(Binary::Add, tr.data(), s1, sd.data(), s1, a.data());
    unary_fwd(Unary::MulScalar, a.data(), p0.data(), N, inv);
    sum_log_diag_fwd(L, sld.data(), N, (int64_t)E);
    unary_fwd(Unary::MulScalar, sld.data(), p1.data(), N, 2.0);
    binary_fwd(Binary::Sub, p0.data(), s1, p1.data(), s1, t.data());
    unary_fwd(Unary::AddScalar, t.data(), r2.data(), N, c);
    unary_fwd(Unary::MulScalar, r2.data(), kl.data(), N, 0.5);
  }
};
}  // namespace

template <class T>
void kl_mf_fwd(const T* dmu, const T* logvar, T* kl, int64_t N, int E, double s2) {
  std::vector<T> v = KlMf<T>(dmu, logvar, N, E, s2).kl;
  std::copy(v.begin(), v.end(), kl);
}

// The closures of the composed graph in the tape's order: ½, + c, Σ, + (into
// both terms), −lv (into dlv), · 1/s², + (into both terms), d·d (twice into
// dd), exp (into dlv).
template <class T>
void kl_mf_bwd(const T* dmu, const T* logvar, const T* dkl, T* ddmu, T* dlogvar, int64_t N, int E, double s2) {
  KlMf<T> f(dmu, logvar, N, E, s2);
  const int64_t n = f.n;
  std::vector<T> g_r2(N, T(0)), g_r(N, T(0)), g_t(n, T(0)), g_m(n, T(0)), g_nl(n, T(0)), g_s(n, T(0)),
      g_e(n, T(0)), g_q(n, T(0));
  unary_bwd(Unary::MulScalar, f.r2.data(), f.kl.data(), dkl, g_r2.data(), N, 0.5);
  unary_bwd(Unary::AddScalar, f.r.data(), f.r2.data(), g_r2.data(), g_r.data(), N, f.c);
  sum_axis_bwd(g_r.data(), g_t.data(), N, (int64_t)E, int64_t(1));
  binary_bwd(Binary::Add, f.m.data(), f.sh, f.nl.data(), f.sh, g_t.data(), g_m.data(), g_nl.data());
  if (dlogvar) unary_bwd(Unary::MulScalar, logvar, f.nl.data(), g_nl.data(), dlogvar, n, -1.0);
  unary_bwd(Unary::MulScalar, f.s.data(), f.m.data(), g_m.data(), g_s.data(), n, f.inv);
  binary_bwd(Binary::Add, f.e.data(), f.sh, f.q.data(), f.sh, g_s.data(), g_e.data(), g_q.data());
  if (ddmu) binary_bwd(Binary::Mul, dmu, f.sh, dmu, f.sh, g_q.data(), ddmu, ddmu);
  if (dlogvar) unary_bwd(Unary::Exp, logvar, f.e.data(), g_e.data(), dlogvar, n, 0.0);
}

template <class T>
void kl_fc_fwd(const T* dmu, const T* L, T* kl, int64_t N, int E, double s2) {
  std::vector<T> v = KlFc<T>(dmu, L, N, E, s2).kl;
  std::copy(v.begin(), v.end(), kl);
}

// In the tape's order: ½, + c, − (into both terms), · 2 and Σ log diag (into
// dL), · 1/s², + (into both sums), Σ and d·d (twice into dd), Σ, the reshape
// and L·L (twice into dL).
template <class T>
void kl_fc_bwd(const T* dmu, const T* L, const T* dkl, T* ddmu, T* dL, int64_t N, int E, double s2) {
  KlFc<T> f(dmu, L, N, E, s2);
  const Shape s1{N};
  std::vector<T> g_r2(N, T(0)), g_t(N, T(0)), g_p0(N, T(0)), g_p1(N, T(0)), g_a(N, T(0)), g_tr(N, T(0)),
      g_sd(N, T(0));
  unary_bwd(Unary::MulScalar, f.r2.data(), f.kl.data(), dkl, g_r2.data(), N, 0.5);
  unary_bwd(Unary::AddScalar, f.t.data(), f.r2.data(), g_r2.data(), g_t.data(), N, f.c);
  binary_bwd(Binary::Sub, f.p0.data(), s1, f.p1.data(), s1, g_t.data(), g_p0.data(), g_p1.data());
  if (dL) {
    std::vector<T> g_sld(N, T(0));
    unary_bwd(Unary::MulScalar, f.sld.data(), f.p1.data(), g_p1.data(), g_sld.data(), N, 2.0);
    sum_log_diag_bwd(L, g_sld.data(), dL, N, (int64_t)E);
  }
  unary_bwd(Unary::MulScalar, f.a.data(), f.p0.data(), g_p0.data(), g_a.data(), N, f.inv);
  binary_bwd(Binary::Add, f.tr.data(), s1, f.sd.data(), s1, g_a.data(), g_tr.data(), g_sd.data());
  if (ddmu) {
    std::vector<T> g_sqd(f.n, T(0));
    sum_axis_bwd(g_sd.data(), g_sqd.data(), N, (int64_t)E, int64_t(1));
    binary_bwd(Binary::Mul, dmu, f.sh, dmu, f.sh, g_sqd.data(), ddmu, ddmu);
  }
  if (dL) {
    std::vector<T> g_resh(f.nL, T(0)), g_sqL(f.nL, T(0));
    sum_axis_bwd(g_tr.data(), g_resh.data(), N, (int64_t)E * E, int64_t(1));
    add_inplace(g_sqL.data(), g_resh.data(), f.nL);  // the reshape's backward
    binary_bwd(Binary::Mul, L, f.shL, L, f.shL, g_sqL.data(), dL, dL);
  }
}

template <class T>
void fill_tril_expdiag_fwd(const T* v, T* L, int64_t N, int E) {
  const int64_t P = (int64_t)E * (E + 1) / 2;
  for (int64_t n = 0; n < N; ++n) {
    const T* pv = v + n * P;
    T* pl = L + n * E * E;
    int64_t t = 0;
    for (int i = 0; i < E; ++i)
      for (int j = 0; j < E; ++j) pl[i * E + j] = j > i ? T(0) : i == j ? std::exp(pv[t++]) : pv[t++];
  }
}

template <class T>
void fill_tril_expdiag_bwd(const T* L, const T* dL, T* dv, int64_t N, int E) {
  const int64_t P = (int64_t)E * (E + 1) / 2;
  for (int64_t n = 0; n < N; ++n) {
    const T* gl = dL + n * E * E;
    const T* pl = L + n * E * E;
    T* gv = dv + n * P;
    int64_t t = 0;
    for (int i = 0; i < E; ++i)
      for (int j = 0; j <= i; ++j, ++t) gv[t] += i == j ? gl[i * E + j] * pl[i * E + j] : gl[i * E + j];
  }
}

template <class T>
void tril_matvec_fwd(const T* L, const T* eps, T* out, int64_t N, int E) {
#pragma omp parallel for schedule(static) if (N * E * E > 32768)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < E; ++i) {
      T s = 0;
      for (int64_t j = 0; j <= i; ++j) s += L[(n * E + i) * E + j] * eps[n * E + j];  // lower triangle only
      out[n * E + i] = s;
    }
}

template <class T>
void tril_matvec_bwd(const T* L, const T* eps, const T* g, T* dL, T* deps, int64_t N, int E) {
#pragma omp parallel for schedule(static) if (N * E * E > 32768)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < E; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        if (dL) dL[(n * E + i) * E + j] += g[n * E + i] * eps[n * E + j];  // dL = g εᵀ (lower)
        if (deps) deps[n * E + j] += L[(n * E + i) * E + j] * g[n * E + i];  // dε = Lᵀ g
      }
}

VM_INSTANTIATE_KERNELS(VM_MOE_KERNELS)
template void topk_select<float>(const float*, int64_t, int64_t, int, int32_t*);
template void topk_select<double>(const double*, int64_t, int64_t, int, int32_t*);

}  // namespace vm::kernels
