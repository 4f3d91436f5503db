// nn/transformer.h — the model: a pre-norm transformer whose feed-forward
// blocks are MoE layers (or dense FFNs where --moe-layers excludes them).
//   lm : byte-level causal LM.  tokens (B, T) -> logits (rows, V)
//   vit: ViT-style classifier.  images (B, 28·28) -> logits (B, classes),
//        4×4 patches + class token, bidirectional attention.
//
// Block (pre-norm):  h = x + Attn(Norm(x));  y = h + FFN(Norm(h))
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nn/config.h"
#include "nn/moe.h"
#include "nn/params.h"
#include "nn/router.h"

namespace vm::nn {

struct ForwardOptions {
  bool training = false;
  uint64_t seed = 0;
  uint64_t step = 0;
  int samples = 1;              // router samples per token (S)
  double embed_noise = 0.0;     // σ of N(0, σ² I) added to the token embeddings (stability eval)
  uint64_t noise_seed = 0;
  // A shard of a larger batch (data parallelism, experiments/data_parallel.h):
  // the call's B·T rows are rows [row0, row0 + B·T) of a batch of rows_total
  // rows, so the router noise and jitter of a row are those it draws in the
  // whole batch (RouteCtx::row0); n_real_total: the whole batch's real tokens,
  // the normaliser of the per-token means (z-loss, the load-balancing P_e,
  // vtsr's mean penalty). Defaults (0): the call is the whole batch.
  int64_t row0 = 0, rows_total = 0;
  double n_real_total = 0;
  bool expert_parallel = false;  // RouteCtx::expert_parallel
  bool ep_own_capacity = false;  // RouteCtx::ep_own_capacity
};

struct ForwardResult {
  Var logits;                // lm: (rows, V) at the requested positions; vit: (B, classes)
  std::vector<MoEAux> moe;   // one per MoE layer, in layer order
  // Sums over MoE layers (scalars)
  Var lb_loss, z_loss, kl, penalty;
};

class Model {
 public:
  Model(ModelConfig cfg, RouterConfig rcfg, uint64_t seed);
  const ModelConfig& config() const { return cfg_; }
  const RouterConfig& router_config() const { return rcfg_; }
  ParamStore& params() { return params_; }
  // Where the parameters live; forward() then runs there (the constants it
  // builds, router noise included, follow).
  Device device() const;
  void to(Device dev);

  // lm: ids (B*T), mask (B*T) 1 = real token; positions: rows (b*T + t) whose
  // logits are wanted (empty = all rows).
  ForwardResult forward_lm(const std::vector<int32_t>& ids, int B, int T, const std::vector<uint8_t>& mask,
                           const std::vector<int32_t>& positions, const ForwardOptions& opt);
  // vit: pixels (B, H*W) in [0, 1]
  ForwardResult forward_vit(const Tensor& pixels, const ForwardOptions& opt);

  // Mean L2 norm of the token embeddings (σ = γ · this, for the stability protocol).
  double mean_embedding_norm() const;
  // vit: mean L2 norm of the patch embeddings of these images (B, H*W).
  double mean_patch_embedding_norm(const Tensor& pixels);
  int n_moe_layers() const;
  std::vector<int> moe_layer_ids() const;
  // Layers whose router is the configured (Bayesian) one.
  std::vector<int> bayes_layer_ids() const;

 private:
  struct Block {
    Var n1_g, n1_b, n2_g, n2_b;  // norm gains (and biases for layernorm)
    Var w_qkv, w_o;              // (C, 3C), (C, C)
    Var f_w1, f_w2, f_up;        // dense FFN (C, F), (F, C)
    std::unique_ptr<MoELayer> moe;
    RouterKind router = RouterKind::det;  // the router of its MoE layer (layer_router)
  };
  Var norm(const Var& x, const Var& g, const Var& b) const;
  Tensor embed_noise(const Shape& shape, const ForwardOptions& opt) const;  // σ·z on the model's device
  Var blocks_forward(Var x, int B, int T, bool causal, const std::vector<uint8_t>& mask, const ForwardOptions& opt,
                     ForwardResult& res);

  ModelConfig cfg_;
  RouterConfig rcfg_;
  ParamStore params_;
  Var tok_emb_, pos_emb_, head_, lnf_g_, lnf_b_;
  Var patch_w_, patch_b_, cls_tok_, cls_head_, cls_head_b_;
  std::vector<Block> blocks_;
};

}  // namespace vm::nn
