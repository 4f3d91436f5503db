// kernels/cuda/nn.h — embedding, dropout and Philox fills on the GPU: the
// CUDA twins of the loops in autodiff/ops_nn.cpp (embedding, dropout) and
// nn/routers/common.h (normals, gumbels), on device pointers.
//
// Random numbers come from core/philox.h, the same header the CPU uses, so
// uniforms (integer arithmetic + one exact scaling) are bit-identical to the
// CPU's, hence dropout masks are identical. Normals and Gumbels go through
// logf/sqrtf/sinf/cosf, whose CUDA implementations may differ from glibc's by
// an ulp or two: they agree to ~1e-6 relative, not bit for bit.
#pragma once
#include <cstdint>

namespace vm::kernels::cuda {

// out (n, C) = table[ids] ; ids validated by the caller (0 <= id < V).
template <class T>
void embedding_fwd(const T* table, const int32_t* ids, T* out, int64_t n, int64_t C);
// dtable[ids[i]] += dout[i] for every position i. Deterministic: positions
// are grouped by id with the stable radix grouping (kernels/cuda/sort.h) and
// each table row adds its positions in increasing order — the CPU's order, so
// the float result is bit-identical to the CPU loop. ids outside [0, V) are skipped.
template <class T>
void embedding_bwd(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C);
// Same with atomicAdd: faster for few repeats, but the order of the adds
// (hence the float rounding) varies from run to run. Dev harness only.
template <class T>
void embedding_bwd_atomic(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C);

// mask[i] = philox_uniform(seed, stream, offset + i) >= p ? 1/(1-p) : 0;
// y = x ⊙ mask (the CPU's dropout, 0 <= p < 1). version 1: one Philox block
// per element; 2 (default): one Philox block per 4 consecutive offsets.
template <class T>
void dropout_fwd(const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream, uint64_t offset,
                 int version = 0);
// dx += dy ⊙ mask
template <class T>
void dropout_bwd(const T* dy, const T* mask, T* dx, int64_t n);

// out[i] = philox_<dist>(seed, stream, offset + i)
enum class PhiloxDist : int { Uniform, Normal, Gumbel };
template <class T>
void philox_fill(PhiloxDist dist, T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset = 0);

}  // namespace vm::kernels::cuda
