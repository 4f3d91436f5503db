// kernels/cuda/gemm.cu — cuBLAS GEMMs with the row-major contract of
// kernels/cpu/gemm.h (see gemm.h for the operand swap and the math modes).
#include <atomic>

#include "core/cuda/device.cuh"
#include "kernels/cuda/gemm.h"

namespace vm::kernels::cuda {

namespace {
std::atomic<int> g_math{(int)GemmMath::Default};

template <class T>
struct BlasType;
template <>
struct BlasType<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static cublasComputeType_t compute() {
    switch ((GemmMath)g_math.load()) {
      case GemmMath::Pedantic: return CUBLAS_COMPUTE_32F_PEDANTIC;
      case GemmMath::TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
      default: return CUBLAS_COMPUTE_32F;
    }
  }
};
template <>
struct BlasType<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static cublasComputeType_t compute() {
    return (GemmMath)g_math.load() == GemmMath::Pedantic ? CUBLAS_COMPUTE_64F_PEDANTIC : CUBLAS_COMPUTE_64F;
  }
};

template <class T>
__global__ void zero_strided(T* C, int64_t batch, int64_t n, int64_t strideC) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < batch * n; i += (int64_t)gridDim.x * blockDim.x)
    C[(i / n) * strideC + i % n] = T(0);
}
}  // namespace

void set_gemm_math(GemmMath m) { g_math.store((int)m); }
GemmMath gemm_math() { return (GemmMath)g_math.load(); }

template <class T>
void gemm_strided_batched(T* C, const T* A, const T* B, int64_t batch, int64_t M, int64_t N, int64_t K,
                          bool transA, bool transB, bool accumulate, int64_t strideA, int64_t strideB,
                          int64_t strideC) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  Context& ctx = context();
  if (K <= 0) {  // empty inner dimension: C = 0 (or unchanged when accumulating)
    if (!accumulate) {
      zero_strided<<<detail::grid_for(batch * M * N, 256), 256, 0, ctx.stream>>>(C, batch, M * N, strideC);
      CUDA_CHECK_LAUNCH();
    }
    return;
  }
  using detail::to_int;
  const int m = to_int(M, "gemm M"), n = to_int(N, "gemm N"), k = to_int(K, "gemm K");
  const int bc = to_int(batch, "gemm batch");
  // column-major view: C^T (N x M) = op(B)^T (N x K) * op(A)^T (K x M)
  const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int ldb = transB ? k : n;
  const int lda = transA ? m : k;
  const int ldc = n;
  const T alpha = T(1), beta = accumulate ? T(1) : T(0);
  const cudaDataType_t dt = BlasType<T>::data;
  const cublasComputeType_t ct = BlasType<T>::compute();
  if (bc == 1) {
    CUBLAS_CHECK(cublasGemmEx(ctx.blas, opB, opA, n, m, k, &alpha, B, dt, ldb, A, dt, lda, &beta, C, dt, ldc, ct,
                              CUBLAS_GEMM_DEFAULT));
  } else {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.blas, opB, opA, n, m, k, &alpha, B, dt, ldb, (long long)strideB, A,
                                            dt, lda, (long long)strideA, &beta, C, dt, ldc, (long long)strideC, bc,
                                            ct, CUBLAS_GEMM_DEFAULT));
  }
}

template <class T>
void gemm(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
          bool accumulate) {
  gemm_strided_batched(C, A, B, 1, M, N, K, transA, transB, accumulate, 0, 0, 0);
}

template <class T>
void grouped_gemm(T* out, const T* x, const T* w, const std::vector<int64_t>& offsets, int64_t C, int64_t F) {
  int64_t E = (int64_t)offsets.size() - 1;
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m <= 0) continue;
    gemm(out + r0 * F, x + r0 * C, w + e * C * F, m, F, C, false, false, false);
  }
}

template <class T>
void grouped_gemm_bwd(const T* x, const T* w, const T* g, T* dx, T* dw, const std::vector<int64_t>& offsets,
                      int64_t C, int64_t F) {
  int64_t E = (int64_t)offsets.size() - 1;
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m <= 0) continue;
    if (dx) gemm(dx + r0 * C, g + r0 * F, w + e * C * F, m, C, F, false, true, true);
    if (dw) gemm(dw + e * C * F, x + r0 * C, g + r0 * F, C, F, m, true, false, true);
  }
}

VM_INSTANTIATE_KERNELS(VM_GEMM_KERNELS)

}  // namespace vm::kernels::cuda
