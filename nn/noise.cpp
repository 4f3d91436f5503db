#include "nn/noise.h"

#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/random.h"
#endif

namespace vm::nn {

Tensor device_normals(const Shape& shape, uint64_t seed, uint64_t stream, float scale, uint64_t offset) {
  Tensor t(shape, Device::CUDA, false);  // without the CUDA backend this fails in one line
#ifdef VMOER_HAVE_CUDA
  kernels::cuda::philox_fill(kernels::cuda::PhiloxDist::Normal, t.data(), t.numel(), seed, stream, offset, scale);
#endif
  return t;
}

Tensor device_sample_normals(int S, int64_t N, int64_t cols, uint64_t seed, uint64_t stream, int64_t row0, int64_t R) {
  Tensor t({(int64_t)S * N, cols}, Device::CUDA, false);
#ifdef VMOER_HAVE_CUDA
  for (int s = 0; s < S; ++s)
    kernels::cuda::philox_fill(kernels::cuda::PhiloxDist::Normal, t.data() + (int64_t)s * N * cols, N * cols, seed,
                               stream, (uint64_t)(((int64_t)s * R + row0) * cols), 1.0f);
#endif
  return t;
}

Tensor device_jitter(const Shape& shape, double jitter, uint64_t seed, uint64_t stream, uint64_t offset) {
  Tensor t(shape, Device::CUDA, false);
#ifdef VMOER_HAVE_CUDA
  kernels::cuda::philox_jitter(t.data(), t.numel(), (float)jitter, seed, stream, offset);
#endif
  return t;
}

}  // namespace vm::nn
