// kernels/cuda/rowwise.cu — softmax family, norms, cross-entropy, attention
// and AdamW on the GPU (see rowwise.h). The formulas follow
// kernels/cpu/rowwise.cpp term by term; only the order of the row sums
// differs (a tree instead of a left-to-right loop).
#include <algorithm>
#include <cmath>

#include "core/cuda/device.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/rowwise.h"
#include "kernels/optim.h"

namespace vm::kernels::cuda {
using namespace detail;

namespace {

struct RowLaunch {
  bool block;
  int threads;
};

RowLaunch pick(int64_t C, Launch l, const char* op) {
  int version = l.version > 0 ? l.version : (C <= 1024 ? 1 : 2);
  if (version != 1 && version != 2) throw vm::Error(std::string(op) + ": unknown launch version");
  int threads = l.block > 0 ? l.block : (version == 1 ? 256 : (C >= 8192 ? 1024 : 512));
  if (threads % 32 || threads > 1024) throw vm::Error(std::string(op) + ": block must be a multiple of 32 <= 1024");
  return {version == 2, threads};
}

#define VM_ROW_LAUNCH(KERNEL, rl, rows, ...)                                                               \
  do {                                                                                                     \
    if ((rl).block)                                                                                        \
      KERNEL<T, true><<<row_grid(rows, true, (rl).threads), (rl).threads, 0, stream()>>>(__VA_ARGS__);   \
    else                                                                                                   \
      KERNEL<T, false><<<row_grid(rows, false, (rl).threads), (rl).threads, 0, stream()>>>(__VA_ARGS__); \
    CUDA_CHECK_LAUNCH();                                                                                   \
  } while (0)

// Online max/sum over a row held by a RowGroup: returns (M, Σ exp(x − M)).
template <class T, bool BLOCK>
__device__ __forceinline__ void row_max_sumexp(const RowGroup<BLOCK>& g, const T* xr, int64_t n, T scale, T& M,
                                               T& S) {
  const T ninf = -vinf<T>();
  T m = ninf, s = T(0);
  for (int64_t c = g.tid; c < n; c += g.size) {
    T v = xr[c] * scale;
    if (v > m) {
      s = (m == ninf ? T(0) : s * vexp(m - v)) + T(1);
      m = v;
    } else if (m != ninf) {
      s += vexp(v - m);
    }
  }
  M = g.max(m);
  s = m == ninf ? T(0) : s * vexp(m - M);
  S = g.sum(s);
}

// ---- softmax / log-softmax --------------------------------------------------------
template <class T, bool BLOCK>
__global__ void softmax_fwd_k(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t C, bool log) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T* xr = x + g.row * C;
  T* yr = y + g.row * C;
  T M, S;
  row_max_sumexp(g, xr, C, T(1), M, S);
  if (log) {
    T lse = M + vlog(S);
    for (int64_t c = g.tid; c < C; c += g.size) yr[c] = xr[c] - lse;
  } else {
    T inv = T(1) / S;
    for (int64_t c = g.tid; c < C; c += g.size) yr[c] = vexp(xr[c] - M) * inv;
  }
}

template <class T, bool BLOCK>
__global__ void softmax_bwd_k(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                              int64_t C, bool log) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T *yr = y + g.row * C, *dyr = dy + g.row * C;
  T* dxr = dx + g.row * C;
  T s = T(0);
  if (log) {
    for (int64_t c = g.tid; c < C; c += g.size) s += dyr[c];
    s = g.sum(s);
    for (int64_t c = g.tid; c < C; c += g.size) dxr[c] += dyr[c] - vexp(yr[c]) * s;
  } else {
    for (int64_t c = g.tid; c < C; c += g.size) s += dyr[c] * yr[c];
    s = g.sum(s);
    for (int64_t c = g.tid; c < C; c += g.size) dxr[c] += yr[c] * (dyr[c] - s);
  }
}

