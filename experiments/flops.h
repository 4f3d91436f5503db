// experiments/flops.h — analytic forward FLOPs per token, per layer and part.
// Conventions: a multiply-add counts 2 FLOPs; exp/log/sqrt and comparisons
// count 1; attention counts the causal average of (T+1)/2 keys per query.
#pragma once
#include <nlohmann/json.hpp>

#include "nn/transformer.h"

namespace vm::exp {

struct RouterFlops {
  double det = 0;       // l = u W_r, softmax, top-K
  double heads = 0;     // variational heads / temperature net / dropout mask
  double sampling = 0;  // mfvr/fcvr/mc-dropout: S samples (noise, softmax, averaging); sample-k/vtsr: one selection
  double total() const { return det + heads + sampling; }
};
// Router FLOPs per token for the router `rc` (with S = rc.samples at evaluation).
RouterFlops router_flops(const nn::ModelConfig& mc, const nn::RouterConfig& rc);

struct ModelFlops {
  double attention = 0, experts = 0, dense_ffn = 0, routers = 0, head = 0;
  double total() const { return attention + experts + dense_ffn + routers + head; }
};
// Whole-model forward FLOPs per token at context length T.
ModelFlops model_flops(const nn::ModelConfig& mc, const nn::RouterConfig& rc, const std::vector<int>& bayes_layers,
                       int T);
// JSON with the model's FLOPs per token and the overhead against `det`.
nlohmann::json flops_json(nn::Model& model, int T);

}  // namespace vm::exp
