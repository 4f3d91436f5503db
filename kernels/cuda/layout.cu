// kernels/cuda/layout.cu — in-place add, layout copies and the small row
// ops on the GPU (the table: kernels/layout.h). All memory-bound and simple: grid-stride loops, one
// element (or one row) per thread, no atomics, so every result is
// deterministic and, apart from logsumexp's summation order, bit-identical to
// the CPU loops.
#include "core/cuda/device.cuh"
#include "kernels/cuda/layout.h"

namespace vm::kernels::cuda {
using namespace detail;

namespace {
constexpr int kBlock = 256;

template <class T>
__global__ void add_inplace_k(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] += x[i];
}

template <class T>
__global__ void copy_band_k(const T* src, int64_t src_n, int64_t src_start, T* dst, int64_t dst_n,
                            int64_t dst_start, int64_t outer, int64_t len, int64_t inner, bool accumulate) {
  int64_t total = outer * len * inner, band = len * inner;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t o = t / band, r = t % band, j = r / inner, i = r % inner;
    T v = src[(o * src_n + src_start + j) * inner + i];
    T& d = dst[(o * dst_n + dst_start + j) * inner + i];
    d = accumulate ? d + v : v;
  }
}

struct Dims {
  int64_t d[4];
};

template <class T>
__global__ void swap_dims_k(const T* in, Dims din, int d0, int d1, T* out, bool accumulate) {
  Dims dout = din;
  dout.d[d0] = din.d[d1];
  dout.d[d1] = din.d[d0];
  int64_t sin[4];  // row-major strides of the input
  sin[3] = 1;
  for (int k = 2; k >= 0; --k) sin[k] = sin[k + 1] * din.d[k + 1];
  int64_t total = dout.d[0] * dout.d[1] * dout.d[2] * dout.d[3];
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t c[4], rem = t;
    for (int k = 3; k >= 0; --k) {
      c[k] = rem % dout.d[k];
      rem /= dout.d[k];
    }
    int64_t tmp = c[d0];  // output coordinates -> input coordinates
    c[d0] = c[d1];
    c[d1] = tmp;
    T v = in[c[0] * sin[0] + c[1] * sin[1] + c[2] * sin[2] + c[3] * sin[3]];
    out[t] = accumulate ? out[t] + v : v;
  }
}

template <class T>
__global__ void take_cols_fwd_k(const T* x, const int32_t* idx, T* out, int64_t N, int64_t E, int k) {
  int64_t total = N * k;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x)
    out[t] = x[(t / k) * E + idx[t]];
}

template <class T>
__global__ void take_cols_bwd_k(const T* g, const int32_t* idx, T* dx, int64_t N, int64_t E, int k) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x)
    for (int j = 0; j < k; ++j) dx[n * E + idx[n * k + j]] += g[n * k + j];
}

// One warp per row.
template <class T>
__global__ void logsumexp_fwd_k(const T* x, T* out, int64_t rows, int64_t C) {
  int64_t r = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const T* row = x + r * C;
  T mx = -vinf<T>();
  for (int64_t c = lane; c < C; c += 32) mx = max(mx, row[c]);
  mx = warp_max(mx);
  T s = 0;
  for (int64_t c = lane; c < C; c += 32) s += vexp(row[c] - mx);
  s = warp_sum(s);
  if (lane == 0) out[r] = mx + vlog(s);
}

template <class T>
__global__ void logsumexp_bwd_k(const T* x, const T* out, const T* g, T* dx, int64_t rows, int64_t C) {
  int64_t total = rows * C;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = t / C;
    dx[t] += g[r] * vexp(x[t] - out[r]);
  }
}

template <class T>
__global__ void sum_log_diag_fwd_k(const T* L, T* out, int64_t N, int64_t E) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += vlog(L[(n * E + e) * E + e]);
    out[n] = s;
  }
}

template <class T>
__global__ void sum_log_diag_bwd_k(const T* L, const T* g, T* dL, int64_t N, int64_t E) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x)
    for (int64_t e = 0; e < E; ++e) {
      int64_t i = (n * E + e) * E + e;
      dL[i] += g[n] / L[i];
    }
}
}  // namespace

template <class T>
void add_inplace(T* y, const T* x, int64_t n) {
  if (n <= 0) return;
  add_inplace_k<<<grid_for(n, kBlock), kBlock, 0, stream()>>>(y, x, n);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void copy_band(const T* src, int64_t src_n, int64_t src_start, T* dst, int64_t dst_n, int64_t dst_start,
               int64_t outer, int64_t len, int64_t inner, bool accumulate) {
  int64_t total = outer * len * inner;
  if (total <= 0) return;
  copy_band_k<<<grid_for(total, kBlock), kBlock, 0, stream()>>>(src, src_n, src_start, dst, dst_n, dst_start, outer,
                                                                 len, inner, accumulate);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void swap_dims(const T* in, const int64_t* d4, int d0, int d1, T* out, bool accumulate) {
  Dims din{{d4[0], d4[1], d4[2], d4[3]}};
  int64_t total = d4[0] * d4[1] * d4[2] * d4[3];
  if (total <= 0) return;
  swap_dims_k<<<grid_for(total, kBlock), kBlock, 0, stream()>>>(in, din, d0, d1, out, accumulate);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void take_cols_fwd(const T* x, const int32_t* idx, T* out, int64_t N, int64_t E, int k) {
  if (N * k <= 0) return;
  take_cols_fwd_k<<<grid_for(N * k, kBlock), kBlock, 0, stream()>>>(x, idx, out, N, E, k);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void take_cols_bwd(const T* g, const int32_t* idx, T* dx, int64_t N, int64_t E, int k) {
  if (N <= 0 || k <= 0) return;
  take_cols_bwd_k<<<grid_for(N, kBlock), kBlock, 0, stream()>>>(g, idx, dx, N, E, k);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void logsumexp_fwd(const T* x, T* out, int64_t rows, int64_t C) {
  if (rows <= 0) return;
  logsumexp_fwd_k<<<row_grid(rows, false, kBlock), kBlock, 0, stream()>>>(x, out, rows, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void logsumexp_bwd(const T* x, const T* out, const T* g, T* dx, int64_t rows, int64_t C) {
  if (rows * C <= 0) return;
  logsumexp_bwd_k<<<grid_for(rows * C, kBlock), kBlock, 0, stream()>>>(x, out, g, dx, rows, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void sum_log_diag_fwd(const T* L, T* out, int64_t N, int64_t E) {
  if (N <= 0) return;
  sum_log_diag_fwd_k<<<grid_for(N, kBlock), kBlock, 0, stream()>>>(L, out, N, E);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void sum_log_diag_bwd(const T* L, const T* g, T* dL, int64_t N, int64_t E) {
  if (N <= 0) return;
  sum_log_diag_bwd_k<<<grid_for(N, kBlock), kBlock, 0, stream()>>>(L, g, dL, N, E);
  CUDA_CHECK_LAUNCH();
}

VM_INSTANTIATE_KERNELS(VM_LAYOUT_KERNELS)

}  // namespace vm::kernels::cuda
