// nn/routers/vtsr.cpp — variational temperature for stochastic expert
// selection (docs/vmoer.md §3; method notes §1b).
//
//   frozen logits      l = u W_r
//   temperature net    a(u) = ReLU(u W_1 + b_1) W_2 + b_2,   W_1: (C, C/4),  out: 1 (shared) or E (per-expert)
//   point posterior    T(u) = softplus(a(u)) + 1e-6
//                      penalty = λ · mean over real tokens of Σ_j (−log T_j)    (--temp-penalty-norm mean)
//                              = λ · sum  over real tokens of Σ_j (−log T_j)    (sum: the authors' scripts)
//   lognormal          a(u) = (m, ρ):  q(log T | u) = N(m, v),  v = exp(ρ)
//                      log T = m + sqrt(v) ξ,  ξ ~ N(0, 1)  (reparameterised)
//                      prior log T ~ N(0, s_T²):  KL = ½ (v/s_T² + m²/s_T² − 1 − log v + log s_T²)
//   selection          K experts without replacement from softmax(l / T):
//                      Gumbel-top-K (default) or the authors' sequential draw
//   gates              softmax over the K selected l / T   (T learns through these)
// Low T recovers deterministic top-K; high T spreads the selection.
#include <cmath>

#include "nn/noise.h"
#include "nn/routers/common.h"
#include "nn/routers/selection.h"

namespace vm::nn {

class VtsrRouter : public Router {
 public:
  VtsrRouter(const RouterConfig& cfg, ParamStore& ps, const std::string& prefix, int C, int E, uint64_t seed)
      : cfg_(cfg) {
    int H = std::max(1, C / 4);
    out_ = cfg.temp_mode == TempMode::per_expert ? E : 1;
    lognormal_ = cfg.temp_posterior == TempPosterior::lognormal;
    w1_ = ps.normal(prefix + "temp.w1", {C, H}, 1.0 / std::sqrt((double)C), seed);
    b1_ = ps.constant(prefix + "temp.b1", {H}, 0.0f);
    w2_ = ps.normal(prefix + "temp.w2", {H, (int64_t)out_ * (lognormal_ ? 2 : 1)}, 1e-3, seed);
    // Start at T ≈ 1: softplus(0.5413) = 1 (point); m = 0, v = e^-4 (lognormal).
    Tensor b({(int64_t)out_ * (lognormal_ ? 2 : 1)});
    for (int i = 0; i < out_; ++i) {
      b[i] = lognormal_ ? 0.0f : 0.5413249f;
      if (lognormal_) b[out_ + i] = -4.0f;
    }
    b2_ = ps.constant(prefix + "temp.b2", b.shape(), 0.0f);
    b2_.value() = b;
  }
  std::string name() const override { return "vtsr"; }
  bool bayesian() const override { return true; }

  RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>& mask,
                  const RouteCtx& ctx) override {
    RouterOut out;
    out.logits = ops::matmul(u, w_router);                           // l: (N, E)
    int64_t N = u.size(0);
    Var a = ops::add(ops::matmul(ops::relu(ops::add(ops::matmul(u, w1_), b1_)), w2_), b2_);  // (N, out[·2])
    Var T;  // (N, 1) or (N, E)
    if (!lognormal_) {
      T = ops::add_scalar(ops::softplus(a), 1e-6);
      // mean: penalty = λ · (1/N_real) Σ_n mask_n Σ_j (−log T_nj);  sum: λ · Σ_n mask_n Σ_j (−log T_nj)
      Var neglog = ops::neg(ops::sum(ops::log(T), 1));
      double n_real = ctx.n_real > 0 ? ctx.n_real : std::max(1.0f, count_real(mask));  // the whole batch's
      double norm = cfg_.temp_penalty_norm == PenaltyNorm::sum ? 1.0 : n_real;
      out.penalty = ops::mul_scalar(routers::masked_sum(neglog, mask), cfg_.temp_penalty / norm);
    } else {
      Var m = ops::slice(a, 1, 0, out_), rho = ops::slice(a, 1, out_, 2 * out_);
      const uint64_t xi_stream = router_stream(ctx.seed, ctx.layer, ctx.step, "vtsr-logT");
      const uint64_t xi_first = (uint64_t)(ctx.row0 * out_);  // row n draws at its row of the whole batch
      Tensor xi = u.value().is_cuda() ? device_normals({N, (int64_t)out_}, ctx.seed, xi_stream, 1.0f, xi_first)  // on the GPU
                                      : routers::normals(N, out_, ctx.seed, xi_stream, xi_first);
      Var logT = ops::add(m, ops::mul(ops::exp(ops::mul_scalar(rho, 0.5)), ops::constant(xi)));
      T = ops::exp(logT);
      double s2 = cfg_.temp_prior_scale * cfg_.temp_prior_scale;
      // KL = ½ Σ_j (v/s² + m²/s² − 1 − log v + log s²),  log v = ρ
      Var kl_tok = ops::kl_mf(m, rho, s2);
      out.kl = routers::masked_sum(kl_tok, mask);
    }
    Var z = ops::div(out.logits, T);                                  // l / T (broadcast over experts if shared)
    out.probs = ops::softmax(z);
    uint64_t stream = router_stream(ctx.seed, ctx.layer, ctx.step, "vtsr-select");
    out.experts = routers::select_k(z.value(), K, cfg_.vtsr_sampler == VtsrSampler::authors, ctx.seed, stream,
                                    ctx.row0);  // on z's device
    out.gates = ops::softmax(ops::take_cols(z, out.experts, K));
    // the mean temperature per token, made on the host when first read (the
    // trainer logs it every step; inspection and evaluation read it too)
    const Tensor T_v = T.value();
    const int n_out = out_;
    out.temperature = HostFloats::later([T_v, N, n_out] {
      const Tensor Th = T_v.to(Device::CPU);
      std::vector<float> t((size_t)N, 0.f);
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int j = 0; j < n_out; ++j) s += Th[n * n_out + j];
        t[(size_t)n] = (float)(s / n_out);
      }
      return t;
    });
    return out;
  }

 private:
  RouterConfig cfg_;
  int out_;
  bool lognormal_;
  Var w1_, b1_, w2_, b2_;
};

std::unique_ptr<Router> make_vtsr_router(const RouterConfig& cfg, ParamStore& ps, const std::string& prefix, int C,
                                         int E, uint64_t seed) {
  return std::make_unique<VtsrRouter>(cfg, ps, prefix, C, E, seed);
}

}  // namespace vm::nn
