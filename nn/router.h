// nn/router.h — the router interface. A router turns token states u (N, C)
// and the (frozen, in stage 2) deterministic router weight W_r (C, E) into a
// choice of K experts per token with gate weights. Deterministic routers live
// here; the Bayesian ones (docs/vmoer.md) implement the same interface in
// nn/routers/, one file each.
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/fields.h"
#include "nn/params.h"

namespace vm::nn {

// Every router, in the order of the registry (nn/routers/registry.cpp).
enum class RouterKind : uint8_t { det, noisy, sample_k, mc_dropout, mfvr, fcvr, vtsr, count_ };
enum class TempMode : uint8_t { shared, per_expert };
enum class TempPosterior : uint8_t { point, lognormal };
enum class VtsrSampler : uint8_t { gumbel, authors };  // Gumbel-top-K | hard Gumbel-softmax train, multinomial eval
// Initialisation of the mean head Δμ = h W_μ + b_μ (mfvr, fcvr): W_μ ~ N(0, 1e-3²), b_μ = 0 (small), or
// PyTorch's nn.Linear default W_μ, b_μ ~ U(−1/√H, 1/√H) (pytorch; the authors' heads).
enum class MeanInit : uint8_t { small, pytorch };
// vtsr point posterior: λ · mean over real tokens of Σ_j −log T (mean), or λ · the sum over them (sum, the authors').
enum class PenaltyNorm : uint8_t { mean, sum };

}  // namespace vm::nn

namespace vm {
template <>
struct EnumNames<nn::RouterKind> {
  static constexpr std::array<std::string_view, (size_t)nn::RouterKind::count_> names{
      "det", "noisy", "sample-k", "mc-dropout", "mfvr", "fcvr", "vtsr"};
  static constexpr std::string_view noun = "router";
};
template <>
struct EnumNames<nn::TempMode> {
  static constexpr std::array<std::string_view, 2> names{"shared", "per-expert"};
};
template <>
struct EnumNames<nn::TempPosterior> {
  static constexpr std::array<std::string_view, 2> names{"point", "lognormal"};
};
template <>
struct EnumNames<nn::VtsrSampler> {
  static constexpr std::array<std::string_view, 2> names{"gumbel", "authors"};
};
template <>
struct EnumNames<nn::MeanInit> {
  static constexpr std::array<std::string_view, 2> names{"small", "pytorch"};
};
template <>
struct EnumNames<nn::PenaltyNorm> {
  static constexpr std::array<std::string_view, 2> names{"mean", "sum"};
};
static_assert(enum_names_ok<nn::RouterKind>() && enum_names_ok<nn::TempMode>() && enum_names_ok<nn::TempPosterior>() &&
              enum_names_ok<nn::VtsrSampler>() && enum_names_ok<nn::MeanInit>() && enum_names_ok<nn::PenaltyNorm>());
}  // namespace vm

namespace vm::nn {

struct RouterConfig {
  Named<RouterKind> name = RouterKind::det;  // the router of the Bayesian layers (every other MoE layer: det)
  double jitter = 0.0;       // multiplicative router-input jitter in training (Switch), 0 = off
  double temp = 0.3;         // sample-k: fixed temperature T
  double dropout = 0.05;     // mc-dropout: p on the router input
  double prior_scale = 1.0;  // s: prior N(l_det, s² I) (mfvr, fcvr)
  int samples = 35;          // S router samples per token at evaluation
  int train_samples = 1;     // router samples per token in training
  Named<TempMode> temp_mode = TempMode::shared;
  Named<TempPosterior> temp_posterior = TempPosterior::point;
  double temp_penalty = 1e-3;            // vtsr point: λ in λ Σ −log T
  double temp_prior_scale = 1.0;         // vtsr lognormal: s_T, prior N(0, s_T²) on log T
  Named<VtsrSampler> vtsr_sampler = VtsrSampler::gumbel;
  double logvar_init = 0.0;              // mfvr/fcvr: initial bias of the log σ² head (σ² starts at e^v)
  Named<MeanInit> mean_init = MeanInit::small;       // mfvr/fcvr: initialisation of the mean head Δμ
  Named<PenaltyNorm> temp_penalty_norm = PenaltyNorm::mean;  // vtsr point: mean or sum of −log T over tokens
  std::vector<int> bayes_layers;         // MoE layers using `name`; empty = every MoE layer
  void validate(int n_layers, int n_experts, int top_k) const;
  bool operator==(const RouterConfig&) const = default;
};

}  // namespace vm::nn