// ---- layernorm / rmsnorm ------------------------------------------------------------------
template <class T, bool BLOCK>
__global__ void layernorm_fwd_k(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                                T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd, int64_t rows,
                                int64_t C, T eps) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T* xr = x + g.row * C;
  T* yr = y + g.row * C;
  T s = T(0);
  for (int64_t c = g.tid; c < C; c += g.size) s += xr[c];
  const T m = g.sum(s) / T(C);
  T v = T(0);
  for (int64_t c = g.tid; c < C; c += g.size) v += (xr[c] - m) * (xr[c] - m);
  v = g.sum(v) / T(C);
  const T rs = T(1) / vsqrt(v + eps);
  if (g.tid == 0) {
    mean[g.row] = m;
    rstd[g.row] = rs;
  }
  for (int64_t c = g.tid; c < C; c += g.size) yr[c] = (xr[c] - m) * rs * gamma[c] + beta[c];
}

template <class T, bool BLOCK>
__global__ void rmsnorm_fwd_k(const T* __restrict__ x, const T* __restrict__ gamma, T* __restrict__ y,
                              T* __restrict__ rstd, int64_t rows, int64_t C, T eps) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T* xr = x + g.row * C;
  T* yr = y + g.row * C;
  T ms = T(0);
  for (int64_t c = g.tid; c < C; c += g.size) ms += xr[c] * xr[c];
  ms = g.sum(ms);
  const T rs = T(1) / vsqrt(ms / T(C) + eps);
  if (g.tid == 0) rstd[g.row] = rs;
  for (int64_t c = g.tid; c < C; c += g.size) yr[c] = xr[c] * rs * gamma[c];
}

// dx part of the norm backward. RMS: mean == nullptr.
template <class T, bool BLOCK>
__global__ void norm_bwd_dx_k(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ mean,
                              const T* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                              int64_t C) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T *xr = x + g.row * C, *dyr = dy + g.row * C;
  T* dxr = dx + g.row * C;
  const T rs = rstd[g.row];
  if (mean) {  // layernorm: dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))
    const T mu = mean[g.row];
    T m1 = T(0), m2 = T(0);
    for (int64_t c = g.tid; c < C; c += g.size) {
      T xh = (xr[c] - mu) * rs;
      T gg = dyr[c] * gamma[c];
      m1 += gg;
      m2 += gg * xh;
    }
    m1 = g.sum(m1) / T(C);
    m2 = g.sum(m2) / T(C);
    for (int64_t c = g.tid; c < C; c += g.size) {
      T xh = (xr[c] - mu) * rs;
      dxr[c] += rs * (dyr[c] * gamma[c] - m1 - xh * m2);
    }
  } else {  // rmsnorm: dx = rstd · (g − x̂ · mean(g ⊙ x̂))
    T m2 = T(0);
    for (int64_t c = g.tid; c < C; c += g.size) m2 += dyr[c] * gamma[c] * xr[c] * rs;
    m2 = g.sum(m2) / T(C);
    for (int64_t c = g.tid; c < C; c += g.size) dxr[c] += rs * (dyr[c] * gamma[c] - xr[c] * rs * m2);
  }
}

// Parameter gradients of the norms: column sums over rows, one thread per
// column, rows split into blockIdx.y chunks. One chunk: added straight into
// dgamma/dbeta in row order (the CPU's order); several: partial sums added
// in chunk order by norm_param_finish. RMS: mean == nullptr, dbeta unused.
template <class T>
__global__ void norm_param_partial(const T* __restrict__ x, const T* __restrict__ mean, const T* __restrict__ rstd,
                                   const T* __restrict__ dy, T* __restrict__ dgamma, T* __restrict__ dbeta,
                                   T* __restrict__ pg, T* __restrict__ pb, int64_t rows, int64_t C, int64_t chunk_len) {
  int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  int64_t r0 = (int64_t)blockIdx.y * chunk_len, r1 = min(rows, r0 + chunk_len);
  const bool direct = gridDim.y == 1;
  T ag = direct && dgamma ? dgamma[c] : T(0);
  T ab = direct && dbeta ? dbeta[c] : T(0);
  for (int64_t r = r0; r < r1; ++r) {
    T d = dy[r * C + c];
    if (dgamma) ag += mean ? d * (x[r * C + c] - mean[r]) * rstd[r] : d * x[r * C + c] * rstd[r];
    if (dbeta) ab += d;
  }
  if (direct) {
    if (dgamma) dgamma[c] = ag;
    if (dbeta) dbeta[c] = ab;
  } else {
    if (dgamma) pg[(int64_t)blockIdx.y * C + c] = ag;
    if (dbeta) pb[(int64_t)blockIdx.y * C + c] = ab;
  }
}

