#include "kernels/cpu/rowwise.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/fastmath.h"
#include "kernels/cpu/gemm.h"
#include "kernels/optim.h"

namespace vm::kernels {

#define VM_PAR_ROWS _Pragma("omp parallel for schedule(static) if (rows * C > 16384)")

template <class T>
void softmax_fwd(const T* x, T* y, int64_t rows, int64_t C) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    T mx = -std::numeric_limits<T>::infinity();
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, xr[c]);
    T s = 0;
    for (int64_t c = 0; c < C; ++c) yr[c] = exp_(xr[c] - mx);
    for (int64_t c = 0; c < C; ++c) s += yr[c];
    T inv = T(1) / s;
    for (int64_t c = 0; c < C; ++c) yr[c] *= inv;
  }
}

template <class T>
void softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * C, *dyr = dy + r * C;
    T dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += dyr[c] * yr[c];
    for (int64_t c = 0; c < C; ++c) dx[r * C + c] += yr[c] * (dyr[c] - dot);
  }
}

template <class T>
void log_softmax_fwd(const T* x, T* y, int64_t rows, int64_t C) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T mx = -std::numeric_limits<T>::infinity();
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, xr[c]);
    T s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(xr[c] - mx);
    T lse = mx + std::log(s);
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = xr[c] - lse;
  }
}

template <class T>
void log_softmax_bwd(const T* y, const T* dy, T* dx, int64_t rows, int64_t C) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * C, *dyr = dy + r * C;
    T s = 0;
    for (int64_t c = 0; c < C; ++c) s += dyr[c];
    for (int64_t c = 0; c < C; ++c) dx[r * C + c] += dyr[c] - std::exp(yr[c]) * s;
  }
}

template <class T>
void layernorm_fwd(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, int64_t rows,
                   int64_t C, double eps) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T m = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= T(C);
    T v = 0;
    for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
    v /= T(C);
    T rs = T(1) / std::sqrt(v + T(eps));
    mean[r] = m;
    rstd[r] = rs;
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = (xr[c] - m) * rs * gamma[c] + beta[c];
  }
}

template <class T>
void layernorm_bwd(const T* x, const T* gamma, const T* mean, const T* rstd, const T* dy, T* dx,
                   T* dgamma, T* dbeta, int64_t rows, int64_t C) {
  // dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)), g = dy ⊙ γ
  if (dx) {
    VM_PAR_ROWS
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = x + r * C, *dyr = dy + r * C;
      T m1 = 0, m2 = 0;
      for (int64_t c = 0; c < C; ++c) {
        T xh = (xr[c] - mean[r]) * rstd[r];
        T g = dyr[c] * gamma[c];
        m1 += g;
        m2 += g * xh;
      }
      m1 /= T(C);
      m2 /= T(C);
      for (int64_t c = 0; c < C; ++c) {
        T xh = (xr[c] - mean[r]) * rstd[r];
        dx[r * C + c] += rstd[r] * (dyr[c] * gamma[c] - m1 - xh * m2);
      }
    }
  }
  // parameter gradients: column sums in row order (deterministic)
  if (dgamma || dbeta) {
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = x + r * C, *dyr = dy + r * C;
      for (int64_t c = 0; c < C; ++c) {
        if (dgamma) dgamma[c] += dyr[c] * (xr[c] - mean[r]) * rstd[r];
        if (dbeta) dbeta[c] += dyr[c];
      }
    }
  }
}

template <class T>
void rmsnorm_fwd(const T* x, const T* gamma, T* y, T* rstd, int64_t rows, int64_t C, double eps) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += xr[c] * xr[c];
    T rs = T(1) / std::sqrt(ms / T(C) + T(eps));
    rstd[r] = rs;
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = xr[c] * rs * gamma[c];
  }
}

