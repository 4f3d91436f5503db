// autodiff/ops_basic.cpp — matmul, broadcasting element-wise ops, scalar and
// unary ops, reductions.
#include <cmath>

#include "autodiff/ops_common.h"
#include "kernels/cpu/fastmath.h"
#include "kernels/cpu/gemm.h"

namespace vm::ops {
namespace detail {

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

Shape broadcast_shape(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      fail(std::string(op) + ": " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

template <class T>
TensorT<T> reduce_to(const TensorT<T>& g, const Shape& to) {
  if (g.shape() == to) return g;
  TensorT<T> out(to);
  Dims4 src = dims4(g.shape()), dst = dims4(to);
  // Iterate the (larger) gradient in order; each element adds into its target.
  const T* pg = g.data();
  T* po = out.data();
  int64_t i = 0;
  for (int64_t a = 0; a < src.d[0]; ++a)
    for (int64_t b = 0; b < src.d[1]; ++b)
      for (int64_t c = 0; c < src.d[2]; ++c) {
        int64_t base = a * dst.stride[0] + b * dst.stride[1] + c * dst.stride[2];
        if (dst.stride[3]) {
          T* row = po + base;
          for (int64_t d = 0; d < src.d[3]; ++d) row[d] += pg[i + d];
        } else {
          T s = 0;
          for (int64_t d = 0; d < src.d[3]; ++d) s += pg[i + d];
          po[base] += s;
        }
        i += src.d[3];
      }
  return out;
}

template <class T>
void accumulate(TensorT<T>& x, const TensorT<T>& y) {
  VM_CHECK(x.numel() == y.numel() && x.device() == y.device(),
           "accumulate: " + shape_str(x.shape()) + " on " + device_name(x.device()) + " += " +
               shape_str(y.shape()) + " on " + device_name(y.device()));
#ifdef VMOER_HAVE_CUDA
  if (x.is_cuda()) return cuda_ops::accumulate(x, y);
#endif
  T* px = x.data();
  const T* py = y.data();
  int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) px[i] += py[i];
}

template TensorT<float> reduce_to(const TensorT<float>&, const Shape&);
template TensorT<double> reduce_to(const TensorT<double>&, const Shape&);
template void accumulate(TensorT<float>&, const TensorT<float>&);
template void accumulate(TensorT<double>&, const TensorT<double>&);

}  // namespace detail

using namespace detail;

// ---- matmul -------------------------------------------------------------------
template <class T>
VarT<T> matmul(const VarT<T>& a, const VarT<T>& b) {
  const Shape &sa = a.shape(), &sb = b.shape();
  VM_CHECK(sa.size() >= 2 && sb.size() >= 2,
           "matmul: " + shape_str(sa) + " x " + shape_str(sb) + ": both operands need >= 2 dims");
  int64_t M = sa[sa.size() - 2], K = sa.back(), K2 = sb[sb.size() - 2], N = sb.back();
  VM_CHECK(K == K2, "matmul: " + shape_str(sa) + " x " + shape_str(sb) + ": inner dimensions differ");
  bool shared_b = sb.size() == 2;
  int64_t batch = shape_numel(Shape(sa.begin(), sa.end() - 2));
  if (!shared_b) {
    VM_CHECK(Shape(sa.begin(), sa.end() - 2) == Shape(sb.begin(), sb.end() - 2),
             "matmul: " + shape_str(sa) + " x " + shape_str(sb) + ": batch dimensions differ");
  }
  VM_CUDA_DISPATCH(on_cuda("matmul", a, b), cuda_ops::matmul(a, b));
  Shape so(sa.begin(), sa.end() - 1);
  so.push_back(N);
  TensorT<T> out = K == 0 ? TensorT<T>(so) : TensorT<T>::empty(so);  // every element written by the GEMM
  if (shared_b) {  // one GEMM over all rows: (batch*M, K) x (K, N)
    kernels::gemm(out.data(), a.value().data(), b.value().data(), batch * M, N, K, false, false, false);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < batch; ++i)  // one product per batch entry, each on one thread
      kernels::gemm_single(out.data() + i * M * N, a.value().data() + i * M * K, b.value().data() + i * K * N,
                           M, N, K, false, false, false);
  }
  return make_result<T>(std::move(out), "matmul", {a, b}, [=](Node<T>& self) {
    const T* g = self.grad.data();
    const T* pa = self.parents[0]->value.data();
    const T* pb = self.parents[1]->value.data();
    TensorT<T>* ga = grad_of(self, 0);
    TensorT<T>* gb = grad_of(self, 1);
    if (shared_b) {
      if (ga) kernels::gemm(ga->data(), g, pb, batch * M, K, N, false, true, true);  // dA = G Bᵀ
      if (gb) kernels::gemm(gb->data(), pa, g, K, N, batch * M, true, false, true);  // dB = Aᵀ G
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < batch; ++i) {
        if (ga) kernels::gemm_single(ga->data() + i * M * K, g + i * M * N, pb + i * K * N, M, K, N, false, true,
                                     true);
        if (gb) kernels::gemm_single(gb->data() + i * K * N, pa + i * M * K, g + i * M * N, K, N, M, true, false,
                                     true);
      }
    }
  });
}

