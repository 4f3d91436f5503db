#include "nn/router.h"

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace vm::nn {

void RouterConfig::validate(int n_layers, int n_experts, int top_k) const {
  if (samples < 1) fail("--samples: must be >= 1, got " + std::to_string(samples));
  if (train_samples < 1) fail("--train-samples: must be >= 1, got " + std::to_string(train_samples));
  if (!(temp > 0)) fail("--router-temp: must be > 0, got " + std::to_string(temp));
  if (!(dropout >= 0 && dropout < 1)) fail("--router-dropout: must be in [0, 1), got " + std::to_string(dropout));
  if (!(prior_scale > 0)) fail("--prior-scale: must be > 0, got " + std::to_string(prior_scale));
  if (!(std::isfinite(logvar_init) && std::abs(logvar_init) <= 30))
    fail("--logvar-init: must be a finite number in [-30, 30], got " + std::to_string(logvar_init));
  if (!(jitter >= 0 && jitter < 1)) fail("--router-jitter: must be in [0, 1), got " + std::to_string(jitter));
  if (top_k > n_experts)
    fail("--top-k: K = " + std::to_string(top_k) + " exceeds the number of experts E = " + std::to_string(n_experts));
  for (int l : bayes_layers)
    if (l < 0 || l >= n_layers)
      fail("--bayes-layers: layer " + std::to_string(l) + " outside [0, " + std::to_string(n_layers) + ")");
}

void to_json(nlohmann::json& j, const RouterConfig& c) { j = fields_to_json<nlohmann::json>(c); }
void from_json(const nlohmann::json& j, RouterConfig& c) { fields_from_json(j, c); }

HostFloats::HostFloats(std::vector<float> values) : s_(std::make_shared<State>()) { s_->values = std::move(values); }
HostFloats HostFloats::later(std::function<std::vector<float>()> make) {
  HostFloats h;
  h.s_ = std::make_shared<State>();
  h.s_->make = std::move(make);
  return h;
}
const std::vector<float>& HostFloats::get() const {
  static const std::vector<float> none;
  if (!s_) return none;
  if (s_->make) {
    s_->values = s_->make();
    s_->make = nullptr;
  }
  return s_->values;
}
bool HostFloats::computed() const { return !s_ || !s_->make; }

TopKGates topk_renormalised(const Var& probs, int K) {
  auto tk = ops::topk_gates(probs, K);  // g_k = p_k / Σ_j p_j over the K chosen
  return {std::move(tk.indices), tk.values};
}

uint64_t router_stream(uint64_t seed, int layer, uint64_t step, const char* purpose) {
  return name_hash(std::string(purpose) + "/" + std::to_string(layer) + "/" + std::to_string(step)) ^ seed;
}

float count_real(const std::vector<uint8_t>& mask) {
  float n = 0;
  for (auto m : mask) n += m ? 1.f : 0.f;
  return n;
}

}  // namespace vm::nn
