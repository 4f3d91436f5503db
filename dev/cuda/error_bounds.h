// dev/cuda/error_bounds.h — rounding-error bounds for the kernels whose
// results the CUDA tests and bench_cuda compare with a reference computed in
// higher precision (long double). Plain C++, header-only: tests/test_cuda.cpp
// and bench/cuda/bench_cuda.cu use the bounds on the GPU's results,
// tests/test_error_bounds.cpp checks them on the CPU (the CPU kernels, and a
// host emulation of the GPU's summation order, must stay inside them).
//
// Every bound is a first-order forward error analysis of the formula as the
// kernels evaluate it (kernels/cpu/*.cpp and kernels/cuda/*.cu, step by step),
// in units of u, the unit roundoff of T (2^-24 for float, 2^-53 for double).
// Each rounded operation contributes u times the magnitude of its result, so
// the bounds scale with the magnitudes of the terms that are combined (for
// y = γx̂ + β: |γx̂| + |β|), not with the result, which may cancel to zero.
// Library functions (exp, log, tanh, sin, cos) are allowed kLib units of
// their result: CUDA's expf, sinf, cosf and tanhf are within 2 ulp (logf 1),
// glibc's within 1–2 ulp, the CPU's fast_expf within 2e-7 relative (3.4 u);
// 2 ulp ≤ 4 u. FMA contraction (nvcc's default) only removes roundings.
// Second-order terms (u²) are left out; callers that compare two devices
// add both sides' bounds.
//
// Sums: a row sum on the GPU is strided over G threads (thread k adds
// elements k, k + G, ... in order) and then a tree over the G threads; the
// longest chain of additions any term goes through is ⌈n/G⌉ − 1 + log2 G
// (strided_tree_depth). The CPU adds left to right: n − 1 (G = 1). A sum of
// terms t_j computed with depth d is off by at most d·u·Σ|t_j|. This is the
// worst case: for positive terms it is 1e-4 relative at n = 50257, G = 32,
// while random rounding gives ~1e-6; tolerances are set by the worst case
// because sequential sums of many small positive terms do round with a bias
// (a term below half an ulp of the running sum is lost), so the random model
// underestimates them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace vm::dev {

using LD = long double;  // the references (x86-64: 64-bit significand)

template <class T>
constexpr double unit() {
  return std::numeric_limits<T>::epsilon() / 2;
}
constexpr double kLib = 4;  // library functions: units of their result
// The GPU comparisons (tests/test_cuda.cpp, bench_cuda) allow twice the
// first-order bound: room for the second-order terms left out and for an
// operation a compiler might round where the analysis assumed an exact one.
// tests/test_error_bounds.cpp holds the CPU kernels and the host replays of
// the GPU's arithmetic to the bound itself (factor 1).
constexpr double kCompareSlack = 2;

inline int64_t ceil_log2(int64_t G) {
  int64_t l = 0;
  while ((int64_t(1) << l) < G) ++l;
  return l;
}
// Longest chain of additions in a sum of n terms: strided over G threads, then a tree.
inline int64_t strided_tree_depth(int64_t n, int64_t G) {
  if (n <= 0) return 0;
  G = std::max<int64_t>(G, 1);
  return (n + G - 1) / G - 1 + ceil_log2(G);
}

// ---- GELU (tanh approximation) ------------------------------------------------------------
// y = ½ x (1 + t), t = tanh a, a = √(2/π)(x + 0.044715 x³); float: t = 1 − 2/(e^{2a} + 1)
// (kernels/elementwise.h, tanh_from_exp2u), double: tanh.
inline LD gelu_inner_ref(LD x) { return 0.79788456080286535587989211986876373L * (x + 0.044715L * x * x * x); }
inline LD gelu_ref(LD x) { return x / (1 + std::exp(-2 * gelu_inner_ref(x))); }  // = ½ x (1 + tanh a), no cancellation
inline LD gelu_tanh_ref(LD x) { return std::tanh(gelu_inner_ref(x)); }
inline LD gelu_grad_ref(LD x) {
  const LD t = gelu_tanh_ref(x), du = 0.79788456080286535587989211986876373L * (1 + 3 * 0.044715L * x * x);
  return (1 + t) / 2 + x * (1 - t * t) * du / 2;
}

