// kernels/cuda/moe.cu — router top-K, dispatch/combine, Cholesky pieces, the
// fused S-sample loop of mfvr/fcvr (forward; its backward, which the product
// does not call, is in dev/cuda), closed-form KLs and stochastic selection
// (see moe.h and the table kernels/moe.h).
#include <algorithm>
#include <climits>
#include <cmath>

#include "core/philox.h"
#include "core/cuda/device.cuh"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/sort.h"
#include "kernels/cuda/vr_sample.cuh"

namespace vm::kernels::cuda {
using namespace detail;

namespace {

constexpr int kMaxTopkE = 2048;  // experts per row for the warp top-K (64-bit taken mask per lane)
constexpr int kMaxK = 16;

void check_ek(int E, int K, const char* op) {
  if (E < 1 || E > kMaxTopkE) throw vm::Error(std::string(op) + ": E = " + std::to_string(E) + " outside [1, 2048]");
  if (K < 1 || K > E || K > kMaxK)
    throw vm::Error(std::string(op) + ": K = " + std::to_string(K) + " outside [1, min(E, 16)]");
}

// K rounds of warp argmax over vals[0..E) (ties to the lower index; −inf and
// equal values handled by the (value, index) order; NaN ranks as −inf,
// topk_key: a raw NaN compares false both ways, so lanes could disagree on
// the winner and the lane that owns it would not mark it taken — one expert
// picked twice). Every lane returns; lane j of the warp gets nothing special
// — the caller writes from lane 0. idx_out/val_out: K entries each, written
// by lane 0; val_out holds the values themselves (NaN stays NaN).
template <class T>
__device__ void warp_topk(const T* vals, int E, int K, int32_t* idx_out, T* val_out) {
  const int lane = threadIdx.x & 31;
  uint64_t taken = 0;
  for (int j = 0; j < K; ++j) {
    T bv = T(0);
    int bi = INT_MAX;
    for (int k = 0, e = lane; e < E; ++k, e += 32) {
      if ((taken >> k) & 1) continue;
      T v = topk_key(vals[e]);
      if (bi == INT_MAX || v > bv) {  // e increases: strict > keeps the lower index on ties
        bv = v;
        bi = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      T ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      bool better = oi != INT_MAX && (bi == INT_MAX || ov > bv || (ov == bv && oi < bi));
      if (better) {
        bv = ov;
        bi = oi;
      }
    }
    if (bi != INT_MAX && (bi & 31) == lane) taken |= 1ull << (bi >> 5);
    if (lane == 0) {
      idx_out[j] = bi;
      val_out[j] = vals[bi];  // bi < E: K <= E (check_ek), so every round finds one
    }
  }
}

// gates_j = v_j / Σ_i v_i (sum in j order from 0, as ops::sum then ops::div); lane 0.
template <class T>
__device__ __forceinline__ void renormalise(const T* v, T* gates, int K) {
  T s = T(0);
  for (int j = 0; j < K; ++j) s += v[j];
  for (int j = 0; j < K; ++j) gates[j] = v[j] / s;
}

// ---- router --------------------------------------------------------------------------------
// One warp per row; 4 warps per block; shared: K values per warp.
template <class T>
__global__ void topk_gates_k(const T* __restrict__ probs, int32_t* __restrict__ experts, T* __restrict__ gates,
                             int64_t N, int E, int K) {
  __shared__ T topv[4][kMaxK];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = (int64_t)blockIdx.x * 4 + warp;
  if (n >= N) return;
  warp_topk(probs + n * E, E, K, experts + n * K, topv[warp]);
  __syncwarp();
  if (lane == 0) renormalise(topv[warp], gates + n * K, K);
}

template <class T>
__global__ void topk_gates_bwd_k(const T* __restrict__ probs, const int32_t* __restrict__ experts,
                                 const T* __restrict__ dgates, T* __restrict__ dprobs, int64_t N, int E, int K) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    const int32_t* ex = experts + n * K;
    const T* dg = dgates + n * K;
    const T* pr = probs + n * E;
    T S = T(0);
    for (int j = 0; j < K; ++j) S += pr[ex[j]];
    T dS = T(0);  // ∂/∂S of Σ_j dg_j p_j / S
    for (int j = 0; j < K; ++j) dS += -dg[j] * pr[ex[j]] / (S * S);
    for (int j = 0; j < K; ++j) dprobs[n * E + ex[j]] += dg[j] / S + dS;
  }
}

// ---- dispatch ------------------------------------------------------------------------------------
__global__ void dispatch_keys(const int32_t* __restrict__ experts, const uint8_t* __restrict__ mask, int64_t NK, int K,
                              int32_t* __restrict__ keys) {
  for (int64_t s = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; s < NK; s += (int64_t)gridDim.x * blockDim.x)
    keys[s] = (!mask || mask[s / K]) ? experts[s] : -1;
}

__global__ void dispatch_finalize(const uint8_t* __restrict__ mask, int64_t N, int K, int E, double cf,
                                  const int32_t* __restrict__ goff, int64_t* __restrict__ offsets,
                                  int64_t* __restrict__ counts, int64_t* __restrict__ wanted,
                                  int64_t* __restrict__ dropped) {
  long long r = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) r += (!mask || mask[n]) ? 1 : 0;
  r = block_sum(r);
  if (threadIdx.x != 0) return;
  const int64_t n_real = r;
  const int64_t cap = cf > 0 ? (int64_t)ceil(cf * (double)(n_real * K) / E) : INT64_MAX;
  int64_t off = 0, drop = 0;
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    int64_t w = goff[e + 1] - goff[e];
    int64_t c = min(w, cap);
    wanted[e] = w;
    counts[e] = c;
    off += c;
    offsets[e + 1] = off;
    drop += w - c;
  }
  dropped[0] = drop;
}

