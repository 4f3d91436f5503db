// kernels/cpu/nn.cpp — embedding and dropout on the CPU (the table:
// kernels/nn.h). Row copies and mask draws split across the OpenMP pool; the
// scatter-add of the embedding backward runs in position order.
#include <algorithm>
#include <cstring>

#include "core/philox.h"
#include "kernels/nn.h"

namespace vm::kernels {

template <class T>
void embedding_fwd(const T* table, const int32_t* ids, T* out, int64_t n, int64_t C) {
#pragma omp parallel for schedule(static) if (n * C > 32768)
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * C, table + (int64_t)ids[i] * C, sizeof(T) * C);
}

template <class T>
void embedding_bwd(const T* dout, const int32_t* ids, T* dtable, int64_t n, int64_t V, int64_t C) {
  for (int64_t i = 0; i < n; ++i) {  // in position order: deterministic; repeated ids accumulate
    if (ids[i] < 0 || ids[i] >= V) continue;
    T* dst = dtable + (int64_t)ids[i] * C;
    const T* src = dout + i * C;
    for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
  }
}

template <class T>
void dropout_fwd(const T* x, T* y, T* mask, int64_t n, double p, uint64_t seed, uint64_t stream, uint64_t offset) {
  const T keep = T(1) / T(1 - p);
  const int64_t chunk = 4096;  // uniforms drawn in bulk (philox_uniforms: the same bits as philox_uniform)
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    float u[chunk];
    const int64_t m = std::min(chunk, n - c0);
    philox_uniforms(seed, stream, offset + (uint64_t)c0, (uint64_t)m, u);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t i = c0 + j;
      mask[i] = u[j] >= (float)p ? keep : T(0);
      y[i] = x[i] * mask[i];
    }
  }
}

template <class T>
void dropout_bwd(const T* dy, const T* mask, T* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * mask[i];
}

VM_INSTANTIATE_KERNELS(VM_NN_KERNELS)

}  // namespace vm::kernels