template <class T>
void rmsnorm_bwd(const T* x, const T* gamma, const T* rstd, const T* dy, T* dx, T* dgamma, int64_t rows,
                 int64_t C) {
  // dx = rstd · (g − x̂ · mean(g ⊙ x̂)), g = dy ⊙ γ, x̂ = x · rstd
  if (dx) {
    VM_PAR_ROWS
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = x + r * C, *dyr = dy + r * C;
      T m2 = 0;
      for (int64_t c = 0; c < C; ++c) m2 += dyr[c] * gamma[c] * xr[c] * rstd[r];
      m2 /= T(C);
      for (int64_t c = 0; c < C; ++c) dx[r * C + c] += rstd[r] * (dyr[c] * gamma[c] - xr[c] * rstd[r] * m2);
    }
  }
  if (dgamma) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < C; ++c) dgamma[c] += dy[r * C + c] * x[r * C + c] * rstd[r];
  }
}

template <class T>
double cross_entropy_sum(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                         int32_t ignore_index, int64_t* count) {
  softmax_fwd(logits, probs, rows, C);
  double total = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r) {  // serial sum: fixed order
    int32_t t = targets[r];
    if (t == ignore_index) continue;
    // −log p_t computed from the logits for accuracy: lse − x_t
    const T* xr = logits + r * C;
    T mx = xr[0];
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, xr[c]);
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp((double)(xr[c] - mx));
    total += (double)mx + std::log(s) - (double)xr[t];
    ++n;
  }
  *count = n;
  return total;
}

template <class T>
void cross_entropy_bwd_scaled(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                              int32_t ignore_index, T scale) {
  VM_PAR_ROWS
  for (int64_t r = 0; r < rows; ++r) {
    int32_t t = targets[r];
    if (t == ignore_index) continue;
    for (int64_t c = 0; c < C; ++c) dlogits[r * C + c] += scale * (probs[r * C + c] - (c == t ? T(1) : T(0)));
  }
}

template <class T>
void cross_entropy_fwd(const T* logits, const int32_t* targets, T* probs, int64_t rows, int64_t C,
                       int32_t ignore_index, int64_t count, T* loss) {
  int64_t n = 0;
  const double total = rows * C > 0 ? cross_entropy_sum(logits, targets, probs, rows, C, ignore_index, &n) : 0.0;
  if (n != count)
    throw std::invalid_argument("cross_entropy_fwd: " + std::to_string(count) + " rows counted by the caller, " +
                                std::to_string(n) + " not ignored");
  loss[0] = count ? T(total / (double)count) : T(0);
}

template <class T>
void cross_entropy_bwd(const T* probs, const int32_t* targets, T* dlogits, int64_t rows, int64_t C,
                       int32_t ignore_index, const T* gout, int64_t count) {
  if (count <= 0) return;
  cross_entropy_bwd_scaled(probs, targets, dlogits, rows, C, ignore_index, T(gout[0] / (T)count));
}

template <class T>
void attention_fwd(const T* q, const T* k, const T* v, T* P, T* out, int64_t BH, int64_t Tn, int64_t D,
                   bool causal) {
  const T scale = T(1) / std::sqrt(T(D));
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < BH; ++h) {
    const T *qh = q + h * Tn * D, *kh = k + h * Tn * D, *vh = v + h * Tn * D;
    T* Ph = P + h * Tn * Tn;
    gemm_single(Ph, qh, kh, Tn, Tn, D, false, true, false);  // S = q kᵀ
    for (int64_t i = 0; i < Tn; ++i) {
      T* row = Ph + i * Tn;
      int64_t n = causal ? i + 1 : Tn;  // keys 0..i are visible under the causal mask
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j] * scale);
      T s = 0;
      for (int64_t j = 0; j < n; ++j) row[j] = exp_(row[j] * scale - mx);
      for (int64_t j = 0; j < n; ++j) s += row[j];
      T inv = T(1) / s;
      for (int64_t j = 0; j < n; ++j) row[j] *= inv;
      for (int64_t j = n; j < Tn; ++j) row[j] = 0;
    }
    gemm_single(out + h * Tn * D, Ph, vh, Tn, D, Tn, false, false, false);  // out = P v
  }
}

