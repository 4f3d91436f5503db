// tests/test_routers.cpp — the routers (nn/router.h, nn/routers/*.cpp):
//   - closed-form KL (MFVR, FCVR, VTSR log-normal; s = 1 and 0.5) against an
//     independent double-precision Monte-Carlo estimate of E_q[log q − log p],
//     with q rebuilt in the test from the head parameters;
//   - KL = 0 exactly at the prior;
//   - reparameterised gradients (ε held fixed) against central differences;
//   - the Cholesky factor: lower triangular, positive diagonal, Σ = L Lᵀ SPD;
//   - S → ∞ convergence of p̄; T → 0 recovers deterministic top-K;
//   - sample-K / VTSR selection frequencies vs Plackett–Luce (chi-square);
//   - det / noisy (eval) / mc-dropout (p = 0) equivalences;
//   - padding rows never enter the KL or the VTSR penalty.
//
// VMOER_TEST_REPORT=1 prints the measured numbers (relative errors, chi-square).
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "experiments/trainer.h"
#include "nn/transformer.h"
#include "nn/params.h"
#include "nn/router.h"
#include "nn/routers/common.h"

using namespace vm;
using namespace vm::nn;

namespace {

bool report() {
  const char* e = std::getenv("VMOER_TEST_REPORT");
  return e && *e && *e != '0';
}
#define RT_REPORT(...)                      \
  do {                                      \
    if (report()) std::printf(__VA_ARGS__); \
  } while (0)

// Test-side randomness: splitmix64 + Box–Muller in double. Portable and
// independent of the library's Philox streams.
struct Rng {
  uint64_t s;
  bool has_spare = false;
  double spare = 0;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return ((double)(next() >> 11) + 0.5) * 0x1.0p-53; }
  double normal() {
    if (has_spare) {
      has_spare = false;
      return spare;
    }
    double r = std::sqrt(-2.0 * std::log(uniform())), th = 6.283185307179586 * uniform();
    spare = r * std::sin(th);
    has_spare = true;
    return r * std::cos(th);
  }
};

Tensor randn(Shape shape, double std, Rng& rng) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = (float)(std * rng.normal());
  return t;
}

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// (R, C) tensor, or a 1-D tensor as a (1, C) row.
MatD mat(const Tensor& t) {
  int64_t r = t.ndim() == 1 ? 1 : t.size(0), c = t.ndim() == 1 ? t.numel() : t.numel() / t.size(0);
  MatD m(r, c);
  for (int64_t i = 0; i < t.numel(); ++i) m(i / c, i % c) = t[i];
  return m;
}
MatD add_row(MatD m, const Tensor& bias) {
  MatD b = mat(bias);
  for (int64_t i = 0; i < m.rows(); ++i) m.row(i) += b.row(0);
  return m;
}

// One router with its own parameters, inputs u (N, C) and W_r (C, E).
struct Fix {
  RouterConfig cfg;
  int N, C, E, K;
  ParamStore ps;
  std::unique_ptr<Router> router;
  Var u, w;
  std::vector<uint8_t> mask;
  Fix(RouterConfig c, int N_, int C_, int E_, int K_, uint64_t seed, double u_std = 1.0, double w_std = 0.5)
      : cfg(std::move(c)), N(N_), C(C_), E(E_), K(K_) {
    router = make_router(cfg, true, ps, "r.", C, E, seed);
    Rng rng(seed * 7919 + 17);
    u = Var(randn({N, C}, u_std, rng));
    w = Var(randn({C, E}, w_std, rng));
    mask.assign((size_t)N, 1);
  }
  Var& p(const std::string& name) { return ps.get("r." + name); }
  void randomise(const std::string& name, double std, Rng& rng) {
    Tensor& v = p(name).value();
    for (int64_t i = 0; i < v.numel(); ++i) v[i] = (float)(std * rng.normal());
  }
  void fill(const std::string& name, float x) { p(name).value().fill(x); }
  RouterOut route(const RouteCtx& ctx) { return router->route(u, w, K, mask, ctx); }
};

RouterConfig rcfg(const std::string& name) {
  RouterConfig c;
  c.name = name;
  return c;
}

RouteCtx ctx_of(bool training, int samples, uint64_t seed = 5, uint64_t step = 3, int layer = 1) {
  RouteCtx c;
  c.training = training;
  c.seed = seed;
  c.step = step;
  c.layer = layer;
  c.samples = samples;
  return c;
}

// ---- Gaussian posteriors rebuilt from the parameters (double precision) --------------------
struct GaussPost {
  MatD prior_mean;        // (N, D)
  MatD mean;              // (N, D) posterior mean
  std::vector<MatD> L;    // N factors (D, D), lower triangular: Σ_n = L_n L_nᵀ
};

// MFVR / FCVR: q(l | u) = N(u W_r + Δμ, L Lᵀ), prior N(u W_r, s² I).
GaussPost rebuild_logit_posterior(Fix& f, bool full) {
  MatD U = mat(f.u.value());
  MatD h = (U * mat(f.p("trunk.w").value())).cwiseMax(0.0);
  MatD dmu = add_row(h * mat(f.p("mu.w").value()), f.p("mu.b").value());
  std::string head = full ? "chol" : "logvar";
  MatD raw = add_row(h * mat(f.p(head + ".w").value()), f.p(head + ".b").value());
  GaussPost g;
  g.prior_mean = U * mat(f.w.value());
  g.mean = g.prior_mean + dmu;
  int E = f.E;
  for (int n = 0; n < f.N; ++n) {
    MatD L = MatD::Zero(E, E);
    if (full) {
      int t = 0;  // row-major packing of the lower triangle, diagonal exponentiated
      for (int i = 0; i < E; ++i)
        for (int j = 0; j <= i; ++j, ++t) L(i, j) = i == j ? std::exp(raw(n, t)) : raw(n, t);
    } else {
      for (int e = 0; e < E; ++e) L(e, e) = std::exp(0.5 * raw(n, e));  // σ = exp(½ log σ²)
    }
    g.L.push_back(L);
  }
  return g;
}

// VTSR log-normal: q(log T | u) = N(m, v), v = e^ρ; prior N(0, s_T²) on log T.
GaussPost rebuild_logT_posterior(Fix& f, int out) {
  MatD U = mat(f.u.value());
  MatD h = add_row(U * mat(f.p("temp.w1").value()), f.p("temp.b1").value()).cwiseMax(0.0);
  MatD a = add_row(h * mat(f.p("temp.w2").value()), f.p("temp.b2").value());
  GaussPost g;
  g.prior_mean = MatD::Zero(f.N, out);
  g.mean = a.leftCols(out);
  for (int n = 0; n < f.N; ++n) {
    MatD L = MatD::Zero(out, out);
    for (int j = 0; j < out; ++j) L(j, j) = std::exp(0.5 * a(n, out + j));
    g.L.push_back(L);
  }
  return g;
}

