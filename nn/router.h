// nn/router.h — the router interface. A router turns token states u (N, C)
// and the (frozen, in stage 2) deterministic router weight W_r (C, E) into a
// choice of K experts per token with gate weights. Deterministic routers live
// here; the Bayesian ones (docs/vmoer.md) implement the same interface in
// nn/routers/, one file each.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "nn/params.h"

namespace vm::nn {

struct RouterConfig {
  std::string name = "det";  // det | noisy | sample-k | mc-dropout | mfvr | fcvr | vtsr
  double jitter = 0.0;       // multiplicative router-input jitter in training (Switch), 0 = off
  double temp = 0.3;         // sample-k: fixed temperature T
  double dropout = 0.05;     // mc-dropout: p on the router input
  double prior_scale = 1.0;  // s: prior N(l_det, s² I) (mfvr, fcvr)
  int samples = 35;          // S router samples per token at evaluation
  int train_samples = 1;     // router samples per token in training
  std::string temp_mode = "shared";      // vtsr: shared | per-expert
  std::string temp_posterior = "point";  // vtsr: point | lognormal
  double temp_penalty = 1e-3;            // vtsr point: λ in λ Σ −log T
  double temp_prior_scale = 1.0;         // vtsr lognormal: s_T, prior N(0, s_T²) on log T
  std::string vtsr_sampler = "gumbel";   // gumbel (Gumbel-top-K) | authors (hard Gumbel-softmax train, multinomial eval)
  std::vector<int> bayes_layers;         // MoE layers using `name`; empty = every MoE layer
  void validate(int n_layers, int n_experts, int top_k) const;
};

// What a router needs to know about the call.
struct RouteCtx {
  bool training = false;
  uint64_t seed = 0;      // run seed
  uint64_t step = 0;      // optimizer step (or evaluation batch index): keys the random streams
  int layer = 0;
  int samples = 1;        // S for this call (train_samples in training, samples in eval)
};

struct RouterOut {
  std::vector<int32_t> experts;  // (N, K) chosen experts, row-major
  Var gates;                     // (N, K) gate weights of the chosen experts, rows sum to 1
  Var probs;                     // (N, E) the routing distribution top-K was taken from (p̄ for MC routers)
  Var logits;                    // (N, E) deterministic logits l_det = u W_r (load-balancing/z-loss use these)
  Var kl;                        // () Σ over tokens of KL(q || p), undefined for non-Bayesian routers
  Var penalty;                   // () extra regulariser (vtsr point: λ Σ −log T), or undefined
  // Per-token diagnostics (length N, empty when not applicable); no gradient.
  std::vector<float> ilv;          // tr Σ(u): inferred logit variance
  std::vector<float> temperature;  // vtsr: mean temperature
  std::vector<float> post_std;     // (N, E) posterior std of the logits (mfvr/fcvr), for inspection
  std::vector<float> post_mean;    // (N, E) posterior mean of the logits
};

class Router {
 public:
  virtual ~Router() = default;
  virtual std::string name() const = 0;
  virtual bool bayesian() const { return false; }
  // u: (N, C), w_router: (C, E), rows with mask[n] == 0 are padding (their
  // outputs are computed but must not enter KL or penalties).
  virtual RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>& mask,
                          const RouteCtx& ctx) = 0;
};

// Build the router for one MoE layer; its parameters (if any) are created in
// `params` under `prefix` (e.g. "layers.2.moe.router.").
std::unique_ptr<Router> make_router(const RouterConfig& cfg, bool bayes_layer, ParamStore& params,
                                    const std::string& prefix, int C, int E, uint64_t seed);

// ---- shared pieces -----------------------------------------------------------------
// Top-K of probs (N, E) and gates renormalised over the K chosen: g = p_top / Σ p_top.
struct TopKGates {
  std::vector<int32_t> experts;
  Var gates;
};
TopKGates topk_renormalised(const Var& probs, int K);
// Counter-based random stream for (seed, layer, step, purpose).
uint64_t router_stream(uint64_t seed, int layer, uint64_t step, const char* purpose);
// A constant (N, C) tensor mask as a Var, 1 for real tokens.
float count_real(const std::vector<uint8_t>& mask);

}  // namespace vm::nn
