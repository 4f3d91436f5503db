// autodiff/ops_common.h — small helpers shared by the op files (not public API).
#pragma once
#include <array>

#include "autodiff/ops.h"

namespace vm::ops::detail {

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
// rows/cols view of the last axis: (..., C) -> rows = numel / C, cols = C.
inline void rows_cols(const Shape& s, int64_t& rows, int64_t& cols) {
  cols = s.empty() ? 1 : s.back();
  rows = cols ? shape_numel(s) / cols : 0;
}

}  // namespace vm::ops::detail
