// kernels/cpu/reference.cpp — plain nested-loop reference implementations in
// double. Deliberately naive: every output element is computed from its
// multi-index, nothing is shared with the fast kernels (no Eigen, no OpenMP,
// no helpers from autodiff/). See reference.h.
#include "kernels/cpu/reference.h"

#include <cmath>
#include <limits>
#include <string>

#include "core/philox.h"

namespace vm::ref {
namespace {

using Index = std::vector<int64_t>;

// flat row-major offset -> multi-index
Index unravel(int64_t flat, const Shape& s) {
  Index idx(s.size(), 0);
  for (int i = (int)s.size() - 1; i >= 0; --i) {
    idx[i] = s[i] ? flat % s[i] : 0;
    flat = s[i] ? flat / s[i] : 0;
  }
  return idx;
}

// multi-index -> flat row-major offset
int64_t ravel(const Index& idx, const Shape& s) {
  int64_t f = 0;
  for (size_t i = 0; i < s.size(); ++i) f = f * s[i] + idx[i];
  return f;
}

// Offset into a tensor of shape `s` for an index of the (broadcast) output
// shape `so`: s is right-aligned against so, size-1 dims always read index 0.
int64_t broadcast_offset(const Index& out_idx, const Shape& so, const Shape& s) {
  size_t lead = so.size() - s.size();
  Index idx(s.size());
  for (size_t i = 0; i < s.size(); ++i) idx[i] = s[i] == 1 ? 0 : out_idx[lead + i];
  return ravel(idx, s);
}

int axis_of(int axis, int ndim, const char* op) {
  int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim) fail(std::string("ref::") + op + ": axis out of range");
  return a;
}

template <class F>
TensorD binary(const TensorD& a, const TensorD& b, F f) {
  Shape so = broadcast(a.shape(), b.shape());
  TensorD out(so);
  for (int64_t i = 0; i < out.numel(); ++i) {
    Index idx = unravel(i, so);
    out[i] = f(a[broadcast_offset(idx, so, a.shape())], b[broadcast_offset(idx, so, b.shape())]);
  }
  return out;
}

template <class F>
TensorD unary(const TensorD& a, F f) {
  TensorD out(a.shape());
  for (int64_t i = 0; i < a.numel(); ++i) out[i] = f(a[i]);
  return out;
}

// last-axis view
void rows_cols(const Shape& s, int64_t& rows, int64_t& cols) {
  cols = s.empty() ? 1 : s.back();
  rows = cols ? shape_numel(s) / cols : 0;
}

double sigmoid1(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

// ---- linear algebra ---------------------------------------------------------------
TensorD matmul(const TensorD& a, const TensorD& b) {
  const Shape &sa = a.shape(), &sb = b.shape();
  if (sa.size() < 2 || sb.size() < 2) fail("ref::matmul: need >= 2 dims");
  int64_t M = sa[sa.size() - 2], K = sa.back(), N = sb.back();
  if (sb[sb.size() - 2] != K) fail("ref::matmul: inner dimensions differ");
  bool shared = sb.size() == 2;
  Shape batch(sa.begin(), sa.end() - 2);
  if (!shared && Shape(sb.begin(), sb.end() - 2) != batch) fail("ref::matmul: batch dimensions differ");
  int64_t nb = shape_numel(batch);
  Shape so = batch;
  so.push_back(M);
  so.push_back(N);
  TensorD out(so);
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += a[(bi * M + i) * K + k] * b[(shared ? 0 : bi * K * N) + k * N + j];
        out[(bi * M + i) * N + j] = s;
      }
  return out;
}

void gemm(double* C, const double* A, const double* B, int64_t M, int64_t N, int64_t K, bool transA,
          bool transB, bool accumulate) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        double av = transA ? A[k * M + i] : A[i * K + k];
        double bv = transB ? B[j * K + k] : B[k * N + j];
        s += av * bv;
      }
      C[i * N + j] = accumulate ? C[i * N + j] + s : s;
    }
}

