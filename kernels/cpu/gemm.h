// kernels/cpu/gemm.h — matrix products through Eigen maps over our row-major
// buffers. C (M,N) = op(A) op(B) [+ C], op = identity or transpose.
//
// Threading model: one OpenMP pool for everything. Eigen is compiled with
// -fopenmp and parallelises a large GEMM over that same pool; our element-wise
// and row-wise loops use `#pragma omp parallel for` on it too. Inside an
// already-parallel region (the batched products of attention, per-expert
// GEMMs) OpenMP does not nest, so each inner GEMM runs on one thread. One pool
// means `--threads N` is the whole story, and the split never changes the
// order of a reduction, so results do not depend on the thread count.
#pragma once
#include <cstdint>

namespace vm::kernels {

template <class T>
void gemm(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
          bool accumulate);

}  // namespace vm::kernels
