// kernels/cpu/reference.h — the plain reference implementation of every op in
// autodiff/ops.h (forward only) and of the raw CPU kernels, in double precision.
// This is the "llm.c CPU reference" next to the fast kernels: nested loops over
// explicit multi-indices, no Eigen, no OpenMP, no cleverness (no fused
// max-subtraction tricks beyond what is needed to stay finite). Tests compare
// the fast float32 / float64 paths against these (tests/op_cases.cpp).
//
// Everything takes and returns TensorD (row-major, up to 4 dims); integer
// arguments mirror the op signatures in autodiff/ops.h.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace vm::ref {

// ---- linear algebra ------------------------------------------------------------
// Same shape rules as ops::matmul: b (K, N) shared over a's batch dims, or
// identical batch dims (batched).
TensorD matmul(const TensorD& a, const TensorD& b);
// Raw-buffer GEMM with the contract of kernels::gemm:
// C (M,N) = op(A) op(B) [+ C]; A stored (M,K) or (K,M) when transA; B likewise.
void gemm(double* C, const double* A, const double* B, int64_t M, int64_t N, int64_t K, bool transA,
          bool transB, bool accumulate);
// x: (M, C), w: (E, C, F), group e = rows [offsets[e], offsets[e+1]).
TensorD grouped_matmul(const TensorD& x, const TensorD& w, const std::vector<int64_t>& offsets);

// ---- element-wise with numpy broadcasting -------------------------------------
TensorD add(const TensorD& a, const TensorD& b);
TensorD sub(const TensorD& a, const TensorD& b);
TensorD mul(const TensorD& a, const TensorD& b);
TensorD div(const TensorD& a, const TensorD& b);
Shape broadcast(const Shape& a, const Shape& b);  // throws vm::Error when they do not broadcast

// ---- scalar and unary -----------------------------------------------------------
TensorD add_scalar(const TensorD& a, double s);
TensorD mul_scalar(const TensorD& a, double s);
TensorD pow_scalar(const TensorD& a, double p);
TensorD exp(const TensorD& a);
TensorD log(const TensorD& a);
TensorD sqrt(const TensorD& a);
TensorD softplus(const TensorD& a);
TensorD sigmoid(const TensorD& a);
TensorD relu(const TensorD& a);
TensorD gelu(const TensorD& a);  // tanh approximation
TensorD silu(const TensorD& a);
TensorD tanh(const TensorD& a);

// ---- reductions ------------------------------------------------------------------
TensorD sum(const TensorD& a, int axis, bool keepdim = false);
TensorD mean(const TensorD& a, int axis, bool keepdim = false);
TensorD sum_all(const TensorD& a);
TensorD mean_all(const TensorD& a);

// ---- normalisation over the last axis ---------------------------------------------
TensorD softmax(const TensorD& a);
TensorD log_softmax(const TensorD& a);
TensorD logsumexp(const TensorD& a);
TensorD layernorm(const TensorD& x, const TensorD& gamma, const TensorD& beta, double eps = 1e-5);
TensorD rmsnorm(const TensorD& x, const TensorD& gamma, double eps = 1e-6);

// ---- indexing and layout ------------------------------------------------------------
TensorD embedding(const TensorD& table, const std::vector<int32_t>& ids, const Shape& out_shape);
TensorD reshape(const TensorD& a, const Shape& shape);  // -1 infers one dim
TensorD transpose(const TensorD& a, int d0, int d1);
TensorD slice(const TensorD& a, int axis, int64_t start, int64_t stop);
TensorD concat(const std::vector<TensorD>& xs, int axis);

// ---- attention: explicit (T, T) scores, masked entries set to -inf ----------------------
TensorD attention(const TensorD& q, const TensorD& k, const TensorD& v, bool causal);

// ---- losses and stochastic ops -------------------------------------------------------------
TensorD cross_entropy(const TensorD& logits, const std::vector<int32_t>& targets, int32_t ignore_index = -100);
// keep element i iff philox_uniform(seed, stream, offset + i) >= p, scaled by 1/(1-p).
TensorD dropout(const TensorD& a, double p, uint64_t seed, uint64_t stream, uint64_t offset);

// ---- selection, dispatch and combine ----------------------------------------------------------
// Indices of the k largest per row, ties to the lower index (selection by repeated argmax).
std::vector<int32_t> topk_indices(const TensorD& x, int k);
TensorD topk_values(const TensorD& x, int k);
TensorD take_cols(const TensorD& x, const std::vector<int32_t>& idx, int k);
TensorD gather_rows(const TensorD& x, const std::vector<int32_t>& rows);
TensorD scatter_add_rows(const TensorD& src, const std::vector<int32_t>& rows, int64_t n_rows);
// The chosen probabilities over their row sum.
TensorD topk_gates(const TensorD& probs, int k);
// A dispatch as host lists: grouped row m belongs to token[m] and slot[m] (n·K + j).
TensorD moe_gather(const TensorD& x, const std::vector<int32_t>& token);
TensorD moe_combine(const TensorD& ys, const TensorD& gates, const std::vector<int32_t>& token,
                    const std::vector<int32_t>& slot);

// ---- Cholesky pieces ----------------------------------------------------------------------------
TensorD fill_tril_expdiag(const TensorD& v, int E);
TensorD tril_matvec(const TensorD& L, const TensorD& eps);
TensorD sum_log_diag(const TensorD& L);
TensorD straight_through(const TensorD& hard, const TensorD& soft);  // forward = hard

// ---- closed-form KLs: the sum over experts (or the matrix formula) of the Gaussian KL ------------
TensorD kl_mf(const TensorD& d, const TensorD& lv, double s2);
TensorD kl_fc(const TensorD& d, const TensorD& L, double s2);

// ---- raw kernels (kernels/cpu/rowwise.h) that have no op of their own ----------------------------
// One AdamW step, the formula of kernels::adamw_step, in double.
void adamw_step(double* param, const double* grad, double* m, double* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step);

}  // namespace vm::ref
