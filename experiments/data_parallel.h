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
#include <string>
#include <vector>

#include "core/dist.h"
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
// FNV-1a of every parameter's bytes: the ranks compare it before each
// checkpoint (their updates must have been identical).
uint64_t state_hash(nn::ParamStore& ps);

}  // namespace vm::exp::dp
