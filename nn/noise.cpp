#include "nn/noise.h"

#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/random.h"
#endif

namespace vm::nn {

Tensor device_normals(const Shape& shape, uint64_t seed, uint64_t stream, float scale) {
  Tensor t(shape, Device::CUDA, false);  // without the CUDA backend this fails in one line
#ifdef VMOER_HAVE_CUDA
  kernels::cuda::philox_fill(kernels::cuda::PhiloxDist::Normal, t.data(), t.numel(), seed, stream, 0, scale);
#endif
  return t;
}

Tensor device_jitter(const Shape& shape, double jitter, uint64_t seed, uint64_t stream) {
  Tensor t(shape, Device::CUDA, false);
#ifdef VMOER_HAVE_CUDA
  kernels::cuda::philox_jitter(t.data(), t.numel(), (float)jitter, seed, stream);
#endif
  return t;
}

}  // namespace vm::nn
