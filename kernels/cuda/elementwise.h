// kernels/cuda/elementwise.h — the GPU side of kernels/elementwise.h (the
// table declares the kernels for both devices) plus the launch variants the
// dev harness (bench/cuda) and the tests choose between.
#pragma once
#include <cstdint>

#include "kernels/elementwise.h"

namespace vm::kernels::cuda {

using kernels::Binary;
using kernels::kUnaryCount;
using kernels::Unary;
using kernels::unary_name;

// Launch choice for the memory-bound kernels; version 0 / block 0 = the default.
struct Launch {
  int version = 0;
  int block = 0;
};

// unary_fwd with a launch choice: version 1: one element per thread
// (grid-stride); 2: 16-byte vector loads.
template <class T>
void unary_fwd(Unary op, const T* x, T* y, int64_t n, double alpha, Launch l);

}  // namespace vm::kernels::cuda