template <class T>
void attention_bwd(const T* q, const T* k, const T* v, const T* P, const T* dout, T* dq, T* dk, T* dv,
                   int64_t BH, int64_t Tn, int64_t D, bool causal) {
  const T scale = T(1) / std::sqrt(T(D));
#pragma omp parallel
  {
    // per-thread scratch for dS, kept between calls (no allocation, no zeroing:
    // every element is written before it is read)
    thread_local std::vector<T> dS;
    if (dS.size() < (size_t)(Tn * Tn)) dS.resize((size_t)(Tn * Tn));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < BH; ++h) {
      const T *qh = q + h * Tn * D, *kh = k + h * Tn * D, *vh = v + h * Tn * D;
      const T *Ph = P + h * Tn * Tn, *dO = dout + h * Tn * D;
      if (dv) gemm_single(dv + h * Tn * D, Ph, dO, Tn, D, Tn, true, false, true);  // dv += Pᵀ dO
      gemm_single(dS.data(), dO, vh, Tn, Tn, D, false, true, false);              // dP = dO vᵀ
      for (int64_t i = 0; i < Tn; ++i) {                                    // dS = P ⊙ (dP − Σ dP⊙P) · scale
        T* row = dS.data() + i * Tn;
        const T* prow = Ph + i * Tn;
        int64_t n = causal ? i + 1 : Tn;
        T dot = 0;
        for (int64_t j = 0; j < n; ++j) dot += row[j] * prow[j];
        for (int64_t j = 0; j < n; ++j) row[j] = prow[j] * (row[j] - dot) * scale;
        for (int64_t j = n; j < Tn; ++j) row[j] = 0;
      }
      if (dq) gemm_single(dq + h * Tn * D, dS.data(), kh, Tn, D, Tn, false, false, true);  // dq += dS k
      if (dk) gemm_single(dk + h * Tn * D, dS.data(), qh, Tn, D, Tn, true, false, true);   // dk += dSᵀ q
    }
  }
}

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
  const float bc1 = 1.0f - std::pow(beta1, (float)step);
  const float bc2 = 1.0f - std::pow(beta2, (float)step);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i];
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    float mh = m[i] / bc1, vh = v[i] / bc2;
    param[i] -= lr * (mh / (std::sqrt(vh) + eps) + weight_decay * param[i]);
  }
}

double sum_squares(const float* p, int64_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += (double)p[i + j] * (double)p[i + j];
  double s = 0;
  for (int j = 0; j < 8; ++j) s += lane[j];
  for (int64_t i = n8; i < n; ++i) s += (double)p[i] * (double)p[i];
  return s;
}

void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWHyper& h) {
  for (const AdamWTensor& t : ts) {
    if (h.grad_scale != 1.0f) {
      float* g = t.grad;
#pragma omp parallel for schedule(static) if (t.n > 65536)
      for (int64_t i = 0; i < t.n; ++i) g[i] *= h.grad_scale;
    }
    adamw_step(t.param, t.grad, t.m, t.v, t.n, h.lr, h.beta1, h.beta2, h.eps, t.weight_decay, h.step);
  }
}

VM_INSTANTIATE_KERNELS(VM_ROWWISE_KERNELS)
template double cross_entropy_sum<float>(const float*, const int32_t*, float*, int64_t, int64_t, int32_t, int64_t*);
template double cross_entropy_sum<double>(const double*, const int32_t*, double*, int64_t, int64_t, int32_t, int64_t*);
template void cross_entropy_bwd_scaled<float>(const float*, const int32_t*, float*, int64_t, int64_t, int32_t, float);
template void cross_entropy_bwd_scaled<double>(const double*, const int32_t*, double*, int64_t, int64_t, int32_t,
                                               double);

}  // namespace vm::kernels
