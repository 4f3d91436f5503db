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
  need(kind == "lm" || kind == "vit", "kind must be lm or vit, got '" + kind + "'");
  need(d_model > 0 && n_layers > 0 && n_heads > 0, "d_model, n_layers and n_heads must be positive");
  need(d_model % n_heads == 0, "d_model " + std::to_string(d_model) + " is not divisible by n_heads " +
                                   std::to_string(n_heads));
  need(norm == "rms" || norm == "layer", "norm must be rms or layer, got '" + norm + "'");
  need(act == "gelu" || act == "swiglu", "act must be gelu or swiglu, got '" + act + "'");
  need(n_experts >= 1, "n_experts must be >= 1");
  need(top_k >= 1 && top_k <= n_experts, "top_k = " + std::to_string(top_k) + " must be in [1, n_experts = " +
                                             std::to_string(n_experts) + "]");
  need(d_expert > 0, "d_expert must be positive");
  need(capacity_factor >= 0, "capacity_factor must be >= 0 (0 = dropless)");
  for (int l : moe_layers)
    need(l >= 0 && l < n_layers, "moe layer " + std::to_string(l) + " outside [0, " + std::to_string(n_layers) + ")");
  if (kind == "lm") need(vocab > 0 && max_seq > 0, "vocab and max_seq must be positive");
  if (kind == "vit")
    need(patch > 0 && image_size % patch == 0, "image_size must be a multiple of patch");
}

void to_json(nlohmann::json& j, const ModelConfig& c) {
  j = nlohmann::json{{"kind", c.kind},         {"vocab", c.vocab},
                     {"max_seq", c.max_seq},   {"d_model", c.d_model},
                     {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                     {"norm", c.norm},         {"tied_head", c.tied_head},
                     {"n_experts", c.n_experts}, {"top_k", c.top_k},
                     {"d_expert", c.d_expert}, {"act", c.act},
                     {"shared_expert", c.shared_expert}, {"moe_layers", c.moe_layers},
                     {"capacity_factor", c.capacity_factor}, {"image_size", c.image_size},
                     {"patch", c.patch},       {"n_classes", c.n_classes}};
}

void from_json(const nlohmann::json& j, ModelConfig& c) {
  ModelConfig d;
  c.kind = j.value("kind", d.kind);
  c.vocab = j.value("vocab", d.vocab);
  c.max_seq = j.value("max_seq", d.max_seq);
  c.d_model = j.value("d_model", d.d_model);
  c.n_layers = j.value("n_layers", d.n_layers);
  c.n_heads = j.value("n_heads", d.n_heads);
  c.norm = j.value("norm", d.norm);
  c.tied_head = j.value("tied_head", d.tied_head);
  c.n_experts = j.value("n_experts", d.n_experts);
  c.top_k = j.value("top_k", d.top_k);
  c.d_expert = j.value("d_expert", d.d_expert);
  c.act = j.value("act", d.act);
  c.shared_expert = j.value("shared_expert", d.shared_expert);
  c.moe_layers = j.value("moe_layers", d.moe_layers);
  c.capacity_factor = j.value("capacity_factor", d.capacity_factor);
  c.image_size = j.value("image_size", d.image_size);
  c.patch = j.value("patch", d.patch);
  c.n_classes = j.value("n_classes", d.n_classes);
}

}  // namespace vm::nn