__global__ void dispatch_place(const int32_t* __restrict__ experts, const int32_t* __restrict__ perm,
                               const int32_t* __restrict__ goff, const int64_t* __restrict__ offsets,
                               const int64_t* __restrict__ counts, int64_t NK, int K, int E, int32_t* __restrict__ token,
                               int32_t* __restrict__ slot, int32_t* __restrict__ pos_of_slot) {
  const int32_t included = goff[E];
  for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < NK; q += (int64_t)gridDim.x * blockDim.x) {
    const int32_t s = perm[q];
    int32_t pos = -1;
    if (q < included) {
      const int e = experts[s];
      const int64_t r = q - goff[e];
      if (r < counts[e]) {
        pos = (int32_t)(offsets[e] + r);
        token[pos] = s / K;
        slot[pos] = s;
      }
    }
    pos_of_slot[s] = pos;
  }
}

// Positions of token n's kept slots, ascending (insertion sort, K <= 16).
__device__ __forceinline__ int sorted_positions(const int32_t* __restrict__ pos_of_slot, int64_t n, int K, int32_t* pos,
                                                int32_t* slots) {
  int cnt = 0;
  for (int j = 0; j < K; ++j) {
    int32_t p = pos_of_slot[n * K + j];
    if (p < 0) continue;
    int i = cnt++;
    while (i > 0 && pos[i - 1] > p) {
      pos[i] = pos[i - 1];
      slots[i] = slots[i - 1];
      --i;
    }
    pos[i] = p;
    slots[i] = (int32_t)(n * K + j);
  }
  return cnt;
}

template <class T>
__global__ void gather_rows_k(const T* __restrict__ x, const int32_t* __restrict__ rows, T* __restrict__ out, int64_t M,
                              int64_t C) {
  const int64_t total = M * C;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t m = i / C, c = i - m * C;
    out[i] = x[(int64_t)rows[m] * C + c];
  }
}

// One block per token: gather-backward (gates == nullptr: dx += Σ dxs[pos])
// or combine (out = Σ ys[pos] · gates[slot], products rounded first).
template <class T>
__global__ void token_sum_k(const T* __restrict__ src, const T* __restrict__ gates, const int32_t* __restrict__ pos_of_slot,
                            T* __restrict__ dst, int64_t N, int K, int64_t C) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    int32_t pos[kMaxK], slots[kMaxK];
    const int cnt = sorted_positions(pos_of_slot, n, K, pos, slots);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      if (gates) {
        T acc = T(0);
        for (int i = 0; i < cnt; ++i) acc = add_rn(acc, mul_rn(src[(int64_t)pos[i] * C + c], gates[slots[i]]));
        dst[n * C + c] = acc;
      } else {
        T acc = dst[n * C + c];
        for (int i = 0; i < cnt; ++i) acc = add_rn(acc, src[(int64_t)pos[i] * C + c]);
        dst[n * C + c] = acc;
      }
    }
  }
}