// Σ_n E_q[log q(x) − log p(x)] by Monte Carlo: x = mean + L ε; log q uses
// L⁻¹ (x − mean) by forward substitution, log p = N(prior_mean, s² I).
struct Mc {
  double value, se;
};
Mc mc_kl(const GaussPost& g, double s, int samples, uint64_t seed) {
  Rng rng(seed);
  int N = (int)g.mean.rows(), D = (int)g.mean.cols();
  double total = 0, var = 0;
  std::vector<double> eps(D), x(D), z(D);
  for (int n = 0; n < N; ++n) {
    const MatD& L = g.L[n];
    double logdet = 0;
    for (int i = 0; i < D; ++i) logdet += std::log(L(i, i));
    double acc = 0, acc2 = 0;
    for (int t = 0; t < samples; ++t) {
      for (int i = 0; i < D; ++i) eps[i] = rng.normal();
      for (int i = 0; i < D; ++i) {
        double v = g.mean(n, i);
        for (int j = 0; j <= i; ++j) v += L(i, j) * eps[j];
        x[i] = v;
      }
      double q2 = 0, p2 = 0;
      for (int i = 0; i < D; ++i) {  // z = L⁻¹ (x − mean)
        double r = x[i] - g.mean(n, i);
        for (int j = 0; j < i; ++j) r -= L(i, j) * z[j];
        z[i] = r / L(i, i);
        q2 += z[i] * z[i];
        double d = x[i] - g.prior_mean(n, i);
        p2 += d * d;
      }
      double logq = -0.5 * q2 - logdet;                   // (2π terms cancel)
      double logp = -0.5 * p2 / (s * s) - D * std::log(s);
      double r = logq - logp;
      acc += r;
      acc2 += r * r;
    }
    double m = acc / samples;
    total += m;
    var += (acc2 / samples - m * m) / samples;
  }
  return {total, std::sqrt(var)};
}

void check_kl_vs_mc(const char* what, double closed, const Mc& mc) {
  double rel = std::abs(closed - mc.value) / std::abs(mc.value);
  RT_REPORT("  KL %-26s closed %.6f  MC %.6f ± %.6f (se)  rel err %.3e (%.1f se)\n", what, closed, mc.value, mc.se,
            rel, std::abs(closed - mc.value) / mc.se);
  INFO(what << ": closed " << closed << ", MC " << mc.value << " ± " << mc.se);
  CHECK(mc.se < 0.003 * std::abs(mc.value));  // the estimate is sharp enough for a 1% test
  CHECK(rel < 0.01);
  CHECK(closed > 0.5);  // a non-trivial posterior
}

constexpr int kMcSamples = 200000;  // per token

}  // namespace

// =============================================================================================
TEST_CASE("router KL: MFVR and FCVR closed form matches Monte Carlo, s = 1 and s = 0.5") {
  for (bool full : {false, true})
    for (double s : {1.0, 0.5}) {
      RouterConfig cfg = rcfg(full ? "fcvr" : "mfvr");
      cfg.prior_scale = s;
      const int N = 6, C = 16, E = 5;
      Fix f(cfg, N, C, E, 2, 101 + (full ? 10 : 0));
      Rng rng(full ? 77 : 78);
      f.randomise("mu.w", 0.5, rng);
      f.randomise("mu.b", 0.3, rng);
      f.randomise(full ? "chol.w" : "logvar.w", 0.4, rng);
      f.randomise(full ? "chol.b" : "logvar.b", 0.3, rng);
      RouterOut o = f.route(ctx_of(false, 4));
      REQUIRE(o.kl.defined());
      GaussPost g = rebuild_logit_posterior(f, full);
      // The router's diagnostics agree with the rebuilt posterior.
      for (int n = 0; n < N; ++n) {
        MatD Sigma = g.L[n] * g.L[n].transpose();
        for (int e = 0; e < E; ++e) {
          CHECK(o.post_mean[n * E + e] == doctest::Approx(g.mean(n, e)).epsilon(1e-4));
          CHECK(o.post_std[n * E + e] == doctest::Approx(std::sqrt(Sigma(e, e))).epsilon(1e-4));
        }
        CHECK(o.ilv[n] == doctest::Approx(Sigma.trace()).epsilon(1e-4));
      }
      Mc mc = mc_kl(g, s, kMcSamples, 1234 + (uint64_t)(s * 10) + full);
      std::string what = std::string(full ? "FCVR" : "MFVR") + " s=" + (s == 1.0 ? "1" : "0.5");
      check_kl_vs_mc(what.c_str(), o.kl.item(), mc);
    }
}

TEST_CASE("router KL: VTSR log-normal temperature closed form matches Monte Carlo, s_T = 1 and 0.5") {
  for (std::string mode : {"shared", "per-expert"})
    for (double s : {1.0, 0.5}) {
      RouterConfig cfg = rcfg("vtsr");
      cfg.temp_posterior = "lognormal";
      cfg.temp_mode = mode;
      cfg.temp_prior_scale = s;
      const int N = 6, C = 16, E = 4;
      int out = mode == "shared" ? 1 : E;
      Fix f(cfg, N, C, E, 2, 202 + out);
      Rng rng(31 + out);
      f.randomise("temp.w2", 0.6, rng);
      f.randomise("temp.b2", 0.6, rng);
      RouterOut o = f.route(ctx_of(true, 1));
      REQUIRE(o.kl.defined());
      CHECK(!o.penalty.defined());
      GaussPost g = rebuild_logT_posterior(f, out);
      Mc mc = mc_kl(g, s, kMcSamples, 999 + out + (uint64_t)(s * 10));
      std::string what = "VTSR-lognormal " + mode + " s=" + (s == 1.0 ? "1" : "0.5");
      check_kl_vs_mc(what.c_str(), o.kl.item(), mc);
    }
}

TEST_CASE("router KL: exactly 0 when the posterior equals the prior (s = 1)") {
  for (std::string name : {"mfvr", "fcvr"}) {
    Fix f(rcfg(name), 7, 16, 6, 2, 11);
    std::string head = name == "fcvr" ? "chol" : "logvar";
    for (auto p : {"mu.w", "mu.b"}) f.fill(p, 0.f);
    f.fill(head + ".w", 0.f);  // log σ² = 0, or L = I
    f.fill(head + ".b", 0.f);
    RouterOut o = f.route(ctx_of(false, 3));
    CHECK(o.kl.item() == 0.0f);
    for (float sd : o.post_std) CHECK(sd == 1.0f);
    // ...and strictly positive as soon as q moves away from the prior.
    f.p("mu.b").value()[0] = 0.5f;
    CHECK(f.route(ctx_of(false, 3)).kl.item() == doctest::Approx(7 * 0.5 * 0.25).epsilon(1e-5));
  }
  RouterConfig cfg = rcfg("vtsr");
  cfg.temp_posterior = "lognormal";
  for (std::string mode : {"shared", "per-expert"}) {
    cfg.temp_mode = mode;
    Fix f(cfg, 5, 16, 4, 2, 12);
    f.fill("temp.w2", 0.f);
    f.fill("temp.b2", 0.f);  // m = 0, log v = 0: q = N(0, 1) = prior
    CHECK(f.route(ctx_of(true, 1)).kl.item() == 0.0f);
  }
}

