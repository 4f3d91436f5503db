// kernels/cuda/rowwise.h — the CUDA twins of kernels/cpu/rowwise.h: the same
// functions with the same arguments, on device pointers (namespace
// vm::kernels::cuda). Each runs on this thread's stream (core/cuda/device.h)
// and is asynchronous, except cross_entropy_fwd, which returns the loss on the
// host and therefore synchronises.
//
// Rows are owned by one warp (C <= 1024) or one block (longer rows); sums over
// a row use a fixed tree, and the parameter gradients of the norms (column
// sums over rows) are two fixed-order passes, so every result is
// deterministic. They differ from the CPU only by summation order (tolerances
// in tests/test_cuda.cpp).
//
// targets (cross-entropy) are device int32 arrays.
#pragma once
#include <cstdint>

#include "kernels/cuda/elementwise.h"  // Launch

namespace vm::kernels::cuda {

// y = softmax(x) over rows of length C.  dx += y ⊙ (dy − Σ dy⊙y)
template <class T> void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C);
template <class T> void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C);
// y = x − logsumexp(x).  dx += dy − softmax(x) Σ dy
template <class T> void log_softmax_fwd(const T* x, T* y, int64_t rows, int64_t C);
template <class T> void log_softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C);

// LayerNorm: y = (x − μ) / sqrt(σ² + eps) · γ + β; saves mean and rstd per row.
template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                   double eps);
template <class T>
void layernorm_bwd(const T* x, const T* gamma, const T* mean, const T* rstd, const T* dy, T* dx, T* dgamma,
                   T* dbeta, int64_t rows, int64_t C);
// RMSNorm: y = x / sqrt(mean(x²) + eps) · γ; saves rstd per row.
template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps);
template <class T>
void rmsnorm_bwd(const T* x, const T* gamma, const T* rstd, const T* dy, T* dx, T* dgamma, int64_t rows,
                 int64_t C);

// Cross-entropy fused with the softmax: writes probs, returns Σ loss (double,
// as the CPU: lse in double from the logits) over rows whose target is not
// ignore_index and their number in *count. Synchronises.
template <class T>
double cross_entropy_fwd(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                         int32_t ignore_index, int64_t* count);
// dlogits += scale · (probs − onehot(target)) for rows not ignored.
template <class T>
void cross_entropy_bwd(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                       int32_t ignore_index, T scale);

// Scaled dot-product attention, (BH) heads: q, k, v (BH, T, D); P (BH, T, T)
// saved softmax weights; out (BH, T, D). Scores and products through cuBLAS
// strided-batched GEMMs, the masked scaled softmax (and its backward) fused in
// one row kernel. Backward needs a (BH, T, T) workspace from the pool.
template <class T>
void attention_fwd(const T* q, const T* k, const T* v, T* P, T* out, int64_t BH, int64_t Tn, int64_t D,
                   bool causal);
template <class T>
void attention_bwd(const T* q, const T* k, const T* v, const T* P, const T* dout, T* dq, T* dk, T* dv,
                   int64_t BH, int64_t Tn, int64_t D, bool causal);

// AdamW step on one parameter buffer (decoupled weight decay, bias-corrected).
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step);

// ---- launch variants for the dev harness and the tests ------------------------------
// version 1: one warp per row (block/32 rows per block); 2: one block per row.
// block: threads per block (multiple of 32, <= 1024). {0, 0}: the default.
template <class T> void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C, Launch l);
template <class T> void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C, Launch l);
template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                   double eps, Launch l);
template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps, Launch l);

}  // namespace vm::kernels::cuda
