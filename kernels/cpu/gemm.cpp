#include "kernels/cpu/gemm.h"

#include <Eigen/Core>

namespace vm::kernels {

template <class T>
using MatR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
void gemm(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
          bool accumulate) {
  Eigen::Map<MatR<T>> c(C, M, N);
  // A is stored (M,K) or, when transA, (K,M); likewise B.
  Eigen::Map<const MatR<T>> a(A, transA ? K : M, transA ? M : K);
  Eigen::Map<const MatR<T>> b(B, transB ? N : K, transB ? K : N);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) c.setZero();
    return;
  }
  if (!transA && !transB) {
    if (accumulate) c.noalias() += a * b; else c.noalias() = a * b;
  } else if (transA && !transB) {
    if (accumulate) c.noalias() += a.transpose() * b; else c.noalias() = a.transpose() * b;
  } else if (!transA && transB) {
    if (accumulate) c.noalias() += a * b.transpose(); else c.noalias() = a * b.transpose();
  } else {
    if (accumulate) c.noalias() += a.transpose() * b.transpose();
    else c.noalias() = a.transpose() * b.transpose();
  }
}

template void gemm<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, bool, bool, bool);
template void gemm<double>(double*, const double*, const double*, int64_t, int64_t, int64_t, bool, bool, bool);

}  // namespace vm::kernels
