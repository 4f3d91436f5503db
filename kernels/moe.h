// kernels/moe.h — the kernels of the MoE and router ops: one signature for
// both devices (kernels/table.h), defined in kernels/cpu/moe.cpp and
// kernels/cuda/moe.cu. Index arrays live on the kernel's device; backward
// kernels accumulate.
//
//  (a dispatch: slot s = n·K + j of token n's j-th choice; grouped rows m < M hold
//   token[m], slot[m]; pos_of_slot[s] = the grouped row of slot s, −1 if dropped)
#pragma once
#include <cmath>  // INFINITY

#include "kernels/table.h"

namespace vm::kernels {
#ifdef __CUDACC__
#define VM_TOPK_HD __host__ __device__
#else
#define VM_TOPK_HD
#endif
// The value every top-K of both devices ranks by (topk_select, the routers'
// Gumbel top-K, the GPU's warp top-K): larger first, ties to the lower
// index, and NaN as −inf (below every number, tied with −inf). Comparing
// raw NaNs is no order at all: the CPU's partial sort then has no defined
// result, and the GPU's warp top-K could pick one expert twice.
template <class T>
VM_TOPK_HD inline T topk_key(T v) {
  return v != v ? -static_cast<T>(INFINITY) : v;
}
#undef VM_TOPK_HD
}  // namespace vm::kernels

#define VM_MOE_KERNELS(K)                                                                                   \
  /* probs (N, E): experts (N, K) = the K largest per row (ties to the */                                   \
  /* lower index, NaN ranked as −inf: topk_key); gates (N, K) = p_k / Σ_j p_j over the K chosen */          \
  /* (sum in j order). GPU: E <= 2048, K <= 16 (warp top-K) */                                              \
  K(void, topk_gates, (const T* probs, int32_t* experts, T* gates, int64_t N, int E, int K))                \
  /* dprobs[n, experts[n,j]] += dg_j / S − Σ_i dg_i p_i / S², S = Σ_j p_j */                                \
  K(void, topk_gates_bwd,                                                                                   \
    (const T* probs, const int32_t* experts, const T* dgates, T* dprobs, int64_t N, int E, int K))          \
  /* xs[m] = x[token[m]], m < M */                                                                          \
  K(void, moe_gather, (const T* x, const int32_t* token, T* xs, int64_t M, int64_t C))                      \
  /* dx[n] += Σ dxs[pos] over n's kept slots s (pos = pos_of_slot[s] >= 0), */                              \
  /* in increasing pos */                                                                                   \
  K(void, moe_gather_bwd, (const T* dxs, const int32_t* pos_of_slot, T* dx, int64_t N, int K, int64_t C))   \
  /* out[n] = Σ over n's kept slots s, in increasing pos, of ys[pos] · gates[s] */                          \
  /* (overwrites out; each product rounded before the add). GPU: K <= 16 */                                 \
  K(void, moe_combine,                                                                                      \
    (const T* ys, const T* gates, const int32_t* pos_of_slot, T* out, int64_t N, int K, int64_t C))         \
  /* dys[m] += dout[token[m]] · gates[slot[m]]; */                                                          \
  /* dgates[slot[m]] += Σ_c dout[token[m], c] ys[m, c]; either may be null */                               \
  K(void, moe_combine_bwd,                                                                                  \
    (const T* ys, const T* gates, const int32_t* token, const int32_t* slot, const T* dout, T* dys,         \
     T* dgates, int64_t M, int64_t C))                                                                      \
  /* per token n: ½ (Σ_e (exp(lv_e) + d_e²)/s² − lv_e + E (log s² − 1)) */                                  \
  K(void, kl_mf_fwd, (const T* dmu, const T* logvar, T* kl, int64_t N, int E, double s2))                   \
  /* its gradient into d (dmu) and lv (logvar); either may be null */                                       \
  K(void, kl_mf_bwd,                                                                                        \
    (const T* dmu, const T* logvar, const T* dkl, T* ddmu, T* dlogvar, int64_t N, int E, double s2))        \
  /* per token n: ½ ((Σ_ij L_ij² + Σ_e d_e²)/s² − 2 Σ_e log L_ee + E (log s² − 1)) */                       \
  K(void, kl_fc_fwd, (const T* dmu, const T* L, T* kl, int64_t N, int E, double s2))                        \
  /* its gradient into d and L; either may be null */                                                       \
  K(void, kl_fc_bwd, (const T* dmu, const T* L, const T* dkl, T* ddmu, T* dL, int64_t N, int E, double s2)) \
  /* v (N, E(E+1)/2) -> L (N, E, E): row-major lower triangle, */                                           \
  /* exp on the diagonal, 0 above */                                                                        \
  K(void, fill_tril_expdiag_fwd, (const T* v, T* L, int64_t N, int E))                                      \
  /* dv[t] += dL_ij (· L_ii on the diagonal) */                                                             \
  K(void, fill_tril_expdiag_bwd, (const T* L, const T* dL, T* dv, int64_t N, int E))                        \
  /* out (N, E) = L ε per row, lower triangle only (j ascending) */                                         \
  K(void, tril_matvec_fwd, (const T* L, const T* eps, T* out, int64_t N, int E))                            \
  /* dL += g εᵀ (lower), dε += Lᵀ g (i ascending); either may be null */                                    \
  K(void, tril_matvec_bwd, (const T* L, const T* eps, const T* g, T* dL, T* deps, int64_t N, int E))
VM_DECLARE_KERNELS(VM_MOE_KERNELS)
