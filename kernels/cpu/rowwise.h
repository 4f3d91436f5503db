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
}  // namespace vm::kernels
