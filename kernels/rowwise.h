// kernels/rowwise.h — the row-wise kernels (softmax family, norms,
// cross-entropy fused with the softmax, attention): one signature for both
// devices (kernels/table.h), defined in kernels/cpu/rowwise.cpp and
// kernels/cuda/rowwise.cu. Raw row-major buffers; backward kernels accumulate.
#pragma once
#include "kernels/table.h"

#define VM_ROWWISE_KERNELS(K)                                                                                 \
  /* y = softmax(x) over rows of length C;  dx += y ⊙ (dy − Σ dy⊙y) */                                        \
  K(void, softmax_fwd, (const T* x, T* y, int64_t rows, int64_t C))                                           \
  K(void, softmax_bwd, (const T* y, const T* dy, T* dx, int64_t rows, int64_t C))                             \
  /* y = x − logsumexp(x);  dx += dy − softmax(x) Σ dy */                                                     \
  K(void, log_softmax_fwd, (const T* x, T* y, int64_t rows, int64_t C))                                       \
  K(void, log_softmax_bwd, (const T* y, const T* dy, T* dx, int64_t rows, int64_t C))                         \
  /* y = (x − μ) / sqrt(σ² + eps) · γ + β; saves mean and rstd per row */                                     \
  K(void, layernorm_fwd,                                                                                      \
    (const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows, int64_t C, double eps)) \
  K(void, layernorm_bwd,                                                                                      \
    (const T* x, const T* gamma, const T* mean, const T* rstd, const T* dy, T* dx, T* dgamma, T* dbeta,       \
     int64_t rows, int64_t C))                                                                                \
  /* y = x / sqrt(mean(x²) + eps) · γ; saves rstd per row */                                                  \
  K(void, rmsnorm_fwd, (const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps))      \
  K(void, rmsnorm_bwd,                                                                                        \
    (const T* x, const T* gamma, const T* rstd, const T* dy, T* dx, T* dgamma, int64_t rows, int64_t C))      \
  /* writes the per-row probabilities (for backward) and loss[0] = T(Σ / count), Σ the sum in */           \
  /* double of −log p_target over the `count` rows whose target is not ignore_index (0 when */              \
  /* count = 0); targets and loss on the kernel's device, count from the caller's host targets: */          \
  /* no transfer */                                                                                           \
  K(void, cross_entropy_fwd,                                                                                  \
    (const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C, int32_t ignore_index,        \
     int64_t count, T* loss))                                                                                 \
  /* dlogits += T(gout[0] / count) · (probs − onehot(target)) for rows not ignored; gout: the */            \
  /* scalar output gradient, on the kernel's device (count = 0: nothing) */                                   \
  K(void, cross_entropy_bwd,                                                                                  \
    (const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C, int32_t ignore_index,       \
     const T* gout, int64_t count))                                                                           \
  /* scaled dot-product attention for BH independent heads: */                                                \
  /* q, k, v (BH, T, D); P (BH, T, T) saved softmax weights; out (BH, T, D) */                                \
  K(void, attention_fwd,                                                                                      \
    (const T* q, const T* k, const T* v, T* P, T* out, int64_t BH, int64_t Tn, int64_t D, bool causal))       \
  K(void, attention_bwd,                                                                                      \
    (const T* q, const T* k, const T* v, const T* P, const T* dout, T* dq, T* dk, T* dv, int64_t BH,          \
     int64_t Tn, int64_t D, bool causal))
VM_DECLARE_KERNELS(VM_ROWWISE_KERNELS)

// AdamW step on one parameter buffer (decoupled weight decay, bias-corrected),
// float only: the optimiser's kernel on either device (nn/optim.cpp).
namespace vm::kernels {
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step);
}
namespace vm::kernels::cuda {
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step);
}