// ---- reparameterised gradients vs central differences ---------------------------------------
namespace {
// loss = Σ w ⊙ gates + KL (+ penalty), accumulated in double from the float outputs.
double eval_loss(Fix& f, const RouteCtx& ctx, const std::vector<float>& wts, std::vector<int32_t>* experts) {
  NoGradGuard ng;
  RouterOut o = f.route(ctx);
  double L = 0;
  for (size_t i = 0; i < wts.size(); ++i) L += (double)wts[i] * o.gates.value()[(int64_t)i];
  if (o.kl.defined()) L += o.kl.item();
  if (o.penalty.defined()) L += o.penalty.item();
  if (experts) *experts = o.experts;
  return L;
}

struct Probe {
  std::string param;
  int64_t index;
};

// Central differences in float32 with step h = 1e-2. The router runs in float:
// the loss (≈ 1–10) carries ~1e-6 absolute rounding, i.e. ~1e-4 after dividing
// by 2h, and the O(h²) truncation error is ~1e-5 · f'''. Tolerance
// 2e-3 + 1e-2 |g|: well above both, far below any wrong-formula error (O(|g|)).
void check_fd(Fix& f, const RouteCtx& ctx, const std::vector<Probe>& probes, const char* what) {
  Rng rng(4242);
  std::vector<float> wts((size_t)f.N * f.K);
  for (auto& x : wts) x = (float)(2.0 * rng.uniform() - 1.0);
  // analytic
  f.ps.zero_grad();
  RouterOut o = f.route(ctx);
  Tensor wt({(int64_t)f.N, (int64_t)f.K});
  for (size_t i = 0; i < wts.size(); ++i) wt[(int64_t)i] = wts[i];
  Var loss = ops::sum_all(ops::mul(o.gates, ops::constant(wt)));
  if (o.kl.defined()) loss = ops::add(loss, o.kl);
  if (o.penalty.defined()) loss = ops::add(loss, o.penalty);
  vm::backward(loss);
  std::vector<int32_t> base = o.experts;
  const double h = 1e-2;
  double max_err = 0, max_g = 0;
  for (const Probe& pr : probes) {
    Var& p = f.p(pr.param);
    REQUIRE(p.grad().defined());
    double g = p.grad()[pr.index];
    float orig = p.value()[pr.index];
    std::vector<int32_t> ep, em;
    p.value()[pr.index] = orig + (float)h;
    double lp = eval_loss(f, ctx, wts, &ep);
    p.value()[pr.index] = orig - (float)h;
    double lm = eval_loss(f, ctx, wts, &em);
    p.value()[pr.index] = orig;
    INFO(what << " " << pr.param << "[" << pr.index << "]");
    REQUIRE(ep == base);  // the perturbation must not flip the top-K selection
    REQUIRE(em == base);
    double fd = (lp - lm) / (2 * h);
    CHECK(std::abs(fd - g) <= 2e-3 + 1e-2 * std::abs(g));
    max_err = std::max(max_err, std::abs(fd - g));
    max_g = std::max(max_g, std::abs(g));
  }
  RT_REPORT("  grad %-22s %zu probes: max |fd − ad| %.2e, max |ad| %.3f\n", what, probes.size(), max_err, max_g);
  CHECK(max_g > 0.05);  // the probes see a non-trivial gradient
}
}  // namespace

TEST_CASE("router gradients: reparameterised MFVR / FCVR / VTSR match central differences (ε fixed)") {
  const int N = 4, C = 16, E = 5, K = 2;
  SUBCASE("mfvr") {
    Fix f(rcfg("mfvr"), N, C, E, K, 31);
    Rng rng(1);
    f.randomise("mu.w", 0.5, rng);
    f.randomise("mu.b", 0.3, rng);
    f.randomise("logvar.w", 0.4, rng);
    f.randomise("logvar.b", 0.3, rng);
    check_fd(f, ctx_of(true, 3),
             {{"mu.w", 0}, {"mu.w", 7}, {"mu.b", 1}, {"mu.b", 3}, {"logvar.w", 2}, {"logvar.w", 13}, {"logvar.b", 0},
              {"logvar.b", 4}},
             "mfvr");
  }
  SUBCASE("fcvr") {
    Fix f(rcfg("fcvr"), N, C, E, K, 32);
    Rng rng(2);
    f.randomise("mu.w", 0.5, rng);
    f.randomise("mu.b", 0.3, rng);
    f.randomise("chol.w", 0.3, rng);
    f.randomise("chol.b", 0.3, rng);
    // packed index of L_ij (i ≥ j) is i(i+1)/2 + j: diagonals 0, 2, 5, 9, 14
    check_fd(f, ctx_of(true, 3),
             {{"mu.b", 2}, {"chol.b", 0}, {"chol.b", 5}, {"chol.b", 14}, {"chol.b", 1}, {"chol.b", 7}, {"chol.b", 12},
              {"chol.w", 3}, {"chol.w", 20}, {"chol.w", 44}},
             "fcvr");
  }
  SUBCASE("vtsr point (penalty λ = 0.1)") {
    RouterConfig cfg = rcfg("vtsr");
    cfg.temp_penalty = 0.1;
    for (std::string mode : {"shared", "per-expert"}) {
      cfg.temp_mode = mode;
      Fix f(cfg, N, C, E, K, 33);
      Rng rng(3);
      f.randomise("temp.w2", 0.5, rng);
      std::vector<Probe> probes = {{"temp.w2", 0}, {"temp.w2", 3}, {"temp.b2", 0}};
      if (mode == "per-expert") probes.push_back({"temp.b2", 3});
      check_fd(f, ctx_of(true, 1), probes, ("vtsr point " + mode).c_str());
    }
  }
  SUBCASE("vtsr lognormal") {
    RouterConfig cfg = rcfg("vtsr");
    cfg.temp_posterior = "lognormal";
    cfg.temp_prior_scale = 0.5;
    for (std::string mode : {"shared", "per-expert"}) {
      cfg.temp_mode = mode;
      int out = mode == "shared" ? 1 : E;
      Fix f(cfg, N, C, E, K, 34);
      Rng rng(4);
      f.randomise("temp.w2", 0.4, rng);
      f.randomise("temp.b2", 0.3, rng);
      for (int j = 0; j < out; ++j) f.p("temp.b2").value()[out + j] -= 1.0f;  // v ≈ e^-1: ξ matters
      check_fd(f, ctx_of(true, 1),
               {{"temp.w2", 0}, {"temp.w2", 2 * out - 1}, {"temp.b2", 0}, {"temp.b2", out}}, ("vtsr lognormal " + mode).c_str());
    }
  }
}

