#include "experiments/flops.h"

#include <algorithm>

namespace vm::exp {

RouterFlops router_flops(const nn::ModelConfig& mc, const nn::RouterConfig& rc) {
  double C = mc.d_model, E = mc.n_experts, K = mc.top_k, S = rc.samples, H = std::max(1, mc.d_model / 4);
  RouterFlops f;
  double softmax = 3 * E;                    // max, exp, normalise
  double topk = E * std::max(1.0, K);        // partial selection
  f.det = 2 * C * E + softmax + topk + 2 * K;  // + renormalisation
  const nn::RouterKind n = rc.name;
  if (n == nn::RouterKind::det || n == nn::RouterKind::noisy) return f;
  if (n == nn::RouterKind::mfvr || n == nn::RouterKind::fcvr) {
    double trunk = 2 * C * H + H;            // Linear(d → d/4) + ReLU
    double mu = 2 * H * E;
    double cov = n == nn::RouterKind::mfvr ? 2 * H * E + 2 * E : 2 * H * E * (E + 1) / 2 + E;  // + exp of the diagonal
    f.heads = trunk + mu + cov;
    double transform = n == nn::RouterKind::mfvr ? 2 * E : E * (E + 1);  // σ ⊙ ε, or L ε (lower triangle)
    f.sampling = S * (transform + E + softmax) + S * E + topk;  // + add mean, average, top-K of p̄
    return f;
  }
  if (n == nn::RouterKind::vtsr) {
    double out = rc.temp_mode == nn::TempMode::per_expert ? E : 1;
    f.heads = 2 * C * H + H + 2 * H * out + 3 * out;  // MLP + softplus
    // One selection per token per forward pass, in training and evaluation
    // alike (the experts run once, on the sampled set): S does not apply.
    f.sampling = E /*scale l/T*/ + 2 * E /*Gumbel noise add*/ + topk + 3 * K /*gate softmax*/;
    return f;
  }
  if (n == nn::RouterKind::sample_k) {
    f.sampling = E + 2 * E + topk + 3 * K;  // one selection per token, as vtsr
    return f;
  }
  if (n == nn::RouterKind::mc_dropout) {
    f.heads = S * C;                           // dropout masks on the router input
    f.sampling = (S - 1) * 2 * C * E + S * E + softmax + topk;  // S router products, average logits
    return f;
  }
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
