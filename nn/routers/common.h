// nn/routers/common.h — pieces shared by the stochastic routers.
#pragma once
#include <algorithm>
#include <vector>

#include "core/philox.h"
#include "nn/router.h"

namespace vm::nn::routers {

// Σ_n mask[n] · v[n] for a per-token vector v: (N) -> ()
inline Var masked_sum(const Var& v, const std::vector<uint8_t>& mask) {
  int64_t N = v.numel();
  Tensor m({1, N});
  for (int64_t n = 0; n < N; ++n) m[n] = mask[n] ? 1.0f : 0.0f;
  return ops::sum_all(ops::mul(ops::reshape(v, {1, N}), ops::constant(m.to(v.value().device()))));
}

// n standard normals at counters [first, first + n) of one stream into out.
inline void fill_normals(float* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t first) {
  const int64_t chunk = 4096;  // chunks filled in parallel (philox_normal(i) does not depend on the chunking)
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c)
    philox_normals(seed, stream, first + (uint64_t)(c * chunk), (uint64_t)std::min(chunk, n - c * chunk), out + c * chunk);
}

// A constant (rows, cols) tensor of i.i.d. standard normals from one stream,
// element i at counter first + i.
inline Tensor normals(int64_t rows, int64_t cols, uint64_t seed, uint64_t stream, uint64_t first = 0) {
  Tensor t = Tensor::empty({rows, cols});
  fill_normals(t.data(), t.numel(), seed, stream, first);
  return t;
}

// (S·N, cols) normals for S samples of N rows, sample-major as the graph
// stacks them: row s·N + n holds sample s of row g = row0 + n of the batch
// (the rows [row0, row0 + N) of a shard: RouteCtx::row0), the normals at
// counters philox_sample_counter(g, S, s, cols) + [0, cols) (core/philox.h):
// one token's S·cols normals are one contiguous block of the stream, so the
// evaluation loop draws them in one vectorised call. (Issue 20; before,
// sample s of row g sat at (s·R + g)·cols, R the batch's rows. S = 1 is
// unchanged: row g at g·cols.)
inline Tensor sample_normals(int S, int64_t N, int64_t cols, uint64_t seed, uint64_t stream, int64_t row0) {
  Tensor t = Tensor::empty({(int64_t)S * N, cols});
  if (S == 1) {
    fill_normals(t.data(), N * cols, seed, stream, philox_sample_counter(row0, 1, 0, cols));
    return t;
  }
  const int64_t blk = S * cols;  // one token's normals
#pragma omp parallel if (N * blk > 65536)
  {
    std::vector<float> tok((size_t)blk);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      philox_normals(seed, stream, philox_sample_counter(row0 + n, S, 0, cols), (uint64_t)blk, tok.data());
      for (int s = 0; s < S; ++s)
        std::copy(tok.data() + s * cols, tok.data() + (s + 1) * cols, t.data() + ((int64_t)s * N + n) * cols);
    }
  }
  return t;
}
inline Tensor gumbels(int64_t rows, int64_t cols, uint64_t seed, uint64_t stream) {
  Tensor t({rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = philox_gumbel(seed, stream, (uint64_t)i);
  return t;
}

// Mean over S stacked samples: x (S*N, E) -> (N, E)
inline Var mean_over_samples(const Var& x, int S, int64_t N) {
  if (S == 1) return x;
  int64_t E = x.size(1);
  return ops::mean(ops::reshape(x, {(int64_t)S, N, E}), 0);
}

// Repeat x (N, E) S times along rows -> (S*N, E), as a differentiable op.
inline Var tile_rows(const Var& x, int S) {
  if (S == 1) return x;
  std::vector<Var> xs((size_t)S, x);
  return ops::concat(xs, 0);
}

// Row-wise entropy-free helpers for diagnostics.
inline std::vector<float> row_sums(const Tensor& x) {
  int64_t N = x.size(0), E = x.size(1);
  std::vector<float> s((size_t)N, 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) s[n] += x[n * E + e];
  return s;
}

}  // namespace vm::nn::routers