// ---- broadcasting binary ops ----------------------------------------------------
namespace {
enum class Bin { Add, Sub, Mul, Div };

template <class T>
T apply(Bin op, T x, T y) {
  switch (op) {
    case Bin::Add: return x + y;
    case Bin::Sub: return x - y;
    case Bin::Mul: return x * y;
    default: return x / y;
  }
}

// out[i] = f(a[ia], b[ib]) over the broadcast index space.
template <class T, class F>
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

template <class T>
VarT<T> binary(const VarT<T>& a, const VarT<T>& b, Bin op, const char* name) {
  Shape so = broadcast_shape(a.shape(), b.shape(), name);
  static_assert((int)Bin::Div == (int)kernels::cuda::Binary::Div && (int)Bin::Sub == (int)kernels::cuda::Binary::Sub);
  VM_CUDA_DISPATCH(on_cuda(name, a, b), cuda_ops::binary(a, b, (kernels::cuda::Binary)op, name));
  TensorT<T> out = TensorT<T>::empty(so);
  const T* pa = a.value().data();
  const T* pb = b.value().data();
  T* po = out.data();
  if (a.shape() == b.shape()) {
    int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) po[i] = apply(op, pa[i], pb[i]);
  } else {
    broadcast_loop<T>(so, a.shape(), b.shape(),
                      [&](int64_t i, int64_t ia, int64_t ib) { po[i] = apply(op, pa[ia], pb[ib]); });
  }
  return make_result<T>(std::move(out), name, {a, b}, [so, op](Node<T>& self) {
    const Shape& sa = self.parents[0]->value.shape();
    const Shape& sb = self.parents[1]->value.shape();
    const T* g = self.grad.data();
    const T* pa = self.parents[0]->value.data();
    const T* pb = self.parents[1]->value.data();
    for (int side = 0; side < 2; ++side) {
      TensorT<T>* gp = grad_of(self, side);
      if (!gp) continue;
      if ((op == Bin::Add || (op == Bin::Sub && side == 0))) {
        accumulate(*gp, reduce_to(self.grad, side ? sb : sa));
        continue;
      }
      // full-size local gradient, then reduce over broadcast dims
      TensorT<T> full = TensorT<T>::empty(so);
      T* pf = full.data();
      broadcast_loop<T>(so, sa, sb, [&](int64_t i, int64_t ia, int64_t ib) {
        T x = pa[ia], y = pb[ib];
        T d;
        if (op == Bin::Sub) d = -g[i];
        else if (op == Bin::Mul) d = g[i] * (side ? x : y);
        else d = side ? -g[i] * x / (y * y) : g[i] / y;
        pf[i] = d;
      });
      accumulate(*gp, reduce_to(full, side ? sb : sa));
    }
  });
}
}  // namespace

template <class T> VarT<T> add(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Bin::Add, "add"); }
template <class T> VarT<T> sub(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Bin::Sub, "sub"); }
template <class T> VarT<T> mul(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Bin::Mul, "mul"); }
template <class T> VarT<T> div(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Bin::Div, "div"); }

