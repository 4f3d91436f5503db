// kernels/elementwise.h — element-wise unary ops, broadcasting binary ops and
// reductions: one signature for both devices (kernels/table.h), defined in
// kernels/cpu/elementwise.cpp and kernels/cuda/elementwise.cu.
//
// Formulas are the same term by term on both devices (gelu = tanh
// approximation, softplus = max(x,0) + log1p(e^-|x|), ...). Backward kernels
// accumulate (dx += ...), as the tape does. Reductions are deterministic: the
// CPU sums in a fixed loop order; the GPU uses a fixed summation tree for a
// given shape, and the column reductions of broadcast backward add in the
// CPU's row-major order within each chunk.
#pragma once
#include "kernels/table.h"

namespace vm::kernels {
enum class Unary : int { Exp, Log, Sqrt, Softplus, Sigmoid, Relu, Gelu, Silu, Tanh, AddScalar, MulScalar, PowScalar };
constexpr int kUnaryCount = 12;
const char* unary_name(Unary op);
enum class Binary : int { Add, Sub, Mul, Div };

#ifdef __CUDACC__
#define VM_HOST_DEVICE __host__ __device__
#else
#define VM_HOST_DEVICE
#endif
// x ∘ y, the same formula in binary_fwd and binary_bwd on either device
template <class T>
VM_HOST_DEVICE inline T binary_apply(Binary op, T x, T y) {
  switch (op) {
    case Binary::Add: return x + y;
    case Binary::Sub: return x - y;
    case Binary::Mul: return x * y;
    default: return x / y;
  }
}
// GELU's tanh u in float on both devices: 1 − 2 / (e^{2u} + 1), e^{2u} from the
// device's exp (the CPU's fast_expf, kernels/cpu/fastmath.h; the GPU's expf).
// Every other step rounds alike, so the two devices differ only where their
// exps do (and then by about an ulp of t, except that e^{2u} + 1 may round to
// a neighbouring float when e^{2u} < 2^-24). Double uses tanh on both.
template <class T>
VM_HOST_DEVICE inline T tanh_from_exp2u(T e2u) {
  return T(1) - T(2) / (e2u + T(1));
}
}  // namespace vm::kernels

#define VM_ELEMENTWISE_KERNELS(K)                                                                       \
  /* y = f(x); alpha is the scalar of add_scalar / mul_scalar / pow_scalar */                           \
  K(void, unary_fwd, (Unary op, const T* x, T* y, int64_t n, double alpha))                             \
  /* dx += dy ⊙ f'(x) (f' from x and y) */                                                              \
  K(void, unary_bwd, (Unary op, const T* x, const T* y, const T* dy, T* dx, int64_t n, double alpha))   \
  /* out = a ∘ b with numpy broadcasting over up to 4 dims (out: broadcast(sa, sb)) */                  \
  K(void, binary_fwd,                                                                                   \
    (Binary op, const T* a, const std::vector<int64_t>& sa, const T* b, const std::vector<int64_t>& sb, \
     T* out))                                                                                           \
  /* da += reduce_to_sa(∂out/∂a ⊙ g), db likewise; either may be null; g: broadcast shape */            \
  K(void, binary_bwd,                                                                                   \
    (Binary op, const T* a, const std::vector<int64_t>& sa, const T* b, const std::vector<int64_t>& sb, \
     const T* g, T* da, T* db))                                                                         \
  /* x viewed as (outer, n, inner): y[o, i] = Σ_j x[o, j, i] (y += ... when accumulate) */              \
  K(void, sum_axis, (const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool accumulate))       \
  /* dx[o, j, i] += g[o, i] */                                                                          \
  K(void, sum_axis_bwd, (const T* g, T* dx, int64_t outer, int64_t n, int64_t inner))                   \
  /* out[0] = Σ x */                                                                                    \
  K(void, sum_all, (const T* x, T* out, int64_t n))
VM_DECLARE_KERNELS(VM_ELEMENTWISE_KERNELS)