// Absolute error of the computed t. The inner value a carries ≤ 7u relative
// (x³: 2 roundings, the constant 0.044715 and its product: 2, the add of two
// terms of one sign: 1, √(2/π) and its product: 2), so e^{2a} carries
// kLib·u + 14|a|u relative; e + 1, 2/(e + 1) and 1 − q round once each.
// With 2e/(e + 1)² = (1 − t²)/2 and q = 1 − t:
//   δt ≤ u [(1 − t²)(2 + 7|a|) + 2(1 − t) + |t|]   (float),
//   δt ≤ u [kLib |t| + 7|a|(1 − t²)]              (double: tanh within kLib·u).
template <class T>
double gelu_tanh_bound(double x) {
  const double u = unit<T>(), a = std::fabs((double)gelu_inner_ref(x)), t = (double)gelu_tanh_ref(x);
  const double w = 1 - t * t;
  return u * (w * (2 + 7 * a) + 2 * (1 - t) + kLib * std::fabs(t));  // covers both forms
}
// Forward: 1 + t rounds (u|1 + t|), then × x (u|y|): δy ≤ ½|x| δt + 2u|y|.
template <class T>
double gelu_fwd_bound(double x) {
  const double y = (double)gelu_ref(x);
  return 0.5 * std::fabs(x) * gelu_tanh_bound<T>(x) + 2 * unit<T>() * std::fabs(y);
}
// Backward, dx_new = dx0 + g·f, f = ½(1 + t) + ½ x (1 − t·t) du, du = √(2/π)(1 + 3·0.044715 x²)
// (du: 6u relative; ½ x w du: 3 products; w = 1 − t·t: 2|t|δt + u(t² + |w|); f: one add;
// g·f and the += : one rounding each). dx_new: the accumulated result.
template <class T>
double gelu_bwd_bound(double x, double g, double dx_new) {
  const double u = unit<T>(), t = (double)gelu_tanh_ref(x), dt = gelu_tanh_bound<T>(x);
  const double w = 1 - t * t, du = 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
  const double dA = 0.5 * (dt + u * std::fabs(1 + t));
  const double dw = 2 * std::fabs(t) * dt + u * (t * t + std::fabs(w));
  const double B2 = 0.5 * std::fabs(x) * w * du;
  const double dB2 = 0.5 * std::fabs(x) * du * dw + B2 * 9 * u;
  const double f = std::fabs((double)gelu_grad_ref(x));
  const double df = dA + dB2 + u * f;
  return std::fabs(g) * (df + u * f) + u * std::fabs(dx_new);
}

// ---- softmax family ------------------------------------------------------------------------
// How a row sum Σ_j exp(x_j − M) is formed, for the bound on its relative error.
struct RowSum {
  int64_t depth = 0;  // longest chain of additions
  int64_t links = 1;  // exp evaluations multiplied along the way to a term (1: exp(x_j − M) directly)
};
// The CPU (kernels/cpu/rowwise.cpp): max first, then exp(x_j − M), summed left to right.
inline RowSum cpu_row_sum(int64_t C) { return {strided_tree_depth(C, 1), 1}; }
// The GPU (kernels/cuda/rowwise.cu, row_max_sumexp): G threads, each an online
// max/sum over its strided elements (a new running max m' rescales the partial
// sum by exp(m − m')), then s · exp(m − M) and a tree. A term passes through its
// own exp, one per later rescale of its thread and the final one. The exp
// arguments along that chain add up to x_j − M (all ≤ 0), so their roundings
// total ≤ u|x_j − M|; each link adds an exp (kLib u) and a product (u).
template <class T>
RowSum gpu_row_sum(const T* xr, int64_t C, int64_t G) {
  int64_t worst = 0;
  for (int64_t k = 0; k < std::min(G, C); ++k) {
    int64_t updates = 0;
    bool any = false;
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t c = k; c < C; c += G)
      if (xr[c] > m) {
        updates += any;
        any = true;
        m = xr[c];
      }
    worst = std::max(worst, updates);
  }
  return {strided_tree_depth(C, G), worst + 2};
}