template <class T>
__global__ void norm_param_finish(T* __restrict__ dgamma, T* __restrict__ dbeta, const T* __restrict__ pg,
                                  const T* __restrict__ pb, int64_t C, int chunks) {
  int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  T ag = T(0), ab = T(0);
  for (int k = 0; k < chunks; ++k) {
    if (dgamma) ag += pg[(int64_t)k * C + c];
    if (dbeta) ab += pb[(int64_t)k * C + c];
  }
  if (dgamma) dgamma[c] += ag;
  if (dbeta) dbeta[c] += ab;
}

template <class T>
void norm_param_grads(const T* x, const T* mean, const T* rstd, const T* dy, T* dgamma, T* dbeta, int64_t rows,
                      int64_t C) {
  if (!dgamma && !dbeta) return;
  const int block = 128;
  // ~256k threads in flight, >= 16 rows per chunk
  int64_t want = std::max<int64_t>(1, (int64_t)(1 << 18) / std::max<int64_t>(1, C));
  int64_t chunks = std::min<int64_t>({want, (rows + 15) / 16, 4096});
  chunks = std::max<int64_t>(chunks, 1);
  int64_t chunk_len = (rows + chunks - 1) / chunks;
  chunks = (rows + chunk_len - 1) / chunk_len;
  dim3 grid((unsigned)((C + block - 1) / block), (unsigned)chunks);
  if (chunks == 1) {
    norm_param_partial<<<grid, block, 0, stream()>>>(x, mean, rstd, dy, dgamma, dbeta, (T*)nullptr, (T*)nullptr,
                                                     rows, C, chunk_len);
    CUDA_CHECK_LAUNCH();
    return;
  }
  DeviceBuffer<T> pg(dgamma ? (size_t)(chunks * C) : 0), pb(dbeta ? (size_t)(chunks * C) : 0);
  norm_param_partial<<<grid, block, 0, stream()>>>(x, mean, rstd, dy, dgamma, dbeta, pg.data(), pb.data(), rows, C,
                                                   chunk_len);
  CUDA_CHECK_LAUNCH();
  norm_param_finish<<<(unsigned)((C + block - 1) / block), block, 0, stream()>>>(dgamma, dbeta, pg.data(), pb.data(),
                                                                                C, (int)chunks);
  CUDA_CHECK_LAUNCH();
}

// ---- cross-entropy -------------------------------------------------------------------------
template <class T, bool BLOCK>
__global__ void cross_entropy_fwd_k(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                                    T* __restrict__ probs, double* __restrict__ loss, int64_t rows, int64_t C,
                                    int32_t ignore_index) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T* xr = logits + g.row * C;
  T* pr = probs + g.row * C;
  T M, S;
  row_max_sumexp(g, xr, C, T(1), M, S);
  T inv = T(1) / S;
  for (int64_t c = g.tid; c < C; c += g.size) pr[c] = vexp(xr[c] - M) * inv;
  const int32_t t = targets[g.row];
  if (t == ignore_index) {
    if (g.tid == 0) loss[g.row] = 0.0;
    return;
  }
  // −log p_t from the logits in double, as the CPU: mx + log Σ exp(x − mx) − x_t
  double s = 0.0;
  for (int64_t c = g.tid; c < C; c += g.size) s += ::exp((double)(xr[c] - M));
  s = g.sum(s);
  if (g.tid == 0) loss[g.row] = (double)M + ::log(s) - (double)xr[t];
}

__global__ void cross_entropy_total(const double* __restrict__ loss, const int32_t* __restrict__ targets,
                                    int64_t rows, int32_t ignore_index, double* __restrict__ out) {
  double s = 0.0, n = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    if (targets[r] == ignore_index) continue;
    s += loss[r];
    n += 1.0;
  }
  s = block_sum(s);
  n = block_sum(n);
  if (threadIdx.x == 0) {
    out[0] = s;
    out[1] = n;
  }
}