// One warp per kept row m.
template <class T>
__global__ void combine_bwd_k(const T* __restrict__ ys, const T* __restrict__ gates, const int32_t* __restrict__ token,
                              const int32_t* __restrict__ slot, const T* __restrict__ dout, T* __restrict__ dys,
                              T* __restrict__ dgates, int64_t M, int64_t C) {
  const int lane = threadIdx.x & 31;
  const int64_t m = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (m >= M) return;
  const T* d = dout + (int64_t)token[m] * C;
  const T g = gates[slot[m]];
  T dot = T(0);
  for (int64_t c = lane; c < C; c += 32) {
    if (dys) dys[m * C + c] += d[c] * g;
    dot += d[c] * ys[m * C + c];
  }
  dot = warp_sum(dot);
  if (dgates && lane == 0) dgates[slot[m]] += dot;
}

// ---- Cholesky pieces -----------------------------------------------------------------------------------
template <class T>
__global__ void fill_tril_fwd_k(const T* __restrict__ v, T* __restrict__ L, int64_t N, int E) {
  const int64_t EE = (int64_t)E * E, P = (int64_t)E * (E + 1) / 2, total = N * EE;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = idx / EE, r = idx - n * EE;
    int i = (int)(r / E), j = (int)(r - (int64_t)i * E);
    T out = T(0);
    if (j <= i) {
      T x = v[n * P + (int64_t)i * (i + 1) / 2 + j];
      out = i == j ? vexp(x) : x;
    }
    L[idx] = out;
  }
}

template <class T>
__global__ void fill_tril_bwd_k(const T* __restrict__ L, const T* __restrict__ dL, T* __restrict__ dv, int64_t N, int E) {
  const int64_t EE = (int64_t)E * E, P = (int64_t)E * (E + 1) / 2, total = N * EE;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = idx / EE, r = idx - n * EE;
    int i = (int)(r / E), j = (int)(r - (int64_t)i * E);
    if (j > i) continue;
    dv[n * P + (int64_t)i * (i + 1) / 2 + j] += i == j ? dL[idx] * L[idx] : dL[idx];
  }
}

template <class T>
__global__ void tril_matvec_fwd_k(const T* __restrict__ L, const T* __restrict__ eps, T* __restrict__ out, int64_t N, int E) {
  const int64_t total = N * E;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = idx / E;
    int i = (int)(idx - n * E);
    const T* Li = L + idx * E;  // row i of L_n
    const T* en = eps + n * E;
    T s = T(0);
    for (int j = 0; j <= i; ++j) s += Li[j] * en[j];
    out[idx] = s;
  }
}

template <class T>
__global__ void tril_matvec_bwd_dL_k(const T* __restrict__ eps, const T* __restrict__ g, T* __restrict__ dL, int64_t N, int E) {
  const int64_t EE = (int64_t)E * E, total = N * EE;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = idx / EE, r = idx - n * EE;
    int i = (int)(r / E), j = (int)(r - (int64_t)i * E);
    if (j <= i) dL[idx] += g[n * E + i] * eps[n * E + j];
  }
}

template <class T>
__global__ void tril_matvec_bwd_deps_k(const T* __restrict__ L, const T* __restrict__ g, T* __restrict__ deps, int64_t N, int E) {
  const int64_t total = N * E;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = idx / E;
    int j = (int)(idx - n * E);
    T acc = deps[idx];
    for (int i = j; i < E; ++i) acc += L[(n * E + i) * E + j] * g[n * E + i];  // i ascending, as the CPU
    deps[idx] = acc;
  }
}

