// kernels/cuda/nn.h — embedding and dropout on the GPU: the CUDA twins of
// kernels/cpu/nn.cpp (the table is kernels/nn.h), on device pointers.
//
// Random numbers come from core/philox.h, the same header the CPU uses, so
// uniforms (integer arithmetic + one exact scaling) are bit-identical to the
// CPU's, hence dropout masks are identical. Normals use the fixed-operation
// log/sincos of core/philox.h (bit-identical by construction); Gumbels go
// through logf, whose CUDA implementation may differ from glibc's by an ulp
// or two: they agree to ~1e-6 relative, not bit for bit.
#pragma once
#include <cstdint>

#include "kernels/nn.h"

namespace vm::kernels::cuda {

// The GPU side of kernels/nn.h (the table) plus:
// dropout_fwd with a launch choice: version 1: one Philox block per element;
// 2 (the default, 0): one Philox block per 4 consecutive offsets.
template <class T>
void dropout_fwd(const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream, uint64_t offset,
                 int version);

}  // namespace vm::kernels::cuda
