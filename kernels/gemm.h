// kernels/gemm.h — matrix products: one signature for both devices
// (kernels/table.h), defined in kernels/cpu/gemm.cpp (fixed tiles of packed,
// BLIS or Eigen products, see kernels/cpu/gemm.h) and kernels/cuda/gemm.cu
// (cuBLAS, see kernels/cuda/gemm.h).
// Row-major buffers; op = identity or transpose; A stored (M,K) or (K,M) when
// transA, B likewise.
#pragma once
#include "kernels/table.h"

#define VM_GEMM_KERNELS(K)                                                                             \
  /* C (M,N) = op(A) op(B) [+ C] */                                                                    \
  K(void, gemm,                                                                                        \
    (T * C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,         \
     bool accumulate))                                                                                 \
  /* `batch` independent products C_i = op(A_i) op(B_i) [+ C_i], */                                    \
  /* A_i = A + i·strideA etc. (elements); strideB = 0 shares B */                                      \
  K(void, gemm_strided_batched,                                                                        \
    (T * C, const T* A, const T* B, int64_t batch, int64_t M, int64_t N, int64_t K, bool transA,       \
     bool transB, bool accumulate, int64_t strideA, int64_t strideB, int64_t strideC))                 \
  /* the rows of x (M, C) grouped by [offsets[e], offsets[e+1]) */                                     \
  /* (host vector, E + 1 entries): out rows of group e = x rows · w[e], */                             \
  /* w (E, C, F), out (M, F) */                                                                        \
  K(void, grouped_gemm,                                                                                \
    (T * out, const T* x, const T* w, const std::vector<int64_t>& offsets, int64_t C, int64_t F))      \
  /* dx (M, C) += g w_eᵀ per group; dw (E, C, F) += x_eᵀ g_e; either may be null */                    \
  K(void, grouped_gemm_bwd,                                                                            \
    (const T* x, const T* w, const T* g, T* dx, T* dw, const std::vector<int64_t>& offsets, int64_t C, \
     int64_t F))
VM_DECLARE_KERNELS(VM_GEMM_KERNELS)
