// kernels/cuda/random.h — Philox draws written on the GPU (philox_fill.cu),
// value i at counter offset + i of (seed, stream), the layout of core/philox.h
// that the host loops use: uniforms bit for bit, normals and Gumbels within a
// few ulp (CUDA's logf/sinf/cosf against glibc's). The product's training
// noise is drawn with these where it is used (nn/noise.h). Plain C++ (no CUDA
// headers); device pointers, this thread's stream.
#pragma once
#include <cstdint>

namespace vm::kernels::cuda {

// out[i] = scale · philox_<dist>(seed, stream, offset + i) (scale in float, as
// the host's (float)σ · z; scale 1: the draw itself)
enum class PhiloxDist : int { Uniform, Normal, Gumbel };
template <class T>
void philox_fill(PhiloxDist dist, T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset = 0,
                 float scale = 1.0f);
// out[i] = 1 + jitter · (2 · philox_uniform(seed, stream, offset + i) − 1): the
// Switch router-input jitter of nn/moe.cpp, same expression.
void philox_jitter(float* out, int64_t n, float jitter, uint64_t seed, uint64_t stream, uint64_t offset = 0);

}  // namespace vm::kernels::cuda