TensorD grouped_matmul(const TensorD& x, const TensorD& w, const std::vector<int64_t>& offsets) {
  int64_t M = x.size(0), C = x.size(1), E = w.size(0), F = w.size(2);
  TensorD out({M, F});
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int64_t f = 0; f < F; ++f) {
        double s = 0;
        for (int64_t c = 0; c < C; ++c) s += x[r * C + c] * w[(e * C + c) * F + f];
        out[r * F + f] = s;
      }
  return out;
}

// ---- element-wise -------------------------------------------------------------------
Shape broadcast(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i + a.size() < n ? 1 : a[i + a.size() - n];
    int64_t db = i + b.size() < n ? 1 : b[i + b.size() - n];
    if (da != db && da != 1 && db != 1) fail("ref::broadcast: shapes do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

TensorD add(const TensorD& a, const TensorD& b) { return binary(a, b, [](double x, double y) { return x + y; }); }
TensorD sub(const TensorD& a, const TensorD& b) { return binary(a, b, [](double x, double y) { return x - y; }); }
TensorD mul(const TensorD& a, const TensorD& b) { return binary(a, b, [](double x, double y) { return x * y; }); }
TensorD div(const TensorD& a, const TensorD& b) { return binary(a, b, [](double x, double y) { return x / y; }); }

TensorD add_scalar(const TensorD& a, double s) { return unary(a, [s](double x) { return x + s; }); }
TensorD mul_scalar(const TensorD& a, double s) { return unary(a, [s](double x) { return x * s; }); }
TensorD pow_scalar(const TensorD& a, double p) { return unary(a, [p](double x) { return std::pow(x, p); }); }
TensorD exp(const TensorD& a) { return unary(a, [](double x) { return std::exp(x); }); }
TensorD log(const TensorD& a) { return unary(a, [](double x) { return std::log(x); }); }
TensorD sqrt(const TensorD& a) { return unary(a, [](double x) { return std::sqrt(x); }); }
TensorD softplus(const TensorD& a) {
  // log(1 + e^x); for large x the direct formula overflows, so x + log(1 + e^-x)
  return unary(a, [](double x) { return x > 0 ? x + std::log(1.0 + std::exp(-x)) : std::log(1.0 + std::exp(x)); });
}
TensorD sigmoid(const TensorD& a) { return unary(a, sigmoid1); }
TensorD relu(const TensorD& a) { return unary(a, [](double x) { return x > 0 ? x : 0.0; }); }
TensorD gelu(const TensorD& a) {
  const double c = std::sqrt(2.0 / M_PI);
  return unary(a, [c](double x) { return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x))); });
}
TensorD silu(const TensorD& a) { return unary(a, [](double x) { return x * sigmoid1(x); }); }
TensorD tanh(const TensorD& a) { return unary(a, [](double x) { return std::tanh(x); }); }

// ---- reductions -----------------------------------------------------------------------
TensorD sum(const TensorD& a, int axis, bool keepdim) {
  const Shape& s = a.shape();
  int ax = axis_of(axis, (int)s.size(), "sum");
  Shape keep = s;
  keep[ax] = 1;
  TensorD out(keep);
  for (int64_t i = 0; i < a.numel(); ++i) {
    Index idx = unravel(i, s);
    idx[ax] = 0;
    out[ravel(idx, keep)] += a[i];
  }
  if (keepdim) return out;
  Shape so = s;
  so.erase(so.begin() + ax);
  return out.reshaped(so);
}

TensorD mean(const TensorD& a, int axis, bool keepdim) {
  int ax = axis_of(axis, a.ndim(), "mean");
  double n = (double)a.shape()[ax];
  TensorD s = sum(a, axis, keepdim);
  for (int64_t i = 0; i < s.numel(); ++i) s[i] = n ? s[i] / n : 0.0;
  return s;
}

TensorD sum_all(const TensorD& a) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a[i];
  return TensorD::scalar(s);
}

TensorD mean_all(const TensorD& a) {
  return TensorD::scalar(a.numel() ? sum_all(a)[0] / (double)a.numel() : 0.0);
}

