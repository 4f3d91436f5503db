// dev/cuda/philox_fill.cu — Philox uniforms, normals and Gumbels written on
// the GPU, the same numbers as core/philox.h on the CPU (uniforms bit for bit,
// normals and Gumbels to a few ulp: CUDA's logf/sinf/cosf). The product draws
// its noise on the host and uploads it (so it is bit-identical to the CPU's);
// bench_cuda fills its inputs with this, and tests/test_cuda.cpp checks it.
#include "core/philox.h"
#include "dev/cuda/kernels.h"
#include "core/cuda/device.cuh"

namespace vm::kernels::cuda {
using namespace detail;

namespace {
template <class T>
__global__ void philox_fill_k(int dist, T* __restrict__ out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t o = offset + (uint64_t)i;
    float v = dist == 0 ? vm::philox_uniform(seed, stream, o)
              : dist == 1 ? vm::philox_normal(seed, stream, o)
                          : vm::philox_gumbel(seed, stream, o);
    out[i] = (T)v;
  }
}

}  // namespace

template <class T>
void philox_fill(PhiloxDist dist, T* out, int64_t n, uint64_t seed, uint64_t stream_id, uint64_t offset) {
  if (n <= 0) return;
  philox_fill_k<<<grid_for(n, 256), 256, 0, stream()>>>((int)dist, out, n, seed, stream_id, offset);
  CUDA_CHECK_LAUNCH();
}

template void philox_fill<float>(PhiloxDist, float*, int64_t, uint64_t, uint64_t, uint64_t);
template void philox_fill<double>(PhiloxDist, double*, int64_t, uint64_t, uint64_t, uint64_t);

}  // namespace vm::kernels::cuda