// ---- fused S-sample loop (vr_sample: kernels/cuda/vr_sample.cuh) ----------------------------------
template <class T, bool FC>
__global__ void vr_fwd_k(const T* __restrict__ mean, const T* __restrict__ scale, int64_t N, int E, int S, uint64_t seed,
                         uint64_t stream, int K, T* __restrict__ pbar, int32_t* __restrict__ experts, T* __restrict__ gates) {
  extern __shared__ __align__(16) unsigned char vr_smem[];
  T* eps = reinterpret_cast<T*>(vr_smem);
  T* p = eps + E;
  T* acc = p + E;
  __shared__ T topv[kMaxK];
  const int lane = threadIdx.x;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* mu = mean + n * E;
    for (int e = lane; e < E; e += 32) acc[e] = T(0);
    for (int s = 0; s < S; ++s) {
      vr_sample<T, FC>(mu, scale, n, S, E, s, seed, stream, eps, p);
      for (int e = lane; e < E; e += 32) acc[e] += p[e];  // Σ_s in sample order
      __syncwarp();
    }
    const T invS = (T)(1.0 / (double)S);
    for (int e = lane; e < E; e += 32) {
      T v = S == 1 ? acc[e] : acc[e] * invS;
      acc[e] = v;
      pbar[n * E + e] = v;
    }
    __syncwarp();
    if (experts) {
      warp_topk(acc, E, K, experts + n * K, topv);
      __syncwarp();
      if (lane == 0 && gates) renormalise(topv, gates + n * K, K);
    }
    __syncwarp();
  }
}

// ---- KL ---------------------------------------------------------------------------------------------------
template <class T>
__global__ void kl_mf_fwd_k(const T* __restrict__ dmu, const T* __restrict__ lv, T* __restrict__ kl, int64_t N, int E,
                            T inv_s2, T c0) {
  const int lane = threadIdx.x & 31;
  const int64_t n = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (n >= N) return;
  T t = T(0);
  for (int e = lane; e < E; e += 32) {
    T d = dmu[n * E + e], l = lv[n * E + e];
    t += (vexp(l) + d * d) * inv_s2 - l;
  }
  t = warp_sum(t);
  if (lane == 0) kl[n] = (t + c0) * T(0.5);
}

template <class T>
__global__ void kl_mf_bwd_k(const T* __restrict__ dmu, const T* __restrict__ lv, const T* __restrict__ dkl,
                            T* __restrict__ ddmu, T* __restrict__ dlv, int64_t N, int E, T inv_s2) {
  const int64_t total = N * E;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const T h = dkl[i / E] * T(0.5), gi = h * inv_s2;
    if (ddmu) ddmu[i] += T(2) * gi * dmu[i];
    if (dlv) dlv[i] += gi * vexp(lv[i]) - h;
  }
}

template <class T>
__global__ void kl_fc_fwd_k(const T* __restrict__ dmu, const T* __restrict__ L, T* __restrict__ kl, int64_t N, int E,
                            T inv_s2, T c0) {
  const int lane = threadIdx.x & 31;
  const int64_t n = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (n >= N) return;
  const T* Ln = L + n * (int64_t)E * E;
  T tr = T(0), sq = T(0), ld = T(0);
  for (int i = lane; i < E * E; i += 32) tr += Ln[i] * Ln[i];
  for (int e = lane; e < E; e += 32) {
    T d = dmu[n * E + e];
    sq += d * d;
    ld += vlog(Ln[(int64_t)e * E + e]);
  }
  tr = warp_sum(tr);
  sq = warp_sum(sq);
  ld = warp_sum(ld);
  if (lane == 0) kl[n] = ((tr + sq) * inv_s2 - T(2) * ld + c0) * T(0.5);
}

template <class T>
__global__ void kl_fc_bwd_k(const T* __restrict__ dmu, const T* __restrict__ L, const T* __restrict__ dkl,
                            T* __restrict__ ddmu, T* __restrict__ dL, int64_t N, int E, T inv_s2) {
  const int64_t EE = (int64_t)E * E, total = N * EE;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = idx / EE, r = idx - n * EE;
    const int i = (int)(r / E), j = (int)(r - (int64_t)i * E);
    const T h = dkl[n] * T(0.5), gi = h * inv_s2;
    if (dL) {
      T d = T(2) * gi * L[idx];
      if (i == j) d += -T(2) * h / L[idx];
      dL[idx] += d;
    }
    if (ddmu && j == 0) ddmu[n * E + i] += T(2) * gi * dmu[n * E + i];
  }
}