// ---- normalisation ------------------------------------------------------------------------
TensorD logsumexp(const TensorD& a) {
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  Shape so(a.shape().begin(), a.shape().end() - (a.ndim() ? 1 : 0));
  TensorD out(so);
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, a[r * C + c]);
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(a[r * C + c] - mx);
    out[r] = mx + std::log(s);
  }
  return out;
}

TensorD log_softmax(const TensorD& a) {
  int64_t rows, C;
  rows_cols(a.shape(), rows, C);
  TensorD lse = logsumexp(a);
  TensorD out(a.shape());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = a[r * C + c] - lse[r];
  return out;
}

TensorD softmax(const TensorD& a) {
  TensorD out = log_softmax(a);
  for (int64_t i = 0; i < out.numel(); ++i) out[i] = std::exp(out[i]);
  return out;
}

TensorD layernorm(const TensorD& x, const TensorD& gamma, const TensorD& beta, double eps) {
  int64_t rows, C;
  rows_cols(x.shape(), rows, C);
  TensorD out(x.shape());
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0;
    for (int64_t c = 0; c < C; ++c) mu += x[r * C + c];
    mu /= (double)C;
    double var = 0;
    for (int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu);
    var /= (double)C;
    for (int64_t c = 0; c < C; ++c)
      out[r * C + c] = (x[r * C + c] - mu) / std::sqrt(var + eps) * gamma[c] + beta[c];
  }
  return out;
}

TensorD rmsnorm(const TensorD& x, const TensorD& gamma, double eps) {
  int64_t rows, C;
  rows_cols(x.shape(), rows, C);
  TensorD out(x.shape());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += x[r * C + c] * x[r * C + c];
    ms /= (double)C;
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = x[r * C + c] / std::sqrt(ms + eps) * gamma[c];
  }
  return out;
}

// ---- indexing and layout --------------------------------------------------------------------
TensorD embedding(const TensorD& table, const std::vector<int32_t>& ids, const Shape& out_shape) {
  int64_t V = table.size(0), C = table.size(1);
  Shape so = out_shape;
  so.push_back(C);
  TensorD out(so);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V) fail("ref::embedding: id out of range");
    for (int64_t c = 0; c < C; ++c) out[(int64_t)i * C + c] = table[(int64_t)ids[i] * C + c];
  }
  return out;
}

TensorD reshape(const TensorD& a, const Shape& shape) { return a.clone().reshaped(shape); }

TensorD transpose(const TensorD& a, int d0, int d1) {
  int x0 = axis_of(d0, a.ndim(), "transpose"), x1 = axis_of(d1, a.ndim(), "transpose");
  Shape so = a.shape();
  std::swap(so[x0], so[x1]);
  TensorD out(so);
  for (int64_t i = 0; i < out.numel(); ++i) {
    Index idx = unravel(i, so);
    std::swap(idx[x0], idx[x1]);
    out[i] = a[ravel(idx, a.shape())];
  }
  return out;
}

TensorD slice(const TensorD& a, int axis, int64_t start, int64_t stop) {
  int ax = axis_of(axis, a.ndim(), "slice");
  Shape so = a.shape();
  so[ax] = stop - start;
  TensorD out(so);
  for (int64_t i = 0; i < out.numel(); ++i) {
    Index idx = unravel(i, so);
    idx[ax] += start;
    out[i] = a[ravel(idx, a.shape())];
  }
  return out;
}

TensorD concat(const std::vector<TensorD>& xs, int axis) {
  int ax = axis_of(axis, xs[0].ndim(), "concat");
  Shape so = xs[0].shape();
  so[ax] = 0;
  for (auto& x : xs) so[ax] += x.shape()[ax];
  TensorD out(so);
  for (int64_t i = 0; i < out.numel(); ++i) {
    Index idx = unravel(i, so);
    size_t part = 0;
    while (idx[ax] >= xs[part].shape()[ax]) idx[ax] -= xs[part++].shape()[ax];
    out[i] = xs[part][ravel(idx, xs[part].shape())];
  }
  return out;
}