// ---- unary ops: y = f(x), dy/dx from (x, y) --------------------------------------
namespace {
// cuda_op / alpha: the same op for the GPU half (kernels/cuda/elementwise.h).
template <class T, class F, class D>
VarT<T> unary(const VarT<T>& a, const char* name, F f, D dfdx, kernels::cuda::Unary cuda_op, double alpha = 0.0) {
  VM_CUDA_DISPATCH(on_cuda(name, a), cuda_ops::unary(a, cuda_op, alpha, name));
  TensorT<T> out = TensorT<T>::empty(a.shape());
  const T* px = a.value().data();
  T* py = out.data();
  int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) py[i] = f(px[i]);
  return make_result<T>(std::move(out), name, {a}, [dfdx](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (!gp) return;
    const T* px = self.parents[0]->value.data();
    const T* py = self.value.data();
    const T* g = self.grad.data();
    T* pg = gp->data();
    int64_t n = self.value.numel();
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; ++i) pg[i] += g[i] * dfdx(px[i], py[i]);
  });
}

using U = kernels::cuda::Unary;

template <class T>
T gelu_inner(T x) {  // sqrt(2/pi) (x + 0.044715 x^3)
  return T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
}
}  // namespace

template <class T> VarT<T> add_scalar(const VarT<T>& a, double s) {
  return unary(a, "add_scalar", [s](T x) { return x + T(s); }, [](T, T) { return T(1); }, U::AddScalar, s);
}
template <class T> VarT<T> mul_scalar(const VarT<T>& a, double s) {
  return unary(a, "mul_scalar", [s](T x) { return x * T(s); }, [s](T, T) { return T(s); }, U::MulScalar, s);
}
template <class T> VarT<T> pow_scalar(const VarT<T>& a, double p) {
  return unary(a, "pow_scalar", [p](T x) { return (T)std::pow(x, T(p)); },
               [p](T x, T) { return T(p) * (T)std::pow(x, T(p - 1)); }, U::PowScalar, p);
}
template <class T> VarT<T> exp(const VarT<T>& a) {
  return unary(a, "exp", [](T x) { return kernels::exp_(x); }, [](T, T y) { return y; }, U::Exp);
}
template <class T> VarT<T> log(const VarT<T>& a) {
  return unary(a, "log", [](T x) { return std::log(x); }, [](T x, T) { return T(1) / x; }, U::Log);
}
template <class T> VarT<T> sqrt(const VarT<T>& a) {
  return unary(a, "sqrt", [](T x) { return std::sqrt(x); }, [](T, T y) { return T(0.5) / y; }, U::Sqrt);
}
template <class T> VarT<T> softplus(const VarT<T>& a) {
  // log(1+e^x) = max(x,0) + log1p(e^-|x|); d/dx = sigmoid(x)
  return unary(a, "softplus", [](T x) { return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x))); },
               [](T x, T) { return T(1) / (T(1) + std::exp(-x)); }, U::Softplus);
}
template <class T> VarT<T> sigmoid(const VarT<T>& a) {
  return unary(a, "sigmoid", [](T x) { return kernels::sigmoid_(x); },
               [](T, T y) { return y * (T(1) - y); }, U::Sigmoid);
}
template <class T> VarT<T> relu(const VarT<T>& a) {
  return unary(a, "relu", [](T x) { return x > 0 ? x : T(0); }, [](T x, T) { return x > 0 ? T(1) : T(0); }, U::Relu);
}
template <class T> VarT<T> gelu(const VarT<T>& a) {
  // y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3)
  return unary(a, "gelu", [](T x) { return T(0.5) * x * (T(1) + kernels::tanh_gelu(gelu_inner(x))); },
               [](T x, T) {
                 T t = kernels::tanh_gelu(gelu_inner(x));
                 T du = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * x * x);
                 return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
               }, U::Gelu);
}
template <class T> VarT<T> silu(const VarT<T>& a) {
  return unary(a, "silu", [](T x) { return x * kernels::sigmoid_(x); },
               [](T x, T) {
                 T s = kernels::sigmoid_(x);
                 return s * (T(1) + x * (T(1) - s));
               }, U::Silu);
}
template <class T> VarT<T> tanh(const VarT<T>& a) {
  return unary(a, "tanh", [](T x) { return std::tanh(x); }, [](T, T y) { return T(1) - y * y; }, U::Tanh);
}

