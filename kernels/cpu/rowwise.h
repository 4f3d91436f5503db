// kernels/cpu/rowwise.h — the CPU kernels behind the row-wise ops (softmax,
// norms, cross-entropy), fused attention and AdamW. Each takes raw row-major
// buffers; the CUDA twins in kernels/cuda/ take the same arguments. Rows are
// split across the OpenMP pool; each row is reduced by one thread in a fixed
// order, so the result does not depend on the thread count.
#pragma once
#include <cstdint>

namespace vm::kernels {

// y = softmax(x) over rows of length C.  dx += y ⊙ (dy − Σ dy⊙y)
template <class T> void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C);
template <class T> void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C);
// y = x − logsumexp(x).  dx += dy − softmax(x) Σ dy
template <class T> void log_softmax_fwd(const T* x, T* y, int64_t rows, int64_t C);
template <class T> void log_softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C);

// LayerNorm: y = (x − μ) / sqrt(σ² + eps) · γ + β; saves mean and rstd per row.
template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows,
                   int64_t C, double eps);
template <class T>
void layernorm_bwd(const T* x, const T* gamma, const T* mean, const T* rstd, const T* dy, T* dx,
                   T* dgamma, T* dbeta, int64_t rows, int64_t C);
// RMSNorm: y = x / sqrt(mean(x²) + eps) · γ; saves rstd per row.
template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps);
template <class T>
void rmsnorm_bwd(const T* x, const T* gamma, const T* rstd, const T* dy, T* dx, T* dgamma, int64_t rows,
                 int64_t C);

// Cross-entropy over rows of logits with integer targets. Writes the per-row
// probabilities (for backward) and returns Σ loss over rows whose target is not
// ignore_index, with the number of such rows in *count.
template <class T>
double cross_entropy_fwd(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                         int32_t ignore_index, int64_t* count);
// dlogits += scale · (probs − onehot(target)) for rows not ignored.
template <class T>
void cross_entropy_bwd(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                       int32_t ignore_index, T scale);

// Scaled dot-product attention for (BH) independent heads:
// q, k, v: (BH, T, D); P: (BH, T, T) softmax weights (saved); out: (BH, T, D).
template <class T>
void attention_fwd(const T* q, const T* k, const T* v, T* P, T* out, int64_t BH, int64_t Tn, int64_t D,
                   bool causal);
template <class T>
void attention_bwd(const T* q, const T* k, const T* v, const T* P, const T* dout, T* dq, T* dk, T* dv,
                   int64_t BH, int64_t Tn, int64_t D, bool causal);

// AdamW step on one parameter buffer (decoupled weight decay, bias-corrected).
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step);

}  // namespace vm::kernels
