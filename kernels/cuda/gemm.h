// kernels/cuda/gemm.h — matrix products on the GPU through cuBLAS, with the
// contract of kernels/cpu/gemm.h: row-major buffers, C (M,N) = op(A) op(B)
// [+ C], op = identity or transpose; A stored (M,K) or (K,M) when transA.
//
// Row-major is handled by swapping operands: a row-major (r, c) matrix is the
// column-major (c, r) matrix, so C = op(A) op(B) is computed as the
// column-major product Cᵀ = op(B)ᵀ op(A)ᵀ — cuBLAS gets (B, A) and (N, M).
//
// Precision: float GEMMs run with CUBLAS_COMPUTE_32F by default (no TF32: the
// CPU parity tests expect IEEE float products with float accumulation);
// set_gemm_math(GemmMath::TF32) allows TF32 tensor cores (~10-bit mantissa
// inputs), GemmMath::Pedantic forbids every reduced-precision shortcut.
// Doubles always use CUBLAS_COMPUTE_64F (pedantic under Pedantic).
#pragma once
#include <cstdint>
#include <vector>

namespace vm::kernels::cuda {

enum class GemmMath { Default, Pedantic, TF32 };
void set_gemm_math(GemmMath m);  // process-wide
GemmMath gemm_math();
inline void set_allow_tf32(bool allow) { set_gemm_math(allow ? GemmMath::TF32 : GemmMath::Default); }

// C (M,N) = op(A) op(B) [+ C] on device pointers, on this thread's stream.
template <class T>
void gemm(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
          bool accumulate);

// `batch` independent products C_i = op(A_i) op(B_i) [+ C_i] with A_i = A +
// i·strideA etc. (elements); strideB = 0 shares B across the batch.
template <class T>
void gemm_strided_batched(T* C, const T* A, const T* B, int64_t batch, int64_t M, int64_t N, int64_t K,
                          bool transA, bool transB, bool accumulate, int64_t strideA, int64_t strideB,
                          int64_t strideC);

// Grouped products of a MoE layer (the CUDA twin of ops::grouped_matmul's
// forward): x (M, C) grouped by rows [offsets[e], offsets[e+1]), w (E, C, F),
// out (M, F); offsets live on the host (E + 1 entries). One cuBLAS call per
// non-empty group. Backward: dx = grouped(g, wᵀ), dw_e = x_eᵀ g_e — see
// grouped_gemm_bwd.
template <class T>
void grouped_gemm(T* out, const T* x, const T* w, const std::vector<int64_t>& offsets, int64_t C, int64_t F);
// dx (M, C) += g wᵀ per group; dw (E, C, F) += x_eᵀ g_e per group. Either may be null.
template <class T>
void grouped_gemm_bwd(const T* x, const T* w, const T* g, T* dx, T* dw, const std::vector<int64_t>& offsets,
                      int64_t C, int64_t F);

}  // namespace vm::kernels::cuda
