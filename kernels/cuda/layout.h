// kernels/cuda/layout.h — the GPU side of kernels/layout.h (the table) plus
// fill_value, which device tensors use for TensorT::fill. Device pointers,
// this thread's stream, asynchronous.
#pragma once
#include <cstdint>

#include "kernels/layout.h"

namespace vm::kernels::cuda {

// p[i] = v for i < n
template <class T>
void fill_value(T* p, int64_t n, T v);

}  // namespace vm::kernels::cuda
