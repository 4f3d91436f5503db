// autodiff/ops_basic.cpp — matmul, broadcasting element-wise ops, scalar and
// unary ops, reductions.
#include <algorithm>

#include "autodiff/ops_common.h"

namespace vm::ops {
namespace detail {

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
void accumulate(TensorT<T>& x, const TensorT<T>& y) {
  VM_CHECK(x.numel() == y.numel() && x.device() == y.device(),
           "accumulate: " + shape_str(x.shape()) + " on " + device_name(x.device()) + " += " +
               shape_str(y.shape()) + " on " + device_name(y.device()));
  if (x.numel()) VM_RUN(x.device(), add_inplace, x.data(), y.data(), x.numel());
}

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
  const Device dev = device_of("matmul", a, b);
  Shape so(sa.begin(), sa.end() - 1);
  so.push_back(N);
  // every element written by the GEMM (zeros when K = 0)
  TensorT<T> out = K == 0 ? TensorT<T>(so, dev) : TensorT<T>::empty(so, dev);
  const bool work = batch * M * N * K > 0;
  if (work && shared_b)  // one GEMM over all rows: (batch*M, K) x (K, N)
    VM_RUN(dev, gemm, out.data(), a.value().data(), b.value().data(), batch * M, N, K, false, false, false);
  else if (work)  // one product per batch entry
    VM_RUN(dev, gemm_strided_batched, out.data(), a.value().data(), b.value().data(), batch, M, N, K, false, false,
           false, M * K, K * N, M * N);
  return make_result<T>(std::move(out), "matmul", {a, b}, [=](Node<T>& self) {
    TensorT<T>* ga = grad_of(self, 0);  // allocated (zero) even when there is no work
    TensorT<T>* gb = grad_of(self, 1);
    if (!work) return;
    const T* g = self.grad.data();
    const T* pa = self.parents[0]->value.data();
    const T* pb = self.parents[1]->value.data();
    if (shared_b) {
      if (ga) VM_RUN(dev, gemm, ga->data(), g, pb, batch * M, K, N, false, true, true);  // dA = G Bᵀ
      if (gb) VM_RUN(dev, gemm, gb->data(), pa, g, K, N, batch * M, true, false, true);  // dB = Aᵀ G
    } else {
      if (ga) VM_RUN(dev, gemm_strided_batched, ga->data(), g, pb, batch, M, K, N, false, true, true, M * N, K * N, M * K);
      if (gb) VM_RUN(dev, gemm_strided_batched, gb->data(), pa, g, batch, K, N, M, true, false, true, M * K, M * N, K * N);
    }
  });
}
VM_INSTANTIATE_OP(matmul)

// ---- broadcasting binary ops ----------------------------------------------------
namespace {
using kernels::Binary;

template <class T>
VarT<T> binary(const VarT<T>& a, const VarT<T>& b, Binary op, const char* name) {
  Shape so = broadcast_shape(a.shape(), b.shape(), name);
  const Device dev = device_of(name, a, b);
  TensorT<T> out = TensorT<T>::empty(so, dev);
  if (out.numel()) VM_RUN(dev, binary_fwd, op, a.value().data(), a.shape(), b.value().data(), b.shape(), out.data());
  return make_result<T>(std::move(out), name, {a, b}, [op, dev](Node<T>& self) {
    TensorT<T>*ga = grad_of(self, 0), *gb = grad_of(self, 1);
    if (self.grad.numel() == 0 || (!ga && !gb)) return;
    VM_RUN(dev, binary_bwd, op, self.parents[0]->value.data(), self.parents[0]->value.shape(),
           self.parents[1]->value.data(), self.parents[1]->value.shape(), self.grad.data(), ptr(ga), ptr(gb));
  });
}
}  // namespace

template <class T> VarT<T> add(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Binary::Add, "add"); }
template <class T> VarT<T> sub(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Binary::Sub, "sub"); }
template <class T> VarT<T> mul(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Binary::Mul, "mul"); }
template <class T> VarT<T> div(const VarT<T>& a, const VarT<T>& b) { return binary(a, b, Binary::Div, "div"); }
VM_INSTANTIATE_OP(add)
VM_INSTANTIATE_OP(sub)
VM_INSTANTIATE_OP(mul)
VM_INSTANTIATE_OP(div)

// ---- unary and scalar ops: y = f(x), dy/dx from (x, y) (kernels/elementwise.h) ---
namespace {
using kernels::Unary;

template <class T>
VarT<T> unary(const VarT<T>& a, Unary op, const char* name, double alpha = 0.0) {
  const Device dev = device_of(name, a);
  TensorT<T> out = TensorT<T>::empty(a.shape(), dev);
  const int64_t n = out.numel();
  if (n) VM_RUN(dev, unary_fwd, op, a.value().data(), out.data(), n, alpha);
  return make_result<T>(std::move(out), name, {a}, [op, alpha, n, dev](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (!gp || !n) return;
    VM_RUN(dev, unary_bwd, op, self.parents[0]->value.data(), self.value.data(), self.grad.data(), gp->data(), n,
           alpha);
  });
}
}  // namespace

