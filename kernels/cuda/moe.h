// kernels/cuda/moe.h — the MoE and Bayesian-router kernels on the GPU, on
// device pointers (namespace vm::kernels::cuda): the GPU side of the table
// kernels/moe.h (topk_gates, moe_gather / moe_combine, the KLs, the Cholesky
// pieces: the ops of autodiff/ops_moe.cpp) plus the GPU-only pieces the
// product calls directly. Their CPU counterparts:
//   moe_dispatch_plan             nn/moe.cpp plan_dispatch
//   vr_route                      the S-sample loop of nn/routers/variational_logits.cpp
//   gumbel_topk, sequential_sample            nn/routers/selection.cpp
// Backward kernels accumulate (+=) like the tape.
#pragma once
#include <cstdint>

#include "kernels/moe.h"

namespace vm::kernels::cuda {

// ---- dispatch ---------------------------------------------------------------------------------
// Assignment slot s = n*K + j (token n, choice j) of the real tokens (mask[n]
// != 0; mask == nullptr: all real) grouped by expert, stable in slot order
// (token order), the first `cap` of each expert kept, cap = ceil(cf · N_real · K
// / E) (cf <= 0: dropless) — nn::plan_dispatch exactly. Outputs (device):
//   token, slot (N*K; the first M = offsets[E] entries are used),
//   pos_of_slot (N*K): row of slot s in the grouped order, −1 if dropped or padding,
//   offsets (E+1), counts (E), wanted (E), dropped (1).
// Asynchronous: copy offsets[E] (= M) to the host to size the expert GEMMs.
void moe_dispatch_plan(const int32_t* experts, const uint8_t* mask, int64_t N, int K, int E,
                       double capacity_factor, int32_t* token, int32_t* slot, int32_t* pos_of_slot,
                       int64_t* offsets, int64_t* counts, int64_t* wanted, int64_t* dropped);

// ---- the fused S-sample loop of mfvr / fcvr ----------------------------------------------------
// For each token n and sample s < S: ε_e = philox_normal(seed, stream, (n·S + s)·E + e)
// (the CPU's noise: nn/routers/common.h sample_normals), l* = mean + σ ⊙ ε (full_cov = false,
// scale = σ (N, E)) or l* = mean + L ε (full_cov, scale = L (N, E, E)),
// p_s = softmax(l*); pbar = (1/S) Σ_s p_s; then top-K of pbar with
// renormalised gates. The samples never leave the SM (one warp per token,
// shared memory). experts/gates may be null (pbar only). (Its backward, which
// the product does not call, is in dev/cuda.)
template <class T>
void vr_route_fwd(const T* mean, const T* scale, int64_t N, int E, int S, bool full_cov, uint64_t seed,
                  uint64_t stream, int K, T* pbar, int32_t* experts, T* gates);

// ---- stochastic selection (sample-k, vtsr) ----------------------------------------------------------
// The CPU signatures of nn/routers/selection.h on device pointers: key =
// z + philox_gumbel(seed, stream, (row0 + n)·E + e), K largest (ties to the lower index).
void gumbel_topk(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out,
                 int64_t row0 = 0);
// The authors' sequential inverse-CDF draw (one thread per row, the CPU loop verbatim).
void sequential_sample(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out,
                       int64_t row0 = 0);

}  // namespace vm::kernels::cuda
