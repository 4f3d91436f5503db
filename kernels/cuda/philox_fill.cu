// kernels/cuda/philox_fill.cu — Philox uniforms, normals and Gumbels written
// on the GPU, the same numbers as core/philox.h on the CPU (uniforms and
// normals bit for bit, Gumbels to a few ulp: CUDA's logf), value i at
// offset + i as the host loops draw them. The product draws its training
// noise with these (router jitter, noisy top-K's ε, the variational routers'
// ε, vtsr's ξ, the stability protocol's embedding noise: nn/noise.h) instead
// of drawing on the host and uploading; bench_cuda fills its inputs with
// them, and tests/test_cuda.cpp checks them against the CPU.
#include "core/philox.h"
#include "core/cuda/device.cuh"
#include "kernels/cuda/random.h"

namespace vm::kernels::cuda {
using namespace detail;

namespace {
template <class T>
__global__ void philox_fill_k(int dist, T* __restrict__ out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                              float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t o = offset + (uint64_t)i;
    float v = dist == 0 ? vm::philox_uniform(seed, stream, o)
              : dist == 1 ? vm::philox_normal(seed, stream, o)
                          : vm::philox_gumbel(seed, stream, o);
    out[i] = (T)(scale == 1.0f ? v : scale * v);
  }
}

// Row s·N + n of (S·N, cols): sample s of row row0 + n, at philox_sample_counter(row0 + n, S, s, cols) + c.
__global__ void philox_sample_normals_k(float* __restrict__ out, int S, int64_t N, int64_t cols, uint64_t seed,
                                        uint64_t stream, int64_t row0) {
  const int64_t total = (int64_t)S * N * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % cols, row = i / cols, s = row / N, n = row % N;
    out[i] = vm::philox_normal(seed, stream, vm::philox_sample_counter(row0 + n, S, (int)s, cols) + (uint64_t)c);
  }
}

// The host loop's expression for the Switch jitter, 1 + j (2u − 1).
__global__ void philox_jitter_k(float* __restrict__ out, int64_t n, float jitter, uint64_t seed, uint64_t stream,
                                uint64_t offset) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = 1.0f + jitter * (2.0f * vm::philox_uniform(seed, stream, offset + (uint64_t)i) - 1.0f);
}

}  // namespace

template <class T>
void philox_fill(PhiloxDist dist, T* out, int64_t n, uint64_t seed, uint64_t stream_id, uint64_t offset, float scale) {
  if (n <= 0) return;
  philox_fill_k<<<grid_for(n, 256), 256, 0, stream()>>>((int)dist, out, n, seed, stream_id, offset, scale);
  CUDA_CHECK_LAUNCH();
}

void philox_sample_normals(float* out, int S, int64_t N, int64_t cols, uint64_t seed, uint64_t stream_id, int64_t row0) {
  const int64_t total = (int64_t)S * N * cols;
  if (total <= 0) return;
  philox_sample_normals_k<<<grid_for(total, 256), 256, 0, stream()>>>(out, S, N, cols, seed, stream_id, row0);
  CUDA_CHECK_LAUNCH();
}

void philox_jitter(float* out, int64_t n, float jitter, uint64_t seed, uint64_t stream_id, uint64_t offset) {
  if (n <= 0) return;
  philox_jitter_k<<<grid_for(n, 256), 256, 0, stream()>>>(out, n, jitter, seed, stream_id, offset);
  CUDA_CHECK_LAUNCH();
}

template void philox_fill<float>(PhiloxDist, float*, int64_t, uint64_t, uint64_t, uint64_t, float);
template void philox_fill<double>(PhiloxDist, double*, int64_t, uint64_t, uint64_t, uint64_t, float);

}  // namespace vm::kernels::cuda
