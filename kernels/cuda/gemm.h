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
// on device pointers and this thread's stream. grouped_gemm(_bwd) make the
// list of one product per non-empty group (kernels/gemm_groups.h; offsets on
// the host) and run it as one cublasGemmGroupedBatchedEx call (each product a
// group of size 1; the pointer arrays staged up without a wait). One product,
// or GemmMath::Pedantic (not a compute type of the grouped call), runs as
// plain gemm calls; so does a list the grouped call declines
// (CUBLAS_STATUS_NOT_SUPPORTED / INVALID_VALUE), which is counted and said
// once on stderr.
struct GroupedGemmStats {
  uint64_t calls = 0;      // grouped calls made
  uint64_t fallbacks = 0;  // lists the grouped call declined (run one by one)
};
GroupedGemmStats grouped_gemm_stats();

}  // namespace vm::kernels::cuda