// ---- the Cholesky factor -------------------------------------------------------------------
TEST_CASE("router FCVR: L is lower triangular with a positive diagonal and Σ = L Lᵀ is SPD") {
  // The op the router builds L with, on random packed vectors of growing scale.
  const int E = 6, P = E * (E + 1) / 2;
  Rng rng(55);
  for (double scale : {0.1, 0.5, 1.0}) {
    const int N = 40;
    Var v(randn({N, P}, scale, rng));
    Var L = ops::fill_tril_expdiag(v, E);
    for (int n = 0; n < N; ++n) {
      MatD Ln(E, E);
      for (int i = 0; i < E; ++i)
        for (int j = 0; j < E; ++j) Ln(i, j) = L.value()[((int64_t)n * E + i) * E + j];
      for (int i = 0; i < E; ++i) {
        CHECK(Ln(i, i) > 0);
        for (int j = i + 1; j < E; ++j) CHECK(Ln(i, j) == 0.0);
      }
      MatD Sigma = Ln * Ln.transpose();
      CHECK((Sigma - Sigma.transpose()).norm() == 0.0);
      Eigen::LLT<MatD> llt(Sigma);
      REQUIRE(llt.info() == Eigen::Success);
      Eigen::SelfAdjointEigenSolver<MatD> es(Sigma);
      CHECK(es.eigenvalues().minCoeff() > 0);
      // Cholesky with a positive diagonal is unique: Eigen's factor is L itself.
      MatD Lc = llt.matrixL();
      CHECK((Lc - Ln).norm() <= 1e-8 * Ln.norm());
    }
  }
  // Extreme head outputs: the diagonal stays positive and finite in float.
  {
    Tensor ext({2, P});
    for (int i = 0, t = 0; i < E; ++i)
      for (int j = 0; j <= i; ++j, ++t) {
        ext[t] = i == j ? -30.f : 5.f;
        ext[P + t] = i == j ? 30.f : -5.f;
      }
    Var Le = ops::fill_tril_expdiag(Var(ext), E);
    for (int n = 0; n < 2; ++n)
      for (int i = 0; i < E; ++i) {
        float d = Le.value()[((int64_t)n * E + i) * E + i];
        CHECK(d > 0.f);
        CHECK(std::isfinite(d));
      }
  }
  // Through the router: its reported per-logit std and ILV are those of L Lᵀ
  // with L rebuilt from the head outputs (checks the packing order too).
  Fix f(rcfg("fcvr"), 10, 16, E, 2, 56);
  f.randomise("chol.w", 1.0, rng);
  f.randomise("chol.b", 1.0, rng);
  RouterOut o = f.route(ctx_of(false, 2));
  GaussPost g = rebuild_logit_posterior(f, true);
  for (int n = 0; n < f.N; ++n) {
    MatD Sigma = g.L[n] * g.L[n].transpose();
    Eigen::SelfAdjointEigenSolver<MatD> es(Sigma);
    CHECK(es.eigenvalues().minCoeff() > 0);
    for (int e = 0; e < E; ++e) CHECK(o.post_std[n * E + e] == doctest::Approx(std::sqrt(Sigma(e, e))).epsilon(1e-4));
    CHECK(o.ilv[n] == doctest::Approx(Sigma.trace()).epsilon(1e-4));
  }
}

// ---- S → ∞ and T → 0 ------------------------------------------------------------------------
TEST_CASE("router MFVR/FCVR: p̄ converges to E_q[softmax(l)] as S grows") {
  for (bool full : {false, true}) {
    const int N = 3, C = 16, E = 5, K = 2;
    Fix f(rcfg(full ? "fcvr" : "mfvr"), N, C, E, K, 61 + full, 1.0, 0.8);
    Rng rng(62);
    f.randomise("mu.w", 0.5, rng);
    f.randomise(full ? "chol.w" : "logvar.w", 0.3, rng);
    f.randomise(full ? "chol.b" : "logvar.b", 0.3, rng);
    GaussPost g = rebuild_logit_posterior(f, full);
    // Independent estimate of E_q[softmax(l)] with 2e5 samples, and its per-entry variance.
    const int M = 200000;
    MatD mean = MatD::Zero(N, E), m2 = MatD::Zero(N, E);
    Rng mr(63);
    std::vector<double> eps(E), l(E);
    for (int n = 0; n < N; ++n)
      for (int t = 0; t < M; ++t) {
        for (int e = 0; e < E; ++e) eps[e] = mr.normal();
        double mx = -1e300, z = 0;
        for (int i = 0; i < E; ++i) {
          double v = g.mean(n, i);
          for (int j = 0; j <= i; ++j) v += g.L[n](i, j) * eps[j];
          l[i] = v;
          mx = std::max(mx, v);
        }
        for (int i = 0; i < E; ++i) z += std::exp(l[i] - mx);
        for (int i = 0; i < E; ++i) {
          double pr = std::exp(l[i] - mx) / z;
          mean(n, i) += pr / M;
          m2(n, i) += pr * pr / M;
        }
      }
    double worst_z = 0, err_small = 0, err_large = 0;
    for (int S : {40, 4000}) {
      RouterOut o = f.route(ctx_of(false, S));
      double err = 0;
      for (int n = 0; n < N; ++n) {
        double rowsum = 0;
        for (int e = 0; e < E; ++e) {
          double pb = o.probs.value()[n * E + e];
          rowsum += pb;
          double var = m2(n, e) - mean(n, e) * mean(n, e);
          double sd = std::sqrt(var / S + var / M);
          err = std::max(err, std::abs(pb - mean(n, e)));
          if (S == 4000) {
            worst_z = std::max(worst_z, std::abs(pb - mean(n, e)) / sd);
            CHECK(std::abs(pb - mean(n, e)) <= 5 * sd + 1e-6);
          }
        }
        CHECK(rowsum == doctest::Approx(1.0).epsilon(1e-5));
        // gates: p̄ restricted to the chosen K, renormalised; the chosen are p̄'s top-K
        double sk = 0, best_out = 0;
        for (int k = 0; k < K; ++k) sk += o.probs.value()[n * E + o.experts[n * K + k]];
        for (int k = 0; k < K; ++k)
          CHECK(o.gates.value()[n * K + k] ==
                doctest::Approx(o.probs.value()[n * E + o.experts[n * K + k]] / sk).epsilon(1e-5));
        for (int e = 0; e < E; ++e) {
          bool chosen = false;
          for (int k = 0; k < K; ++k) chosen = chosen || o.experts[n * K + k] == e;
          if (!chosen) best_out = std::max(best_out, (double)o.probs.value()[n * E + e]);
        }
        for (int k = 0; k < K; ++k) CHECK(o.probs.value()[n * E + o.experts[n * K + k]] >= best_out);
      }
      (S == 40 ? err_small : err_large) = err;
    }
    RT_REPORT("  p̄ %s: max |p̄ − E p| at S=40 %.2e, at S=4000 %.2e (worst %.2f sd)\n", full ? "fcvr" : "mfvr",
              err_small, err_large, worst_z);
    CHECK(err_large < err_small / 3);  // expected ratio sqrt(100) = 10
  }
}

TEST_CASE("router MFVR/FCVR: the no-graph evaluation loop equals the differentiable S-sample path") {
  // Evaluation (NoGradGuard, S > 1) computes p̄ token by token without the
  // (S·N, E) graph; it must draw the same ε and give the same p̄ and routing.
  for (bool full : {false, true}) {
    CAPTURE(full);
    const int N = 37, C = 24, E = 7, K = 2, S = 35;  // odd sizes: E·N not a multiple of Philox's 4
    Fix f(rcfg(full ? "fcvr" : "mfvr"), N, C, E, K, 71 + full, 1.0, 0.8);
    Rng rng(72);
    f.randomise("mu.w", 0.5, rng);
    f.randomise(full ? "chol.w" : "logvar.w", 0.3, rng);
    f.randomise(full ? "chol.b" : "logvar.b", 0.3, rng);
    RouterOut graph = f.route(ctx_of(false, S));  // grad enabled: the graph path
    RouterOut fused;
    {
      NoGradGuard ng;
      fused = f.route(ctx_of(false, S));
    }
    double worst = 0;
    for (int64_t i = 0; i < graph.probs.numel(); ++i)
      worst = std::max(worst, (double)std::fabs(graph.probs.value()[i] - fused.probs.value()[i]));
    RT_REPORT("  no-graph p̄ %s: max |Δ| %.2e\n", full ? "fcvr" : "mfvr", worst);
    CHECK(worst <= 2e-7);  // float rounding (FMA contraction may differ between the two loops)
    CHECK(graph.experts == fused.experts);
    for (int64_t i = 0; i < graph.gates.numel(); ++i)
      CHECK(fused.gates.value()[i] == doctest::Approx(graph.gates.value()[i]).epsilon(1e-6));
    CHECK(fused.kl.value()[0] == graph.kl.value()[0]);  // same ops: bit-identical
    // A different step draws different noise (the comparison is not vacuous).
    NoGradGuard ng;
    RouterOut other = f.route(ctx_of(false, S, 5, 4));
    double moved = 0;
    for (int64_t i = 0; i < graph.probs.numel(); ++i)
      moved = std::max(moved, (double)std::fabs(other.probs.value()[i] - fused.probs.value()[i]));
    CHECK(moved > 1e-4);
  }
}