namespace vm {
// One row per member (core/fields.h): its key in the checkpoint's "router"
// metadata (the member's name), its flag, where it is used, its help. Which
// routers read a field is in the registry (RouterInfo::params).
template <>
struct FieldTable<nn::RouterConfig> {
  using C = nn::RouterConfig;
  static constexpr unsigned kRouterFlag = Use::train | Use::eval;
  static constexpr auto rows = std::tuple{
      VM_FIELD(name, "--router", Group::router, kRouterFlag | Use::override | Use::ablate,
               "router of the Bayesian layers (--bayes-layers)"),
      VM_FIELD(jitter, "--router-jitter", Group::router, kRouterFlag,
               "multiplicative router-input jitter in training (every router)"),
      VM_FIELD(temp, "--router-temp", Group::router, kRouterFlag | Use::override, "temperature T of the selection"),
      VM_FIELD(dropout, "--router-dropout", Group::router, kRouterFlag | Use::override, "dropout probability p on the router input"),
      VM_FIELD(prior_scale, "--prior-scale", Group::router,
               kRouterFlag | Use::override | Use::repro | Use::ablate, "s in the prior N(l_det, s² I)"),
      VM_FIELD(samples, "--samples", Group::router,
               kRouterFlag | Use::inspect | Use::override | Use::repro | Use::ablate,
               "S router samples per token at evaluation"),
      VM_FIELD(train_samples, "--train-samples", Group::router, kRouterFlag | Use::repro | Use::ablate,
               "router samples per token in training (S >= 2: routing by p̄, every expert's logit gets a gradient)"),
      VM_FIELD(temp_mode, "--temp-mode", Group::router, kRouterFlag | Use::override | Use::repro | Use::ablate,
               "one temperature per token, or one per expert"),
      VM_FIELD(temp_posterior, "--temp-posterior", Group::router, kRouterFlag | Use::override,
               "point estimate of T, or a lognormal posterior"),
      VM_FIELD(temp_penalty, "--temp-penalty", Group::router, kRouterFlag | Use::override,
               "point posterior: λ of λ Σ −log T"),
      VM_FIELD(temp_prior_scale, "--temp-prior-scale", Group::router, kRouterFlag | Use::override,
               "lognormal posterior: s_T of the prior N(0, s_T²) on log T"),
      VM_FIELD(vtsr_sampler, "--vtsr-sampler", Group::router, kRouterFlag | Use::override,
               "selection of K experts: Gumbel-top-K, or the authors' sampler"),
      VM_FIELD(logvar_init, "--logvar-init", Group::router, Use::train | Use::repro | Use::ablate,
               "mfvr/fcvr: initial bias v of the log σ² head: σ² starts at e^v (0: at the prior when s = 1)"),
      VM_FIELD(mean_init, "--mean-init", Group::router, Use::train | Use::repro | Use::ablate,
               "mfvr/fcvr: mean-head init: small (N(0, 1e-3²), bias 0) or pytorch (nn.Linear's U(±1/√fan_in))"),
      VM_FIELD(temp_penalty_norm, "--temp-penalty-norm", Group::router, Use::train | Use::repro | Use::ablate,
               "vtsr point: λ times the mean of −log T over real tokens, or the sum (the authors')"),
      VM_FIELD(bayes_layers, "", Group::router, Use::derived,
               "no flag of its own: resolved from --bayes-layers (RunConfig::bayes_spec)"),
  };
};
static_assert(fields_complete<nn::RouterConfig>(), "every member of RouterConfig needs a row in its table");
}  // namespace vm

namespace vm::nn {

// The checkpoint's "router" metadata: every field under its member's name.
void to_json(nlohmann::json& j, const RouterConfig& c);
void from_json(const nlohmann::json& j, RouterConfig& c);

// A router's per-token diagnostic (length N, or N·E), made on the host when
// first read: the router hands over a function that computes it (downloading
// what it needs from the GPU), so a step that never looks at it — a training
// step, say — pays nothing. Copies share the function and the values. Empty
// when the router has none (or N = 0).
class HostFloats {
 public:
  HostFloats() = default;
  HostFloats(std::vector<float> values);  // NOLINT(google-explicit-constructor): computed already
  static HostFloats later(std::function<std::vector<float>()> make);
  const std::vector<float>& get() const;
  operator const std::vector<float>&() const { return get(); }  // NOLINT(google-explicit-constructor)
  float operator[](size_t i) const { return get()[i]; }
  std::vector<float>::const_iterator begin() const { return get().begin(); }
  std::vector<float>::const_iterator end() const { return get().end(); }
  size_t size() const { return get().size(); }
  bool empty() const { return get().empty(); }
  bool computed() const;  // whether get() costs nothing

