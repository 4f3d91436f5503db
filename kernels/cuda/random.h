// kernels/cuda/random.h — Philox draws written on the GPU (philox_fill.cu),
// value i at counter offset + i of (seed, stream), the layout of core/philox.h
// that the host loops use: uniforms and normals bit for bit (the normals'
// Box–Muller uses core/philox.h's fixed-operation log and sincos), Gumbels
// within a few ulp (CUDA's logf against glibc's). The product's training
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
// (S·N, cols), row s·N + n = the normals at counters ((row0 + n)·S + s)·cols + [0, cols):
// the variational routers' ε in the layout of nn/routers/common.h sample_normals.
void philox_sample_normals(float* out, int S, int64_t N, int64_t cols, uint64_t seed, uint64_t stream, int64_t row0);
// out[i] = 1 + jitter · (2 · philox_uniform(seed, stream, offset + i) − 1): the
// Switch router-input jitter of nn/moe.cpp, same expression.
void philox_jitter(float* out, int64_t n, float jitter, uint64_t seed, uint64_t stream, uint64_t offset = 0);

}  // namespace vm::kernels::cuda