// Relative error of S = Σ_j exp(x_j − M) of one row (x: the inputs; M their max).
template <class T>
double row_sumexp_rel_bound(const T* xr, int64_t C, const RowSum& rs) {
  const double u = unit<T>();
  LD M = -std::numeric_limits<LD>::infinity();
  for (int64_t c = 0; c < C; ++c) M = std::max(M, (LD)xr[c]);
  LD S = 0, W = 0;  // W = Σ_j e_j |x_j − M|
  for (int64_t c = 0; c < C; ++c) {
    LD e = std::exp((LD)xr[c] - M);
    S += e;
    W += e * (M - (LD)xr[c]);
  }
  return u * ((double)(W / S) + (kLib + 1) * (double)rs.links + (double)rs.depth);
}

// softmax forward: y_i = exp(x_i − M) · (1/S). Reference and absolute bound per element.
template <class T>
void softmax_ref_and_bound(const T* x, int64_t rows, int64_t C, const std::vector<RowSum>& sums, std::vector<LD>& ref,
                           std::vector<double>& bound) {
  const double u = unit<T>();
  ref.assign((size_t)(rows * C), 0);
  bound.assign((size_t)(rows * C), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    LD M = -std::numeric_limits<LD>::infinity(), S = 0;
    for (int64_t c = 0; c < C; ++c) M = std::max(M, (LD)xr[c]);
    for (int64_t c = 0; c < C; ++c) S += std::exp((LD)xr[c] - M);
    const double eS = row_sumexp_rel_bound(xr, C, sums[(size_t)r]);
    for (int64_t c = 0; c < C; ++c) {
      LD y = std::exp((LD)xr[c] - M) / S;
      ref[(size_t)(r * C + c)] = y;
      // exp's argument (u|x − M|), exp (kLib u), the product and 1/S (2u), S
      bound[(size_t)(r * C + c)] = (double)y * (u * ((double)(M - (LD)xr[c]) + kLib + 2) + eS);
    }
  }
}

// log-softmax forward: y_i = x_i − (M + log S). log S: eS + kLib·u|log S| (log of
// an inexact argument, then its own rounding); + M and x_i − lse: one rounding each.
template <class T>
void log_softmax_ref_and_bound(const T* x, int64_t rows, int64_t C, const std::vector<RowSum>& sums,
                               std::vector<LD>& ref, std::vector<double>& bound) {
  const double u = unit<T>();
  ref.assign((size_t)(rows * C), 0);
  bound.assign((size_t)(rows * C), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    LD M = -std::numeric_limits<LD>::infinity(), S = 0;
    for (int64_t c = 0; c < C; ++c) M = std::max(M, (LD)xr[c]);
    for (int64_t c = 0; c < C; ++c) S += std::exp((LD)xr[c] - M);
    const LD lse = M + std::log(S);
    const double dlse = row_sumexp_rel_bound(xr, C, sums[(size_t)r]) + u * (kLib * (double)std::fabs(std::log(S)) +
                                                                            (double)std::fabs(lse));
    for (int64_t c = 0; c < C; ++c) {
      LD y = (LD)xr[c] - lse;
      ref[(size_t)(r * C + c)] = y;
      bound[(size_t)(r * C + c)] = dlse + u * (double)std::fabs(y);
    }
  }
}