// The ε layout (core/philox.h philox_sample_counter): one token's S·E normals are
// one block at (g·S + s)·E, g the token's row in the whole batch. A shard of
// rows [row0, row0 + n) (RouteCtx row0/rows, data parallelism) draws exactly the
// whole batch's ε for those rows and routes them alike, on both paths; and ε
// row s·N + n of the graph path is sample s of token n at that counter.
TEST_CASE("router MFVR/FCVR: a shard of rows draws the whole batch's ε for them (graph and no-graph paths)") {
  const int N = 23, C = 16, E = 7, K = 2, S = 5;  // E·S odd: token blocks start mid Philox block
  Tensor eps = routers::sample_normals(S, N, E, 9, 4, 0);
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < N; ++n)
      for (int e = 0; e < E; ++e)
        REQUIRE(eps[((int64_t)s * N + n) * E + e] == philox_normal(9, 4, (uint64_t)((n * S + s) * E + e)));
  Tensor part = routers::sample_normals(S, 6, E, 9, 4, 11);  // rows 11..16 of the batch
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < 6; ++n)
      for (int e = 0; e < E; ++e)
        REQUIRE(part[((int64_t)s * 6 + n) * E + e] == eps[((int64_t)s * N + 11 + n) * E + e]);
  for (bool full : {false, true}) {
    CAPTURE(full);
    Fix f(rcfg(full ? "fcvr" : "mfvr"), N, C, E, K, 91 + full, 1.0, 0.8);
    Rng rng(92);
    f.randomise("mu.w", 0.5, rng);
    f.randomise(full ? "chol.w" : "logvar.w", 0.3, rng);
    for (bool graph : {true, false}) {
      CAPTURE(graph);
      std::unique_ptr<NoGradGuard> ng;
      if (!graph) ng = std::make_unique<NoGradGuard>();
      RouterOut whole = f.route(ctx_of(false, S));
      const int64_t row0 = 9, n = 8;
      Var us = Var(Tensor::from(std::vector<float>(f.u.value().data() + row0 * C, f.u.value().data() + (row0 + n) * C),
                                {n, (int64_t)C}));
      RouteCtx ctx = ctx_of(false, S);
      ctx.row0 = row0;
      ctx.rows = N;
      RouterOut shard = f.router->route(us, f.w, K, std::vector<uint8_t>((size_t)n, 1), ctx);
      // the same ε; the router's matmuls on 8 rows instead of 23 may round differently (GEMM blocking)
      for (int64_t i = 0; i < n * E; ++i)
        REQUIRE(shard.probs.value()[i] == doctest::Approx(whole.probs.value()[row0 * E + i]).epsilon(1e-5));
      for (int64_t i = 0; i < n * K; ++i) CHECK(shard.experts[i] == whole.experts[row0 * K + i]);
    }
  }
}

namespace {
// Deterministic top-K sets of l = u W_r, plus the gap between the K-th and (K+1)-th logit.
std::vector<std::set<int>> det_sets(Fix& f, std::vector<double>& gap) {
  MatD l = mat(f.u.value()) * mat(f.w.value());
  std::vector<std::set<int>> sets;
  gap.clear();
  for (int n = 0; n < f.N; ++n) {
    std::vector<int> order(f.E);
    for (int e = 0; e < f.E; ++e) order[e] = e;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return l(n, a) > l(n, b); });
    sets.emplace_back(order.begin(), order.begin() + f.K);
    gap.push_back(l(n, order[f.K - 1]) - l(n, order[f.K]));
  }
  return sets;
}
std::set<int> row_set(const std::vector<int32_t>& experts, int n, int K) {
  return std::set<int>(experts.begin() + n * K, experts.begin() + (n + 1) * K);
}
}  // namespace

TEST_CASE("router sample-k / VTSR: T → 0 selects exactly the deterministic top-K") {
  // Philox uniforms lie in [2^-25, 1 − 2^-25], so Gumbel noise is within
  // [−2.86, 17.33]: a gap of > 20.2 in l/T between the K-th and (K+1)-th
  // logit makes the selection deterministic. Tokens whose logit gap is too
  // small for that are skipped (counted, must be rare).
  const int N = 256, C = 16, E = 6, K = 2;
  for (std::string sampler : {"gumbel", "authors"}) {
    // sample-k, T = 1e-4
    RouterConfig cfg = rcfg("sample-k");
    cfg.temp = 1e-4;
    cfg.vtsr_sampler = sampler;
    Fix f(cfg, N, C, E, K, 71);
    std::vector<double> gap;
    auto sets = det_sets(f, gap);
    int checked = 0;
    for (uint64_t step : {1, 2, 3}) {
      RouterOut o = f.route(ctx_of(true, 1, 5, step));
      for (int n = 0; n < N; ++n) {
        for (int k = 0; k < K; ++k) REQUIRE((o.experts[n * K + k] >= 0 && o.experts[n * K + k] < E));
        if (gap[n] * 1e4 <= 21) continue;
        ++checked;
        CHECK(row_set(o.experts, n, K) == sets[n]);
      }
    }
    CHECK(checked >= 3 * (N - 4));
    // VTSR with the temperature net biased to T ≈ 1e-6: point and lognormal
    for (std::string post : {"point", "lognormal"}) {
      RouterConfig vc = rcfg("vtsr");
      vc.vtsr_sampler = sampler;
      vc.temp_posterior = post;
      Fix v(vc, N, C, E, K, 71);
      v.fill("temp.w2", 0.f);
      if (post == "point") {
        v.fill("temp.b2", -30.f);  // T = softplus(−30) + 1e-6 ≈ 1e-6
      } else {
        v.p("temp.b2").value()[0] = -13.f;  // m: T = e^−13 ≈ 2.3e-6
        v.p("temp.b2").value()[1] = -20.f;  // log v: sd 4.5e-5 on log T
      }
      auto vsets = det_sets(v, gap);
      RouterOut o = v.route(ctx_of(true, 1, 5, 9));
      int vchecked = 0;
      for (int n = 0; n < N; ++n) {
        CHECK(o.temperature[n] < 3e-6f);
        for (int k = 0; k < K; ++k) REQUIRE((o.experts[n * K + k] >= 0 && o.experts[n * K + k] < E));
        if (gap[n] / o.temperature[n] <= 21) continue;
        ++vchecked;
        CHECK(row_set(o.experts, n, K) == vsets[n]);
      }
      CHECK(vchecked >= N - 2);
    }
  }
}

