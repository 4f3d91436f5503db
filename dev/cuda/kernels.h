// dev/cuda/kernels.h — CUDA kernels the product does not call, kept beside
// the tests and benchmarks that use them (as llm.c keeps kernel versions under
// dev/cuda): they build into the vmoer_cuda_dev library, which vmoer_tests and
// bench_cuda link and the vmoer library does not. Plain C++ (no CUDA headers);
// device pointers, this thread's stream, namespace vm::kernels::cuda.
#pragma once
#include <cstdint>

#include "kernels/cuda/random.h"  // philox_fill: moved to the product, still used here by the tests and bench_cuda

namespace vm::kernels::cuda {

// Backward of the fused mfvr/fcvr S-sample loop (vr_route_fwd,
// kernels/cuda/moe.h), samples recomputed from the same Philox counters:
// dmean += Σ_s dl_s; dσ += Σ_s dl_s ⊙ ε_s (MF) or dL += Σ_s dl_s ε_sᵀ (FC, lower),
// dl_s = p_s ⊙ (dq − Σ dq ⊙ p_s), dq = dpbar / S. FC: E ≤ 64.
template <class T>
void vr_route_bwd(const T* mean, const T* scale, int64_t N, int E, int S, bool full_cov, uint64_t seed,
                  uint64_t stream, const T* dpbar, T* dmean, T* dscale);

// embedding_bwd (kernels/nn.h) with atomicAdd: the order of the adds, hence
// the float rounding, varies from run to run.
template <class T>
void embedding_bwd_atomic(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C);

}  // namespace vm::kernels::cuda