 private:
  struct State {
    std::function<std::vector<float>()> make;
    std::vector<float> values;
  };
  std::shared_ptr<State> s_;
};

// What a router needs to know about the call.
struct RouteCtx {
  bool training = false;
  uint64_t seed = 0;      // run seed
  uint64_t step = 0;      // optimizer step (or evaluation batch index): keys the random streams
  int layer = 0;
  int samples = 1;        // S for this call (train_samples in training, samples in eval)
  // A shard of a larger batch (data parallelism): this call's N rows are rows
  // [row0, row0 + N) of a batch of `rows` rows, and every random number of
  // row n is drawn at the counter of row row0 + n of that batch (its S
  // samples of E normals: one block at philox_sample_counter(row0 + n, S, 0, E),
  // core/philox.h), so a shard draws what the whole batch would.
  // n_real: the whole batch's real tokens, for per-token means (vtsr's mean
  // penalty). Defaults: the call is the whole batch.
  int64_t row0 = 0;
  int64_t rows = 0;       // 0: N
  double n_real = 0;      // 0: this call's real tokens
  // Expert parallelism (--expert-parallel, dist::ep_size() > 1): the MoE
  // layers send their routed rows to the members of this rank's expert group
  // that own the experts (nn::MoELayer::forward_ep). Every member of the group
  // must make the same calls in the same order (training shards: yes;
  // evaluation: its passes pad a member short of batches with discarded
  // forwards, experiments/mc_eval.cpp).
  bool expert_parallel = false;
  // With expert_parallel: the capacity of each member's tokens alone (as one
  // process forwarding that member's batch; evaluation), not the group's
  // global capacity (training: the whole batch's, docs/SCALE.md).
  bool ep_own_capacity = false;
  int64_t rows_or(int64_t N) const { return rows > 0 ? rows : N; }
  bool whole(int64_t N) const { return row0 == 0 && rows_or(N) == N; }
};

struct RouterOut {
  Indices experts;               // (N, K) chosen experts, row-major, on the router's device (host copy on demand)
  Var gates;                     // (N, K) gate weights of the chosen experts, rows sum to 1
  Var probs;                     // (N, E) the routing distribution top-K was taken from (p̄ for MC routers)
  Var logits;                    // (N, E) deterministic logits l_det = u W_r (load-balancing/z-loss use these)
  Var kl;                        // () Σ over tokens of KL(q || p), undefined for non-Bayesian routers
  Var penalty;                   // () extra regulariser (vtsr point: λ Σ −log T), or undefined
  // Per-token diagnostics (length N, empty when not applicable); no gradient;
  // made on the host when first read (HostFloats).
  HostFloats ilv;          // tr Σ(u): inferred logit variance
  HostFloats temperature;  // vtsr: mean temperature
  HostFloats post_std;     // (N, E) posterior std of the logits (mfvr/fcvr), for inspection
  HostFloats post_mean;    // (N, E) posterior mean of the logits
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
// The router a MoE layer gets: cfg.name on a Bayesian layer, det on the others.
RouterKind layer_router(const RouterConfig& cfg, bool bayes_layer);

// ---- the registry (nn/routers/registry.cpp): one row per RouterKind ----------------
// Forward FLOPs per token of a router beyond the deterministic router's
// l = u W_r, softmax and top-K (experiments/flops.cpp counts those), in the
// conventions of experiments/flops.h.
struct RouterCost {
  double heads = 0;     // variational heads / temperature net / dropout masks
  double sampling = 0;  // S samples (noise, softmax, averaging), or one stochastic selection
};
// The sizes the formulas use: C = d_model, E experts, K = top-K, S = samples,
// H = max(1, C / 4) (head width), softmax = 3E, topk = E max(1, K).
struct RouterDims {
  double C, E, K, S, H, softmax, topk;
};
struct RouterInfo {
  RouterKind kind;
  // Bayesian/stochastic: routes only the --bayes-layers of a fine-tuned model
  // (stage 2 or evaluation), never in pretraining or fine-tuning (det, noisy do).
  bool bayesian;
  // Has heads of its own, trained in stage 2 (`vmoer train --stage router`);
  // `vmoer eval --router` cannot switch a checkpoint to it.
  bool heads;
  // The RouterConfig keys it reads besides name, bayes_layers and jitter
  // (which every router shares), space-separated: the flags that apply to it.
  std::string_view params;
  std::unique_ptr<Router> (*make)(const RouterConfig& cfg, ParamStore& params, const std::string& prefix, int C,
                                  int E, uint64_t seed);
  RouterCost (*flops)(const RouterDims& d, const RouterConfig& cfg);
};
const RouterInfo& router_info(RouterKind kind);
// Whether router `kind` reads the RouterConfig field `key` (RouterInfo::params).
bool router_reads(RouterKind kind, std::string_view key);

// ---- shared pieces -----------------------------------------------------------------
// Top-K of probs (N, E) and gates renormalised over the K chosen: g = p_top / Σ p_top.
struct TopKGates {
  Indices experts;
  Var gates;
};
TopKGates topk_renormalised(const Var& probs, int K);
// Counter-based random stream for (seed, layer, step, purpose).
uint64_t router_stream(uint64_t seed, int layer, uint64_t step, const char* purpose);
// A constant (N, C) tensor mask as a Var, 1 for real tokens.
float count_real(const std::vector<uint8_t>& mask);

}  // namespace vm::nn
