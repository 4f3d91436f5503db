// kernels/moe.h — the kernels of the MoE and router ops: one signature for
// both devices (kernels/table.h), defined in kernels/cpu/moe.cpp and
// kernels/cuda/moe.cu.
//
//  fill_tril_expdiag_fwd  v (N, E(E+1)/2) -> L (N, E, E): row-major lower triangle,
//                         exp on the diagonal, 0 above
//  fill_tril_expdiag_bwd  dv[t] += dL_ij (· L_ii on the diagonal)
//  tril_matvec_fwd        out (N, E) = L ε per row, lower triangle only (j ascending)
//  tril_matvec_bwd        dL += g εᵀ (lower), dε += Lᵀ g (i ascending); either may be null
#pragma once
#include "kernels/table.h"

#define VM_MOE_KERNELS(K)                                                                                   \
  K(void, fill_tril_expdiag_fwd, (const T* v, T* L, int64_t N, int E))                                      \
  K(void, fill_tril_expdiag_bwd, (const T* L, const T* dL, T* dv, int64_t N, int E))                        \
  K(void, tril_matvec_fwd, (const T* L, const T* eps, T* out, int64_t N, int E))                            \
  K(void, tril_matvec_bwd, (const T* L, const T* eps, const T* g, T* dL, T* deps, int64_t N, int E))
VM_DECLARE_KERNELS(VM_MOE_KERNELS)
