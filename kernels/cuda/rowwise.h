// kernels/cuda/rowwise.h — the GPU side of the row-wise kernels (the table,
// shared with the CPU: kernels/rowwise.h), of adamw_step and of the
// optimiser's multi-tensor kernels (kernels/optim.h). Each runs on this
// thread's stream (core/cuda/device.h) and is asynchronous, except
// cross_entropy_sum (below) and sum_squares, which download their result and
// therefore synchronise. The table's cross-entropy pair keeps the loss and
// reads the output gradient on the GPU: the op never waits.
//
// Rows are owned by one warp (C <= 1024) or one block (longer rows); sums over
// a row use a fixed tree, and the parameter gradients of the norms (column
// sums over rows) are two fixed-order passes, so every result is
// deterministic. They differ from the CPU only by summation order (tolerances
// in tests/test_cuda.cpp). Attention: scores and products through cuBLAS
// strided-batched GEMMs, the masked scaled softmax (and its backward) fused in
// one row kernel; the backward takes a (BH, T, T) workspace from the pool.
#pragma once
#include <cstdint>

#include "kernels/cuda/elementwise.h"  // Launch
#include "kernels/rowwise.h"

namespace vm::kernels::cuda {

// ---- launch variants for the dev harness and the tests ------------------------------
// version 1: one warp per row (block/32 rows per block); 2: one block per row.
// block: threads per block (multiple of 32, <= 1024). {0, 0}: the default.
// How many threads share one row of length C under launch l (32: one warp
// per row; else the block): the row sums are strided over them, then a tree
// (dev/cuda/error_bounds.h bounds their rounding from this). Throws
// vm::Error for an invalid launch, as the kernels do.
int row_group_threads(int64_t C, Launch l);
template <class T> void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C, Launch l);
template <class T> void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C, Launch l);
template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                   double eps, Launch l);
template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps, Launch l);

// ---- the cross-entropy pieces, for kernel-level tests and timings (as on the CPU) ----------
// cross_entropy_sum downloads Σ and the count (it waits); the table's
// cross_entropy_fwd keeps the mean on the GPU.
template <class T>
double cross_entropy_sum(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                         int32_t ignore_index, int64_t* count);
template <class T>
void cross_entropy_bwd_scaled(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                              int32_t ignore_index, T scale);

}  // namespace vm::kernels::cuda
