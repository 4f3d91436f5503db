// nn/noise.h — the constant noise tensors of the model's forward pass (router
// jitter, noisy top-K's ε, the variational routers' ε, vtsr's ξ, the
// stability protocol's embedding noise), drawn on the GPU for device models:
// value i of the tensor is the draw at Philox offset i of (seed, stream), the
// counters each call site's host loop uses, so nothing is drawn on the host
// and uploaded. Uniforms (the jitter) agree with the host's bit for bit,
// normals within a few ulp (kernels/cuda/random.h). Host models keep their
// host loops unchanged.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace vm::nn {

// (shape) on the GPU: scale · philox_normal(seed, stream, i) (scale in float,
// as the host's (float)σ · z).
Tensor device_normals(const Shape& shape, uint64_t seed, uint64_t stream, float scale = 1.0f);
// (shape) on the GPU: 1 + jitter · (2 · philox_uniform(seed, stream, i) − 1).
Tensor device_jitter(const Shape& shape, double jitter, uint64_t seed, uint64_t stream);

}  // namespace vm::nn
