// kernels/cuda/gemm.cu — cuBLAS GEMMs with the row-major contract of
// kernels/cpu/gemm.h (see gemm.h for the operand swap and the math modes).
#include <atomic>
#include <cstdio>

#include "core/cuda/device.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/gemm_groups.h"

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

// ---- grouped products: one cuBLAS grouped call ----------------------------------------
// A row-major product C (M, N) = op(A) op(B) is the column-major Cᵀ = op(B)ᵀ
// op(A)ᵀ (see gemm.h): each problem becomes one group of size 1 of
// cublasGemmGroupedBatchedEx with cuBLAS's (A, B, m, n) = our (B, A, N, M),
// exactly the arguments gemm_strided_batched passes to cublasGemmEx. The
// pointer arrays go up through the staging ring (no wait) and are freed in
// stream order after the call.
namespace {
std::atomic<uint64_t> g_grouped_calls{0}, g_grouped_fallbacks{0};

template <class T>
void run_problems_one_by_one(const std::vector<GemmProblem<T>>& ps) {
  for (const auto& p : ps) gemm(p.C, p.A, p.B, p.M, p.N, p.K, p.transA, p.transB, p.accumulate);
}

template <class T>
void run_problems(const std::vector<GemmProblem<T>>& ps) {
  if (ps.empty()) return;
  // One product needs no group; Pedantic math is not among the grouped
  // call's compute types (CUBLAS_COMPUTE_32F, _32F_FAST_TF32, _64F).
  if (ps.size() == 1 || (GemmMath)g_math.load() == GemmMath::Pedantic) {
    run_problems_one_by_one(ps);
    return;
  }
  using detail::to_int;
  Context& ctx = context();
  const size_t P = ps.size();
  std::vector<cublasOperation_t> ta(P), tb(P);
  std::vector<int> m(P), n(P), k(P), lda(P), ldb(P), ldc(P), group_size(P, 1);
  std::vector<T> alpha(P, T(1)), beta(P);
  std::vector<const void*> ptrs(3 * P);  // cuBLAS's A (our B), B (our A), C
  for (size_t i = 0; i < P; ++i) {
    const auto& p = ps[i];
    if (p.M <= 0 || p.N <= 0 || p.K <= 0) throw vm::Error("cuda grouped gemm: empty problem in the list");
    const int M = to_int(p.M, "gemm M"), N = to_int(p.N, "gemm N"), K = to_int(p.K, "gemm K");
    ta[i] = p.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    tb[i] = p.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    m[i] = N;
    n[i] = M;
    k[i] = K;
    lda[i] = p.transB ? K : N;
    ldb[i] = p.transA ? M : K;
    ldc[i] = N;
    beta[i] = p.accumulate ? T(1) : T(0);
    ptrs[i] = p.B;
    ptrs[P + i] = p.A;
    ptrs[2 * P + i] = p.C;
  }
  DeviceBuffer<const void*> dptrs(ptrs);  // staged upload, freed in stream order
  const void* const* dA = dptrs.data();
  const void* const* dB = dptrs.data() + P;
  void* const* dC = const_cast<void* const*>(dptrs.data() + 2 * P);
  const cudaDataType_t dt = BlasType<T>::data;
  const cublasStatus_t s = cublasGemmGroupedBatchedEx(
      ctx.blas, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), dA, dt, lda.data(), dB, dt,
      ldb.data(), beta.data(), dC, dt, ldc.data(), (int)P, group_size.data(), BlasType<T>::compute());
  if (s == CUBLAS_STATUS_SUCCESS) {
    ++g_grouped_calls;
    return;
  }
  if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE) CUBLAS_CHECK(s);
  // This cuBLAS declines the grouped call: the same products one by one (each
  // checked by cublasGemmEx), counted and said once, so a GPU run reports it.
  if (g_grouped_fallbacks.fetch_add(1) == 0)
    std::fprintf(stderr, "vmoer cuda: cublasGemmGroupedBatchedEx: %s; grouped products run one GEMM per group\n",
                 cublasGetStatusString(s));
  run_problems_one_by_one(ps);
}
}  // namespace

GroupedGemmStats grouped_gemm_stats() { return {g_grouped_calls.load(), g_grouped_fallbacks.load()}; }

template <class T>
void grouped_gemm(T* out, const T* x, const T* w, const std::vector<int64_t>& offsets, int64_t C, int64_t F) {
  run_problems(grouped_gemm_problems(out, x, w, offsets, C, F));
}

template <class T>
void grouped_gemm_bwd(const T* x, const T* w, const T* g, T* dx, T* dw, const std::vector<int64_t>& offsets,
                      int64_t C, int64_t F) {
  run_problems(grouped_gemm_bwd_problems(x, w, g, dx, dw, offsets, C, F));
}

VM_INSTANTIATE_KERNELS(VM_GEMM_KERNELS)

}  // namespace vm::kernels::cuda
