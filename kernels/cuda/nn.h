// kernels/cuda/nn.h — embedding, dropout and Philox fills on the GPU: the
// CUDA twins of kernels/cpu/nn.cpp (embedding, dropout; the table is
// kernels/nn.h) and of nn/routers/common.h (normals, gumbels), on device pointers.
//
// Random numbers come from core/philox.h, the same header the CPU uses, so
// uniforms (integer arithmetic + one exact scaling) are bit-identical to the
// CPU's, hence dropout masks are identical. Normals and Gumbels go through
// logf/sqrtf/sinf/cosf, whose CUDA implementations may differ from glibc's by
// an ulp or two: they agree to ~1e-6 relative, not bit for bit.
#pragma once
#include <cstdint>

#include "kernels/nn.h"

namespace vm::kernels::cuda {

// The GPU side of kernels/nn.h (the table) plus:
// Same as embedding_bwd with atomicAdd: faster for few repeats, but the order
// of the adds (hence the float rounding) varies from run to run. Dev harness only.
template <class T>
void embedding_bwd_atomic(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C);

// dropout_fwd with a launch choice: version 1: one Philox block per element;
// 2 (the default, 0): one Philox block per 4 consecutive offsets.
template <class T>
void dropout_fwd(const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream, uint64_t offset,
                 int version);

// out[i] = philox_<dist>(seed, stream, offset + i)
enum class PhiloxDist : int { Uniform, Normal, Gumbel };
template <class T>
void philox_fill(PhiloxDist dist, T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset = 0);

}  // namespace vm::kernels::cuda
