// kernels/cuda/elementwise.h — element-wise unary ops, broadcasting binary
// ops and reductions on the GPU: the CUDA twins of the loops in
// autodiff/ops_basic.cpp (unary(), binary(), sum, sum_all), on device pointers.
//
// Formulas are the CPU ones term by term (gelu = tanh approximation,
// softplus = max(x,0) + log1p(e^-|x|), ...). Backward kernels accumulate
// (dx += ...), as the tape does. Reductions are deterministic: a fixed
// summation tree for a given shape (independent of the GPU model), and the
// column reductions of broadcast backward add in the CPU's row-major order
// within each chunk.
#pragma once
#include <cstdint>
#include <vector>

namespace vm::kernels::cuda {

enum class Unary : int { Exp, Log, Sqrt, Softplus, Sigmoid, Relu, Gelu, Silu, Tanh, AddScalar, MulScalar, PowScalar };
const char* unary_name(Unary op);
constexpr int kUnaryCount = 12;

// Launch choice for the memory-bound kernels, for the dev harness
// (bench/cuda) and the tests; version 0 / block 0 = the default choice.
struct Launch {
  int version = 0;
  int block = 0;
};

// y = f(x); alpha is the scalar of add_scalar / mul_scalar / pow_scalar.
// version 1: one element per thread (grid-stride); 2: 16-byte vector loads.
template <class T>
void unary_fwd(Unary op, const T* x, T* y, int64_t n, double alpha = 0.0, Launch l = {});
// dx += dy ⊙ f'(x) (f' from x and y as on the CPU)
template <class T>
void unary_bwd(Unary op, const T* x, const T* y, const T* dy, T* dx, int64_t n, double alpha = 0.0);

enum class Binary : int { Add, Sub, Mul, Div };
// out = a ∘ b with numpy broadcasting over up to 4 dims (shape of out = broadcast(sa, sb)).
template <class T>
void binary_fwd(Binary op, const T* a, const std::vector<int64_t>& sa, const T* b, const std::vector<int64_t>& sb,
                T* out);
// da += reduce_to_sa(∂out/∂a ⊙ g), db likewise; either may be null. g has the broadcast shape.
template <class T>
void binary_bwd(Binary op, const T* a, const std::vector<int64_t>& sa, const T* b, const std::vector<int64_t>& sb,
                const T* g, T* da, T* db);

// A tensor viewed as (outer, n, inner): y[o, i] = Σ_j x[o, j, i] (y += ... when accumulate).
// inner == 1 (the last axis) uses one warp per row; otherwise one thread per
// output, the j loop split into chunks summed by a second pass when long.
template <class T>
void sum_axis(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool accumulate = false);
// dx[o, j, i] += g[o, i]
template <class T>
void sum_axis_bwd(const T* g, T* dx, int64_t outer, int64_t n, int64_t inner);
// out[0] = Σ x (a device scalar): 256 fixed blocks then one block; deterministic.
template <class T>
void sum_all(const T* x, T* out, int64_t n);

}  // namespace vm::kernels::cuda
