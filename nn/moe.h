// nn/moe.h — the Mixture-of-Experts feed-forward layer, written in full:
// router -> top-K -> dispatch grouped by expert (counting sort, gather,
// per-expert matmul) -> weighted scatter-add back to tokens, with capacity,
// dropped-token count, optional shared expert, Switch load-balancing loss and
// router z-loss computed over real (non-padding) tokens of this layer only.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nn/config.h"
#include "nn/router.h"

namespace vm::nn {

// Everything one MoE layer reports about one forward pass.
struct MoEAux {
  int layer = -1;
  Var lb_loss;  // () Switch load balancing: E Σ_e f_e P_e (minimum 1 at uniform routing)
  Var z_loss;   // () mean over real tokens of logsumexp(l)²
  RouterOut route;
  std::vector<int64_t> expert_counts;  // tokens assigned per expert (after capacity)
  int64_t dropped = 0;                 // assignments dropped by the capacity limit
  int64_t n_real = 0;                  // real tokens routed
  // The pieces of lb_loss, for a batch computed in shards (data parallelism):
  // P_e over this call's real tokens divided by the whole batch's (1, E), and
  // the assignments per expert before capacity (E). lb_loss = moe_lb_loss(p_mean,
  // wanted, n_real, K) with this call's counts; the trainer recomputes it with
  // the whole batch's counts (experiments/data_parallel.h).
  Var p_mean;
  std::vector<int64_t> wanted;
};

// Switch load balancing from its pieces: L_lb = E Σ_e f_e P_e with
// f_e = wanted_e / (n_real · K) (no gradient) and P_e = p_mean (1, E).
Var moe_lb_loss(const Var& p_mean, const std::vector<int64_t>& wanted, float n_real, int K);

// Dispatch plan: assignments (token, slot) sorted by expert, stable in token order.
struct DispatchPlan {
  std::vector<int32_t> token;    // (M) token row of each kept assignment, grouped by expert
  std::vector<int32_t> slot;     // (M) index n*K + j into the (N, K) gates
  std::vector<int64_t> offsets;  // (E+1) group boundaries
  std::vector<int64_t> counts;   // (E) kept per expert
  std::vector<int64_t> wanted;   // (E) assigned per expert before capacity
  int64_t dropped = 0;
};
// experts: (N, K); only rows with mask[n] != 0 are dispatched; capacity 0 = dropless.
DispatchPlan plan_dispatch(const std::vector<int32_t>& experts, int64_t N, int K, int E,
                           const std::vector<uint8_t>& mask, double capacity_factor);
// The same with a limit per expert (cap: E values; the first cap[e] of
// expert e's assignments, in token order, are kept).
DispatchPlan plan_dispatch_capped(const std::vector<int32_t>& experts, int64_t N, int K, int E,
                                  const std::vector<uint8_t>& mask, const std::vector<int64_t>& cap);
// Expert parallelism's global capacity (docs/SCALE.md): the P members of an
// expert group hold wanted[q] (E assignments per expert before capacity, q in
// member order) of n_real[q] real tokens; expert e keeps its first
// C = ⌈cf · (Σ_q n_real[q]) · K / E⌉ assignments in (member, token) order, the
// order of one process holding the members' tokens one after another. Returns
// each member's kept count per expert (P blocks of E); capacity_factor <= 0:
// every assignment is kept.
std::vector<int64_t> ep_kept_counts(const std::vector<std::vector<int64_t>>& wanted,
                                    const std::vector<int64_t>& n_real, int K, int E, double capacity_factor);
// The same with each member's own capacity (RouteCtx::ep_own_capacity): member
// q keeps min(wanted[q][e], ⌈cf · n_real[q] · K / E⌉) of expert e, what
// plan_dispatch keeps for q's tokens in one process.
std::vector<int64_t> ep_kept_counts_own(const std::vector<std::vector<int64_t>>& wanted,
                                        const std::vector<int64_t>& n_real, int K, int E, double capacity_factor);

// Where the sizes of a dispatch plan lie in the one buffer the GPU's plan
// writes them to and the host downloads in one transfer: offsets (E+1),
// counts (E), wanted (E), dropped (1), side by side.
struct PlanSizes {
  explicit PlanSizes(int E);
  size_t offsets, counts, wanted, dropped, total;
  // packed (total values) -> the four parts
  void unpack(const std::vector<int64_t>& packed, std::vector<int64_t>& offsets, std::vector<int64_t>& counts,
              std::vector<int64_t>& wanted, int64_t& dropped) const;
};

// The per-expert weight tensors' names inside a layer's prefix, (E, ·, ·)
// each: what expert parallelism shards (experiments/data_parallel.cpp).
inline constexpr const char* kExpertTensors[] = {"experts.w1", "experts.w_up", "experts.w2"};

class MoELayer {
 public:
  MoELayer(const ModelConfig& cfg, const RouterConfig& rcfg, bool bayes_layer, ParamStore& params,
           const std::string& prefix, uint64_t seed);
  // x: (N, C) -> (N, C)
  Var forward(const Var& x, const std::vector<uint8_t>& mask, const RouteCtx& ctx, MoEAux& aux);
  Router& router() { return *router_; }

 private:
  Var experts_ffn(const Var& xs, const std::vector<int64_t>& offsets);  // (M, C) grouped -> (M, C)
  Var experts_ffn(const Var& xs, const std::vector<int64_t>& offsets, const Var& w1, const Var& w_up, const Var& w2);
  // Expert parallelism (RouteCtx::expert_parallel, dist::ep_size() > 1): the
  // routed rows go to the members of the expert group that own their experts
  // and come back (docs/SCALE.md); returns Σ_k g_k E_k(x) like the local path.
  Var forward_ep(const Var& x, const std::vector<uint8_t>& mask, const RouterOut& r, bool own_capacity, MoEAux& aux,
                 std::vector<int64_t>& wanted);
  const ModelConfig& cfg_;
  RouterConfig rcfg_;
  std::unique_ptr<Router> router_;
  Var w_router_;                 // (C, E)
  Var w1_, w2_, w_up_;           // (E, C, F), (E, F, C), swiglu: (E, C, F)
  Var s_w1_, s_w2_, s_up_;       // shared expert (C, F), (F, C), (C, F)
};

}  // namespace vm::nn
