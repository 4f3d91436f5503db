// kernels/cpu/rowwise.h — the CPU side of the row-wise kernels (the table,
// shared with the GPU: kernels/rowwise.h) and of adamw_step. Rows are split
// across the OpenMP pool; each row is reduced by one thread in a fixed order,
// so the result does not depend on the thread count.
#pragma once
#include "kernels/rowwise.h"

namespace vm::kernels {
// The cross-entropy pieces the table's pair is made of, for kernel-level
// tests and timings: the probabilities and Σ −log p_target (double) over the
// rows not ignored, their number in *count; dlogits += scale · (probs − onehot).
template <class T>
double cross_entropy_sum(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                         int32_t ignore_index, int64_t* count);
template <class T>
void cross_entropy_bwd_scaled(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                              int32_t ignore_index, T scale);

// Σ_i p_i² in double on the calling thread, in a fixed order whatever the
// instruction set: eight partial sums (lane j takes i ≡ j mod 8, in index
// order), added lane 0 to 7, then the tail. The gradient norms (nn/optim.cpp,
// experiments/data_parallel.cpp) run it per block, the blocks in parallel.
double sum_squares(const float* p, int64_t n);
}  // namespace vm::kernels
