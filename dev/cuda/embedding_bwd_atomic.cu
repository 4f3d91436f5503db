// dev/cuda/embedding_bwd_atomic.cu — the embedding backward with atomicAdd:
// faster than the deterministic kernels/cuda embedding_bwd for few repeated
// ids, but the order of the adds (hence the float rounding) varies from run
// to run, so the product does not use it. bench_cuda times the two; tests/
// test_cuda.cpp checks it to tolerance.
#include "dev/cuda/kernels.h"
#include "core/cuda/device.cuh"

namespace vm::kernels::cuda {
using namespace detail;

namespace {
template <class T>
__global__ void embedding_bwd_atomic_k(const T* __restrict__ dout, const int32_t* __restrict__ ids,
                                       T* __restrict__ dtable, int64_t n, int64_t V, int64_t C) {
  const int64_t total = n * C;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / C, c = i - r * C;
    int32_t id = ids[r];
    if (id < 0 || id >= V) continue;
    atomicAdd(&dtable[(int64_t)id * C + c], dout[i]);
  }
}

}  // namespace

template <class T>
void embedding_bwd_atomic(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C) {
  if (n <= 0 || C <= 0) return;
  embedding_bwd_atomic_k<<<grid_for(n * C, 256), 256, 0, stream()>>>(dout, ids, dtable, n, V, C);
  CUDA_CHECK_LAUNCH();
}

template void embedding_bwd_atomic<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void embedding_bwd_atomic<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);

}  // namespace vm::kernels::cuda
