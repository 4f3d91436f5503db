#include "nn/transformer.h"

#include <cmath>

#include "core/philox.h"
#include "nn/noise.h"

namespace vm::nn {

Model::Model(ModelConfig cfg, RouterConfig rcfg, uint64_t seed) : cfg_(std::move(cfg)), rcfg_(std::move(rcfg)) {
  cfg_.validate();
  rcfg_.validate(cfg_.n_layers, cfg_.n_experts, cfg_.top_k);
  int C = cfg_.d_model, F = cfg_.d_expert;
  double std_in = 0.02, std_out = 0.02 / std::sqrt(2.0 * cfg_.n_layers);
  if (cfg_.kind == ModelKind::lm) {
    tok_emb_ = params_.normal("tok_emb", {cfg_.vocab, C}, std_in, seed);
    pos_emb_ = params_.normal("pos_emb", {cfg_.max_seq, C}, std_in, seed);
  } else {
    int pp = cfg_.patch * cfg_.patch;
    patch_w_ = params_.normal("patch.w", {pp, C}, std_in, seed);
    patch_b_ = params_.constant("patch.b", {C}, 0.0f);
    cls_tok_ = params_.normal("cls_token", {1, 1, C}, std_in, seed);
    pos_emb_ = params_.normal("pos_emb", {cfg_.seq_len_vit(), C}, std_in, seed);
  }
  bool layer = cfg_.norm == Norm::layer;
  blocks_.resize(cfg_.n_layers);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Block& b = blocks_[l];
    std::string p = "layers." + std::to_string(l) + ".";
    b.n1_g = params_.constant(p + "norm1.g", {C}, 1.0f);
    if (layer) b.n1_b = params_.constant(p + "norm1.b", {C}, 0.0f);
    b.w_qkv = params_.normal(p + "attn.w_qkv", {C, 3 * C}, std_in, seed);
    b.w_o = params_.normal(p + "attn.w_o", {C, C}, std_out, seed);
    b.n2_g = params_.constant(p + "norm2.g", {C}, 1.0f);
    if (layer) b.n2_b = params_.constant(p + "norm2.b", {C}, 0.0f);
    if (cfg_.is_moe_layer(l)) {
      bool bayes = rcfg_.bayes_layers.empty() ||
                   std::find(rcfg_.bayes_layers.begin(), rcfg_.bayes_layers.end(), l) != rcfg_.bayes_layers.end();
      b.moe = std::make_unique<MoELayer>(cfg_, rcfg_, bayes, params_, p + "moe.", seed);
      b.router = layer_router(rcfg_, bayes);
    } else {
      b.f_w1 = params_.normal(p + "ffn.w1", {C, F}, std_in, seed);
      if (cfg_.act == Act::swiglu) b.f_up = params_.normal(p + "ffn.w_up", {C, F}, std_in, seed);
      b.f_w2 = params_.normal(p + "ffn.w2", {F, C}, std_out, seed);
    }
  }
  lnf_g_ = params_.constant("norm_f.g", {C}, 1.0f);
  if (layer) lnf_b_ = params_.constant("norm_f.b", {C}, 0.0f);
  if (cfg_.kind == ModelKind::lm) {
    if (!cfg_.tied_head) head_ = params_.normal("head.w", {C, cfg_.vocab}, std_in, seed);
  } else {
    cls_head_ = params_.normal("cls_head.w", {C, cfg_.n_classes}, std_in, seed);
    cls_head_b_ = params_.constant("cls_head.b", {cfg_.n_classes}, 0.0f);
  }
}

Var Model::norm(const Var& x, const Var& g, const Var& b) const {
  return cfg_.norm == Norm::layer ? ops::layernorm(x, g, b) : ops::rmsnorm(x, g);
}

int Model::n_moe_layers() const { return (int)moe_layer_ids().size(); }
std::vector<int> Model::moe_layer_ids() const {
  std::vector<int> ids;
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (blocks_[l].moe) ids.push_back(l);
  return ids;
}
std::vector<int> Model::bayes_layer_ids() const {
  std::vector<int> ids;
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (blocks_[l].moe && blocks_[l].router == rcfg_.name) ids.push_back(l);
  return ids;
}

Device Model::device() const { return params_.device(); }

void Model::to(Device dev) { params_.to(dev); }

double Model::mean_embedding_norm() const {
  Tensor w = (tok_emb_.defined() ? tok_emb_.value() : patch_w_.value()).to(Device::CPU);
  int64_t V = w.size(0), C = w.size(1);
  double s = 0;
  for (int64_t v = 0; v < V; ++v) {
    double q = 0;
    for (int64_t c = 0; c < C; ++c) q += (double)w[v * C + c] * w[v * C + c];
    s += std::sqrt(q);
  }
  return s / (double)V;
}