// ---- attention --------------------------------------------------------------------------------
TensorD attention(const TensorD& q, const TensorD& k, const TensorD& v, bool causal) {
  int64_t B = q.size(0), H = q.size(1), Tn = q.size(2), D = q.size(3);
  TensorD out(q.shape());
  std::vector<double> S((size_t)(Tn * Tn));
  const double scale = 1.0 / std::sqrt((double)D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t base = (b * H + h) * Tn * D;
      // explicit masked scores
      for (int64_t i = 0; i < Tn; ++i)
        for (int64_t j = 0; j < Tn; ++j) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += q[base + i * D + d] * k[base + j * D + d];
          S[i * Tn + j] = (causal && j > i) ? -std::numeric_limits<double>::infinity() : s * scale;
        }
      for (int64_t i = 0; i < Tn; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tn; ++j) mx = std::max(mx, S[i * Tn + j]);
        double z = 0;
        for (int64_t j = 0; j < Tn; ++j) z += std::exp(S[i * Tn + j] - mx);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (int64_t j = 0; j < Tn; ++j) o += std::exp(S[i * Tn + j] - mx) / z * v[base + j * D + d];
          out[base + i * D + d] = o;
        }
      }
    }
  return out;
}

// ---- losses and stochastic ops ---------------------------------------------------------------
TensorD cross_entropy(const TensorD& logits, const std::vector<int32_t>& targets, int32_t ignore_index) {
  int64_t N = logits.size(0), C = logits.size(1);
  double total = 0;
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] == ignore_index) continue;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, logits[n * C + c]);
    double z = 0;
    for (int64_t c = 0; c < C; ++c) z += std::exp(logits[n * C + c] - mx);
    total += -(logits[n * C + targets[n]] - mx - std::log(z));  // −log p_target
    ++count;
  }
  return TensorD::scalar(count ? total / (double)count : 0.0);
}

TensorD dropout(const TensorD& a, double p, uint64_t seed, uint64_t stream, uint64_t offset) {
  TensorD out(a.shape());
  for (int64_t i = 0; i < a.numel(); ++i) {
    bool keep = philox_uniform(seed, stream, offset + (uint64_t)i) >= (float)p;
    out[i] = keep ? a[i] / (1.0 - p) : 0.0;
  }
  return out;
}

// ---- selection, dispatch and combine ------------------------------------------------------------
std::vector<int32_t> topk_indices(const TensorD& x, int k) {
  int64_t N = x.size(0), E = x.size(1);
  std::vector<int32_t> idx;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<bool> taken((size_t)E, false);
    // NaN ranks as −inf (tied with it), as in the kernels
    auto key = [](double v) { return std::isnan(v) ? -std::numeric_limits<double>::infinity() : v; };
    for (int j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (!taken[e] && (best < 0 || key(x[n * E + e]) > key(x[n * E + best]))) best = e;  // strict: ties keep lower e
      taken[best] = true;
      idx.push_back((int32_t)best);
    }
  }
  return idx;
}

TensorD topk_values(const TensorD& x, int k) { return take_cols(x, topk_indices(x, k), k); }

TensorD take_cols(const TensorD& x, const std::vector<int32_t>& idx, int k) {
  int64_t N = x.size(0), E = x.size(1);
  TensorD out({N, (int64_t)k});
  for (int64_t n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) out[n * k + j] = x[n * E + idx[n * k + j]];
  return out;
}

TensorD gather_rows(const TensorD& x, const std::vector<int32_t>& rows) {
  int64_t C = x.size(1), M = (int64_t)rows.size();
  TensorD out({M, C});
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c) out[m * C + c] = x[(int64_t)rows[m] * C + c];
  return out;
}

TensorD scatter_add_rows(const TensorD& src, const std::vector<int32_t>& rows, int64_t n_rows) {
  int64_t M = src.size(0), C = src.size(1);
  TensorD out({n_rows, C});
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t m = 0; m < M; ++m)
        if (rows[m] == r) s += src[m * C + c];
      out[r * C + c] = s;
    }
  return out;
}

TensorD topk_gates(const TensorD& probs, int k) {
  int64_t N = probs.size(0);
  TensorD v = topk_values(probs, k);
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int j = 0; j < k; ++j) s += v[n * k + j];
    for (int j = 0; j < k; ++j) v[n * k + j] /= s;
  }
  return v;
}

