// kernels/cuda/rowwise.h — the GPU side of the row-wise kernels (the table,
// shared with the CPU: kernels/rowwise.h) and of adamw_step. Each runs on this
// thread's stream (core/cuda/device.h) and is asynchronous, except
// cross_entropy_fwd, which returns the loss on the host and therefore
// synchronises.
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

}  // namespace vm::kernels::cuda