// The op's device path: the same total, its mean written on the GPU as the
// CPU op forms it on the host, T(total / count) (0 when count = 0).
template <class T>
__global__ void cross_entropy_mean(const double* __restrict__ loss, const int32_t* __restrict__ targets,
                                   int64_t rows, int32_t ignore_index, int64_t count, T* __restrict__ out) {
  double s = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
    if (targets[r] != ignore_index) s += loss[r];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = count ? T(s / (double)count) : T(0);
}

// scale: the given one, or (gout != nullptr) the scalar output gradient read
// on the GPU divided by count, as the CPU op's T(gout / (T)count).
template <class T, bool BLOCK>
__global__ void cross_entropy_bwd_k(const T* __restrict__ probs, const int32_t* __restrict__ targets,
                                    T* __restrict__ dlogits, int64_t rows, int64_t C, int32_t ignore_index, T scale,
                                    const T* __restrict__ gout, T count) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const int32_t t = targets[g.row];
  if (t == ignore_index) return;
  if (gout) scale = T(gout[0] / count);
  const T* pr = probs + g.row * C;
  T* dr = dlogits + g.row * C;
  for (int64_t c = g.tid; c < C; c += g.size) dr[c] += scale * (pr[c] - (c == t ? T(1) : T(0)));
}

// ---- attention: masked scaled softmax over score rows, in place ------------------------------
template <class T, bool BLOCK>
__global__ void attn_softmax_fwd_k(T* __restrict__ P, int64_t rows, int64_t Tn, T scale, bool causal) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  T* row = P + g.row * Tn;
  const int64_t i = g.row % Tn;
  const int64_t n = causal ? i + 1 : Tn;  // keys 0..i visible under the causal mask
  T M, S;
  row_max_sumexp(g, row, n, scale, M, S);
  const T inv = T(1) / S;
  for (int64_t j = g.tid; j < Tn; j += g.size) row[j] = j < n ? vexp(row[j] * scale - M) * inv : T(0);
}

// dS = P ⊙ (dP − Σ dP⊙P) · scale on the visible keys, 0 elsewhere; dS holds dP on entry.
template <class T, bool BLOCK>
__global__ void attn_softmax_bwd_k(const T* __restrict__ P, T* __restrict__ dS, int64_t rows, int64_t Tn, T scale,
                                   bool causal) {
  RowGroup<BLOCK> g;
  if (g.row >= rows) return;
  const T* prow = P + g.row * Tn;
  T* row = dS + g.row * Tn;
  const int64_t i = g.row % Tn;
  const int64_t n = causal ? i + 1 : Tn;
  T dot = T(0);
  for (int64_t j = g.tid; j < n; j += g.size) dot += row[j] * prow[j];
  dot = g.sum(dot);
  for (int64_t j = g.tid; j < Tn; j += g.size) row[j] = j < n ? prow[j] * (row[j] - dot) * scale : T(0);
}

// ---- AdamW ---------------------------------------------------------------------------------------
__global__ void adamw_k(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                        float* __restrict__ v, int64_t n, float lr, float beta1, float beta2, float eps, float wd,
                        float bc1, float bc2) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float g = grad[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float mh = mi / bc1, vh = vi / bc2;
    float p = param[i];
    param[i] = p - lr * (mh / (sqrtf(vh) + eps) + wd * p);
  }
}

// ---- the optimiser over every parameter (kernels/optim.h) ------------------------------------------
// grid (X, tensors): blockIdx.y picks the row of the table, X blocks stride
// over its elements. The per-element arithmetic is adamw_k's, after the
// clipping scale (rounded like the CPU's g *= scale, and written back as it
// does).
__global__ void adamw_multi_k(const AdamWTensor* __restrict__ table, float lr, float beta1, float beta2, float eps,
                              float bc1, float bc2, float scale) {
  const AdamWTensor t = table[blockIdx.y];
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < t.n; i += (int64_t)gridDim.x * blockDim.x) {
    float g = t.grad[i];
    if (scale != 1.0f) {
      g = mul_rn(g, scale);
      t.grad[i] = g;
    }
    float mi = beta1 * t.m[i] + (1.0f - beta1) * g;
    float vi = beta2 * t.v[i] + (1.0f - beta2) * g * g;
    t.m[i] = mi;
    t.v[i] = vi;
    float mh = mi / bc1, vh = vi / bc2;
    float p = t.param[i];
    t.param[i] = p - lr * (mh / (sqrtf(vh) + eps) + t.weight_decay * p);
  }
}

