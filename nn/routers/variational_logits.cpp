// nn/routers/variational_logits.cpp — amortised variational inference over
// the router logits (docs/vmoer.md §2; method notes §1a). Two families:
//
//   prior       p(l | u) = N(l_det(u), s² I),        l_det = u W_r (frozen)
//   posterior   q(l | u) = N(l_det + Δμ(u), Σ(u))
//   trunk       h = ReLU(u W_t)                       W_t: (C, C/4), no bias
//   mean head   Δμ = h W_μ + b_μ
//   MFVR        log σ² = h W_σ + b_σ,  Σ = diag(σ²)
//   FCVR        v = h W_L + b_L ∈ R^{E(E+1)/2} -> L lower triangular, L_ee = exp(v_ee), Σ = L Lᵀ
//   sample      l* = l_det + Δμ + σ ⊙ ε   |   l* = l_det + Δμ + L ε,   ε ~ N(0, I)
//   KL (MF)     ½ Σ_e (σ_e²/s² + Δμ_e²/s² − 1 − log σ_e² + log s²)
//   KL (FC)     ½ (tr(L Lᵀ)/s² + ‖Δμ‖²/s² − E + E log s² − 2 Σ_e log L_ee)
//   routing     p̄ = (1/S) Σ_s softmax(l*_s);  top-K of p̄;  g = p̄_K / Σ p̄_K
// Initialisation (docs/vmoer.md, "Training signal for the routers"):
//   mean head   --mean-init small:   W_μ ~ N(0, 1e-3²), b_μ = 0  (Δμ ≈ 0)
//               --mean-init pytorch: W_μ, b_μ ~ U(−1/√H, 1/√H)   (nn.Linear's default, the authors' heads)
//   cov head    W ~ N(0, 1e-3²);  bias v = --logvar-init:
//               MFVR  b_σ = v                 -> σ² = e^v at W = 0
//               FCVR  b_L[diag] = v/2, else 0 -> L_ee = e^{v/2}, Σ_ee = e^v at W = 0
// With the defaults (small, v = 0) q starts at N(l_det, I), the prior when s = 1.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/cpu/fastmath.h"
#include "nn/noise.h"
#include "nn/routers/common.h"
#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/moe.h"
#endif

namespace vm::nn {

// Evaluation without a graph: p̄ = (1/S) Σ_s softmax(mean + noise_s) token by
// token, with the S samples of a token in a small buffer instead of the
// (S·N, E) tensors (and S copies of L) the differentiable path builds. Same
// noise (token g = row0 + n's S·E normals of the "logit-eps" stream, one block
// at philox_sample_counter(g, S, 0, E), drawn in one vectorised call; the S·E
// exponentials in one vectorised pass too) and the same arithmetic as that path, up to the compiler's FMA contraction
// (tests/test_routers.cpp compares the two). scale: σ (N, E) for MFVR, L (N,
// E, E) for FCVR.
static Tensor mc_mean_probs(const Tensor& mean, const Tensor& scale, bool full, int S, uint64_t seed,
                            uint64_t stream, int64_t row0) {
  const int64_t N = mean.size(0);
  const int E = (int)mean.size(1);
  Tensor pbar = Tensor::empty({N, (int64_t)E});
  const float inv_s = (float)(1.0 / S);
#pragma omp parallel if (N * S * E > 32768)
  {
    // one token at a time: its S samples side by side, (S, E) row-major
    std::vector<float> eps((size_t)S * E), l((size_t)S * E), acc((size_t)E);
    std::vector<float> eps_t(full ? (size_t)S * E : 0), l_t(full ? (size_t)S * E : 0);  // (E, S): FCVR only
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* mu = mean.data() + n * E;
      philox_normals(seed, stream, philox_sample_counter(row0 + n, S, 0, E), (uint64_t)S * E, eps.data());  // ε (S, E)
      if (full) {
        // L ε for all S samples at once, over the samples as the vector
        // lanes: ε transposed to (E, S), then row i of (L ε)ᵀ is
        // Σ_{j ≤ i} L_ij ε_j, summed j = 0, 1, ..., i as in tril_matvec.
        const float* Ln = scale.data() + n * E * E;
        for (int s = 0; s < S; ++s)
          for (int j = 0; j < E; ++j) eps_t[(size_t)j * S + s] = eps[(size_t)s * E + j];
        for (int i = 0; i < E; ++i) {
          float* li = l_t.data() + (size_t)i * S;
          std::fill(li, li + S, 0.0f);
          for (int j = 0; j <= i; ++j) {
            const float a = Ln[i * E + j];
            const float* ej = eps_t.data() + (size_t)j * S;
            for (int s = 0; s < S; ++s) li[s] += a * ej[s];
          }
        }
        for (int s = 0; s < S; ++s)
          for (int i = 0; i < E; ++i) l[(size_t)s * E + i] = l_t[(size_t)i * S + s];
      }
      for (int s = 0; s < S; ++s) {
        const float* es = eps.data() + (size_t)s * E;
        float* ls = l.data() + (size_t)s * E;
        if (!full) {
          const float* sg = scale.data() + n * E;
          for (int e = 0; e < E; ++e) ls[e] = sg[e] * es[e];  // σ ⊙ ε
        }  // FCVR: ls = (L ε)_s, above
        float m = -std::numeric_limits<float>::infinity();
        for (int e = 0; e < E; ++e) {
          ls[e] = mu[e] + ls[e];  // l*_s = mean + noise
          m = std::max(m, ls[e]);
        }
        for (int e = 0; e < E; ++e) ls[e] -= m;  // l*_s − max
      }
      kernels::fast_expf_n(l.data(), (int64_t)S * E);  // all S·E exponentials in one vectorised pass
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int s = 0; s < S; ++s) {  // p_s = e^{l*_s − max} / Σ_e, accumulated in sample order
        const float* ls = l.data() + (size_t)s * E;
        float z = 0;
        for (int e = 0; e < E; ++e) z += ls[e];
        const float inv = 1.0f / z;
        for (int e = 0; e < E; ++e) acc[e] += ls[e] * inv;
      }
      for (int e = 0; e < E; ++e) pbar[n * E + e] = acc[e] * inv_s;
    }
  }
  return pbar;
}

