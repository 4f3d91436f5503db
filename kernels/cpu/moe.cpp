// kernels/cpu/moe.cpp — the kernels of the MoE and router ops on the CPU (the
// table: kernels/moe.h).
#include <cmath>

#include "kernels/moe.h"

namespace vm::kernels {

template <class T>
void fill_tril_expdiag_fwd(const T* v, T* L, int64_t N, int E) {
  const int64_t P = (int64_t)E * (E + 1) / 2;
  for (int64_t n = 0; n < N; ++n) {
    const T* pv = v + n * P;
    T* pl = L + n * E * E;
    int64_t t = 0;
    for (int i = 0; i < E; ++i)
      for (int j = 0; j < E; ++j) pl[i * E + j] = j > i ? T(0) : i == j ? std::exp(pv[t++]) : pv[t++];
  }
}

template <class T>
void fill_tril_expdiag_bwd(const T* L, const T* dL, T* dv, int64_t N, int E) {
  const int64_t P = (int64_t)E * (E + 1) / 2;
  for (int64_t n = 0; n < N; ++n) {
    const T* gl = dL + n * E * E;
    const T* pl = L + n * E * E;
    T* gv = dv + n * P;
    int64_t t = 0;
    for (int i = 0; i < E; ++i)
      for (int j = 0; j <= i; ++j, ++t) gv[t] += i == j ? gl[i * E + j] * pl[i * E + j] : gl[i * E + j];
  }
}

template <class T>
void tril_matvec_fwd(const T* L, const T* eps, T* out, int64_t N, int E) {
#pragma omp parallel for schedule(static) if (N * E * E > 32768)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < E; ++i) {
      T s = 0;
      for (int64_t j = 0; j <= i; ++j) s += L[(n * E + i) * E + j] * eps[n * E + j];  // lower triangle only
      out[n * E + i] = s;
    }
}

template <class T>
void tril_matvec_bwd(const T* L, const T* eps, const T* g, T* dL, T* deps, int64_t N, int E) {
#pragma omp parallel for schedule(static) if (N * E * E > 32768)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < E; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        if (dL) dL[(n * E + i) * E + j] += g[n * E + i] * eps[n * E + j];  // dL = g εᵀ (lower)
        if (deps) deps[n * E + j] += L[(n * E + i) * E + j] * g[n * E + i];  // dε = Lᵀ g
      }
}

VM_INSTANTIATE_KERNELS(VM_MOE_KERNELS)

}  // namespace vm::kernels
