// experiments/data_parallel.h — the pieces of data-parallel training that do
// not depend on the trainer's loop (experiments/trainer.cpp runs it;
// docs/SCALE.md states what it guarantees).
//
// A micro-batch of B examples is computed as S shards, shard j the examples
// [j·B/S, (j+1)·B/S) (shard_begin); rank r of N computes shards
// [r·S/N, (r+1)·S/N) (shard_range). Each shard's gradient, all trainable
// gradients in one flat tensor of P floats on the parameters' device
// (take_grads), is one leaf of the fixed summation tree (GradTree, the tree
// of dist::TreeSum): the rank sums its own shards, then allreduce_grads sums
// the ranks' partial sums in the same tree (host: dist::allreduce_sum; GPU:
// NCCL, dist::device_allreduce_sum).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dist.h"
#include "nn/optim.h"
#include "nn/params.h"

namespace vm::exp::dp {

// First example of shard j of S in a batch of B (shard j: [shard_begin(j), shard_begin(j + 1))).
inline int shard_begin(int j, int S, int B) { return (int)((int64_t)j * B / S); }

// The shards rank r of N computes: [first, last).
struct ShardRange {
  int first = 0, last = 1;
};
ShardRange shard_range(int S, int ranks, int rank);

// The trainable parameters' gradients as one vector of P floats, in the
// ParamStore's order (the order of the all-reduce's buckets).
struct GradLayout {
  std::vector<std::string> names;
  std::vector<int64_t> offset, numel;
  int64_t total = 0;
};
GradLayout grad_layout(nn::ParamStore& ps);
// Moves every trainable gradient into one (P) tensor on the parameters'
// device (zeros where a parameter has none) and clears them; defined[k] |=
// parameter k has one.
Tensor take_grads(nn::ParamStore& ps, const GradLayout& L, std::vector<uint8_t>& defined);
// Sets the gradients from a flat tensor; a parameter with defined[k] == 0
// keeps none (no loss reached it on any rank, as in one process).
void put_grads(nn::ParamStore& ps, const GradLayout& L, const Tensor& g, const std::vector<uint8_t>& defined);
// The parameter of the first non-finite element of a flat gradient, "" if none.
std::string first_nonfinite(const GradLayout& L, const Tensor& g);
// a += b, elementwise, on their device (the tree's addition).
void add_into(Tensor& a, const Tensor& b);
// The fixed tree of dist::TreeSum over flat gradients.
struct GradTree : dist::TreeSumOf<Tensor> {
  GradTree() : dist::TreeSumOf<Tensor>(add_into) {}
};
// Σ over the ranks of g, in place: host tensors through dist::allreduce_sum
// (buckets of `bucket` floats, the fixed tree: bitwise the same at any rank
// count that leaves each rank a power-of-two number of shards); device
// tensors through NCCL when every rank has its own GPU (dist::nccl_usable,
// dist::device_allreduce_sum), else through the host.
void allreduce_grads(Tensor& g, int64_t bucket);

// ---- expert sharding (--expert-parallel P; docs/SCALE.md §8) ------------------------------------
// The expert tensors of every MoE layer ("<layer>.experts.w1", ".w2", ".w_up":
// (E, a, b), expert e the floats [e·a·b, (e+1)·a·b)). Member q of an expert
// group owns the experts [q·E/P, (q+1)·E/P): it alone updates them (AdamW
// state for them only), and their gradient is summed only over the replica
// set {q, q + P, q + 2P, ...} of the ranks that own them.
bool is_expert_tensor(const std::string& name);
// --expert-parallel P for a model of E experts per MoE layer: P must divide
// the ranks and E; sets dist::set_expert_parallel(P). One clear line (exit 2)
// on every rank alike otherwise, before any work. train, eval and reproduce's
// evaluations call it.
void resolve_expert_parallel(int P, int E);
struct ExpertShard {
  int P = 1, q = 0, E = 1;       // P members per group, this rank member q, E experts per MoE layer
  std::vector<uint8_t> expert;   // per GradLayout entry: an expert tensor
  // floats all-reduced over every rank / over the replica set (the sharded
  // expert entries, each this member's E/P experts: Σ numel/P of the full tensors)
  int64_t dense = 0, owned = 0;
  bool on() const { return P > 1; }
};
// L: the layout of the sharded parameters when P > 1 (shard_expert_weights first).
ExpertShard expert_shard(const GradLayout& L, int E, int P, int q);
// This rank's slice of every expert tensor, for nn::AdamW::set_owned.
std::map<std::string, nn::OwnedSlice> owned_slices(nn::ParamStore& ps, int E, int P, int q);
// allreduce_grads with expert sharding (x.on()): the non-expert entries over
// every rank, this rank's experts' slices over its replica set (none when
// N = P); the other experts' slices of g are left as they are (unused: the
// owners update those experts). expert_bytes += the bytes of the latter.
void allreduce_grads_sharded(Tensor& g, const GradLayout& L, const ExpertShard& x, int64_t bucket,
                             uint64_t& expert_bytes);
// The global gradient norm of a flat gradient, every rank the same double:
//   ‖g‖ = sqrt( Σ_k defined Σ_b s_k,b ),  s_k,b = Σ_{i in block b of entry k} g_i²  (double)
// with one block per non-expert entry and one per expert of an expert tensor,
// summed in layout order (each expert counted once). With expert sharding the
// owners' block sums travel inside the group (raw doubles, 8 (P − 1) T_x E/P
// bytes per rank for T_x trainable expert tensors), so every rank sums the
// same numbers in the same order as one process does.
double grad_norm(const Tensor& g, const GradLayout& L, const std::vector<uint8_t>& defined, const ExpertShard& x);
// Sharded weights: every expert tensor (E, a, b) of ps becomes this member's
// (E/P, a, b) (experts [q·E/P, (q+1)·E/P)); the rest of it is freed. Training
// (forward_ep) reads only these; a full forward refuses them (nn/moe.cpp).
void shard_expert_weights(nn::ParamStore& ps, int E, int P, int q);
// Whether some expert tensor of ps holds fewer than E experts.
bool expert_weights_sharded(nn::ParamStore& ps, int E);
// The inverse, through the group: every member sends its experts to every
// member, and each expert tensor becomes the full (E, a, b) again, as in one
// process. Before anything reads all weights (validation, the parameter
// hash, a checkpoint); shard_expert_weights frees them again before the
// next step. 4 (P − 1)/P · X bytes per rank for X expert floats.
void gather_expert_weights(nn::ParamStore& ps, const ExpertShard& x);
// The AdamW state of one process, on rank 0 (every rank calls it; the others
// get an empty map): the sliced expert moments of the members of group 0
// gathered to rank 0 in expert order, the rest as it is.
std::map<std::string, std::pair<Tensor, Tensor>> full_optimizer_state(nn::AdamW& opt, const ExpertShard& x);

// FNV-1a of every parameter's bytes: the ranks compare it before each
// checkpoint (their updates must have been identical).
uint64_t state_hash(nn::ParamStore& ps);

}  // namespace vm::exp::dp
