// nn/noise.h — the constant noise tensors of the model's forward pass (router
// jitter, noisy top-K's ε, the variational routers' ε, vtsr's ξ, the
// stability protocol's embedding noise), drawn on the GPU for device models:
// value i of the tensor is the draw at Philox offset i of (seed, stream), the
// counters each call site's host loop uses, so nothing is drawn on the host
// and uploaded. Uniforms (the jitter) agree with the host's bit for bit,
// normals too (the fixed-operation Box–Muller of core/philox.h), Gumbels within a few ulp (kernels/cuda/random.h). Host models keep their
// host loops unchanged.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace vm::nn {

// (shape) on the GPU: scale · philox_normal(seed, stream, i) (scale in float,
// as the host's (float)σ · z).
// offset: the first value's counter (a shard's rows start at row0 · cols).
Tensor device_normals(const Shape& shape, uint64_t seed, uint64_t stream, float scale = 1.0f, uint64_t offset = 0);
// (shape) on the GPU: 1 + jitter · (2 · philox_uniform(seed, stream, i) − 1).
Tensor device_jitter(const Shape& shape, double jitter, uint64_t seed, uint64_t stream, uint64_t offset = 0);
// (S·N, cols) on the GPU in the layout of routers::sample_normals
// (nn/routers/common.h): row s·N + n holds the normals at counters
// ((row0 + n)·S + s)·cols + [0, cols).
Tensor device_sample_normals(int S, int64_t N, int64_t cols, uint64_t seed, uint64_t stream, int64_t row0);

}  // namespace vm::nn
