// nn/config.h — every architecture and routing hyper-parameter of a model.
// Stored as JSON in the checkpoint's metadata so a checkpoint is self-describing.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/fields.h"

namespace vm::nn {

enum class ModelKind : uint8_t { lm, vit };
enum class Norm : uint8_t { rms, layer };
enum class Act : uint8_t { gelu, swiglu };

}  // namespace vm::nn

namespace vm {
template <>
struct EnumNames<nn::ModelKind> {
  static constexpr std::array<std::string_view, 2> names{"lm", "vit"};
};
template <>
struct EnumNames<nn::Norm> {
  static constexpr std::array<std::string_view, 2> names{"rms", "layer"};
};
template <>
struct EnumNames<nn::Act> {
  static constexpr std::array<std::string_view, 2> names{"gelu", "swiglu"};
};
static_assert(enum_names_ok<nn::ModelKind>() && enum_names_ok<nn::Norm>() && enum_names_ok<nn::Act>());
}  // namespace vm

namespace vm::nn {

struct ModelConfig {
  // ---- kind ------------------------------------------------------------------
  Named<ModelKind> kind = ModelKind::lm;  // lm: byte-level causal LM; vit: image classifier
  // ---- sizes -------------------------------------------------------------------
  int vocab = 259;    // 256 bytes + BOS, EOS, PAD
  int max_seq = 256;  // positions (lm)
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  Named<Norm> norm = Norm::rms;
  bool tied_head = true;     // output head = token embedding transposed (lm)
  // ---- MoE ---------------------------------------------------------------------
  int n_experts = 8;
  int top_k = 2;
  int d_expert = 512;            // hidden size of each expert MLP
  Named<Act> act = Act::gelu;    // gelu (2-layer MLP) | swiglu
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
  bool operator==(const ModelConfig&) const = default;
};

}  // namespace vm::nn

namespace vm {
// One row per member (core/fields.h): its key in the checkpoint's "model"
// metadata (the member's name), its flag, where it is used, its help.
template <>
struct FieldTable<nn::ModelConfig> {
  using C = nn::ModelConfig;
  static constexpr auto rows = std::tuple{
      VM_FIELD(kind, "--model-kind", Group::model, Use::train, "byte-level LM or image classifier (ViT)"),
      VM_FIELD(vocab, "", Group::model, Use::derived, "no flag: fixed by the byte tokenizer (256 bytes + BOS, EOS, PAD)"),
      VM_FIELD(max_seq, "--max-seq", Group::model, Use::train, "positions"),
      VM_FIELD(d_model, "--d-model", Group::model, Use::train, "model width"),
      VM_FIELD(n_layers, "--layers", Group::model, Use::train, "transformer blocks"),
      VM_FIELD(n_heads, "--heads", Group::model, Use::train, "attention heads"),
      VM_FIELD(norm, "--norm", Group::model, Use::train, "normalisation"),
      VM_FIELD(tied_head, "--tied-head", Group::model, Use::train | Use::bool_arg,
               "tie the output head to the token embedding"),
      VM_FIELD(n_experts, "--experts", Group::model, Use::train | Use::repro | Use::ablate, "E experts per MoE layer"),
      VM_FIELD(top_k, "--top-k", Group::model, Use::train | Use::repro | Use::ablate, "K experts per token"),
      VM_FIELD(d_expert, "--d-expert", Group::model, Use::train, "expert hidden size"),
      VM_FIELD(act, "--act", Group::model, Use::train, "expert activation"),
      VM_FIELD(shared_expert, "--shared-expert", Group::model, Use::train | Use::bool_arg,
               "add a DeepSeek-style shared expert"),
      VM_FIELD(moe_layers, "--moe-layers", Group::model, Use::train, "layers with MoE FFN (default: all)"),
      VM_FIELD(capacity_factor, "--capacity-factor", Group::model, Use::train, "0 = dropless"),
      VM_FIELD(image_size, "", Group::model, Use::derived, "no flag: fixed by the image data (28 x 28 pixels)"),
      VM_FIELD(patch, "--patch", Group::model, Use::train, "vit: patch side in pixels"),
      VM_FIELD(n_classes, "", Group::model, Use::derived, "no flag: fixed by the image data (10 classes)"),
  };
};
static_assert(fields_complete<nn::ModelConfig>(), "every member of ModelConfig needs a row in its table");
}  // namespace vm

namespace vm::nn {

void to_json(nlohmann::json& j, const ModelConfig& c);
void from_json(const nlohmann::json& j, ModelConfig& c);

}  // namespace vm::nn
