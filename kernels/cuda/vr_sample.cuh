// kernels/cuda/vr_sample.cuh — one sample of the fused mfvr/fcvr router loop
// on the GPU, shared by its forward (kernels/cuda/moe.cu vr_route_fwd) and its
// backward (dev/cuda/vr_route_bwd.cu): for token n and sample s,
// ε_e = philox_normal(seed, stream, (n·S + s)·E + e) (one token's S·E normals
// one block: the CPU's layout, nn/routers/common.h sample_normals), l* = mean + σ ⊙ ε (scale σ (N, E)) or mean + L ε (FC: scale L
// (N, E, E)), p = softmax(l*). One warp per token; eps and p in shared memory.
// Include from .cu files only.
#pragma once
#include "core/philox.h"
#include "core/cuda/device.cuh"

namespace vm::kernels::cuda::detail {

template <class T, bool FC>
__device__ __forceinline__ void vr_sample(const T* __restrict__ mu, const T* __restrict__ sc, int64_t n, int S, int E,
                                          int s, uint64_t seed, uint64_t stream, T* eps, T* p) {
  const int lane = threadIdx.x;
  const uint64_t base = vm::philox_sample_counter(n, S, s, E);  // (n·S + s)·E
  for (int e = lane; e < E; e += 32) eps[e] = (T)vm::philox_normal(seed, stream, base + (uint64_t)e);
  __syncwarp();
  T m = -vinf<T>();
  for (int e = lane; e < E; e += 32) {
    T noise;
    if constexpr (FC) {
      const T* Le = sc + (n * E + e) * (int64_t)E;
      noise = T(0);
      for (int j = 0; j <= e; ++j) noise += Le[j] * eps[j];
    } else {
      noise = mul_rn(sc[n * E + e], eps[e]);  // the CPU's σ ⊙ ε, rounded before the add
    }
    T l = mu[e] + noise;
    p[e] = l;
    m = max(m, l);
  }
  m = warp_max(m);
  T sum = T(0);
  for (int e = lane; e < E; e += 32) sum += vexp(p[e] - m);
  sum = warp_sum(sum);
  const T inv = T(1) / sum;
  for (int e = lane; e < E; e += 32) p[e] = vexp(p[e] - m) * inv;
  __syncwarp();
}

}  // namespace vm::kernels::cuda::detail