// softmax backward from y: dx_i = dx0_i + y_i (dy_i − s), s = Σ_j dy_j y_j (depth d):
// δs ≤ u(d + 1)Σ|dy_j y_j|; dy − s, the product and the += round once each.
template <class T>
void softmax_bwd_ref_and_bound(const T* y, const T* dy, const T* dx0, int64_t rows, int64_t C, int64_t G,
                               std::vector<LD>& ref, std::vector<double>& bound) {
  const double u = unit<T>();
  const int64_t d = strided_tree_depth(C, G);
  ref.assign((size_t)(rows * C), 0);
  bound.assign((size_t)(rows * C), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * C, *dyr = dy + r * C;
    LD s = 0, sabs = 0;
    for (int64_t c = 0; c < C; ++c) {
      s += (LD)dyr[c] * yr[c];
      sabs += std::fabs((LD)dyr[c] * yr[c]);
    }
    const double ds = u * (double)(d + 1) * (double)sabs;
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = (size_t)(r * C + c);
      const LD inner = (LD)dyr[c] - s, prod = (LD)yr[c] * inner, out = (LD)dx0[i] + prod;
      ref[i] = out;
      bound[i] = std::fabs((double)yr[c]) * (ds + u * (double)std::fabs(inner)) + u * (double)std::fabs(prod) +
                 u * (double)std::fabs(out);
    }
  }
}

// log-softmax backward from y: dx_i = dx0_i + dy_i − exp(y_i) s, s = Σ_j dy_j (depth d).
template <class T>
void log_softmax_bwd_ref_and_bound(const T* y, const T* dy, const T* dx0, int64_t rows, int64_t C, int64_t G,
                                   std::vector<LD>& ref, std::vector<double>& bound) {
  const double u = unit<T>();
  const int64_t d = strided_tree_depth(C, G);
  ref.assign((size_t)(rows * C), 0);
  bound.assign((size_t)(rows * C), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * C, *dyr = dy + r * C;
    LD s = 0, sabs = 0;
    for (int64_t c = 0; c < C; ++c) {
      s += dyr[c];
      sabs += std::fabs((LD)dyr[c]);
    }
    const double ds = u * (double)d * (double)sabs;
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = (size_t)(r * C + c);
      const LD e = std::exp((LD)yr[c]), es = e * s, diff = (LD)dyr[c] - es, out = (LD)dx0[i] + diff;
      ref[i] = out;
      bound[i] = (double)e * (ds + kLib * u * (double)std::fabs(s)) + u * (double)std::fabs(es) +
                 u * (double)std::fabs(diff) + u * (double)std::fabs(out);
    }
  }
}

// ---- layernorm forward ---------------------------------------------------------------------
// y = (x − m) · rs · γ + β, m = Σx/C, v = Σ(x − m)²/C, rs = 1/√(v + eps), both sums of depth d.
//   δm ≤ u(d + 1) Σ|x|/C
//   δv/v ≤ 2 δm Σ|x − m| / Σ(x − m)² + u(d + 4)   (the differences, squares, sum, division)
//   δrs/rs ≤ ½(δv/v · v/(v + eps) + u) + 2u       (the add; √ and 1/· round once each)
//   δx̂ ≤ rs(δm + u|x − m|) + |x̂|(δrs/rs + u)
//   δy ≤ |γ| δx̂ + u(|γx̂| + |y|) ≤ |γ| δx̂ + u(2|γx̂| + |β|)
// mean/rstd: the bounds of m and rs themselves.
template <class T>
void layernorm_ref_and_bound(const T* x, const T* gamma, const T* beta, int64_t rows, int64_t C, double eps, int64_t G,
                             std::vector<LD>& y, std::vector<double>& by, std::vector<LD>& mean,
                             std::vector<double>& bmean, std::vector<LD>& rstd, std::vector<double>& brstd) {
  const double u = unit<T>();
  const int64_t d = strided_tree_depth(C, G);
  y.assign((size_t)(rows * C), 0);
  by.assign((size_t)(rows * C), 0);
  mean.assign((size_t)rows, 0);
  bmean.assign((size_t)rows, 0);
  rstd.assign((size_t)rows, 0);
  brstd.assign((size_t)rows, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    LD s = 0, sabs = 0;
    for (int64_t c = 0; c < C; ++c) {
      s += xr[c];
      sabs += std::fabs((LD)xr[c]);
    }
    const LD m = s / C;
    LD v = 0, dev = 0;
    for (int64_t c = 0; c < C; ++c) {
      v += ((LD)xr[c] - m) * ((LD)xr[c] - m);
      dev += std::fabs((LD)xr[c] - m);
    }
    const LD var = v / C, rs = 1 / std::sqrt(var + (LD)(T)eps);
    const double dm = u * (double)(d + 1) * (double)(sabs / C);
    const double ev = (v > 0 ? 2 * dm * (double)(dev / v) : 0) + u * (double)(d + 4);
    const double ers = 0.5 * (ev * (double)(var / (var + (LD)(T)eps)) + u) + 2 * u;
    mean[(size_t)r] = m;
    bmean[(size_t)r] = dm;
    rstd[(size_t)r] = rs;
    brstd[(size_t)r] = ers * (double)rs;
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = (size_t)(r * C + c);
      const LD xh = ((LD)xr[c] - m) * rs, gx = xh * gamma[c];
      y[i] = gx + beta[c];
      const double dxh = (double)rs * (dm + u * (double)std::fabs((LD)xr[c] - m)) + (double)std::fabs(xh) * (ers + u);
      by[i] = std::fabs((double)gamma[c]) * dxh + u * (2 * (double)std::fabs(gx) + std::fabs((double)beta[c]));
    }
  }
}