// ---- Plackett–Luce frequencies ------------------------------------------------------------
namespace {
// Chi-square of the counts of the 10 unordered pairs (E = 5, K = 2) against
// the Plackett–Luce probabilities P({i, j}) = p_i p_j / (1 − p_i) + p_j p_i / (1 − p_j).
struct Chi2 {
  double pl, naive;  // vs Plackett–Luce, vs the (wrong) normalised product p_i p_j
};
Chi2 pair_chi2(const std::vector<int32_t>& experts, int N, const std::vector<double>& p) {
  const int E = (int)p.size();
  std::map<std::pair<int, int>, double> count;
  for (int n = 0; n < N; ++n) {
    int a = experts[n * 2], b = experts[n * 2 + 1];
    REQUIRE(a != b);
    count[{std::min(a, b), std::max(a, b)}] += 1;
  }
  double zprod = 0;
  for (int i = 0; i < E; ++i)
    for (int j = i + 1; j < E; ++j) zprod += p[i] * p[j];
  Chi2 c{0, 0};
  double total_p = 0;
  for (int i = 0; i < E; ++i)
    for (int j = i + 1; j < E; ++j) {
      double P = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]);
      total_p += P;
      double o = count[{i, j}], ex = N * P, exn = N * p[i] * p[j] / zprod;
      c.pl += (o - ex) * (o - ex) / ex;
      c.naive += (o - exn) * (o - exn) / exn;
    }
  CHECK(total_p == doctest::Approx(1.0).epsilon(1e-12));
  return c;
}
}  // namespace

TEST_CASE("router sample-k / VTSR: selection frequencies match Plackett–Luce (chi-square, 9 dof)") {
  const int N = 20000, E = 5, K = 2;
  const double l0[E] = {0.8, 0.2, -0.3, 0.5, -1.0};
  const double chi2_999 = 27.877;  // 0.999 quantile of chi-square with 9 dof
  auto setup = [&](Fix& f) {
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < E; ++c) f.u.value()[n * E + c] = (float)l0[c];
    f.w.value().fill(0.f);
    for (int c = 0; c < E; ++c) f.w.value()[c * E + c] = 1.f;  // W_r = I: l = u
  };
  auto probs = [&](double T) {
    std::vector<double> p(E);
    double z = 0;
    for (int e = 0; e < E; ++e) z += (p[e] = std::exp(l0[e] / T));
    for (auto& x : p) x /= z;
    return p;
  };
  for (std::string sampler : {"gumbel", "authors"}) {
    {
      RouterConfig cfg = rcfg("sample-k");
      cfg.temp = 0.7;
      cfg.vtsr_sampler = sampler;
      Fix f(cfg, N, E, E, K, 81);
      setup(f);
      RouterOut o = f.route(ctx_of(true, 1, 8, 4));
      Chi2 c = pair_chi2(o.experts, N, probs(0.7));
      RT_REPORT("  chi2 sample-k %-8s vs PL %.2f  (vs wrong product law %.1f), 9 dof, 0.999 quantile %.2f\n",
                sampler.c_str(), c.pl, c.naive, chi2_999);
      CHECK(c.pl < chi2_999);
      CHECK(c.naive > chi2_999);  // the test has the power to reject a wrong law
    }
    {
      RouterConfig cfg = rcfg("vtsr");
      cfg.vtsr_sampler = sampler;
      Fix f(cfg, N, E, E, K, 82);
      setup(f);
      f.fill("temp.w2", 0.f);
      f.fill("temp.b2", (float)std::log(std::expm1(0.7 - 1e-6)));  // T = softplus(b) + 1e-6 = 0.7
      RouterOut o = f.route(ctx_of(true, 1, 8, 5));
      CHECK(o.temperature[0] == doctest::Approx(0.7).epsilon(1e-5));
      Chi2 c = pair_chi2(o.experts, N, probs(o.temperature[0]));
      RT_REPORT("  chi2 vtsr     %-8s vs PL %.2f  (vs wrong product law %.1f)\n", sampler.c_str(), c.pl, c.naive);
      CHECK(c.pl < chi2_999);
      CHECK(c.naive > chi2_999);
    }
  }
}

// ---- det / noisy / mc-dropout ----------------------------------------------------------------
TEST_CASE("router det: top-K of softmax(u W_r), gates renormalised, rows sum to 1") {
  const int N = 12, C = 8, E = 6, K = 3;
  Fix f(rcfg("det"), N, C, E, K, 91);
  RouterOut o = f.route(ctx_of(false, 1));
  CHECK(!o.kl.defined());
  CHECK(!o.penalty.defined());
  MatD l = mat(f.u.value()) * mat(f.w.value());
  for (int n = 0; n < N; ++n) {
    double z = 0, mx = l.row(n).maxCoeff();
    std::vector<double> p(E);
    for (int e = 0; e < E; ++e) z += (p[e] = std::exp(l(n, e) - mx));
    for (auto& x : p) x /= z;
    for (int e = 0; e < E; ++e) CHECK(o.probs.value()[n * E + e] == doctest::Approx(p[e]).epsilon(1e-5));
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double sk = 0, gs = 0;
    for (int k = 0; k < K; ++k) sk += p[order[k]];
    for (int k = 0; k < K; ++k) {
      CHECK(o.experts[n * K + k] == order[k]);
      CHECK(o.gates.value()[n * K + k] == doctest::Approx(p[order[k]] / sk).epsilon(1e-5));
      gs += o.gates.value()[n * K + k];
    }
    CHECK(gs == doctest::Approx(1.0).epsilon(1e-6));
  }
}

TEST_CASE("router noisy: evaluation equals det; training adds noise") {
  const int N = 10, C = 8, E = 6, K = 2;
  Fix d(rcfg("det"), N, C, E, K, 92);
  RouterConfig nc = rcfg("noisy");
  Fix f(nc, N, C, E, K, 92);  // same seed: same u and W_r
  Rng rng(93);
  f.randomise("w_noise", 1.0, rng);
  RouterOut od = d.route(ctx_of(false, 1)), oe = f.route(ctx_of(false, 1)), ot = f.route(ctx_of(true, 1));
  CHECK(oe.experts == od.experts);
  CHECK(oe.probs.value().to_vector() == od.probs.value().to_vector());
  CHECK(oe.gates.value().to_vector() == od.gates.value().to_vector());
  double diff = 0;
  for (int64_t i = 0; i < ot.probs.numel(); ++i) diff = std::max(diff, (double)std::abs(ot.probs.value()[i] - od.probs.value()[i]));
  CHECK(diff > 1e-2);
}

TEST_CASE("router mc-dropout: p = 0 equals det (any S); p > 0 perturbs") {
  const int N = 10, C = 8, E = 6, K = 2;
  Fix d(rcfg("det"), N, C, E, K, 94);
  RouterOut od = d.route(ctx_of(false, 1));
  for (int S : {1, 7, 35}) {
    RouterConfig mc = rcfg("mc-dropout");
    mc.dropout = 0.0;
    Fix f(mc, N, C, E, K, 94);
    RouterOut o = f.route(ctx_of(false, S));
    CHECK(o.experts == od.experts);
    for (int64_t i = 0; i < o.probs.numel(); ++i)
      CHECK(o.probs.value()[i] == doctest::Approx(od.probs.value()[i]).epsilon(1e-6));
    for (int64_t i = 0; i < o.gates.numel(); ++i)
      CHECK(o.gates.value()[i] == doctest::Approx(od.gates.value()[i]).epsilon(1e-6));
    if (S == 1) CHECK(o.probs.value().to_vector() == od.probs.value().to_vector());
  }
  RouterConfig mc = rcfg("mc-dropout");
  mc.dropout = 0.3;
  Fix f(mc, N, C, E, K, 94);
  RouterOut o = f.route(ctx_of(false, 3));
  double diff = 0;
  for (int64_t i = 0; i < o.probs.numel(); ++i) diff = std::max(diff, (double)std::abs(o.probs.value()[i] - od.probs.value()[i]));
  CHECK(diff > 1e-3);
}

