#include "nn/routers/selection.h"

#include <algorithm>
#include <numeric>

#include "kernels/moe.h"  // topk_key

#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/moe.h"
#endif

namespace vm::nn::routers {

void gumbel_topk(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out, int64_t row0) {
#pragma omp parallel for schedule(static) if (N * E > 16384)
  for (int64_t n = 0; n < N; ++n) {
    std::vector<float> key((size_t)E);
    for (int e = 0; e < E; ++e) key[e] = z[n * E + e] + philox_gumbel(seed, stream, (uint64_t)((row0 + n) * E + e));
    std::vector<int32_t> order((size_t)E);
    std::iota(order.begin(), order.end(), 0);
    for (float& k : key) k = kernels::topk_key(k);  // NaN ranks as −inf, as on the GPU
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int32_t a, int32_t b) { return key[a] > key[b] || (key[a] == key[b] && a < b); });
    std::copy(order.begin(), order.begin() + K, out + n * K);
  }
}

void sequential_sample(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream, int32_t* out,
                       int64_t row0) {
#pragma omp parallel for schedule(static) if (N * E > 16384)
  for (int64_t n = 0; n < N; ++n) {
    const float* zr = z + n * E;
    std::vector<double> w((size_t)E);
    std::vector<char> taken((size_t)E, 0);
    for (int j = 0; j < K; ++j) {
      // Weights relative to the largest *remaining* z: that one has weight 1,
      // so total >= 1 even when every other weight underflows (T -> 0); with
      // the max over all E, the remaining weights could all be 0 after the
      // first draw and `pick` stayed -1 (out-of-bounds write w[-1]).
      float mx = -INFINITY;
      for (int e = 0; e < E; ++e)
        if (!taken[e]) mx = std::max(mx, zr[e]);
      double total = 0;
      for (int e = 0; e < E; ++e) {
        w[e] = taken[e] ? 0.0 : std::exp((double)zr[e] - mx);
        total += w[e];
      }
      double u = philox_uniform(seed, stream, (uint64_t)((row0 + n) * E + j)) * total;
      int pick = -1;
      for (int e = 0; e < E; ++e) {
        if (w[e] <= 0) continue;
        pick = e;  // last positive weight catches rounding at the top end
        if (u < w[e]) break;
        u -= w[e];
      }
      out[n * K + j] = pick;
      taken[pick] = 1;  // without replacement
    }
  }
}

Indices select_k(const Tensor& z, int K, bool authors, uint64_t seed, uint64_t stream, int64_t row0) {
  VM_CHECK(z.ndim() == 2, "select_k: z must be (N, E), got " + shape_str(z.shape()));
  int64_t N = z.size(0);
  int E = (int)z.size(1);
  std::vector<int32_t> out((size_t)(N * K));
#ifdef VMOER_HAVE_CUDA
  if (z.is_cuda() && E <= 2048 && K <= 16) {  // the kernels' limits; beyond them, a host copy below
    TensorT<int32_t> dev({N, (int64_t)K}, Device::CUDA, false);
    if (N > 0) {
      if (authors) kernels::cuda::sequential_sample(z.data(), N, E, K, seed, stream, dev.data(), row0);
      else kernels::cuda::gumbel_topk(z.data(), N, E, K, seed, stream, dev.data(), row0);
    }
    return Indices(dev);
  }
#endif
  const Tensor zh = z.to(Device::CPU);
  if (authors) sequential_sample(zh.data(), N, E, K, seed, stream, out.data(), row0);
  else gumbel_topk(zh.data(), N, E, K, seed, stream, out.data(), row0);
  return out;
}

}  // namespace vm::nn::routers
