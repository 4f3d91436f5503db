#include "experiments/flops.h"

#include <algorithm>

namespace vm::exp {

RouterFlops router_flops(const nn::ModelConfig& mc, const nn::RouterConfig& rc) {
  double C = mc.d_model, E = mc.n_experts, K = mc.top_k, S = rc.samples, H = std::max(1, mc.d_model / 4);
  RouterFlops f;
  double softmax = 3 * E;                    // max, exp, normalise
  double topk = E * std::max(1.0, K);        // partial selection
  f.det = 2 * C * E + softmax + topk + 2 * K;  // + renormalisation
  // The rest per router: nn/routers/registry.cpp (det and noisy: nothing more).
  nn::RouterCost rest = nn::router_info(rc.name).flops(nn::RouterDims{C, E, K, S, H, softmax, topk}, rc);
  f.heads = rest.heads;
  f.sampling = rest.sampling;
  return f;
}

ModelFlops model_flops(const nn::ModelConfig& mc, const nn::RouterConfig& rc, const std::vector<int>& bayes_layers,
                       int T) {
  double C = mc.d_model, F = mc.d_expert, K = mc.top_k, V = mc.vocab;
  double keys = (T + 1) / 2.0;
  double ffn = (mc.act == nn::Act::swiglu ? 6 : 4) * C * F + (mc.act == nn::Act::swiglu ? 2 : 1) * F;
  ModelFlops f;
  nn::RouterConfig det = rc;
  det.name = nn::RouterKind::det;
  for (int l = 0; l < mc.n_layers; ++l) {
    f.attention += 2 * C * 3 * C + 2 * C * C + 4 * keys * C + 3 * keys * (mc.n_heads);
    if (mc.is_moe_layer(l)) {
      f.experts += K * ffn + (mc.shared_expert ? ffn : 0) + K * C;  // + gate-weighted combine
      bool b = std::find(bayes_layers.begin(), bayes_layers.end(), l) != bayes_layers.end();
      f.routers += (b ? router_flops(mc, rc) : router_flops(mc, det)).total();
    } else {
      f.dense_ffn += ffn;
    }
  }
  f.head = mc.kind == nn::ModelKind::lm ? 2 * C * V : 0;
  return f;
}

nlohmann::json flops_json(nn::Model& model, int T) {
  const auto& mc = model.config();
  const auto& rc = model.router_config();
  auto bl = model.bayes_layer_ids();
  ModelFlops m = model_flops(mc, rc, bl, T);
  nn::RouterConfig det = rc;
  det.name = nn::RouterKind::det;
  ModelFlops d = model_flops(mc, det, {}, T);
  RouterFlops rf = router_flops(mc, rc);
  return {{"context", T},
          {"samples", rc.samples},
          {"per_token", m.total()},
          {"per_token_det", d.total()},
          {"overhead_vs_det", m.total() / d.total() - 1.0},
          {"parts", {{"attention", m.attention}, {"experts", m.experts}, {"dense_ffn", m.dense_ffn},
                     {"routers", m.routers}, {"head", m.head}}},
          {"router_per_layer", {{"det", rf.det}, {"heads", rf.heads}, {"sampling", rf.sampling}}}};
}

}  // namespace vm::exp