// ---- selection -----------------------------------------------------------------------------------------------
__global__ void gumbel_topk_k(const float* __restrict__ z, int64_t N, int E, int K, uint64_t seed, uint64_t stream,
                              int32_t* __restrict__ out, int64_t row0) {
  extern __shared__ __align__(16) unsigned char gk_smem[];
  float* key = reinterpret_cast<float*>(gk_smem);
  __shared__ float topv[kMaxK];
  const int lane = threadIdx.x;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    for (int e = lane; e < E; e += 32)
      key[e] = z[n * E + e] + vm::philox_gumbel(seed, stream, (uint64_t)((row0 + n) * E + e));
    __syncwarp();
    warp_topk(key, E, K, out + n * K, topv);
    __syncwarp();
  }
}

__global__ void sequential_sample_k(const float* __restrict__ z, int64_t N, int E, int K, uint64_t seed,
                                    uint64_t stream, int32_t* __restrict__ out, int64_t row0) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    const float* zr = z + n * E;
    uint32_t taken[kMaxTopkE / 32];
    for (int w = 0; w < (E + 31) / 32; ++w) taken[w] = 0;
    for (int j = 0; j < K; ++j) {
      float mx = -INFINITY;
      for (int e = 0; e < E; ++e)
        if (!((taken[e >> 5] >> (e & 31)) & 1)) mx = fmaxf(mx, zr[e]);
      double total = 0;
      for (int e = 0; e < E; ++e)
        total += ((taken[e >> 5] >> (e & 31)) & 1) ? 0.0 : ::exp((double)zr[e] - mx);
      double u = vm::philox_uniform(seed, stream, (uint64_t)((row0 + n) * E + j)) * total;
      int pick = -1;
      for (int e = 0; e < E; ++e) {
        double w = ((taken[e >> 5] >> (e & 31)) & 1) ? 0.0 : ::exp((double)zr[e] - mx);
        if (w <= 0) continue;
        pick = e;  // last positive weight catches rounding at the top end
        if (u < w) break;
        u -= w;
      }
      out[n * K + j] = pick;
      if (pick >= 0) taken[pick >> 5] |= 1u << (pick & 31);
    }
  }
}

unsigned blocks_for_rows(int64_t N, int64_t cap = 1 << 20) { return (unsigned)std::max<int64_t>(1, std::min(N, cap)); }

}  // namespace

