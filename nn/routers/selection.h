// nn/routers/selection.h — drawing K experts without replacement from
// softmax(z) for a row of scaled logits z = l / T.
//
// Gumbel-top-K: keep the K largest of z + G, G ~ Gumbel(0, 1) i.i.d. This
// draws exactly the Plackett–Luce (sequential sampling without replacement)
// distribution in one pass. The "authors" variant draws the same distribution
// sequentially: sample one expert from the renormalised softmax by inverse CDF,
// remove it, repeat K times.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"

namespace vm::nn::routers {

// z: (N, E) row-major; writes (N, K) indices. Noise for row n, expert e (or
// draw j) comes from offset (row0 + n)*E + e of `stream` (row0: the first
// row's place in the whole batch when z is a shard of it, RouteCtx::row0).
void gumbel_topk(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out,
                 int64_t row0 = 0);
void sequential_sample(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out,
                       int64_t row0 = 0);

// z (N, E) on either device -> (N, K) indices on z's device: the functions
// above on the CPU, their CUDA twins (kernels/cuda/moe.h, same Philox
// counters) for a device tensor (left there: take_cols and the dispatch plan
// read them on the GPU). authors = sequential_sample, else gumbel_topk; row0
// as above.
Indices select_k(const Tensor& z, int K, bool authors, uint64_t seed, uint64_t stream, int64_t row0 = 0);

}  // namespace vm::nn::routers
