// kernels/cuda/layout.h — the small kernels the device tensors and the op
// dispatch (autodiff/ops_cuda.cpp) need beside the big ones: in-place
// add, the layout ops (slice/concat bands, transpose), and the row ops that
// have no fused kernel elsewhere (take_cols, logsumexp, sum_log_diag).
// CPU twins: the loops of the same name in autodiff/ops_nn.cpp and
// autodiff/ops_moe.cpp (parity through the op-case table's CUDA column in
// tests/test_cuda.cpp). Device pointers, this thread's stream, asynchronous.
#pragma once
#include <cstdint>

namespace vm::kernels::cuda {

// y[i] += x[i] for i < n (the tape's gradient accumulation)
template <class T>
void add_inplace(T* y, const T* x, int64_t n);

// Band copy between two tensors viewed as (outer, n, inner):
//   dst[o, dst_start + j, i] (+)= src[o, src_start + j, i]   for j < len
// slice forward:  src = a (n, start) -> dst = out (len, 0)
// slice backward: src = g (len, 0)   -> dst = da (n, start), accumulate
// concat: one band per input at its offset along the axis.
template <class T>
void copy_band(const T* src, int64_t src_n, int64_t src_start, T* dst, int64_t dst_n, int64_t dst_start,
               int64_t outer, int64_t len, int64_t inner, bool accumulate);

// Swap two dims of a tensor of up to 4 dims (shape left-padded to 4 with 1s):
// in has dims d4 (4 entries), out has d4 with d0, d1 swapped (0 <= d0, d1 < 4);
// out[..a_d1.. ..a_d0..] (+)= in[..a_d0.. ..a_d1..]. The backward of a swap
// is the same swap of the gradient (with the output's dims), accumulating.
template <class T>
void swap_dims(const T* in, const int64_t* d4, int d0, int d1, T* out, bool accumulate);

// out (N, k)[n, j] = x (N, E)[n, idx[n, j]].  Backward: dx[n, idx[n, j]] += g[n, j],
// one thread per row adding j in order (repeated indices accumulate; deterministic).
template <class T>
void take_cols_fwd(const T* x, const int32_t* idx, T* out, int64_t N, int64_t E, int k);
template <class T>
void take_cols_bwd(const T* g, const int32_t* idx, T* dx, int64_t N, int64_t E, int k);

// out[r] = log Σ_c exp(x[r, c]) (max-shifted), one warp per row.
// Backward: dx[r, c] += g[r] · exp(x[r, c] − out[r]).
template <class T>
void logsumexp_fwd(const T* x, T* out, int64_t rows, int64_t C);
template <class T>
void logsumexp_bwd(const T* x, const T* out, const T* g, T* dx, int64_t rows, int64_t C);

// L (N, E, E): out[n] = Σ_e log L[n, e, e] (e ascending).  dL[n, e, e] += g[n] / L[n, e, e].
template <class T>
void sum_log_diag_fwd(const T* L, T* out, int64_t N, int64_t E);
template <class T>
void sum_log_diag_bwd(const T* L, const T* g, T* dL, int64_t N, int64_t E);

}  // namespace vm::kernels::cuda
