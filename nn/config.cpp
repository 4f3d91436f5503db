#include "nn/config.h"

#include <algorithm>

#include "core/tensor.h"

namespace vm::nn {

bool ModelConfig::is_moe_layer(int layer) const {
  return moe_layers.empty() || std::find(moe_layers.begin(), moe_layers.end(), layer) != moe_layers.end();
}

void ModelConfig::validate() const {
  auto need = [](bool ok, const std::string& m) {
    if (!ok) fail("model config: " + m);
  };
  need(d_model > 0 && n_layers > 0 && n_heads > 0, "d_model, n_layers and n_heads must be positive");
  need(d_model % n_heads == 0, "d_model " + std::to_string(d_model) + " is not divisible by n_heads " +
                                   std::to_string(n_heads));
  need(n_experts >= 1, "n_experts must be >= 1");
  need(top_k >= 1 && top_k <= n_experts, "top_k = " + std::to_string(top_k) + " must be in [1, n_experts = " +
                                             std::to_string(n_experts) + "]");
  need(d_expert > 0, "d_expert must be positive");
  need(capacity_factor >= 0, "capacity_factor must be >= 0 (0 = dropless)");
  for (int l : moe_layers)
    need(l >= 0 && l < n_layers, "moe layer " + std::to_string(l) + " outside [0, " + std::to_string(n_layers) + ")");
  if (kind == ModelKind::lm) need(vocab > 0 && max_seq > 0, "vocab and max_seq must be positive");
  if (kind == ModelKind::vit)
    need(patch > 0 && image_size % patch == 0, "image_size must be a multiple of patch");
}

void to_json(nlohmann::json& j, const ModelConfig& c) { j = fields_to_json<nlohmann::json>(c); }
void from_json(const nlohmann::json& j, ModelConfig& c) { fields_from_json(j, c); }

}  // namespace vm::nn