// ---- padding -------------------------------------------------------------------------------
TEST_CASE("router padding: rows with mask 0 enter neither the KL nor the VTSR penalty") {
  const int N = 7, C = 16, E = 5, K = 2;
  const std::vector<uint8_t> mask = {1, 0, 1, 1, 0, 1, 0};
  struct Case {
    std::string name, post;
  };
  for (Case cs : {Case{"mfvr", ""}, Case{"fcvr", ""}, Case{"vtsr", "point"}, Case{"vtsr", "lognormal"}}) {
    RouterConfig cfg = rcfg(cs.name);
    if (!cs.post.empty()) cfg.temp_posterior = cs.post;
    Fix f(cfg, N, C, E, K, 101);
    Rng rng(102);
    if (cs.name == "vtsr") {
      f.randomise("temp.w2", 0.5, rng);
    } else {
      f.randomise("mu.w", 0.5, rng);
      f.randomise(cs.name == "fcvr" ? "chol.w" : "logvar.w", 0.4, rng);
    }
    f.mask = mask;
    bool point = cs.post == "point";
    auto reg = [&](const RouterOut& o) { return point ? o.penalty : o.kl; };
    f.u.set_requires_grad(true);
    RouterOut o = f.route(ctx_of(true, 2));
    Var r = reg(o);
    REQUIRE(r.defined());
    float base = r.item();
    vm::backward(r);
    INFO(cs.name << " " << cs.post);
    // (1) no gradient reaches padded rows' inputs; real rows do get one
    double g_pad = 0, g_real = 0;
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) (mask[n] ? g_real : g_pad) += std::abs(f.u.grad()[n * C + c]);
    CHECK(g_pad == 0.0);
    CHECK(g_real > 0.0);
    // (2) changing the padded rows changes nothing
    f.u.set_requires_grad(false);
    for (int n = 0; n < N; ++n)
      if (!mask[n])
        for (int c = 0; c < C; ++c) f.u.value()[n * C + c] = (float)(3.0 * rng.normal());
    CHECK(reg(f.route(ctx_of(true, 2))).item() == base);
    // (3) equal to the same router on the real rows alone
    Fix g(cfg, 4, C, E, K, 101);
    for (const auto& [name, v] : f.ps.all()) g.ps.get(name).value() = v.value().clone();
    int m = 0;
    for (int n = 0; n < N; ++n)
      if (mask[n]) {
        for (int c = 0; c < C; ++c) g.u.value()[m * C + c] = f.u.value()[n * C + c];
        ++m;
      }
    g.w = f.w;
    CHECK(reg(g.route(ctx_of(true, 2))).item() == doctest::Approx(base).epsilon(1e-5));
    if (point) {  // penalty = λ · mean over real tokens of −log T
      double s = 0;
      for (int n = 0; n < N; ++n)
        if (mask[n]) s -= std::log((double)o.temperature[n]);
      CHECK(base == doctest::Approx(cfg.temp_penalty * s / 4).epsilon(1e-4));
    }
  }
}

// ---- issue 16 §2: a training signal for the routers (docs/vmoer.md, "Training signal for the routers") ----

TEST_CASE("router training signal: --train-samples S >= 2 gives every expert's Δμ a task gradient; S = 1 only the K chosen") {
  // One token, so the mean head's bias b_μ (E) is that token's Δμ offset. The
  // "task" is Σ_k c_k g_k with fixed c: its gradient reaches Δμ only through
  // the gates. S = 1: g = softmax of the K selected logits, so the E − K others
  // get exactly 0. S >= 2: g = p̄_K / Σ p̄_K, p̄ a mean of S softmaxes whose
  // normalisers differ, so every logit enters.
  const int C = 16, E = 6, K = 2;
  for (std::string name : {"mfvr", "fcvr"}) {
    for (int S : {1, 4}) {
      INFO(name << " S = " << S);
      Fix f(rcfg(name), 1, C, E, K, 31);
      Rng rng(32);
      f.randomise("mu.w", 0.3, rng);
      RouterOut o = f.route(ctx_of(true, S));
      Tensor c({1, (int64_t)K});
      c[0] = 1.0f;
      c[1] = -0.7f;
      vm::backward(ops::sum_all(ops::mul(o.gates, ops::constant(c))));
      const Tensor& g = f.p("mu.b").grad();
      REQUIRE(g.defined());
      std::set<int> chosen(o.experts.begin(), o.experts.end());
      double gmax = 0;
      for (int e = 0; e < E; ++e) gmax = std::max(gmax, (double)std::abs(g[e]));
      REQUIRE(gmax > 1e-4);
      for (int e = 0; e < E; ++e) {
        INFO("expert " << e << (chosen.count(e) ? " (chosen)" : " (not chosen)") << ": " << g[e] << " of max " << gmax);
        // S = 1: zero up to float rounding (the softmax normaliser cancels in p_K / Σ p_K only in exact arithmetic)
        if (S == 1 && !chosen.count(e)) CHECK(std::abs(g[e]) < 1e-5 * gmax);
        else CHECK(std::abs(g[e]) > 1e-3 * gmax);
      }
    }
  }
}

TEST_CASE("router training signal: --logvar-init v starts σ² at e^v; --mean-init sets the mean head's scale") {
  const int N = 64, C = 32, E = 6, K = 2;
  const int H = C / 4;
  for (std::string name : {"mfvr", "fcvr"}) {
    for (double v : {0.0, -4.0, 1.5}) {
      RouterConfig cfg = rcfg(name);
      cfg.logvar_init = v;
      Fix f(cfg, N, C, E, K, 41);
      RouterOut o = f.route(ctx_of(false, 2));
      // The head's weights (std 1e-3) move log σ² by O(1e-3 · |h|); FCVR's off-diagonal L adds O(1e-6).
      double worst = 0;
      for (float s : o.post_std) worst = std::max(worst, std::abs(std::log((double)s * s) - v));
      INFO(name << " v = " << v << ": max |log σ² − v| = " << worst);
      CHECK(worst < 0.03);
    }
  }
  // mean head: small = N(0, 1e-3²) and bias 0; pytorch = U(−1/√H, 1/√H) for weight and bias (std a/√3)
  for (std::string init : {"small", "pytorch"}) {
    RouterConfig cfg = rcfg("mfvr");
    cfg.mean_init = init;
    Fix f(cfg, 2, C, E, K, 43);
    const Tensor& w = f.p("mu.w").value();
    const Tensor& b = f.p("mu.b").value();
    double s2 = 0, mx = 0, bmax = 0;
    for (int64_t i = 0; i < w.numel(); ++i) {
      s2 += (double)w[i] * w[i];
      mx = std::max(mx, (double)std::abs(w[i]));
    }
    for (int64_t i = 0; i < b.numel(); ++i) bmax = std::max(bmax, (double)std::abs(b[i]));
    double sd = std::sqrt(s2 / (double)w.numel()), a = 1.0 / std::sqrt((double)H);
    INFO(init << ": std " << sd << ", max " << mx << ", bias max " << bmax);
    if (init == "small") {
      CHECK(sd == doctest::Approx(1e-3).epsilon(0.25));
      CHECK(bmax == 0.0);
    } else {
      CHECK(sd == doctest::Approx(a / std::sqrt(3.0)).epsilon(0.2));  // 48 draws
      CHECK(mx <= a);
      CHECK(mx > 0.7 * a);
      CHECK(bmax > 0.0);
      CHECK(bmax <= a);
    }
  }
}

