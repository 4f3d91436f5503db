// autodiff/accumulate.h — the one operation the tape itself performs: adding a
// gradient into a gradient buffer, x += y, on either device (defined with the
// ops in autodiff/ops_basic.cpp, through the add_inplace kernel). Kept apart
// from ops.h so that the tape does not depend on the op set.
#pragma once
#include "core/tensor.h"

namespace vm::ops::detail {
// x += y element-wise (same numel, same device): the tape's gradient accumulation.
template <class T>
void accumulate(TensorT<T>& x, const TensorT<T>& y);
}  // namespace vm::ops::detail