template <class T> VarT<T> add_scalar(const VarT<T>& a, double s) { return unary(a, Unary::AddScalar, "add_scalar", s); }
template <class T> VarT<T> mul_scalar(const VarT<T>& a, double s) { return unary(a, Unary::MulScalar, "mul_scalar", s); }
template <class T> VarT<T> pow_scalar(const VarT<T>& a, double p) { return unary(a, Unary::PowScalar, "pow_scalar", p); }
template <class T> VarT<T> exp(const VarT<T>& a) { return unary(a, Unary::Exp, "exp"); }
template <class T> VarT<T> log(const VarT<T>& a) { return unary(a, Unary::Log, "log"); }
template <class T> VarT<T> sqrt(const VarT<T>& a) { return unary(a, Unary::Sqrt, "sqrt"); }
template <class T> VarT<T> softplus(const VarT<T>& a) { return unary(a, Unary::Softplus, "softplus"); }
template <class T> VarT<T> sigmoid(const VarT<T>& a) { return unary(a, Unary::Sigmoid, "sigmoid"); }
template <class T> VarT<T> relu(const VarT<T>& a) { return unary(a, Unary::Relu, "relu"); }
template <class T> VarT<T> gelu(const VarT<T>& a) { return unary(a, Unary::Gelu, "gelu"); }
template <class T> VarT<T> silu(const VarT<T>& a) { return unary(a, Unary::Silu, "silu"); }
template <class T> VarT<T> tanh(const VarT<T>& a) { return unary(a, Unary::Tanh, "tanh"); }
VM_INSTANTIATE_OP(add_scalar)
VM_INSTANTIATE_OP(mul_scalar)
VM_INSTANTIATE_OP(pow_scalar)
VM_INSTANTIATE_OP(exp)
VM_INSTANTIATE_OP(log)
VM_INSTANTIATE_OP(sqrt)
VM_INSTANTIATE_OP(softplus)
VM_INSTANTIATE_OP(sigmoid)
VM_INSTANTIATE_OP(relu)
VM_INSTANTIATE_OP(gelu)
VM_INSTANTIATE_OP(silu)
VM_INSTANTIATE_OP(tanh)

// ---- reductions -------------------------------------------------------------------
template <class T>
VarT<T> sum(const VarT<T>& a, int axis, bool keepdim) {
  int ax = norm_axis(axis, a.ndim(), "sum");
  int64_t outer, n, inner;
  split_axis(a.shape(), ax, outer, n, inner);
  const Device dev = device_of("sum", a);
  Shape so = a.shape();
  if (keepdim) so[ax] = 1;
  else so.erase(so.begin() + ax);
  TensorT<T> out(so, dev);
  if (outer * inner > 0) VM_RUN(dev, sum_axis, a.value().data(), out.data(), outer, n, inner, false);
  return make_result<T>(std::move(out), "sum", {a}, [outer, n, inner, dev](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (gp && outer * n * inner > 0) VM_RUN(dev, sum_axis_bwd, self.grad.data(), gp->data(), outer, n, inner);
  });
}
VM_INSTANTIATE_OP(sum)

template <class T>
VarT<T> mean(const VarT<T>& a, int axis, bool keepdim) {
  int ax = norm_axis(axis, a.ndim(), "mean");
  int64_t n = a.shape()[ax];
  return mul_scalar(sum(a, ax, keepdim), n ? 1.0 / (double)n : 0.0);
}
VM_INSTANTIATE_OP(mean)

template <class T>
VarT<T> sum_all(const VarT<T>& a) {
  const Device dev = device_of("sum_all", a);
  TensorT<T> out(Shape{}, dev);
  const int64_t n = a.numel();
  if (n) VM_RUN(dev, sum_all, a.value().data(), out.data(), n);  // fixed order: deterministic
  return make_result<T>(std::move(out), "sum_all", {a}, [n, dev](Node<T>& self) {
    TensorT<T>* gp = grad_of(self, 0);
    if (gp && n) VM_RUN(dev, sum_axis_bwd, self.grad.data(), gp->data(), 1, n, 1);  // dx += g
  });
}
VM_INSTANTIATE_OP(sum_all)

template <class T>
VarT<T> mean_all(const VarT<T>& a) {
  return mul_scalar(sum_all(a), a.numel() ? 1.0 / (double)a.numel() : 0.0);
}
VM_INSTANTIATE_OP(mean_all)

}  // namespace vm::ops