// post_std (N, E) and ILV (N) from log σ² (MFVR) or L (FCVR), computed once
// on a host copy when either is first read.
class VarDiagnostics {
 public:
  VarDiagnostics(Tensor src, bool full, int64_t N, int E) : src_(std::move(src)), full_(full), N_(N), E_(E) {}
  const std::pair<std::vector<float>, std::vector<float>>& get() {
    if (done_) return out_;
    const Tensor h = src_.to(Device::CPU);
    auto& [post_std, ilv] = out_;
    post_std.resize((size_t)N_ * E_);
    ilv.assign((size_t)N_, 0.f);
    for (int64_t n = 0; n < N_; ++n)
      for (int e = 0; e < E_; ++e) {
        double var = 0;
        if (!full_) {
          var = std::exp((double)h[n * E_ + e]);
        } else {
          for (int j = 0; j <= e; ++j) {
            double l = h[(n * E_ + e) * E_ + j];
            var += l * l;  // Σ_ee = Σ_j L_ej²
          }
        }
        post_std[(size_t)(n * E_ + e)] = (float)std::sqrt(var);
        ilv[(size_t)n] += (float)var;
      }
    done_ = true;
    src_ = Tensor();
    return out_;
  }

 private:
  Tensor src_;
  bool full_;
  int64_t N_;
  int E_;
  bool done_ = false;
  std::pair<std::vector<float>, std::vector<float>> out_;
};

class VariationalLogitRouter : public Router {
 public:
  VariationalLogitRouter(bool full_cov, const RouterConfig& cfg, ParamStore& ps, const std::string& prefix, int C,
                         int E, uint64_t seed)
      : full_(full_cov), s_(cfg.prior_scale), E_(E) {
    int H = std::max(1, C / 4);
    w_t_ = ps.normal(prefix + "trunk.w", {C, H}, 1.0 / std::sqrt((double)C), seed);
    if (cfg.mean_init == MeanInit::pytorch) {
      const double a = 1.0 / std::sqrt((double)H);  // fan_in = H
      w_mu_ = uniform(ps, prefix + "mu.w", {H, E}, a, seed);
      b_mu_ = uniform(ps, prefix + "mu.b", {E}, a, seed);
    } else {
      w_mu_ = ps.normal(prefix + "mu.w", {H, E}, 1e-3, seed);
      b_mu_ = ps.constant(prefix + "mu.b", {E}, 0.0f);
    }
    int P = full_ ? E * (E + 1) / 2 : E;
    w_cov_ = ps.normal(prefix + (full_ ? "chol.w" : "logvar.w"), {H, P}, 1e-3, seed);
    b_cov_ = ps.constant(prefix + (full_ ? "chol.b" : "logvar.b"), {P}, 0.0f);
    Tensor b({(int64_t)P});  // log σ² = v (MFVR); log L_ee = v/2 on the packed diagonal (FCVR)
    for (int e = 0; e < E; ++e) b[full_ ? e * (e + 1) / 2 + e : e] = (float)(full_ ? cfg.logvar_init / 2 : cfg.logvar_init);
    b_cov_.value() = b;
  }
  // A parameter drawn from U(−a, a) with its own Philox stream (hash of the name), like ParamStore::normal.
  static Var uniform(ParamStore& ps, const std::string& name, Shape shape, double a, uint64_t seed) {
    Var& v = ps.constant(name, shape, 0.0f);
    Tensor t(shape);
    const uint64_t stream = name_hash(name);
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = (float)(a * (2.0 * philox_uniform(seed, stream, (uint64_t)i) - 1.0));
    v.value() = t;
    return v;
  }
  std::string name() const override { return full_ ? "fcvr" : "mfvr"; }
  bool bayesian() const override { return true; }

  RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>& mask,
                  const RouteCtx& ctx) override {
    int64_t N = u.size(0);
    int E = E_, S = std::max(1, ctx.samples);
    RouterOut out;
    out.logits = ops::matmul(u, w_router);                                    // l_det: (N, E)
    Var h = ops::relu(ops::matmul(u, w_t_));                                  // (N, H)
    Var dmu = ops::add(ops::matmul(h, w_mu_), b_mu_);                         // Δμ: (N, E)
    Var mean = ops::add(out.logits, dmu);                                     // posterior mean
    Var raw = ops::add(ops::matmul(h, w_cov_), b_cov_);                       // (N, E) or (N, E(E+1)/2)
    // ε: (S*N, E), one stream per (layer, step): fixed for a given call, so
    // finite differences through the router see the same noise.
    const uint64_t stream = router_stream(ctx.seed, ctx.layer, ctx.step, "logit-eps");
    const bool no_graph = !grad_enabled() && S > 1;  // evaluation: the fused loop above
    double s2 = s_ * s_;
    Var L, sigma, logvar, kl_tok;                                             // kl_tok: (N)
    if (!full_) {
      logvar = raw;                                                           // log σ²
      sigma = ops::exp(ops::mul_scalar(logvar, 0.5));                         // σ
      // KL_MF = ½ Σ_e (σ²/s² + Δμ²/s² − 1 − log σ² + log s²)
      kl_tok = ops::kl_mf(dmu, logvar, s2);
    } else {
      L = ops::fill_tril_expdiag(raw, E);                                     // (N, E, E)
      // KL_FC = ½ (tr(LLᵀ)/s² + ‖Δμ‖²/s² − E + E log s² − 2 Σ log L_ee)
      kl_tok = ops::kl_fc(dmu, L, s2);
    }
    const Device dev = u.value().device();
    if (no_graph && dev == Device::CUDA) {
#ifdef VMOER_HAVE_CUDA
      VM_CHECK(ctx.whole(N), "mfvr/fcvr: the GPU's fused evaluation loop takes a whole batch (row offsets are for "
                             "training shards)");
      // The S-sample loop fused in one launch: each token's samples stay on
      // the SM (kernels/cuda/moe.h vr_route_fwd), same ε counters as below.
      const Tensor& scale = full_ ? L.value() : sigma.value();
      Tensor pbar({N, (int64_t)E}, Device::CUDA, false);
      if (N > 0)
        kernels::cuda::vr_route_fwd<float>(mean.value().data(), scale.data(), N, E, S, full_, ctx.seed, stream, K,
                                    pbar.data(), nullptr, nullptr);
      out.probs = ops::constant(pbar);
#endif
    } else if (no_graph) {
      out.probs = ops::constant(
          mc_mean_probs(mean.value(), full_ ? L.value() : sigma.value(), full_, S, ctx.seed, stream, ctx.row0));
    } else {
      Var eps = ops::constant(dev == Device::CUDA ? device_sample_normals(S, N, E, ctx.seed, stream, ctx.row0)
                                                  : routers::sample_normals(S, N, E, ctx.seed, stream, ctx.row0));
      Var noise = !full_ ? ops::mul(routers::tile_rows(sigma, S), eps)  // σ ⊙ ε
                         : ops::tril_matvec(S == 1 ? L : ops::concat(std::vector<Var>((size_t)S, L), 0), eps);  // L ε
      Var lstar = ops::add(routers::tile_rows(mean, S), noise);               // l*: (S*N, E)
      out.probs = routers::mean_over_samples(ops::softmax(lstar), S, N);      // p̄: (N, E)
    }
    auto tk = topk_renormalised(out.probs, K);
    out.experts = std::move(tk.experts);
    out.gates = tk.gates;
    out.kl = routers::masked_sum(kl_tok, mask);
    // Diagnostics: ILV = tr Σ, posterior mean and per-logit std, made on the
    // host when first read (one download of the tensors they come from).
    const Tensor mean_v = mean.value();
    out.post_mean = HostFloats::later([mean_v] { return mean_v.to_vector(); });
    auto var = std::make_shared<VarDiagnostics>(full_ ? L.value() : logvar.value(), full_, N, E);
    out.post_std = HostFloats::later([var] { return var->get().first; });
    out.ilv = HostFloats::later([var] { return var->get().second; });
    return out;
  }

 private:
  bool full_;
  double s_;
  int E_;
  Var w_t_, w_mu_, b_mu_, w_cov_, b_cov_;
};

std::unique_ptr<Router> make_mfvr_router(const RouterConfig& cfg, ParamStore& ps, const std::string& prefix, int C,
                                         int E, uint64_t seed) {
  return std::make_unique<VariationalLogitRouter>(false, cfg, ps, prefix, C, E, seed);
}
std::unique_ptr<Router> make_fcvr_router(const RouterConfig& cfg, ParamStore& ps, const std::string& prefix, int C,
                                         int E, uint64_t seed) {
  return std::make_unique<VariationalLogitRouter>(true, cfg, ps, prefix, C, E, seed);
}

}  // namespace vm::nn
