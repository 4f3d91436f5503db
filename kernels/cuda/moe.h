// kernels/cuda/moe.h — the MoE and Bayesian-router kernels on the GPU, on
// device pointers (namespace vm::kernels::cuda). CPU twins:
//   router_topk / topk_gates      nn/router.cpp topk_renormalised (+ ops::softmax)
//   moe_dispatch_plan             nn/moe.cpp plan_dispatch
//   moe_gather / moe_combine      ops::gather_rows / ops::scatter_add_rows of MoELayer::forward
//   fill_tril_expdiag, tril_matvec, kl_*      autodiff/ops_moe.cpp, nn/routers/variational_logits.cpp, vtsr.cpp
//   vr_route                      the S-sample loop of nn/routers/variational_logits.cpp
//   gumbel_topk, sequential_sample            nn/routers/selection.cpp
// Backward kernels accumulate (+=) like the tape.
#pragma once
#include <cstdint>

#include "kernels/moe.h"

namespace vm::kernels::cuda {

// ---- router: softmax, top-K, renormalised gates ------------------------------------------
// probs = softmax(logits) (N, E); experts (N, K) = top-K of probs, ties to the
// lower index; gates (N, K) = p_k / Σ_j p_j over the K chosen (sum in j order).
template <class T>
void router_topk(const T* logits, T* probs, int32_t* experts, T* gates, int64_t N, int E, int K);
// The same without the softmax: top-K + renormalised gates of given probs.
template <class T>
void topk_gates(const T* probs, int32_t* experts, T* gates, int64_t N, int E, int K);
// dprobs[n, experts[n,j]] += dgates_j / S − Σ_i dgates_i p_i / S²,  S = Σ_j p_j.
template <class T>
void topk_gates_bwd(const T* probs, const int32_t* experts, const T* dgates, T* dprobs, int64_t N, int E, int K);

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

// xs[m] = x[token[m]], m < M.  Backward: dx[n] += Σ dxs[pos] over n's kept
// slots in increasing pos (the CPU's order; no atomics).
template <class T>
void moe_gather(const T* x, const int32_t* token, T* xs, int64_t M, int64_t C);
template <class T>
void moe_gather_bwd(const T* dxs, const int32_t* pos_of_slot, T* dx, int64_t N, int K, int64_t C);
// out[n] = Σ over n's kept slots s, in increasing pos, of ys[pos] · gates[s]
// (overwrites out; each product rounded before the add, as the CPU's mul then
// scatter_add_rows: bit-identical in float). K <= 16.
template <class T>
void moe_combine(const T* ys, const T* gates, const int32_t* pos_of_slot, T* out, int64_t N, int K, int64_t C);
// dys[m] += dout[token[m]] · gates[slot[m]];  dgates[slot[m]] += Σ_c dout[token[m], c] ys[m, c]
template <class T>
void moe_combine_bwd(const T* ys, const T* gates, const int32_t* token, const int32_t* slot, const T* dout, T* dys,
                     T* dgates, int64_t M, int64_t C);

// fill_tril_expdiag_*, tril_matvec_*: the table in kernels/moe.h.

// ---- the fused S-sample loop of mfvr / fcvr ----------------------------------------------------
// For each token n and sample s < S: ε_e = philox_normal(seed, stream, (s·N + n)·E + e)
// (the CPU's (S·N, E) noise tensor), l* = mean + σ ⊙ ε (full_cov = false,
// scale = σ (N, E)) or l* = mean + L ε (full_cov, scale = L (N, E, E)),
// p_s = softmax(l*); pbar = (1/S) Σ_s p_s; then top-K of pbar with
// renormalised gates. The samples never leave the SM (one warp per token,
// shared memory). experts/gates may be null (pbar only).
template <class T>
void vr_route_fwd(const T* mean, const T* scale, int64_t N, int E, int S, bool full_cov, uint64_t seed,
                  uint64_t stream, int K, T* pbar, int32_t* experts, T* gates);
// Backward through pbar (samples recomputed from the same Philox counters):
// dmean += Σ_s dl_s; dσ += Σ_s dl_s ⊙ ε_s (MF) or dL += Σ_s dl_s ε_sᵀ (FC, lower),
// dl_s = p_s ⊙ (dq − Σ dq ⊙ p_s), dq = dpbar / S. FC: E ≤ 64.
template <class T>
void vr_route_bwd(const T* mean, const T* scale, int64_t N, int E, int S, bool full_cov, uint64_t seed,
                  uint64_t stream, const T* dpbar, T* dmean, T* dscale);

// ---- closed-form KL per token ---------------------------------------------------------------------
// MF:        kl = ½ (Σ_e (exp(lv_e) + dμ_e²)/s² − lv_e) + E (log s² − 1))
// lognormal: the same formula with (m, ρ) for (dμ, lv) (nn/routers/vtsr.cpp)
// FC:        kl = ½ ((Σ_ij L_ij² + Σ dμ²)/s² − 2 Σ log L_ee + E (log s² − 1))
template <class T>
void kl_mf_fwd(const T* dmu, const T* logvar, T* kl, int64_t N, int E, double s2);
template <class T>
void kl_mf_bwd(const T* dmu, const T* logvar, const T* dkl, T* ddmu, T* dlogvar, int64_t N, int E, double s2);
template <class T>
void kl_fc_fwd(const T* dmu, const T* L, T* kl, int64_t N, int E, double s2);
template <class T>
void kl_fc_bwd(const T* dmu, const T* L, const T* dkl, T* ddmu, T* dL, int64_t N, int E, double s2);
// out[0] = Σ_n mask[n] · v[n] (mask null: all), deterministic (one block).
template <class T>
void masked_sum(const T* v, const uint8_t* mask, T* out, int64_t N);

// ---- stochastic selection (sample-k, vtsr) ----------------------------------------------------------
// The CPU signatures of nn/routers/selection.h on device pointers: key =
// z + philox_gumbel(seed, stream, n·E + e), K largest (ties to the lower index).
void gumbel_topk(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out);
// The authors' sequential inverse-CDF draw (one thread per row, the CPU loop verbatim).
void sequential_sample(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out);

}  // namespace vm::kernels::cuda
