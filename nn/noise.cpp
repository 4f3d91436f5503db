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

Tensor device_sample_normals(int S, int64_t N, int64_t cols, uint64_t seed, uint64_t stream, int64_t row0) {
  Tensor t({(int64_t)S * N, cols}, Device::CUDA, false);
#ifdef VMOER_HAVE_CUDA
  kernels::cuda::philox_sample_normals(t.data(), S, N, cols, seed, stream, row0);
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