// Σ g² per (tensor, block) in double: partial[(y0 + blockIdx.y) · gridDim.x + blockIdx.x].
__global__ void sum_squares_k(const GradSpan* __restrict__ table, int64_t y0, double* __restrict__ partial) {
  const GradSpan t = table[y0 + blockIdx.y];
  double s = 0.0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < t.n; i += (int64_t)gridDim.x * blockDim.x) {
    const double x = (double)t.data[i];
    s += x * x;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[(y0 + blockIdx.y) * gridDim.x + blockIdx.x] = s;
}
__global__ void sum_partials_k(const double* __restrict__ partial, int64_t n, double* __restrict__ out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

// Blocks per tensor for the multi-tensor kernels: enough for the largest
// (256 threads × 16 elements each), at most 64; a fixed function of the sizes,
// so the sums' order is fixed too.
unsigned blocks_per_tensor(int64_t max_n) {
  const int64_t per_block = 256 * 16;
  return (unsigned)std::clamp<int64_t>((max_n + per_block - 1) / per_block, 1, 64);
}
constexpr int64_t kMaxGridY = 65535;

}  // namespace

// ---- entry points ------------------------------------------------------------------------------------
int row_group_threads(int64_t C, Launch l) {
  RowLaunch rl = pick(C, l, "cuda row_group_threads");
  return rl.block ? rl.threads : 32;
}

template <class T>
void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C, Launch l) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, l, "cuda softmax_fwd");
  VM_ROW_LAUNCH(softmax_fwd_k, rl, rows, x, y, rows, C, false);
}
template <class T>
void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C) {
  softmax_fwd(x, y, rows, C, Launch{});
}
template <class T>
void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C, Launch l) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, l, "cuda softmax_bwd");
  VM_ROW_LAUNCH(softmax_bwd_k, rl, rows, y, dy, dx, rows, C, false);
}
template <class T>
void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C) {
  softmax_bwd(y, dy, dx, rows, C, Launch{});
}
template <class T>
void log_softmax_fwd(const T* x, T* y, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, {}, "cuda log_softmax_fwd");
  VM_ROW_LAUNCH(softmax_fwd_k, rl, rows, x, y, rows, C, true);
}
template <class T>
void log_softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, {}, "cuda log_softmax_bwd");
  VM_ROW_LAUNCH(softmax_bwd_k, rl, rows, y, dy, dx, rows, C, true);
}

template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                   double eps, Launch l) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, l, "cuda layernorm_fwd");
  VM_ROW_LAUNCH(layernorm_fwd_k, rl, rows, x, gamma, beta, y, mean, rstd, rows, C, (T)eps);
}
template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                   double eps) {
  layernorm_fwd(x, gamma, beta, y, mean, rstd, rows, C, eps, Launch{});
}
template <class T>
void layernorm_bwd(const T* x, const T* gamma, const T* mean, const T* rstd, const T* dy, T* dx, T* dgamma,
                   T* dbeta, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  if (dx) {
    RowLaunch rl = pick(C, {}, "cuda layernorm_bwd");
    VM_ROW_LAUNCH(norm_bwd_dx_k, rl, rows, x, gamma, mean, rstd, dy, dx, rows, C);
  }
  norm_param_grads(x, mean, rstd, dy, dgamma, dbeta, rows, C);
}
template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps, Launch l) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, l, "cuda rmsnorm_fwd");
  VM_ROW_LAUNCH(rmsnorm_fwd_k, rl, rows, x, gamma, y, rstd, rows, C, (T)eps);
}
template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps) {
  rmsnorm_fwd(x, gamma, y, rstd, rows, C, eps, Launch{});
}
template <class T>
void rmsnorm_bwd(const T* x, const T* gamma, const T* rstd, const T* dy, T* dx, T* dgamma, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  if (dx) {
    RowLaunch rl = pick(C, {}, "cuda rmsnorm_bwd");
    VM_ROW_LAUNCH(norm_bwd_dx_k, rl, rows, x, gamma, (const T*)nullptr, rstd, dy, dx, rows, C);
  }
  norm_param_grads(x, (const T*)nullptr, rstd, dy, dgamma, (T*)nullptr, rows, C);
}

