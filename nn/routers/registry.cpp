// nn/routers/registry.cpp — every router, one row each: whether it is
// Bayesian, whether it has heads trained in stage 2, the RouterConfig fields
// it reads, its factory and its FLOPs formula. make_router, the trainer,
// eval, reproduce and experiments/flops.cpp read these rows; the names are
// EnumNames<RouterKind> (nn/router.h). Adding a router: its enumerator and
// name, its file in nn/routers/, and a row here (the static_asserts below
// fail until the row exists).
#include <array>

#include "nn/router.h"

namespace vm::nn {

// Defined in nn/routers/*.cpp
std::unique_ptr<Router> make_det_router();
std::unique_ptr<Router> make_noisy_router(ParamStore& params, const std::string& prefix, int C, int E, uint64_t seed);
std::unique_ptr<Router> make_sample_k_router(const RouterConfig& cfg);
std::unique_ptr<Router> make_mc_dropout_router(const RouterConfig& cfg);
std::unique_ptr<Router> make_mfvr_router(const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t);
std::unique_ptr<Router> make_fcvr_router(const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t);
std::unique_ptr<Router> make_vtsr_router(const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t);

namespace {

using Dims = RouterDims;

RouterCost no_cost(const Dims&, const RouterConfig&) { return {}; }

// mfvr / fcvr: trunk Linear(d → d/4) + ReLU, mean head, (log-)variance or
// Cholesky head (+ exp of the diagonal); per sample σ ⊙ ε or L ε (lower
// triangle), add the mean, softmax; average the S probabilities, top-K of p̄.
RouterCost variational_cost(const Dims& d, bool full) {
  double C = d.C, E = d.E, S = d.S, H = d.H;
  RouterCost f;
  double trunk = 2 * C * H + H;
  double mu = 2 * H * E;
  double cov = !full ? 2 * H * E + 2 * E : 2 * H * E * (E + 1) / 2 + E;
  f.heads = trunk + mu + cov;
  double transform = !full ? 2 * E : E * (E + 1);
  f.sampling = S * (transform + E + d.softmax) + S * E + d.topk;
  return f;
}

constexpr std::array<RouterInfo, (size_t)RouterKind::count_> kRouters{{
    {RouterKind::det, false, false, "",
     [](const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t) { return make_det_router(); },
     no_cost},
    // Trained with the model (pretraining, fine-tuning); routes like det at evaluation.
    {RouterKind::noisy, false, false, "",
     [](const RouterConfig&, ParamStore& ps, const std::string& prefix, int C, int E, uint64_t seed) {
       return make_noisy_router(ps, prefix, C, E, seed);
     },
     no_cost},
    // One selection per token, as vtsr: S does not apply.
    {RouterKind::sample_k, true, false, "temp vtsr_sampler",
     [](const RouterConfig& cfg, ParamStore&, const std::string&, int, int, uint64_t) {
       return make_sample_k_router(cfg);
     },
     [](const Dims& d, const RouterConfig&) {
       RouterCost f;
       f.sampling = d.E + 2 * d.E + d.topk + 3 * d.K;
       return f;
     }},
    {RouterKind::mc_dropout, true, false, "dropout samples train_samples",
     [](const RouterConfig& cfg, ParamStore&, const std::string&, int, int, uint64_t) {
       return make_mc_dropout_router(cfg);
     },
     [](const Dims& d, const RouterConfig&) {
       RouterCost f;
       f.heads = d.S * d.C;                                                   // dropout masks on the router input
       f.sampling = (d.S - 1) * 2 * d.C * d.E + d.S * d.E + d.softmax + d.topk;  // S router products, average logits
       return f;
     }},
    {RouterKind::mfvr, true, true, "prior_scale samples train_samples logvar_init mean_init", make_mfvr_router,
     [](const Dims& d, const RouterConfig&) { return variational_cost(d, false); }},
    {RouterKind::fcvr, true, true, "prior_scale samples train_samples logvar_init mean_init", make_fcvr_router,
     [](const Dims& d, const RouterConfig&) { return variational_cost(d, true); }},
    // One selection per token per forward pass, in training and evaluation
    // alike (the experts run once, on the sampled set): S does not apply.
    {RouterKind::vtsr, true, true, "temp_mode temp_posterior temp_penalty temp_penalty_norm temp_prior_scale vtsr_sampler",
     make_vtsr_router,
     [](const Dims& d, const RouterConfig& cfg) {
       double C = d.C, E = d.E, H = d.H;
       RouterCost f;
       double out = cfg.temp_mode == TempMode::per_expert ? E : 1;
       f.heads = 2 * C * H + H + 2 * H * out + 3 * out;  // MLP + softplus
       f.sampling = E /*scale l/T*/ + 2 * E /*Gumbel noise add*/ + d.topk + 3 * d.K /*gate softmax*/;
       return f;
     }},
}};

// Completeness: a row for every RouterKind, in enumerator order. (That each
// row has a factory and a formula is checked in router_info and by
// tests/test_config.cpp: comparing a function pointer with null is not a
// constant expression under -fsanitize=address.)
constexpr bool registry_complete() {
  for (size_t i = 0; i < kRouters.size(); ++i)
    if (kRouters[i].kind != (RouterKind)i) return false;
  return true;
}
static_assert(registry_complete(), "nn/routers/registry.cpp: every RouterKind needs its row, in enumerator order");

}  // namespace

const RouterInfo& router_info(RouterKind kind) {
  VM_CHECK((size_t)kind < kRouters.size(), "router_info: not a router");
  const RouterInfo& r = kRouters[(size_t)kind];
  VM_CHECK(r.make && r.flops, "nn/routers/registry.cpp: router row without a factory or a FLOPs formula");
  return r;
}

bool router_reads(RouterKind kind, std::string_view key) {
  std::string_view p = router_info(kind).params;
  for (size_t i = 0; i < p.size();) {
    size_t j = p.find(' ', i);
    if (j == std::string_view::npos) j = p.size();
    if (p.substr(i, j - i) == key) return true;
    i = j + 1;
  }
  return false;
}

RouterKind layer_router(const RouterConfig& cfg, bool bayes_layer) { return bayes_layer ? cfg.name.value() : RouterKind::det; }

std::unique_ptr<Router> make_router(const RouterConfig& cfg, bool bayes_layer, ParamStore& params,
                                    const std::string& prefix, int C, int E, uint64_t seed) {
  return router_info(layer_router(cfg, bayes_layer)).make(cfg, params, prefix, C, E, seed);
}

}  // namespace vm::nn
