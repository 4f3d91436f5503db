// autodiff/ops_common.h — small helpers shared by the op files (not public API).
#pragma once
#include <array>

#include "autodiff/ops.h"
#include "autodiff/ops_cuda.h"

// Device dispatch: every op calls VM_CUDA_DISPATCH(on_cuda("op", inputs...),
// cuda_ops::op(...)) after validating its arguments. When the inputs are
// device tensors the op's GPU half (autodiff/ops_cuda.cpp) runs instead of
// the CPU code below it; without the CUDA backend the line compiles away (no
// device tensor can exist then).
#ifdef VMOER_HAVE_CUDA
#define VM_CUDA_DISPATCH(cond, call) \
  if (cond) return call
#else
#define VM_CUDA_DISPATCH(cond, call) (void)0
#endif

namespace vm::ops::detail {

// True when the op's inputs are device tensors; inputs on different devices
// fail with "<op>: inputs on cpu and cuda" (no implicit copies).
template <class T, class... Rest>
bool on_cuda(const char* op, const VarT<T>& a, const Rest&... rest) {
  Device d = a.value().device();
  auto same = [&](const VarT<T>& v) {
    if (v.value().device() != d)
      fail(std::string(op) + ": inputs on " + device_name(d) + " and " + device_name(v.value().device()) +
           " (move them with Tensor::to first)");
  };
  (same(rest), ...);
  (void)same;  // single-input ops
  return d == Device::CUDA;
}
template <class T>
bool on_cuda(const char* op, const std::vector<VarT<T>>& xs) {
  if (xs.empty()) return false;
  for (auto& x : xs) on_cuda(op, xs[0], x);
  return xs[0].value().device() == Device::CUDA;
}

// A shape left-padded with 1s to 4 dims, and its row-major strides.
struct Dims4 {
  std::array<int64_t, 4> d{1, 1, 1, 1};
  std::array<int64_t, 4> stride{0, 0, 0, 0};
};
Dims4 dims4(const Shape& s);
// numpy broadcasting of two shapes, with "<op>: (a) and (b) do not broadcast".
Shape broadcast_shape(const Shape& a, const Shape& b, const char* op);
// Sum g (of shape `from`) down to shape `to` over broadcast dims (fixed order).
template <class T>
TensorT<T> reduce_to(const TensorT<T>& g, const Shape& to);
// x += y element-wise (same numel).
template <class T>
void accumulate(TensorT<T>& x, const TensorT<T>& y);
// parent's gradient buffer, or nullptr when that parent needs no gradient.
template <class T>
TensorT<T>* grad_of(Node<T>& self, size_t i) {
  auto& p = self.parents[i];
  return p->requires_grad ? &p->grad_buffer() : nullptr;
}
// View a tensor as (outer, n, inner) around `axis`.
inline void split_axis(const Shape& s, int ax, int64_t& outer, int64_t& n, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (int i = 0; i < ax; ++i) outer *= s[i];
  n = s[ax];
  for (int i = ax + 1; i < (int)s.size(); ++i) inner *= s[i];
}
// Indices (N, k) of the k largest entries of each row of x (N, E), ties to
// the lower index (host tensor): topk's selection, shared by both devices.
template <class T>
std::vector<int32_t> topk_indices(const TensorT<T>& x, int k);
// rows/cols view of the last axis: (..., C) -> rows = numel / C, cols = C.
inline void rows_cols(const Shape& s, int64_t& rows, int64_t& cols) {
  cols = s.empty() ? 1 : s.back();
  rows = cols ? shape_numel(s) / cols : 0;
}

}  // namespace vm::ops::detail
