// kernels/cuda/nn.cu — embedding and dropout on the GPU (see nn.h and the table kernels/nn.h).
#include <algorithm>

#include "core/philox.h"
#include "core/cuda/device.cuh"
#include "kernels/cuda/nn.h"
#include "kernels/cuda/sort.h"

namespace vm::kernels::cuda {
using namespace detail;

namespace {

template <class T>
__global__ void embedding_fwd_k(const T* __restrict__ table, const int32_t* __restrict__ ids, T* __restrict__ out,
                                int64_t n, int64_t C) {
  const int64_t total = n * C;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / C, c = i - r * C;
    out[i] = table[(int64_t)ids[r] * C + c];
  }
}

// One block per table row v: its positions perm[offsets[v] .. offsets[v+1])
// (increasing) added one after another into the row, threads over columns.
template <class T>
__global__ void embedding_bwd_grouped(const T* __restrict__ dout, const int32_t* __restrict__ perm,
                                      const int32_t* __restrict__ offsets, T* __restrict__ dtable, int64_t V, int64_t C) {
  for (int64_t v = blockIdx.x; v < V; v += gridDim.x) {
    const int32_t a = offsets[v], b = offsets[v + 1];
    if (a == b) continue;
    T* dst = dtable + v * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      T acc = dst[c];
      for (int32_t q = a; q < b; ++q) acc += dout[(int64_t)perm[q] * C + c];
      dst[c] = acc;
    }
  }
}

template <class T>
__global__ void dropout_v1(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mask, int64_t n, float p,
                           T keep, uint64_t seed, uint64_t stream, uint64_t offset) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    T m = vm::philox_uniform(seed, stream, offset + (uint64_t)i) >= p ? keep : T(0);
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

// Thread j handles the Philox block b = offset/4 + j: offsets 4b .. 4b+3, the
// elements i = 4b + w − offset inside [0, n). Same uniforms as philox_uniform.
template <class T>
__global__ void dropout_v2(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mask, int64_t n, float p,
                           T keep, uint64_t seed, uint64_t stream, uint64_t offset) {
  const uint64_t b0 = offset >> 2, b_end = (offset + (uint64_t)n + 3) >> 2;
  for (uint64_t b = b0 + blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < b_end;
       b += (uint64_t)gridDim.x * blockDim.x) {
    vm::Philox4 c{{(uint32_t)b, (uint32_t)(b >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
    vm::Philox4 r = vm::philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint64_t o = 4 * b + w;
      if (o < offset || o >= offset + (uint64_t)n) continue;
      const int64_t i = (int64_t)(o - offset);
      const float u = ((float)(r.v[w] >> 9) + 0.5f) * (1.0f / 8388608.0f);  // philox_uniform's formula
      T m = u >= p ? keep : T(0);
      mask[i] = m;
      y[i] = x[i] * m;
    }
  }
}

template <class T>
__global__ void dropout_bwd_k(const T* __restrict__ dy, const T* __restrict__ mask, T* __restrict__ dx, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] += dy[i] * mask[i];
}

}  // namespace

template <class T>
void embedding_fwd(const T* table, const int32_t* ids, T* out, int64_t n, int64_t C) {
  if (n <= 0 || C <= 0) return;
  embedding_fwd_k<<<grid_for(n * C, 256), 256, 0, stream()>>>(table, ids, out, n, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void embedding_bwd(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C) {
  if (n <= 0 || C <= 0 || V <= 0) return;
  DeviceBuffer<int32_t> perm((size_t)n), offsets((size_t)V + 1);
  stable_group_by_key(ids, n, (int32_t)V, perm.data(), offsets.data());
  const int threads = C >= 256 ? 256 : (C >= 128 ? 128 : 64);
  const unsigned grid = (unsigned)std::min<int64_t>(V, 1 << 20);
  embedding_bwd_grouped<<<grid, threads, 0, stream()>>>(dout, perm.data(), offsets.data(), dtable, V, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void dropout_fwd(const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream_id, uint64_t offset,
                 int version) {
  if (!(p >= 0 && p < 1)) throw vm::Error("cuda dropout_fwd: p must be in [0, 1), got " + std::to_string(p));
  if (n <= 0) return;
  const T keep = T(1) / T(1 - p);
  const float pf = (float)p;
  if (version == 1) {
    dropout_v1<<<grid_for(n, 256), 256, 0, stream()>>>(x, y, mask, n, pf, keep, seed, stream_id, offset);
  } else {
    int64_t blocks = (int64_t)(((offset + (uint64_t)n + 3) >> 2) - (offset >> 2));
    dropout_v2<<<grid_for(blocks, 256), 256, 0, stream()>>>(x, y, mask, n, pf, keep, seed, stream_id, offset);
  }
  CUDA_CHECK_LAUNCH();
}

template <class T>
void dropout_fwd(const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream_id, uint64_t offset) {
  dropout_fwd(x, y, mask, n, p, seed, stream_id, offset, 0);
}

template <class T>
void dropout_bwd(const T* dy, const T* mask, T* dx, int64_t n) {
  if (n <= 0) return;
  dropout_bwd_k<<<grid_for(n, 256), 256, 0, stream()>>>(dy, mask, dx, n);
  CUDA_CHECK_LAUNCH();
}

VM_INSTANTIATE_KERNELS(VM_NN_KERNELS)
#define VM_INST(T)                                                                                        \
  template void dropout_fwd<T>(const T*, T*, T*, int64_t, double, uint64_t, uint64_t, uint64_t, int);
VM_INST(float)
VM_INST(double)

}  // namespace vm::kernels::cuda