// The stability protocol's embedding noise σ·z, z_i = philox_normal(noise_seed,
// hash("embed_noise"), i), on the model's device (drawn there: nn/noise.h).
Tensor Model::embed_noise(const Shape& shape, const ForwardOptions& opt) const {
  const uint64_t stream = name_hash("embed_noise");
  if (device() == Device::CUDA) return device_normals(shape, opt.noise_seed, stream, (float)opt.embed_noise);
  Tensor n(shape);
  for (int64_t i = 0; i < n.numel(); ++i) n[i] = (float)opt.embed_noise * philox_normal(opt.noise_seed, stream, (uint64_t)i);
  return n;
}

Var Model::blocks_forward(Var x, int B, int T, bool causal, const std::vector<uint8_t>& mask,
                          const ForwardOptions& opt, ForwardResult& res) {
  // x: (B*T, C)
  int C = cfg_.d_model, H = cfg_.n_heads, D = C / H;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Block& b = blocks_[l];
    // ---- attention ----
    Var h = norm(x, b.n1_g, b.n1_b);
    Var qkv = ops::matmul(h, b.w_qkv);                                   // (B*T, 3C)
    auto heads = [&](int i) {                                            // -> (B, H, T, D)
      Var s = ops::reshape(ops::slice(ops::reshape(qkv, {B, T, 3 * C}), 2, i * C, (i + 1) * C), {B, T, H, D});
      return ops::transpose(s, 1, 2);
    };
    Var att = ops::attention(heads(0), heads(1), heads(2), causal);      // (B, H, T, D)
    att = ops::reshape(ops::transpose(att, 1, 2), {(int64_t)B * T, C});  // (B*T, C)
    x = ops::add(x, ops::matmul(att, b.w_o));
    // ---- feed-forward ----
    h = norm(x, b.n2_g, b.n2_b);
    Var f;
    if (b.moe) {
      RouteCtx ctx;
      ctx.training = opt.training;
      ctx.seed = opt.seed;
      ctx.step = opt.step;
      ctx.layer = l;
      ctx.samples = opt.samples;
      ctx.row0 = opt.row0;
      ctx.rows = opt.rows_total;
      ctx.n_real = opt.n_real_total;
      ctx.expert_parallel = opt.expert_parallel;
      ctx.ep_own_capacity = opt.ep_own_capacity;
      MoEAux aux;
      f = b.moe->forward(h, mask, ctx, aux);
      res.moe.push_back(std::move(aux));
    } else {
      Var a = ops::matmul(h, b.f_w1);
      a = cfg_.act == Act::swiglu ? ops::mul(ops::silu(a), ops::matmul(h, b.f_up)) : ops::gelu(a);
      f = ops::matmul(a, b.f_w2);
    }
    x = ops::add(x, f);
  }
  // Sum the per-layer auxiliary terms.
  auto add_opt = [](Var acc, const Var& v) { return !v.defined() ? acc : (acc.defined() ? ops::add(acc, v) : v); };
  for (auto& a : res.moe) {
    res.lb_loss = add_opt(res.lb_loss, a.lb_loss);
    res.z_loss = add_opt(res.z_loss, a.z_loss);
    res.kl = add_opt(res.kl, a.route.kl);
    res.penalty = add_opt(res.penalty, a.route.penalty);
  }
  for (Var* v : {&res.lb_loss, &res.z_loss, &res.kl, &res.penalty})
    if (!v->defined()) *v = ops::constant(Tensor::scalar(0).to(device()));
  return norm(x, lnf_g_, lnf_b_);
}