TEST_CASE("router training signal: --temp-penalty-norm sum = mean × real tokens (vtsr point)") {
  const int N = 9, C = 16, E = 5, K = 2;
  double pen[2];
  for (int i = 0; i < 2; ++i) {
    RouterConfig cfg = rcfg("vtsr");
    cfg.temp_penalty_norm = i == 0 ? "mean" : "sum";
    Fix f(cfg, N, C, E, K, 51);
    Rng rng(52);
    f.randomise("temp.w2", 0.5, rng);
    f.mask = {1, 1, 0, 1, 1, 1, 0, 1, 1};  // 7 real tokens
    pen[i] = f.route(ctx_of(true, 1)).penalty.item();
  }
  CHECK(pen[0] != 0);
  CHECK(pen[1] == doctest::Approx(7.0 * pen[0]).epsilon(1e-5));
}

namespace {
// A tiny LM with `router` on every MoE layer, and a padded batch of two prompts.
struct TinyLm {
  nn::ModelConfig mc;
  exp::McSet set;
  TinyLm() {
    mc.d_model = 16;
    mc.n_layers = 2;
    mc.n_heads = 2;
    mc.n_experts = 4;
    mc.top_k = 2;
    mc.d_expert = 16;
    mc.max_seq = 40;
    set.prompts = {"Definition: a cat\nA. x\nB. y\nAnswer:", "Definition: an oak tree\nA. x\nB. y\nAnswer:"};
    set.labels = {1, 3};
  }
};
}  // namespace

TEST_CASE("router training signal: --kl-norm sequence-sum = token-mean × real tokens / sequences") {
  TinyLm t;
  nn::RouterConfig rc;
  rc.name = "mfvr";
  nn::Model m(t.mc, rc, 7);
  for (auto& [name, v] : m.params().all())  // move q off the prior so the KL is not 0
    if (name.find("mu.w") != std::string::npos)
      for (int64_t i = 0; i < v.value().numel(); ++i) v.value()[i] = (float)(0.3 * std::sin(1.0 + i));
  for (int B : {1, 2}) {
    std::vector<int64_t> idx;
    for (int b = 0; b < B; ++b) idx.push_back(b);
    exp::McBatch mb = exp::make_mc_batch(t.set, idx, t.mc.max_seq);
    nn::ForwardOptions fo;
    fo.training = true;
    fo.seed = 3;
    auto res = m.forward_lm(mb.ids, mb.B, mb.T, mb.mask, mb.last, fo);
    double n_real = 0;
    for (auto x : mb.mask) n_real += x;
    exp::RunConfig cfg;
    cfg.kl_norm = "token-mean";
    double tm = exp::kl_term(cfg, res, mb.B, 100).item();
    cfg.kl_norm = "sequence-sum";
    double ss = exp::kl_term(cfg, res, mb.B, 100).item();
    cfg.kl_norm = "dataset";
    double ds = exp::kl_term(cfg, res, mb.B, 100).item();
    INFO("B = " << B << ", real tokens " << n_real);
    REQUIRE(tm > 0);
    // sequence-sum: (1/B) Σ_b Σ_layers Σ_t KL; token-mean: Σ_layers Σ_t KL / n_real
    CHECK(ss == doctest::Approx(tm * n_real / B).epsilon(1e-5));
    CHECK(ss == doctest::Approx(res.kl.item() / B).epsilon(1e-6));
    CHECK(ds == doctest::Approx(res.kl.item() / 100).epsilon(1e-6));
  }
}

TEST_CASE("router training signal: --router-loss all supervises every prompt position; answer the letter only") {
  TinyLm t;
  exp::McBatch mb = exp::make_mc_batch(t.set, {0, 1}, t.mc.max_seq);
  exp::McTargets ans = exp::mc_targets(mb, exp::RouterLoss::answer);
  exp::McTargets all = exp::mc_targets(mb, exp::RouterLoss::all);
  int n_real = 0;
  for (auto x : mb.mask) n_real += x;
  CHECK(ans.positions == mb.last);
  CHECK(ans.targets == std::vector<int32_t>{exp::answer_tokens()[1], exp::answer_tokens()[3]});
  REQUIRE((int)all.positions.size() == n_real);
  for (size_t i = 0; i < all.positions.size(); ++i) {
    int32_t r = all.positions[i];
    bool last = r == mb.last[0] || r == mb.last[1];
    CHECK(all.targets[i] == (last ? (r == mb.last[0] ? exp::answer_tokens()[1] : exp::answer_tokens()[3]) : mb.ids[(size_t)r + 1]));
  }
  // Stage 2's gradient: the router heads get a gradient from the non-answer
  // positions alone, and the two losses differ.
  nn::RouterConfig rc;
  rc.name = "mfvr";
  nn::Model m(t.mc, rc, 9);
  m.params().set_trainable(".*", false);
  m.params().set_trainable("\\.router\\.", true);
  nn::ForwardOptions fo;
  fo.training = true;
  fo.seed = 4;
  fo.samples = 2;
  auto loss_at = [&](const std::vector<int32_t>& pos, const std::vector<int32_t>& tg) {
    m.params().zero_grad();
    auto res = m.forward_lm(mb.ids, mb.B, mb.T, mb.mask, pos, fo);
    Var l = ops::cross_entropy(res.logits, tg);
    vm::backward(l);
    double g = 0;
    for (auto& [name, v] : m.params().trainable())
      if (v.grad().defined())
        for (int64_t i = 0; i < v.grad().numel(); ++i) g += std::abs(v.grad()[i]);
    return std::pair<double, double>{l.item(), g};
  };
  auto [la, ga] = loss_at(ans.positions, ans.targets);
  auto [lall, gall] = loss_at(all.positions, all.targets);
  std::vector<int32_t> pos, tg;  // the non-answer positions only
  for (size_t i = 0; i < all.positions.size(); ++i)
    if (all.positions[i] != mb.last[0] && all.positions[i] != mb.last[1]) {
      pos.push_back(all.positions[i]);
      tg.push_back(all.targets[i]);
    }
  auto [lrest, grest] = loss_at(pos, tg);
  CHECK(std::abs(lall - la) > 1e-3);
  CHECK(ga > 0);
  CHECK(grest > 0);
  // the mean over all positions = the weighted mean of its two parts
  CHECK(lall == doctest::Approx((2 * la + (double)pos.size() * lrest) / (double)all.positions.size()).epsilon(1e-4));
}

TEST_CASE("training length: --epochs steps per epoch") {
  CHECK(exp::steps_per_epoch(2120, 32, 1) == 67);
  CHECK(exp::steps_per_epoch(64, 32, 1) == 2);
  CHECK(exp::steps_per_epoch(65, 32, 2) == 2);
  CHECK(exp::steps_per_epoch(0, 8, 1) == 1);
}
