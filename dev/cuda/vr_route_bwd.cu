// dev/cuda/vr_route_bwd.cu — the backward of the fused mfvr/fcvr S-sample
// loop (kernels/cuda/moe.h vr_route_fwd): through pbar, the samples recomputed
// from the same Philox counters. Not called by the product (its evaluation
// runs the forward without a graph; training builds the samples as ops);
// checked against the CPU router graph in tests/test_cuda.cpp.
#include <algorithm>
#include <string>

#include "dev/cuda/kernels.h"
#include "core/cuda/device.cuh"
#include "kernels/cuda/vr_sample.cuh"

namespace vm::kernels::cuda {
using namespace detail;

namespace {
unsigned blocks_for_rows(int64_t N, int64_t cap = 1 << 20) { return (unsigned)std::max<int64_t>(1, std::min(N, cap)); }

template <class T, bool FC>
__global__ void vr_bwd_k(const T* __restrict__ mean, const T* __restrict__ scale, int64_t N, int E, int S, uint64_t seed,
                         uint64_t stream, const T* __restrict__ dpbar, T* __restrict__ dmean, T* __restrict__ dscale) {
  extern __shared__ __align__(16) unsigned char vr_smem[];
  T* eps = reinterpret_cast<T*>(vr_smem);
  T* p = eps + E;
  T* dq = p + E;
  T* gm = dq + E;
  T* gs = gm + E;  // MF: E entries; FC: E*E
  const int lane = threadIdx.x;
  const T invS = (T)(1.0 / (double)S);
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* mu = mean + n * E;
    for (int e = lane; e < E; e += 32) {
      dq[e] = S == 1 ? dpbar[n * E + e] : dpbar[n * E + e] * invS;
      gm[e] = T(0);
    }
    const int ns = FC ? E * E : E;
    for (int i = lane; i < ns; i += 32) gs[i] = T(0);
    __syncwarp();
    for (int s = 0; s < S; ++s) {
      vr_sample<T, FC>(mu, scale, n, S, E, s, seed, stream, eps, p);
      T dot = T(0);
      for (int e = lane; e < E; e += 32) dot += dq[e] * p[e];
      dot = warp_sum(dot);
      for (int e = lane; e < E; e += 32) {
        T dl = p[e] * (dq[e] - dot);
        gm[e] += dl;
        if constexpr (FC) {
          for (int j = 0; j <= e; ++j) gs[e * E + j] += dl * eps[j];
        } else {
          gs[e] += dl * eps[e];
        }
      }
      __syncwarp();
    }
    for (int e = lane; e < E; e += 32) {
      if (dmean) dmean[n * E + e] += gm[e];
      if (dscale) {
        if constexpr (FC) {
          for (int j = 0; j <= e; ++j) dscale[(n * E + e) * E + j] += gs[e * E + j];
        } else {
          dscale[n * E + e] += gs[e];
        }
      }
    }
    __syncwarp();
  }
}

}  // namespace

template <class T>
void vr_route_bwd(const T* mean, const T* scale, int64_t N, int E, int S, bool full_cov, uint64_t seed,
                  uint64_t stream_id, const T* dpbar, T* dmean, T* dscale) {
  if (S < 1) throw vm::Error("cuda vr_route_bwd: S must be >= 1");
  if (N <= 0) return;
  // the per-row buffers and the dL tile in dynamic shared memory; past 48 KB the
  // kernel opts in to more, up to the device's limit per block (else a clear error)
  const size_t smem = (4 * (size_t)E + (full_cov ? (size_t)E * E : (size_t)E)) * sizeof(T);
  const std::string what = "cuda vr_route_bwd (E = " + std::to_string(E) + (full_cov ? ", full covariance" : "") + ")";
  if (full_cov) {
    prepare_dynamic_smem(vr_bwd_k<T, true>, smem, what);
    vr_bwd_k<T, true><<<blocks_for_rows(N), 32, smem, stream()>>>(mean, scale, N, E, S, seed, stream_id, dpbar, dmean, dscale);
  } else {
    prepare_dynamic_smem(vr_bwd_k<T, false>, smem, what);
    vr_bwd_k<T, false><<<blocks_for_rows(N), 32, smem, stream()>>>(mean, scale, N, E, S, seed, stream_id, dpbar, dmean, dscale);
  }
  CUDA_CHECK_LAUNCH();
}

template void vr_route_bwd<float>(const float*, const float*, int64_t, int, int, bool, uint64_t, uint64_t,
                                  const float*, float*, float*);
template void vr_route_bwd<double>(const double*, const double*, int64_t, int, int, bool, uint64_t, uint64_t,
                                   const double*, double*, double*);

}  // namespace vm::kernels::cuda
