// kernels/cpu/elementwise.cpp — unary / broadcasting binary element-wise ops
// and reductions on the CPU (the table: kernels/elementwise.h). Element-wise
// loops split across the OpenMP pool; every reduction runs in one fixed order,
// so no result depends on the thread count.
#include <algorithm>
#include <array>
#include <cmath>

#include "core/tensor.h"
#include "kernels/cpu/fastmath.h"
#include "kernels/elementwise.h"

namespace vm::kernels {

const char* unary_name(Unary op) {
  static const char* names[] = {"exp",  "log",  "sqrt", "softplus",   "sigmoid",    "relu",
                                "gelu", "silu", "tanh", "add_scalar", "mul_scalar", "pow_scalar"};
  int i = (int)op;
  return i >= 0 && i < kUnaryCount ? names[i] : "?";
}

namespace {

// ---- unary: y = f(x), dy/dx from (x, y) ------------------------------------------------
template <class T>
T gelu_inner(T x) {  // sqrt(2/pi) (x + 0.044715 x^3)
  return T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
}

template <class T, class F>
void map(const T* px, T* py, int64_t n, F f) {
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) py[i] = f(px[i]);
}

template <class T, class D>
void map_grad(const T* px, const T* py, const T* g, T* pg, int64_t n, D dfdx) {
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) pg[i] += g[i] * dfdx(px[i], py[i]);
}

// ---- broadcasting ------------------------------------------------------------------------
// A shape left-padded with 1s to 4 dims, and its row-major strides (0 on broadcast dims).
struct Dims4 {
  std::array<int64_t, 4> d{1, 1, 1, 1};
  std::array<int64_t, 4> stride{0, 0, 0, 0};
};
Dims4 dims4(const Shape& s) {
  Dims4 r;
  int off = 4 - (int)s.size();
  for (size_t i = 0; i < s.size(); ++i) r.d[off + i] = s[i];
  int64_t st = 1;
  for (int i = 3; i >= 0; --i) {
    r.stride[i] = r.d[i] == 1 ? 0 : st;  // broadcast dims get stride 0
    st *= r.d[i];
  }
  return r;
}

Shape broadcast(const Shape& a, const Shape& b) {  // the ops checked that they broadcast
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// f(i, ia, ib) over the broadcast index space: out element i, a element ia, b element ib.
template <class F>
void broadcast_loop(const Shape& so, const Shape& sa, const Shape& sb, F f) {
  Dims4 o = dims4(so), da = dims4(sa), db = dims4(sb);
  int64_t outer = o.d[0] * o.d[1] * o.d[2];
#pragma omp parallel for schedule(static) if (shape_numel(so) > 32768)
  for (int64_t r = 0; r < outer; ++r) {
    int64_t i0 = r / (o.d[1] * o.d[2]), i1 = (r / o.d[2]) % o.d[1], i2 = r % o.d[2];
    int64_t ba = i0 * da.stride[0] + i1 * da.stride[1] + i2 * da.stride[2];
    int64_t bb = i0 * db.stride[0] + i1 * db.stride[1] + i2 * db.stride[2];
    for (int64_t i3 = 0; i3 < o.d[3]; ++i3) f(r * o.d[3] + i3, ba + i3 * da.stride[3], bb + i3 * db.stride[3]);
  }
}

// x += y element-wise
template <class T>
void add_to(T* px, const T* py, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) px[i] += py[i];
}

// dst (shape `to`) += g (shape `from`) summed over the broadcast dims, in a fixed order.
template <class T>
void add_reduced(T* dst, const T* g, const Shape& from, const Shape& to) {
  if (from == to) return add_to(dst, g, shape_numel(to));
  TensorT<T> out(to);
  Dims4 src = dims4(from), d = dims4(to);
  // Iterate the (larger) gradient in order; each element adds into its target.
  T* po = out.data();
  int64_t i = 0;
  for (int64_t a = 0; a < src.d[0]; ++a)
    for (int64_t b = 0; b < src.d[1]; ++b)
      for (int64_t c = 0; c < src.d[2]; ++c) {
        int64_t base = a * d.stride[0] + b * d.stride[1] + c * d.stride[2];
        if (d.stride[3]) {
          T* row = po + base;
          for (int64_t k = 0; k < src.d[3]; ++k) row[k] += g[i + k];
        } else {
          T s = 0;
          for (int64_t k = 0; k < src.d[3]; ++k) s += g[i + k];
          po[base] += s;
        }
        i += src.d[3];
      }
  add_to(dst, po, out.numel());
}

}  // namespace

template <class T>
void unary_fwd(Unary op, const T* x, T* y, int64_t n, double alpha) {
  const double s = alpha;
  switch (op) {
    case Unary::AddScalar: return map(x, y, n, [s](T v) { return v + T(s); });
    case Unary::MulScalar: return map(x, y, n, [s](T v) { return v * T(s); });
    case Unary::PowScalar: return map(x, y, n, [s](T v) { return (T)std::pow(v, T(s)); });
    case Unary::Exp: return map(x, y, n, [](T v) { return exp_(v); });
    case Unary::Log: return map(x, y, n, [](T v) { return std::log(v); });
    case Unary::Sqrt: return map(x, y, n, [](T v) { return std::sqrt(v); });
    // log(1+e^x) = max(x,0) + log1p(e^-|x|)
    case Unary::Softplus:
      return map(x, y, n, [](T v) { return std::max(v, T(0)) + std::log1p(std::exp(-std::abs(v))); });
    case Unary::Sigmoid: return map(x, y, n, [](T v) { return sigmoid_(v); });
    case Unary::Relu: return map(x, y, n, [](T v) { return v > 0 ? v : T(0); });
    // y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3)
    case Unary::Gelu: return map(x, y, n, [](T v) { return T(0.5) * v * (T(1) + tanh_gelu(gelu_inner(v))); });
    case Unary::Silu: return map(x, y, n, [](T v) { return v * sigmoid_(v); });
    case Unary::Tanh: return map(x, y, n, [](T v) { return std::tanh(v); });
  }
}

