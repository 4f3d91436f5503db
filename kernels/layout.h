// kernels/layout.h — the small kernels of the layout and row ops: in-place
// add (the tape's gradient accumulation), band copies (slice / concat),
// dimension swaps (transpose), take_cols, logsumexp, sum_log_diag. One
// signature for both devices (kernels/table.h), defined in
// kernels/cpu/layout.cpp and kernels/cuda/layout.cu; all deterministic.
//
// Index arrays (idx) live on the kernel's device.
#pragma once
#include "kernels/table.h"

#define VM_LAYOUT_KERNELS(K)                                                                     \
  /* y[i] += x[i] for i < n */                                                                   \
  K(void, add_inplace, (T * y, const T* x, int64_t n))                                           \
  /* tensors viewed as (outer, n, inner): */                                                     \
  /* dst[o, dst_start + j, i] (+)= src[o, src_start + j, i] for j < len */                       \
  /* (slice forward: src = a (n, start) -> dst = out (len, 0); its backward */                   \
  /* the other way, accumulating; concat: one band per input) */                                 \
  K(void, copy_band,                                                                             \
    (const T* src, int64_t src_n, int64_t src_start, T* dst, int64_t dst_n, int64_t dst_start,   \
     int64_t outer, int64_t len, int64_t inner, bool accumulate))                                \
  /* a tensor of up to 4 dims (d4: its shape left-padded to 4 with 1s), */                       \
  /* out = in with dims d0, d1 swapped (0 <= d0, d1 < 4), (+)= when */                           \
  /* accumulate; the backward of a swap is the same swap of the gradient */                      \
  K(void, swap_dims, (const T* in, const int64_t* d4, int d0, int d1, T* out, bool accumulate))  \
  /* out (N, k)[n, j] = x (N, E)[n, idx[n, j]] */                                                \
  K(void, take_cols_fwd, (const T* x, const int32_t* idx, T* out, int64_t N, int64_t E, int k))  \
  /* dx[n, idx[n, j]] += g[n, j], j in order (repeated indices accumulate) */                    \
  K(void, take_cols_bwd, (const T* g, const int32_t* idx, T* dx, int64_t N, int64_t E, int k))   \
  /* out[r] = log Σ_c exp(x[r, c]) (max-shifted) */                                              \
  K(void, logsumexp_fwd, (const T* x, T* out, int64_t rows, int64_t C))                          \
  /* dx[r, c] += g[r] · exp(x[r, c] − out[r]) */                                                 \
  K(void, logsumexp_bwd, (const T* x, const T* out, const T* g, T* dx, int64_t rows, int64_t C)) \
  /* L (N, E, E): out[n] = Σ_e log L[n, e, e] (e ascending) */                                   \
  K(void, sum_log_diag_fwd, (const T* L, T* out, int64_t N, int64_t E))                          \
  /* dL[n, e, e] += g[n] / L[n, e, e] */                                                         \
  K(void, sum_log_diag_bwd, (const T* L, const T* g, T* dL, int64_t N, int64_t E))
VM_DECLARE_KERNELS(VM_LAYOUT_KERNELS)
