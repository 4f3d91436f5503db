// kernels/cpu/fastmath.h — vectorisable float32 exp (and what builds on it) for
// the hot element-wise loops. glibc's expf/tanhf are scalar calls the compiler
// cannot vectorise without -ffast-math; this exp is Cephes' expf polynomial
// (range reduction by ln 2, degree-6 polynomial, exponent bits set directly):
// relative error below 2e-7 on [-87, 88], inputs clamped to that range (so
// exp of a very negative number is ~1e-38, not 0). Double precision always
// uses the standard library: the finite-difference checks run in double.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/elementwise.h"  // tanh_from_exp2u

namespace vm::kernels {

// e^x for x in [-87, 88] (the callers clamp), given n = round(x / ln 2) =
// floor(fast_expf_t(x)) = floor(x · log2(e) + ½), which the callers compute.
inline float fast_expf_reduced(float x, float n) {
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;    // x − n ln 2, ln 2 split in two
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
inline float fast_expf_t(float x) { return x * 1.44269504088896341f + 0.5f; }
// Vectorised loops: plain comparisons clamp (std::fmin/fmax are library
// calls that kept every loop calling this scalar, and they turned NaN into
// exp(−87)); a NaN input fails both comparisons and comes out NaN. floor
// becomes one rounding instruction under -fno-trapping-math, which the CPU
// kernels are compiled with (CMakeLists.txt). Every step is exact or one
// rounded float operation in a fixed order, so the vector body of a loop and
// its scalar remainder give the same bits (threads move that boundary).
inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  return fast_expf_reduced(x, std::floor(fast_expf_t(x)));
}

// x[i] = fast_expf(x[i]) for i < n, vectorised: the clamp by comparisons (vmaxps/
// vminps) instead of fmin/fmax, which the compiler leaves as library calls, in
// its own pass (in one loop GCC threads the clamped constants into branches and
// then cannot vectorise). The same bits as fast_expf for every non-NaN input;
// NaN stays NaN, as in fast_expf.
inline void fast_expf_n(float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] < -87.0f ? -87.0f : x[i];
    x[i] = v > 88.0f ? 88.0f : v;
  }
  for (int64_t i = 0; i < n; ++i) {
    // floor(t) for |t| < 2^7 by truncation, minus 1 below a negative non-integer:
    // floor's value in operations that vectorise (GCC vectorises std::floor only
    // with -fno-trapping-math; the scalar fast_expf keeps roundss)
    const float t = fast_expf_t(x[i]), tr = (float)(int32_t)t;
    x[i] = fast_expf_reduced(x[i], tr - (tr > t ? 1.0f : 0.0f));
  }
}

template <class T>
inline T exp_(T x) {
  if constexpr (std::is_same_v<T, float>) return fast_expf(x);
  else return std::exp(x);
}

// tanh for GELU: 1 − 2 / (e^{2u} + 1) (kernels/elementwise.h, the GPU's formula
// too). Absolute error ~1e-7 (relative error is larger only where |tanh u|
// itself is tiny, which GELU's 1 + tanh absorbs).
template <class T>
inline T tanh_gelu(T u) {
  if constexpr (std::is_same_v<T, float>) return tanh_from_exp2u(fast_expf(2.0f * u));
  else return std::tanh(u);
}

template <class T>
inline T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

}  // namespace vm::kernels
