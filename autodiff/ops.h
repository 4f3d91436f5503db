// autodiff/ops.h — every differentiable op of vmoer, declared once for both
// devices. Each op is defined once (autodiff/ops_*.cpp): it checks its
// arguments, allocates its outputs on its inputs' device, runs that device's
// kernel (kernels/cpu or kernels/cuda, one signature for both: kernels/table.h)
// and records a backward closure that does the same. Shapes follow the
// comment convention `x: (B, T, C)`. All ops exist for float (the product)
// and double (finite-difference gradient checks).
//
// Every op here has an entry in tests/op_cases.cpp: a gradient check in double
// precision, a parity check against the plain reference (kernels/cpu/reference.h),
// a micro-benchmark (bench/bench_ops.cpp) and, on a GPU, the same case on
// device tensors against the CPU (tests/test_cuda_ops.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "autodiff/tape.h"

namespace vm::ops {

// ---- linear algebra ----------------------------------------------------------
// a: (..., M, K) @ b: (K, N) -> (..., M, N)   (b shared over the batch), or
// a: (B.., M, K) @ b: (B.., K, N) with identical batch dims (batched).
template <class T> VarT<T> matmul(const VarT<T>& a, const VarT<T>& b);

// ---- element-wise with numpy broadcasting -----------------------------------
template <class T> VarT<T> add(const VarT<T>& a, const VarT<T>& b);
template <class T> VarT<T> sub(const VarT<T>& a, const VarT<T>& b);
template <class T> VarT<T> mul(const VarT<T>& a, const VarT<T>& b);
template <class T> VarT<T> div(const VarT<T>& a, const VarT<T>& b);

// ---- scalar ops --------------------------------------------------------------
template <class T> VarT<T> add_scalar(const VarT<T>& a, double s);
template <class T> VarT<T> mul_scalar(const VarT<T>& a, double s);
template <class T> VarT<T> pow_scalar(const VarT<T>& a, double p);  // a^p (a > 0 unless p integer)

// ---- unary -------------------------------------------------------------------
template <class T> VarT<T> exp(const VarT<T>& a);
template <class T> VarT<T> log(const VarT<T>& a);
template <class T> VarT<T> sqrt(const VarT<T>& a);
template <class T> VarT<T> softplus(const VarT<T>& a);  // log(1 + e^a), stable
template <class T> VarT<T> sigmoid(const VarT<T>& a);
template <class T> VarT<T> relu(const VarT<T>& a);
template <class T> VarT<T> gelu(const VarT<T>& a);  // tanh approximation (GPT-2)
template <class T> VarT<T> silu(const VarT<T>& a);
template <class T> VarT<T> tanh(const VarT<T>& a);

// ---- reductions --------------------------------------------------------------
template <class T> VarT<T> sum(const VarT<T>& a, int axis, bool keepdim = false);
template <class T> VarT<T> mean(const VarT<T>& a, int axis, bool keepdim = false);
template <class T> VarT<T> sum_all(const VarT<T>& a);   // -> ()
template <class T> VarT<T> mean_all(const VarT<T>& a);  // -> ()

// ---- normalisation over the last axis ---------------------------------------
template <class T> VarT<T> softmax(const VarT<T>& a);      // x: (..., C)
template <class T> VarT<T> log_softmax(const VarT<T>& a);  // x: (..., C)
template <class T> VarT<T> logsumexp(const VarT<T>& a);    // (..., C) -> (...)
// x: (..., C), gamma/beta: (C)
template <class T> VarT<T> layernorm(const VarT<T>& x, const VarT<T>& gamma, const VarT<T>& beta,
                                     double eps = 1e-5);
template <class T> VarT<T> rmsnorm(const VarT<T>& x, const VarT<T>& gamma, double eps = 1e-6);

// ---- indexing and layout -----------------------------------------------------
// table: (V, C), ids: n indices -> out_shape + (C) (out_shape multiplies to n)
template <class T> VarT<T> embedding(const VarT<T>& table, const std::vector<int32_t>& ids, Shape out_shape);
template <class T> VarT<T> reshape(const VarT<T>& a, Shape shape);
template <class T> VarT<T> transpose(const VarT<T>& a, int d0, int d1);  // swap two dims (copies)
template <class T> VarT<T> slice(const VarT<T>& a, int axis, int64_t start, int64_t stop);
template <class T> VarT<T> concat(const std::vector<VarT<T>>& xs, int axis);

// ---- attention ---------------------------------------------------------------
// q, k, v: (B, H, T, D) -> (B, H, T, D); softmax(q kᵀ / sqrt(D) [+ causal mask]) v
template <class T> VarT<T> attention(const VarT<T>& q, const VarT<T>& k, const VarT<T>& v, bool causal);

// ---- losses -------------------------------------------------------------------
// logits: (N, C), targets: N class ids; rows with target == ignore_index are
// skipped; mean over the rest (0 when every row is ignored).
template <class T> VarT<T> cross_entropy(const VarT<T>& logits, const std::vector<int32_t>& targets,
                                         int32_t ignore_index = -100);

// ---- stochastic ----------------------------------------------------------------
// Inverted dropout with Philox uniforms at (seed, stream, offset .. offset+numel).
template <class T> VarT<T> dropout(const VarT<T>& a, double p, uint64_t seed, uint64_t stream, uint64_t offset);

// ---- selection, dispatch and combine (MoE) -------------------------------------
// x: (N, E) -> indices (N, k) of the k largest per row (ties: lower index first),
// values (N, k) differentiable (gradient flows to the selected entries).
template <class T> struct TopK {
  VarT<T> values;
  Indices indices;  // row-major (N, k); topk_gates leaves them on its device (core/tensor.h)
};
template <class T> TopK<T> topk(const VarT<T>& x, int k);
// x: (N, E), idx: (N, k) -> (N, k) with out[n, j] = x[n, idx[n, j]]. Indices
// already on x's device are used there (no transfer; their range is the
// kernel's that made them); host indices are checked against [0, E) and uploaded.
template <class T> VarT<T> take_cols(const VarT<T>& x, const Indices& idx, int k);
// x: (N, C), rows: M indices into N -> (M, C)
template <class T> VarT<T> gather_rows(const VarT<T>& x, const std::vector<int32_t>& rows);
// src: (M, C), rows: M indices into [0, n_rows) -> (n_rows, C), out[rows[m]] += src[m]
template <class T> VarT<T> scatter_add_rows(const VarT<T>& src, const std::vector<int32_t>& rows, int64_t n_rows);

// Grouped (per-expert) matmul: rows of x are grouped by expert, group e being
// rows [offsets[e], offsets[e+1]); out rows of group e = x rows · w[e].
// x: (M, C), w: (E, C, F), offsets: E+1 increasing, offsets[E] = M -> (M, F)
template <class T> VarT<T> grouped_matmul(const VarT<T>& x, const VarT<T>& w, const std::vector<int64_t>& offsets);

// probs: (N, E) -> indices (N, k) of the k largest per row (ties: lower index),
// values (N, k) = the chosen probabilities renormalised to sum 1 per row,
// g_j = p_j / Σ_i p_i (gradient into probs): the routers' gates.
template <class T> TopK<T> topk_gates(const VarT<T>& probs, int k);

// The MoE dispatch of N tokens' K choices each: slot s = n·K + j, grouped by
// expert into rows 0..M−1 (nn::plan_dispatch; capacity may drop some).
// token[m] and slot[m] belong to grouped row m, pos[s] is the grouped row of
// slot s (−1: dropped or padding). Integer tensors on the device of the data
// they route (on the GPU nn/moe.cpp builds the plan there).
struct MoEDispatch {
  TensorT<int32_t> token, slot, pos;  // (>= M), (>= M), (N·K)
  int64_t n = 0, m = 0;               // N, M
  int k = 0;                          // K
};
// The dispatch of a host plan (token, slot: M entries each), on dev.
MoEDispatch moe_dispatch(const std::vector<int32_t>& token, const std::vector<int32_t>& slot, int64_t n, int k,
                         Device dev = Device::CPU);
// x: (N, C) -> (M, C), xs[m] = x[token[m]]
template <class T> VarT<T> moe_gather(const VarT<T>& x, const MoEDispatch& d);
// ys: (M, C), gates: (N, K) -> (N, C), out[n] = Σ over n's kept slots s, in
// grouped order, of ys[pos[s]] · gates[s]. GPU: K <= 16 (as moe_gather).
template <class T> VarT<T> moe_combine(const VarT<T>& ys, const VarT<T>& gates, const MoEDispatch& d);

// ---- Cholesky pieces for the full-covariance router (FCVR) ---------------------
// v: (N, E(E+1)/2) -> L: (N, E, E) lower triangular, row-major packing of the
// lower triangle (row i holds i+1 numbers), diagonal exponentiated.
template <class T> VarT<T> fill_tril_expdiag(const VarT<T>& v, int E);
// L: (N, E, E) lower triangular, eps: (N, E) -> (N, E) with out[n] = L[n] eps[n]
template <class T> VarT<T> tril_matvec(const VarT<T>& L, const VarT<T>& eps);
// L: (N, E, E) -> (N): Σ_e log L[n, e, e]
template <class T> VarT<T> sum_log_diag(const VarT<T>& L);

// ---- closed-form KL per token of the variational routers (docs/vmoer.md §2-3) ------
// d, lv: (N, E) -> (N): ½ (Σ_e (exp(lv_e) + d_e²)/s2 − lv_e + E (log s2 − 1))
// (MFVR with d = Δμ, lv = log σ²; vtsr's lognormal temperature with d = m, lv = ρ)
template <class T> VarT<T> kl_mf(const VarT<T>& d, const VarT<T>& lv, double s2);
// d: (N, E), L: (N, E, E) lower triangular -> (N):
// ½ ((Σ_ij L_ij² + Σ_e d_e²)/s2 − 2 Σ_e log L_ee + E (log s2 − 1))   (FCVR; tr(L Lᵀ) = Σ_ij L_ij²)
template <class T> VarT<T> kl_fc(const VarT<T>& d, const VarT<T>& L, double s2);

// ---- estimators -----------------------------------------------------------------
// Forward = hard, backward = identity into soft (hard gets no gradient).
template <class T> VarT<T> straight_through(const VarT<T>& hard, const VarT<T>& soft);

// ---- convenience ---------------------------------------------------------------
template <class T> VarT<T> neg(const VarT<T>& a) { return mul_scalar(a, -1.0); }
template <class T> VarT<T> square(const VarT<T>& a) { return mul(a, a); }
template <class T> VarT<T> constant(TensorT<T> t) { return VarT<T>(std::move(t), false); }

}  // namespace vm::ops