template <class T>
void unary_bwd(Unary op, const T* x, const T* y, const T* dy, T* dx, int64_t n, double alpha) {
  const double s = alpha;
  switch (op) {
    case Unary::AddScalar: return map_grad(x, y, dy, dx, n, [](T, T) { return T(1); });
    case Unary::MulScalar: return map_grad(x, y, dy, dx, n, [s](T, T) { return T(s); });
    case Unary::PowScalar:
      return map_grad(x, y, dy, dx, n, [s](T v, T) { return T(s) * (T)std::pow(v, T(s - 1)); });
    case Unary::Exp: return map_grad(x, y, dy, dx, n, [](T, T w) { return w; });
    case Unary::Log: return map_grad(x, y, dy, dx, n, [](T v, T) { return T(1) / v; });
    case Unary::Sqrt: return map_grad(x, y, dy, dx, n, [](T, T w) { return T(0.5) / w; });
    case Unary::Softplus:  // sigmoid(x)
      return map_grad(x, y, dy, dx, n, [](T v, T) { return T(1) / (T(1) + std::exp(-v)); });
    case Unary::Sigmoid: return map_grad(x, y, dy, dx, n, [](T, T w) { return w * (T(1) - w); });
    case Unary::Relu: return map_grad(x, y, dy, dx, n, [](T v, T) { return v > 0 ? T(1) : T(0); });
    case Unary::Gelu:
      return map_grad(x, y, dy, dx, n, [](T v, T) {
        T t = tanh_gelu(gelu_inner(v));
        T du = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * v * v);
        return T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * du;
      });
    case Unary::Silu:
      return map_grad(x, y, dy, dx, n, [](T v, T) {
        T sg = sigmoid_(v);
        return sg * (T(1) + v * (T(1) - sg));
      });
    case Unary::Tanh: return map_grad(x, y, dy, dx, n, [](T, T w) { return T(1) - w * w; });
  }
}

template <class T>
void binary_fwd(Binary op, const T* a, const Shape& sa, const T* b, const Shape& sb, T* out) {
  if (sa == sb) {
    int64_t n = shape_numel(sa);
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) out[i] = binary_apply(op, a[i], b[i]);
  } else {
    broadcast_loop(broadcast(sa, sb), sa, sb, [&](int64_t i, int64_t ia, int64_t ib) { out[i] = binary_apply(op, a[ia], b[ib]); });
  }
}

template <class T>
void binary_bwd(Binary op, const T* a, const Shape& sa, const T* b, const Shape& sb, const T* g, T* da, T* db) {
  const Shape so = broadcast(sa, sb);
  for (int side = 0; side < 2; ++side) {
    T* gp = side ? db : da;
    if (!gp) continue;
    if (op == Binary::Add || (op == Binary::Sub && side == 0)) {
      add_reduced(gp, g, so, side ? sb : sa);
      continue;
    }
    // full-size local gradient, then reduce over broadcast dims
    TensorT<T> full = TensorT<T>::empty(so);
    T* pf = full.data();
    broadcast_loop(so, sa, sb, [&](int64_t i, int64_t ia, int64_t ib) {
      T x = a[ia], y = b[ib];
      T d;
      if (op == Binary::Sub) d = -g[i];
      else if (op == Binary::Mul) d = g[i] * (side ? x : y);
      else d = side ? -g[i] * x / (y * y) : g[i] / y;
      pf[i] = d;
    });
    add_reduced(gp, pf, so, side ? sb : sa);
  }
}

template <class T>
void sum_axis(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool accumulate) {
  if (!accumulate && inner != 1) std::fill(y, y + outer * inner, T(0));
#pragma omp parallel for schedule(static) if (outer * n * inner > 32768)
  for (int64_t o = 0; o < outer; ++o) {
    if (inner == 1) {  // reduce a contiguous row in a register
      T acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += x[o * n + j];
      y[o] = accumulate ? y[o] + acc : acc;
      continue;
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < inner; ++i) y[o * inner + i] += x[(o * n + j) * inner + i];
  }
}

template <class T>
void sum_axis_bwd(const T* g, T* dx, int64_t outer, int64_t n, int64_t inner) {
#pragma omp parallel for schedule(static) if (outer * n * inner > 32768)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < inner; ++i) dx[(o * n + j) * inner + i] += g[o * inner + i];
}

template <class T>
void sum_all(const T* x, T* out, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];  // fixed order: deterministic
  out[0] = s;
}

VM_INSTANTIATE_KERNELS(VM_ELEMENTWISE_KERNELS)

}  // namespace vm::kernels
