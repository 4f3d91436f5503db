// nn/routers/bayes_factory.cpp — picks the stochastic / Bayesian router by name.
#include "nn/router.h"

namespace vm::nn {

std::unique_ptr<Router> make_sample_k_router(const RouterConfig& cfg);
std::unique_ptr<Router> make_mc_dropout_router(const RouterConfig& cfg);
std::unique_ptr<Router> make_mfvr_router(const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t);
std::unique_ptr<Router> make_fcvr_router(const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t);
std::unique_ptr<Router> make_vtsr_router(const RouterConfig&, ParamStore&, const std::string&, int, int, uint64_t);

std::unique_ptr<Router> make_bayesian_router(const RouterConfig& cfg, ParamStore& params, const std::string& prefix,
                                             int C, int E, uint64_t seed) {
  if (cfg.name == RouterKind::sample_k) return make_sample_k_router(cfg);
  if (cfg.name == RouterKind::mc_dropout) return make_mc_dropout_router(cfg);
  if (cfg.name == RouterKind::mfvr) return make_mfvr_router(cfg, params, prefix, C, E, seed);
  if (cfg.name == RouterKind::fcvr) return make_fcvr_router(cfg, params, prefix, C, E, seed);
  if (cfg.name == RouterKind::vtsr) return make_vtsr_router(cfg, params, prefix, C, E, seed);
  fail("--router: router '" + cfg.name.str() + "' is not Bayesian");
}

}  // namespace vm::nn
