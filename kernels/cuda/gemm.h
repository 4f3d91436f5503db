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

#include "kernels/gemm.h"

namespace vm::kernels::cuda {

enum class GemmMath { Default, Pedantic, TF32 };
void set_gemm_math(GemmMath m);  // process-wide
GemmMath gemm_math();
inline void set_allow_tf32(bool allow) { set_gemm_math(allow ? GemmMath::TF32 : GemmMath::Default); }

// gemm, gemm_strided_batched, grouped_gemm(_bwd): the table in kernels/gemm.h,
// on device pointers and this thread's stream. grouped_gemm makes one cuBLAS
// call per non-empty group (offsets on the host).

}  // namespace vm::kernels::cuda