template <class T>
double cross_entropy_sum(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                         int32_t ignore_index, int64_t* count) {
  *count = 0;
  if (rows <= 0 || C <= 0) return 0.0;
  DeviceBuffer<double> loss((size_t)rows), total(2);
  RowLaunch rl = pick(C, {}, "cuda cross_entropy_fwd");
  VM_ROW_LAUNCH(cross_entropy_fwd_k, rl, rows, logits, targets, probs, loss.data(), rows, C, ignore_index);
  cross_entropy_total<<<1, 1024, 0, stream()>>>(loss.data(), targets, rows, ignore_index, total.data());
  CUDA_CHECK_LAUNCH();
  double h[2];
  total.download(h, 2);
  *count = (int64_t)h[1];
  return h[0];
}
template <class T>
void cross_entropy_bwd_scaled(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                              int32_t ignore_index, T scale) {
  if (rows <= 0 || C <= 0) return;
  RowLaunch rl = pick(C, {}, "cuda cross_entropy_bwd");
  VM_ROW_LAUNCH(cross_entropy_bwd_k, rl, rows, probs, targets, dlogits, rows, C, ignore_index, scale,
                (const T*)nullptr, T(1));
}

template <class T>
void cross_entropy_fwd(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                       int32_t ignore_index, int64_t count, T* loss) {
  if (rows <= 0 || C <= 0) {
    fill_value(loss, 1, T(0));
    return;
  }
  DeviceBuffer<double> per_row((size_t)rows);
  RowLaunch rl = pick(C, {}, "cuda cross_entropy_fwd");
  VM_ROW_LAUNCH(cross_entropy_fwd_k, rl, rows, logits, targets, probs, per_row.data(), rows, C, ignore_index);
  cross_entropy_mean<T><<<1, 1024, 0, stream()>>>(per_row.data(), targets, rows, ignore_index, count, loss);
  CUDA_CHECK_LAUNCH();
}
template <class T>
void cross_entropy_bwd(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                       int32_t ignore_index, const T* gout, int64_t count) {
  if (rows <= 0 || C <= 0 || count <= 0) return;
  RowLaunch rl = pick(C, {}, "cuda cross_entropy_bwd");
  VM_ROW_LAUNCH(cross_entropy_bwd_k, rl, rows, probs, targets, dlogits, rows, C, ignore_index, T(0), gout, (T)count);
}

template <class T>
void attention_fwd(const T* q, const T* k, const T* v, T* P, T* out, int64_t BH, int64_t Tn, int64_t D,
                   bool causal) {
  if (BH <= 0 || Tn <= 0) return;
  const T scale = T(1) / std::sqrt(T(D));
  gemm_strided_batched(P, q, k, BH, Tn, Tn, D, false, true, false, Tn * D, Tn * D, Tn * Tn);  // S = q kᵀ
  RowLaunch rl = pick(Tn, {}, "cuda attention_fwd");
  VM_ROW_LAUNCH(attn_softmax_fwd_k, rl, BH * Tn, P, BH * Tn, Tn, scale, causal);
  gemm_strided_batched(out, P, v, BH, Tn, D, Tn, false, false, false, Tn * Tn, Tn * D, Tn * D);  // out = P v
}