// ---- reductions -------------------------------------------------------------------
template <class T>
VarT<T> sum(const VarT<T>& a, int axis, bool keepdim) {
  const Shape& s = a.shape();
  int ax = norm_axis(axis, a.ndim(), "sum");
  int64_t outer = 1, n = s[ax], inner = 1;
  for (int i = 0; i < ax; ++i) outer *= s[i];
  for (int i = ax + 1; i < (int)s.size(); ++i) inner *= s[i];
  VM_CUDA_DISPATCH(on_cuda("sum", a), cuda_ops::sum(a, axis, keepdim));
  Shape so = s;
  if (keepdim) so[ax] = 1; else so.erase(so.begin() + ax);
  TensorT<T> out(so);
  const T* px = a.value().data();
  T* po = out.data();
#pragma omp parallel for schedule(static) if (outer * n * inner > 32768)
  for (int64_t o = 0; o < outer; ++o) {
    if (inner == 1) {  // reduce a contiguous row in a register
      T acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += px[o * n + j];
      po[o] = acc;
      continue;
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < inner; ++i) po[o * inner + i] += px[(o * n + j) * inner + i];
  }
  return make_result<T>(std::move(out), "sum", {a}, [outer, n, inner](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (!gp) return;
    const T* g = self.grad.data();
    T* pg = gp->data();
#pragma omp parallel for schedule(static) if (outer * n * inner > 32768)
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < inner; ++i) pg[(o * n + j) * inner + i] += g[o * inner + i];
  });
}

template <class T>
VarT<T> mean(const VarT<T>& a, int axis, bool keepdim) {
  int ax = norm_axis(axis, a.ndim(), "mean");
  int64_t n = a.shape()[ax];
  return mul_scalar(sum(a, ax, keepdim), n ? 1.0 / (double)n : 0.0);
}

template <class T>
VarT<T> sum_all(const VarT<T>& a) {
  VM_CUDA_DISPATCH(on_cuda("sum_all", a), cuda_ops::sum_all(a));
  TensorT<T> out(Shape{});
  const T* px = a.value().data();
  T s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += px[i];  // fixed order: deterministic
  out[0] = s;
  return make_result<T>(std::move(out), "sum_all", {a}, [](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (!gp) return;
    T g = self.grad[0];
    T* pg = gp->data();
    for (int64_t i = 0; i < gp->numel(); ++i) pg[i] += g;
  });
}

template <class T>
VarT<T> mean_all(const VarT<T>& a) {
  return mul_scalar(sum_all(a), a.numel() ? 1.0 / (double)a.numel() : 0.0);
}

#define VM_INST(T)                                                           \
  template VarT<T> matmul(const VarT<T>&, const VarT<T>&);                   \
  template VarT<T> add(const VarT<T>&, const VarT<T>&);                      \
  template VarT<T> sub(const VarT<T>&, const VarT<T>&);                      \
  template VarT<T> mul(const VarT<T>&, const VarT<T>&);                      \
  template VarT<T> div(const VarT<T>&, const VarT<T>&);                      \
  template VarT<T> add_scalar(const VarT<T>&, double);                       \
  template VarT<T> mul_scalar(const VarT<T>&, double);                       \
  template VarT<T> pow_scalar(const VarT<T>&, double);                       \
  template VarT<T> exp(const VarT<T>&);                                      \
  template VarT<T> log(const VarT<T>&);                                      \
  template VarT<T> sqrt(const VarT<T>&);                                     \
  template VarT<T> softplus(const VarT<T>&);                                 \
  template VarT<T> sigmoid(const VarT<T>&);                                  \
  template VarT<T> relu(const VarT<T>&);                                     \
  template VarT<T> gelu(const VarT<T>&);                                     \
  template VarT<T> silu(const VarT<T>&);                                     \
  template VarT<T> tanh(const VarT<T>&);                                     \
  template VarT<T> sum(const VarT<T>&, int, bool);                           \
  template VarT<T> mean(const VarT<T>&, int, bool);                          \
  template VarT<T> sum_all(const VarT<T>&);                                  \
  template VarT<T> mean_all(const VarT<T>&);
VM_INST(float)
VM_INST(double)

}  // namespace vm::ops
