// nn/config.h — every architecture and routing hyper-parameter of a model.
// Stored as JSON in the checkpoint's metadata so a checkpoint is self-describing.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace vm::nn {

struct ModelConfig {
  // ---- kind ------------------------------------------------------------------
  std::string kind = "lm";  // "lm": byte-level causal LM; "vit": image classifier
  // ---- sizes -------------------------------------------------------------------
  int vocab = 259;    // 256 bytes + BOS, EOS, PAD
  int max_seq = 256;  // positions (lm)
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  std::string norm = "rms";  // "rms" | "layer"
  bool tied_head = true;     // output head = token embedding transposed (lm)
  // ---- MoE ---------------------------------------------------------------------
  int n_experts = 8;
  int top_k = 2;
  int d_expert = 512;            // hidden size of each expert MLP
  std::string act = "gelu";      // "gelu" (2-layer MLP) | "swiglu"
  bool shared_expert = false;    // DeepSeek-style always-on expert
  std::vector<int> moe_layers;   // layers with MoE FFN; empty = all layers
  double capacity_factor = 0.0;  // 0 = dropless; else cap = ceil(cf * N * K / E) per expert
  // ---- vision (kind = "vit") -------------------------------------------------------
  int image_size = 28;
  int patch = 4;
  int n_classes = 10;

  bool is_moe_layer(int layer) const;
  int n_patches() const { return (image_size / patch) * (image_size / patch); }
  int seq_len_vit() const { return n_patches() + 1; }  // + class token
  void validate() const;                                // throws vm::Error naming the field
};

void to_json(nlohmann::json& j, const ModelConfig& c);
void from_json(const nlohmann::json& j, ModelConfig& c);

}  // namespace vm::nn