template <class T>
void attention_bwd(const T* q, const T* k, const T* v, const T* P, const T* dout, T* dq, T* dk, T* dv,
                   int64_t BH, int64_t Tn, int64_t D, bool causal) {
  if (BH <= 0 || Tn <= 0) return;
  const T scale = T(1) / std::sqrt(T(D));
  if (dv) gemm_strided_batched(dv, P, dout, BH, Tn, D, Tn, true, false, true, Tn * Tn, Tn * D, Tn * D);  // dv += Pᵀ dO
  if (!dq && !dk) return;
  DeviceBuffer<T> dS((size_t)(BH * Tn * Tn));
  gemm_strided_batched(dS.data(), dout, v, BH, Tn, Tn, D, false, true, false, Tn * D, Tn * D, Tn * Tn);  // dP = dO vᵀ
  RowLaunch rl = pick(Tn, {}, "cuda attention_bwd");
  VM_ROW_LAUNCH(attn_softmax_bwd_k, rl, BH * Tn, P, dS.data(), BH * Tn, Tn, scale, causal);
  if (dq) gemm_strided_batched(dq, dS.data(), k, BH, Tn, D, Tn, false, false, true, Tn * Tn, Tn * D, Tn * D);  // dq += dS k
  if (dk) gemm_strided_batched(dk, dS.data(), q, BH, Tn, D, Tn, true, false, true, Tn * Tn, Tn * D, Tn * D);   // dk += dSᵀ q
}

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step) {
  if (n <= 0) return;
  // bias corrections on the host, exactly as the CPU computes them
  const float bc1 = 1.0f - std::pow(beta1, (float)step);
  const float bc2 = 1.0f - std::pow(beta2, (float)step);
  adamw_k<<<grid_for(n, 256), 256, 0, stream()>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2);
  CUDA_CHECK_LAUNCH();
}

void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWHyper& h) {
  if (ts.empty()) return;
  int64_t max_n = 0;
  for (const auto& t : ts) max_n = std::max(max_n, t.n);
  if (max_n <= 0) return;
  // bias corrections on the host, exactly as the CPU computes them
  const float bc1 = 1.0f - std::pow(h.beta1, (float)h.step);
  const float bc2 = 1.0f - std::pow(h.beta2, (float)h.step);
  DeviceBuffer<AdamWTensor> table(ts);  // staged upload: no wait; freed in stream order
  const unsigned X = blocks_per_tensor(max_n);
  for (int64_t y0 = 0; y0 < (int64_t)ts.size(); y0 += kMaxGridY) {
    const unsigned Y = (unsigned)std::min<int64_t>(kMaxGridY, (int64_t)ts.size() - y0);
    adamw_multi_k<<<dim3(X, Y), 256, 0, stream()>>>(table.data() + y0, h.lr, h.beta1, h.beta2, h.eps, bc1, bc2,
                                                    h.grad_scale);
    CUDA_CHECK_LAUNCH();
  }
}

double sum_squares(const std::vector<GradSpan>& ts) {
  if (ts.empty()) return 0.0;
  int64_t max_n = 0;
  for (const auto& t : ts) max_n = std::max(max_n, t.n);
  const unsigned X = blocks_per_tensor(max_n);
  const int64_t nt = (int64_t)ts.size();
  DeviceBuffer<GradSpan> table(ts);
  DeviceBuffer<double> partial((size_t)(nt * X)), out(1);
  for (int64_t y0 = 0; y0 < nt; y0 += kMaxGridY) {
    const unsigned Y = (unsigned)std::min<int64_t>(kMaxGridY, nt - y0);
    sum_squares_k<<<dim3(X, Y), 256, 0, stream()>>>(table.data(), y0, partial.data());
    CUDA_CHECK_LAUNCH();
  }
  sum_partials_k<<<1, 1024, 0, stream()>>>(partial.data(), nt * X, out.data());
  CUDA_CHECK_LAUNCH();
  double r = 0.0;
  out.download(&r, 1);  // the one wait
  return r;
}

VM_INSTANTIATE_KERNELS(VM_ROWWISE_KERNELS)
#define VM_INST(T)                                                                                          \
  template double cross_entropy_sum<T>(const T*, const int32_t*, T*, int64_t, int64_t, int32_t, int64_t*);   \
  template void cross_entropy_bwd_scaled<T>(const T*, const int32_t*, T*, int64_t, int64_t, int32_t, T);      \
  template void softmax_fwd<T>(const T*, T*, int64_t, int64_t, Launch);                                     \
  template void softmax_bwd<T>(const T*, const T*, T*, int64_t, int64_t, Launch);                           \
  template void layernorm_fwd<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, double, Launch); \
  template void rmsnorm_fwd<T>(const T*, const T*, T*, T*, int64_t, int64_t, double, Launch);
VM_INST(float)
VM_INST(double)

}  // namespace vm::kernels::cuda
