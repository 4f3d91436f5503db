// kernels/nn.h — embedding and dropout: one signature for both devices
// (kernels/table.h), defined in kernels/cpu/nn.cpp and kernels/cuda/nn.cu.
//
// ids live on the kernel's device.
#pragma once
#include "kernels/table.h"

#define VM_NN_KERNELS(K)                                                                                  \
  /* out (n, C) = table[ids]; ids validated by the caller (0 <= id < V) */                                \
  K(void, embedding_fwd, (const T* table, const int32_t* ids, T* out, int64_t n, int64_t C))              \
  /* dtable[ids[i]] += dout[i] for every position i, each table row */                                    \
  /* adding its positions in increasing order (deterministic; the GPU */                                  \
  /* groups positions by id with a stable radix grouping, so the float */                                 \
  /* result is bit-identical to the CPU loop); ids outside [0, V) skipped */                              \
  K(void, embedding_bwd, (const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C)) \
  /* mask[i] = philox_uniform(seed, stream, offset + i) >= p ? 1/(1-p) : 0; */                            \
  /* y = x ⊙ mask (0 <= p < 1): the same Philox numbers on both devices, */                               \
  /* so the masks are identical */                                                                        \
  K(void, dropout_fwd,                                                                                    \
    (const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream, uint64_t offset))    \
  /* dx += dy ⊙ mask */                                                                                   \
  K(void, dropout_bwd, (const T* dy, const T* mask, T* dx, int64_t n))
VM_DECLARE_KERNELS(VM_NN_KERNELS)