TensorD moe_gather(const TensorD& x, const std::vector<int32_t>& token) { return gather_rows(x, token); }

TensorD moe_combine(const TensorD& ys, const TensorD& gates, const std::vector<int32_t>& token,
                    const std::vector<int32_t>& slot) {
  int64_t M = ys.size(0), C = ys.size(1), N = gates.size(0);
  TensorD out({N, C});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t m = 0; m < M; ++m)
        if (token[m] == n) s += ys[m * C + c] * gates[slot[m]];
      out[n * C + c] = s;
    }
  return out;
}

// ---- Cholesky pieces ------------------------------------------------------------------------------
TensorD fill_tril_expdiag(const TensorD& v, int E) {
  int64_t N = v.size(0), P = v.size(1);
  TensorD L({N, (int64_t)E, (int64_t)E});
  for (int64_t n = 0; n < N; ++n)
    for (int i = 0; i < E; ++i)
      for (int j = 0; j < E; ++j) {
        if (j > i) continue;  // upper triangle stays 0
        int64_t t = (int64_t)i * (i + 1) / 2 + j;  // row i of the packing starts at i(i+1)/2
        double x = v[n * P + t];
        L[(n * E + i) * E + j] = i == j ? std::exp(x) : x;
      }
  return L;
}

TensorD tril_matvec(const TensorD& L, const TensorD& eps) {
  int64_t N = L.size(0), E = L.size(1);
  TensorD out({N, E});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < E; ++i) {
      double s = 0;
      for (int64_t j = 0; j < E; ++j)
        if (j <= i) s += L[(n * E + i) * E + j] * eps[n * E + j];
      out[n * E + i] = s;
    }
  return out;
}

TensorD sum_log_diag(const TensorD& L) {
  int64_t N = L.size(0), E = L.size(1);
  TensorD out({N});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) out[n] += std::log(L[(n * E + e) * E + e]);
  return out;
}

// ---- closed-form KLs ----------------------------------------------------------------------------------
TensorD kl_mf(const TensorD& d, const TensorD& lv, double s2) {
  int64_t N = d.size(0), E = d.size(1);
  TensorD out({N});
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t e = 0; e < E; ++e) {
      double v = std::exp(lv[n * E + e]), m = d[n * E + e];
      s += v / s2 + m * m / s2 - 1.0 - lv[n * E + e] + std::log(s2);  // one Gaussian KL per expert
    }
    out[n] = 0.5 * s;
  }
  return out;
}

TensorD kl_fc(const TensorD& d, const TensorD& L, double s2) {
  int64_t N = d.size(0), E = d.size(1);
  TensorD out({N});
  for (int64_t n = 0; n < N; ++n) {
    double tr = 0, mm = 0, logdet = 0;  // tr(L Lᵀ), ‖d‖², log det(L Lᵀ)
    for (int64_t i = 0; i < E; ++i) {
      for (int64_t j = 0; j < E; ++j) tr += L[(n * E + i) * E + j] * L[(n * E + i) * E + j];
      mm += d[n * E + i] * d[n * E + i];
      logdet += 2.0 * std::log(L[(n * E + i) * E + i]);
    }
    out[n] = 0.5 * (tr / s2 + mm / s2 - (double)E + (double)E * std::log(s2) - logdet);
  }
  return out;
}

TensorD straight_through(const TensorD& hard, const TensorD& soft) { return hard.clone(); }

// ---- AdamW --------------------------------------------------------------------------------------------
void adamw_step(double* param, const double* grad, double* m, double* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step) {
  double bc1 = 1.0 - std::pow(beta1, (double)step), bc2 = 1.0 - std::pow(beta2, (double)step);
  for (int64_t i = 0; i < n; ++i) {
    m[i] = beta1 * m[i] + (1.0 - beta1) * grad[i];
    v[i] = beta2 * v[i] + (1.0 - beta2) * grad[i] * grad[i];
    double update = (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps) + weight_decay * param[i];
    param[i] -= lr * update;
  }
}

}  // namespace vm::ref