// ---- Philox normals and Gumbels (core/philox.h) --------------------------------------------
// Gumbel g = −log(−log u), u exact: L = −log u carries kLib·u relative, so
// log L is off by kLib·u absolute, then its own kLib·u|g|.
inline LD gumbel_ref(float uni) { return -std::log(-std::log((LD)uni)); }
inline double gumbel_bound(double g) { return unit<float>() * kLib * (1 + std::fabs(g)); }
// Normal z = √(−2 log u1) · cos(θ) (sin for odd i), θ = 2π·u2 exactly: core/philox.h
// reduces u2 in turns without error (θ = q·π/2 + x, x = 2π·t rounded once, |x| ≤ π/4),
// so cos θ and sin θ carry a relative error of a few units even next to their zeros:
// √ of a value with kLib·u relative error (½) plus its own rounding, cos/sin kLib·u
// (x's rounding included), the product u.
inline LD normal_ref(float u1, float u2, bool odd) {
  const LD th = 6.283185307179586476925286766559L * (LD)u2;
  const LD r = std::sqrt(-2 * std::log((LD)u1));
  return odd ? r * std::sin(th) : r * std::cos(th);
}
inline double normal_bound(double z) { return unit<float>() * (kLib / 2 + 1 + kLib + 1) * std::fabs(z); }

// ---- AdamW (kernels/*/rowwise: the same float formula on both devices) ---------------------
// m' = b1 m + (1−b1) g; v' = b2 v + (1−b2) g²; p' = p − lr (m'/bc1 / (√(v'/bc2) + eps) + wd p).
// Absolute bound of p' for one device's float evaluation against the exact formula
// on the same float inputs and constants.
inline double adamw_param_bound(float p, float g, float m, float v, float lr, float b1, float b2, float eps, float wd,
                                float bc1, float bc2) {
  const double u = unit<float>();
  const double mn = (double)b1 * m + (1.0 - b1) * g, vn = (double)b2 * v + (1.0 - b2) * g * g;
  const double dm = 3 * u * (std::fabs((double)b1 * m) + std::fabs((1.0 - b1) * g));  // 2 products, 1 add
  const double dv = 5 * u * vn;                                                        // all terms ≥ 0
  const double mh = mn / bc1, vh = vn / bc2, sq = std::sqrt(vh), den = sq + eps;
  const double dmh = dm / bc1 + u * std::fabs(mh);
  const double dden = sq * (0.5 * (dv / std::max(vn, 1e-300) + u) + u) + u * den;
  const double r = mh / den;
  const double dr = dmh / den + std::fabs(r) * (dden / den + u);
  const double upd = r + (double)wd * p;
  const double dupd = dr + 2 * u * std::fabs((double)wd * p) + u * std::fabs(upd);
  const double pn = p - (double)lr * upd;
  return lr * dupd + u * (std::fabs(lr * upd) + std::fabs(pn));
}

}  // namespace vm::dev