ForwardResult Model::forward_lm(const std::vector<int32_t>& ids, int B, int T, const std::vector<uint8_t>& mask,
                                const std::vector<int32_t>& positions, const ForwardOptions& opt) {
  VM_CHECK(cfg_.kind == ModelKind::lm, "forward_lm: model kind is " + cfg_.kind.str());
  VM_CHECK(T <= cfg_.max_seq, "forward_lm: sequence length " + std::to_string(T) + " exceeds max_seq " +
                                  std::to_string(cfg_.max_seq));
  VM_CHECK((int64_t)ids.size() == (int64_t)B * T && mask.size() == ids.size(),
           "forward_lm: ids/mask sizes do not match B*T");
  int C = cfg_.d_model;
  ForwardResult res;
  Var x = ops::embedding(tok_emb_, ids, {(int64_t)B, (int64_t)T});  // (B, T, C)
  if (opt.embed_noise > 0)  // stability protocol: e + N(0, σ² I)
    x = ops::add(x, ops::constant(embed_noise({(int64_t)B, (int64_t)T, (int64_t)C}, opt)));
  std::vector<int32_t> pos((size_t)T);
  for (int t = 0; t < T; ++t) pos[t] = t;
  x = ops::add(x, ops::embedding(pos_emb_, pos, {(int64_t)T}));  // (B, T, C) + (T, C)
  x = ops::reshape(x, {(int64_t)B * T, C});
  Var h = blocks_forward(x, B, T, /*causal=*/true, mask, opt, res);
  if (!positions.empty()) h = ops::gather_rows(h, positions);
  Var w = cfg_.tied_head ? ops::transpose(tok_emb_, 0, 1) : head_;  // (C, V)
  res.logits = ops::matmul(h, w);
  return res;
}

// Patches of B images: (B*NP, P*P), row-major inside each patch.
static Tensor extract_patches(const Tensor& pixels, int S, int P) {
  int G = S / P, NP = G * G;
  int64_t B = pixels.size(0);
  Tensor patches({B * NP, (int64_t)P * P});
  for (int64_t b = 0; b < B; ++b)
    for (int gy = 0; gy < G; ++gy)
      for (int gx = 0; gx < G; ++gx)
        for (int py = 0; py < P; ++py)
          for (int px = 0; px < P; ++px)
            patches[(b * NP + gy * G + gx) * P * P + py * P + px] = pixels[b * S * S + (gy * P + py) * S + gx * P + px];
  return patches;
}

double Model::mean_patch_embedding_norm(const Tensor& pixels) {
  VM_CHECK(cfg_.kind == ModelKind::vit, "mean_patch_embedding_norm: model kind is " + cfg_.kind.str());
  NoGradGuard ng;
  Var e = ops::add(
      ops::matmul(ops::constant(extract_patches(pixels, cfg_.image_size, cfg_.patch).to(device())), patch_w_), patch_b_);
  Tensor v = e.value().to(Device::CPU);
  int64_t R = v.size(0), C = v.size(1);
  double s = 0;
  for (int64_t r = 0; r < R; ++r) {
    double q = 0;
    for (int64_t c = 0; c < C; ++c) q += (double)v[r * C + c] * v[r * C + c];
    s += std::sqrt(q);
  }
  return R ? s / (double)R : 0.0;
}

ForwardResult Model::forward_vit(const Tensor& pixels, const ForwardOptions& opt) {
  VM_CHECK(cfg_.kind == ModelKind::vit, "forward_vit: model kind is " + cfg_.kind.str());
  int S = cfg_.image_size, P = cfg_.patch, G = S / P, C = cfg_.d_model;
  VM_CHECK(pixels.ndim() == 2 && pixels.size(1) == (int64_t)S * S,
           "forward_vit: pixels must be (B, " + std::to_string(S * S) + "), got " + shape_str(pixels.shape()));
  int B = (int)pixels.size(0), NP = G * G, T = NP + 1;
  ForwardResult res;
  Var e = ops::add(ops::matmul(ops::constant(extract_patches(pixels, S, P).to(device())), patch_w_), patch_b_);  // (B*NP, C)
  e = ops::reshape(e, {B, NP, C});
  if (opt.embed_noise > 0) e = ops::add(e, ops::constant(embed_noise({(int64_t)B, (int64_t)NP, (int64_t)C}, opt)));
  Var cls = ops::add(ops::constant(Tensor({(int64_t)B, 1, (int64_t)C}, device())), cls_tok_);  // (B, 1, C)
  Var x = ops::concat<float>({cls, e}, 1);                                            // (B, T, C)
  std::vector<int32_t> pos((size_t)T);
  for (int t = 0; t < T; ++t) pos[t] = t;
  x = ops::add(x, ops::embedding(pos_emb_, pos, {(int64_t)T}));
  x = ops::reshape(x, {(int64_t)B * T, C});
  std::vector<uint8_t> mask((size_t)B * T, 1);
  Var h = blocks_forward(x, B, T, /*causal=*/false, mask, opt, res);
  std::vector<int32_t> cls_rows((size_t)B);
  for (int b = 0; b < B; ++b) cls_rows[b] = b * T;
  h = ops::gather_rows(h, cls_rows);  // (B, C)
  res.logits = ops::add(ops::matmul(h, cls_head_), cls_head_b_);
  return res;
}

}  // namespace vm::nn