// ---- entry points ---------------------------------------------------------------------------------------------------
template <class T>
void topk_gates(const T* probs, int32_t* experts, T* gates, int64_t N, int E, int K) {
  check_ek(E, K, "cuda topk_gates");
  if (N <= 0) return;
  topk_gates_k<<<(unsigned)((N + 3) / 4), 128, 0, stream()>>>(probs, experts, gates, N, E, K);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void topk_gates_bwd(const T* probs, const int32_t* experts, const T* dgates, T* dprobs, int64_t N, int E, int K) {
  if (N <= 0) return;
  topk_gates_bwd_k<<<grid_for(N, 128), 128, 0, stream()>>>(probs, experts, dgates, dprobs, N, E, K);
  CUDA_CHECK_LAUNCH();
}

void moe_dispatch_plan(const int32_t* experts, const uint8_t* mask, int64_t N, int K, int E, double capacity_factor,
                       int32_t* token, int32_t* slot, int32_t* pos_of_slot, int64_t* offsets, int64_t* counts,
                       int64_t* wanted, int64_t* dropped) {
  if (E < 1 || K < 1) throw vm::Error("cuda moe_dispatch_plan: E and K must be >= 1");
  const int64_t NK = N * K;
  DeviceBuffer<int32_t> keys((size_t)std::max<int64_t>(NK, 1)), perm((size_t)std::max<int64_t>(NK, 1)),
      goff((size_t)E + 1);
  if (NK > 0) {
    dispatch_keys<<<grid_for(NK, 256), 256, 0, stream()>>>(experts, mask, NK, K, keys.data());
    CUDA_CHECK_LAUNCH();
  }
  stable_group_by_key(keys.data(), NK, E, perm.data(), goff.data());
  dispatch_finalize<<<1, 1024, 0, stream()>>>(mask, N, K, E, capacity_factor, goff.data(), offsets, counts, wanted,
                                              dropped);
  CUDA_CHECK_LAUNCH();
  if (NK > 0) {
    dispatch_place<<<grid_for(NK, 256), 256, 0, stream()>>>(experts, perm.data(), goff.data(), offsets, counts, NK, K, E,
                                                            token, slot, pos_of_slot);
    CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void moe_gather(const T* x, const int32_t* token, T* xs, int64_t M, int64_t C) {
  if (M <= 0 || C <= 0) return;
  gather_rows_k<<<grid_for(M * C, 256), 256, 0, stream()>>>(x, token, xs, M, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void moe_gather_bwd(const T* dxs, const int32_t* pos_of_slot, T* dx, int64_t N, int K, int64_t C) {
  if (K > kMaxK) throw vm::Error("cuda moe_gather_bwd: K > 16");
  if (N <= 0 || C <= 0) return;
  const int threads = C >= 256 ? 256 : 128;
  token_sum_k<<<blocks_for_rows(N), threads, 0, stream()>>>(dxs, (const T*)nullptr, pos_of_slot, dx, N, K, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void moe_combine(const T* ys, const T* gates, const int32_t* pos_of_slot, T* out, int64_t N, int K, int64_t C) {
  if (K > kMaxK) throw vm::Error("cuda moe_combine: K > 16");
  if (N <= 0 || C <= 0) return;
  const int threads = C >= 256 ? 256 : 128;
  token_sum_k<<<blocks_for_rows(N), threads, 0, stream()>>>(ys, gates, pos_of_slot, out, N, K, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void moe_combine_bwd(const T* ys, const T* gates, const int32_t* token, const int32_t* slot, const T* dout, T* dys,
                     T* dgates, int64_t M, int64_t C) {
  if (M <= 0) return;
  combine_bwd_k<<<(unsigned)((M + 7) / 8), 256, 0, stream()>>>(ys, gates, token, slot, dout, dys, dgates, M, C);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void fill_tril_expdiag_fwd(const T* v, T* L, int64_t N, int E) {
  if (N <= 0 || E <= 0) return;
  fill_tril_fwd_k<<<grid_for(N * E * E, 256), 256, 0, stream()>>>(v, L, N, E);
  CUDA_CHECK_LAUNCH();
}
template <class T>
void fill_tril_expdiag_bwd(const T* L, const T* dL, T* dv, int64_t N, int E) {
  if (N <= 0 || E <= 0) return;
  fill_tril_bwd_k<<<grid_for(N * E * E, 256), 256, 0, stream()>>>(L, dL, dv, N, E);
  CUDA_CHECK_LAUNCH();
}
template <class T>
void tril_matvec_fwd(const T* L, const T* eps, T* out, int64_t N, int E) {
  if (N <= 0 || E <= 0) return;
  tril_matvec_fwd_k<<<grid_for(N * E, 128), 128, 0, stream()>>>(L, eps, out, N, E);
  CUDA_CHECK_LAUNCH();
}
template <class T>
void tril_matvec_bwd(const T* L, const T* eps, const T* g, T* dL, T* deps, int64_t N, int E) {
  if (N <= 0 || E <= 0) return;
  if (dL) {
    tril_matvec_bwd_dL_k<<<grid_for(N * E * E, 256), 256, 0, stream()>>>(eps, g, dL, N, E);
    CUDA_CHECK_LAUNCH();
  }
  if (deps) {
    tril_matvec_bwd_deps_k<<<grid_for(N * E, 128), 128, 0, stream()>>>(L, g, deps, N, E);
    CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void vr_route_fwd(const T* mean, const T* scale, int64_t N, int E, int S, bool full_cov, uint64_t seed,
                  uint64_t stream_id, int K, T* pbar, int32_t* experts, T* gates) {
  if (experts) check_ek(E, K, "cuda vr_route_fwd");
  if (S < 1) throw vm::Error("cuda vr_route_fwd: S must be >= 1");
  if (N <= 0) return;
  // eps, p and the sample sum per row in dynamic shared memory (+ the static top-K values):
  // past 48 KB in all the kernel opts in to more, up to the device's limit per block.
  const size_t smem = 3 * (size_t)E * sizeof(T);
  const std::string what = "cuda vr_route_fwd (E = " + std::to_string(E) + ", " + (sizeof(T) == 4 ? "float" : "double") + ")";
  if (full_cov) {
    prepare_dynamic_smem(vr_fwd_k<T, true>, smem, what);
    vr_fwd_k<T, true><<<blocks_for_rows(N), 32, smem, stream()>>>(mean, scale, N, E, S, seed, stream_id, K, pbar, experts, gates);
  } else {
    prepare_dynamic_smem(vr_fwd_k<T, false>, smem, what);
    vr_fwd_k<T, false><<<blocks_for_rows(N), 32, smem, stream()>>>(mean, scale, N, E, S, seed, stream_id, K, pbar, experts, gates);
  }
  CUDA_CHECK_LAUNCH();
}

template <class T>
void kl_mf_fwd(const T* dmu, const T* logvar, T* kl, int64_t N, int E, double s2) {
  if (N <= 0) return;
  const T inv = (T)(1.0 / s2), c0 = (T)((double)E * (std::log(s2) - 1.0));
  kl_mf_fwd_k<<<(unsigned)((N + 7) / 8), 256, 0, stream()>>>(dmu, logvar, kl, N, E, inv, c0);
  CUDA_CHECK_LAUNCH();
}
template <class T>
void kl_mf_bwd(const T* dmu, const T* logvar, const T* dkl, T* ddmu, T* dlogvar, int64_t N, int E, double s2) {
  if (N <= 0 || E <= 0) return;
  kl_mf_bwd_k<<<grid_for(N * E, 256), 256, 0, stream()>>>(dmu, logvar, dkl, ddmu, dlogvar, N, E, (T)(1.0 / s2));
  CUDA_CHECK_LAUNCH();
}
template <class T>
void kl_fc_fwd(const T* dmu, const T* L, T* kl, int64_t N, int E, double s2) {
  if (N <= 0) return;
  const T inv = (T)(1.0 / s2), c0 = (T)((double)E * (std::log(s2) - 1.0));
  kl_fc_fwd_k<<<(unsigned)((N + 7) / 8), 256, 0, stream()>>>(dmu, L, kl, N, E, inv, c0);
  CUDA_CHECK_LAUNCH();
}
template <class T>
void kl_fc_bwd(const T* dmu, const T* L, const T* dkl, T* ddmu, T* dL, int64_t N, int E, double s2) {
  if (N <= 0 || E <= 0) return;
  kl_fc_bwd_k<<<grid_for(N * E * E, 256), 256, 0, stream()>>>(dmu, L, dkl, ddmu, dL, N, E, (T)(1.0 / s2));
  CUDA_CHECK_LAUNCH();
}
void gumbel_topk(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream_id, int32_t* out,
                 int64_t row0) {
  check_ek(E, K, "cuda gumbel_topk");
  if (N <= 0) return;
  gumbel_topk_k<<<blocks_for_rows(N), 32, (size_t)E * sizeof(float), stream()>>>(z, N, E, K, seed, stream_id, out,
                                                                                  row0);
  CUDA_CHECK_LAUNCH();
}

void sequential_sample(const float* z, int64_t N, int E, int K, uint64_t seed, uint64_t stream_id, int32_t* out,
                       int64_t row0) {
  check_ek(E, K, "cuda sequential_sample");
  if (N <= 0) return;
  sequential_sample_k<<<grid_for(N, 64), 64, 0, stream()>>>(z, N, E, K, seed, stream_id, out, row0);
  CUDA_CHECK_LAUNCH();
}

VM_INSTANTIATE_KERNELS(VM_MOE_KERNELS)
#define VM_INST(T)                                                                                               \
  template void vr_route_fwd<T>(const T*, const T*, int64_t, int, int, bool, uint64_t, uint64_t, int, T*,        \
                                int32_t*, T*);
VM_INST(float)
VM_INST(double)

}  // namespace vm::kernels::cuda
