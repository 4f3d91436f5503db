// kernels/cuda/elementwise.cu — unary / broadcasting binary element-wise ops
// and reductions on the GPU (the table: kernels/elementwise.h).
#include <algorithm>

#include "core/cuda/device.cuh"
#include "kernels/cuda/elementwise.h"

namespace vm::kernels::cuda {
using namespace detail;

namespace {

// ---- unary ---------------------------------------------------------------------
template <class T>
__device__ __forceinline__ T gelu_inner(T x) {  // sqrt(2/pi) (x + 0.044715 x^3)
  return T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
}

// tanh u for GELU: the CPU's formula (kernels/elementwise.h, tanh_from_exp2u;
// kernels/cpu/fastmath.h, tanh_gelu): 1 − 2/(e^{2u} + 1) in float, tanh in double.
__device__ __forceinline__ float gelu_tanh(float u) { return tanh_from_exp2u(vexp(2.0f * u)); }
__device__ __forceinline__ double gelu_tanh(double u) { return vtanh(u); }

template <Unary OP, class T>
__device__ __forceinline__ T unary_f(T x, T a) {
  if constexpr (OP == Unary::Exp) return vexp(x);
  else if constexpr (OP == Unary::Log) return vlog(x);
  else if constexpr (OP == Unary::Sqrt) return vsqrt(x);
  else if constexpr (OP == Unary::Softplus) return max(x, T(0)) + vlog1p(vexp(-vabs(x)));
  else if constexpr (OP == Unary::Sigmoid) return T(1) / (T(1) + vexp(-x));
  else if constexpr (OP == Unary::Relu) return x > T(0) ? x : T(0);
  else if constexpr (OP == Unary::Gelu) return T(0.5) * x * (T(1) + gelu_tanh(gelu_inner(x)));
  else if constexpr (OP == Unary::Silu) return x / (T(1) + vexp(-x));
  else if constexpr (OP == Unary::Tanh) return vtanh(x);
  else if constexpr (OP == Unary::AddScalar) return x + a;
  else if constexpr (OP == Unary::MulScalar) return x * a;
  else return vpow(x, a);  // PowScalar
}

// f'(x) given x and y = f(x); a_m1 = alpha - 1 for pow
template <Unary OP, class T>
__device__ __forceinline__ T unary_df(T x, T y, T a, T a_m1) {
  if constexpr (OP == Unary::Exp) return y;
  else if constexpr (OP == Unary::Log) return T(1) / x;
  else if constexpr (OP == Unary::Sqrt) return T(0.5) / y;
  else if constexpr (OP == Unary::Softplus) return T(1) / (T(1) + vexp(-x));
  else if constexpr (OP == Unary::Sigmoid) return y * (T(1) - y);
  else if constexpr (OP == Unary::Relu) return x > T(0) ? T(1) : T(0);
  else if constexpr (OP == Unary::Gelu) {
    T t = gelu_tanh(gelu_inner(x));
    T du = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * x * x);
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
  } else if constexpr (OP == Unary::Silu) {
    T s = T(1) / (T(1) + vexp(-x));
    return s * (T(1) + x * (T(1) - s));
  } else if constexpr (OP == Unary::Tanh) return T(1) - y * y;
  else if constexpr (OP == Unary::AddScalar) return T(1);
  else if constexpr (OP == Unary::MulScalar) return a;
  else return a * vpow(x, a_m1);  // PowScalar
}

template <class T>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int width = 4;
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int width = 2;
};

template <Unary OP, class T>
__global__ void unary_fwd_scalar(const T* __restrict__ x, T* __restrict__ y, int64_t n, T a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = unary_f<OP>(x[i], a);
}

template <Unary OP, class T>
__global__ void unary_fwd_vec(const T* __restrict__ x, T* __restrict__ y, int64_t n, T a) {
  using V = typename Vec16<T>::type;
  constexpr int W = Vec16<T>::width;
  const int64_t nv = n / W, stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t i = t0; i < nv; i += stride) {
    V v = reinterpret_cast<const V*>(x)[i];
    T* e = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int w = 0; w < W; ++w) e[w] = unary_f<OP>(e[w], a);
    reinterpret_cast<V*>(y)[i] = v;
  }
  for (int64_t i = nv * W + t0; i < n; i += stride) y[i] = unary_f<OP>(x[i], a);
}

template <Unary OP, class T>
__global__ void unary_bwd_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                                 T* __restrict__ dx, int64_t n, T a, T a_m1) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] += dy[i] * unary_df<OP>(x[i], y[i], a, a_m1);
}

template <Unary OP, class T>
void unary_fwd_launch(const T* x, T* y, int64_t n, T a, Launch l) {
  int block = l.block > 0 ? l.block : 256;
  bool aligned = ((uintptr_t)x % 16 == 0) && ((uintptr_t)y % 16 == 0);
  int version = l.version > 0 ? l.version : (aligned ? 2 : 1);
  if (version == 2 && !aligned) version = 1;
  if (version == 2) {
    unary_fwd_vec<OP><<<grid_for(n / Vec16<T>::width + 1, block), block, 0, stream()>>>(x, y, n, a);
  } else {
    unary_fwd_scalar<OP><<<grid_for(n, block), block, 0, stream()>>>(x, y, n, a);
  }
  CUDA_CHECK_LAUNCH();
}

#define VM_UNARY_SWITCH(op, CALL)                       \
  switch (op) {                                         \
    case Unary::Exp: CALL(Unary::Exp); break;           \
    case Unary::Log: CALL(Unary::Log); break;           \
    case Unary::Sqrt: CALL(Unary::Sqrt); break;         \
    case Unary::Softplus: CALL(Unary::Softplus); break; \
    case Unary::Sigmoid: CALL(Unary::Sigmoid); break;   \
    case Unary::Relu: CALL(Unary::Relu); break;         \
    case Unary::Gelu: CALL(Unary::Gelu); break;         \
    case Unary::Silu: CALL(Unary::Silu); break;         \
    case Unary::Tanh: CALL(Unary::Tanh); break;         \
    case Unary::AddScalar: CALL(Unary::AddScalar); break; \
    case Unary::MulScalar: CALL(Unary::MulScalar); break; \
    case Unary::PowScalar: CALL(Unary::PowScalar); break; \
    default: throw vm::Error("cuda unary: unknown op"); \
  }

// ---- broadcasting geometry ---------------------------------------------------------------
struct Geom {
  int64_t od[4];    // out dims (left-padded to 4)
  int64_t ostr[4];  // out strides
  int64_t sa[4];    // a strides, 0 on broadcast dims
  int64_t sb[4];
  int64_t xd[4];    // dims of the side being written (reduction target)
  int64_t rd[4];    // dims reduced away for that side (1 elsewhere)
  int64_t nx, nr, nout;
};

void pad4(const std::vector<int64_t>& s, int64_t d[4], const char* op) {
  if (s.size() > 4) throw vm::Error(std::string(op) + ": more than 4 dims");
  int off = 4 - (int)s.size();
  for (int i = 0; i < 4; ++i) d[i] = i < off ? 1 : s[i - off];
}

Geom make_geom(const std::vector<int64_t>& sa, const std::vector<int64_t>& sb, const char* op) {
  Geom g{};
  int64_t da[4], db[4];
  pad4(sa, da, op);
  pad4(sb, db, op);
  for (int i = 0; i < 4; ++i) {
    if (da[i] != db[i] && da[i] != 1 && db[i] != 1) throw vm::Error(std::string(op) + ": shapes do not broadcast");
    g.od[i] = da[i] == 1 ? db[i] : da[i];
  }
  int64_t st = 1, sta = 1, stb = 1;
  for (int i = 3; i >= 0; --i) {
    g.ostr[i] = st;
    g.sa[i] = da[i] == 1 ? 0 : sta;
    g.sb[i] = db[i] == 1 ? 0 : stb;
    st *= g.od[i];
    sta *= da[i];
    stb *= db[i];
  }
  g.nout = st;
  return g;
}

void set_target(Geom& g, const std::vector<int64_t>& sx, const char* op) {
  pad4(sx, g.xd, op);
  g.nx = 1;
  g.nr = 1;
  for (int i = 0; i < 4; ++i) {
    g.rd[i] = (g.xd[i] == 1 && g.od[i] > 1) ? g.od[i] : 1;
    g.nx *= g.xd[i];
    g.nr *= g.rd[i];
  }
}

template <class T>
__global__ void binary_same(Binary op, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = binary_apply(op, a[i], b[i]);
}

template <class T>
__global__ void binary_bcast(Binary op, Geom g, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < g.nout; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i, ia = 0, ib = 0;
#pragma unroll
    for (int k = 3; k >= 0; --k) {
      int64_t c = t % g.od[k];
      t /= g.od[k];
      ia += c * g.sa[k];
      ib += c * g.sb[k];
    }
    out[i] = binary_apply(op, a[ia], b[ib]);
  }
}

// Local gradient of one side at out index i (the CPU expressions).
template <class T>
struct BinGrad {
  const T *g, *a, *b;
  Binary op;
  int side;
  __device__ __forceinline__ T operator()(int64_t i, int64_t ia, int64_t ib) const {
    switch (op) {
      case Binary::Add: return g[i];
      case Binary::Sub: return side ? -g[i] : g[i];
      case Binary::Mul: return g[i] * (side ? a[ia] : b[ib]);
      default: return side ? -g[i] * a[ia] / (b[ib] * b[ib]) : g[i] / b[ib];
    }
  }
};
template <class T>
struct ReadAt {
  const T* x;
  __device__ __forceinline__ T operator()(int64_t i, int64_t, int64_t) const { return x[i]; }
};

// X[ix] (+)= Σ over the reduced dims of f(out index, a index, b index); chunk
// blockIdx.y of the reduced range. One chunk: written directly; several:
// partial sums, added in chunk order by reduce_finish.
template <class T, class F>
__global__ void reduce_bcast(Geom g, F f, T* __restrict__ X, T* __restrict__ partial, int64_t chunk_len,
                             bool accumulate) {
  int64_t ix = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (ix >= g.nx) return;
  int64_t xi[4], ri[4], t = ix;
#pragma unroll
  for (int k = 3; k >= 0; --k) {
    xi[k] = t % g.xd[k];
    t /= g.xd[k];
  }
  int64_t r0 = (int64_t)blockIdx.y * chunk_len, r1 = min(g.nr, r0 + chunk_len);
  t = r0;
#pragma unroll
  for (int k = 3; k >= 0; --k) {
    ri[k] = t % g.rd[k];
    t /= g.rd[k];
  }
  T acc = T(0);
  for (int64_t r = r0; r < r1; ++r) {
    int64_t oi = 0, ia = 0, ib = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      int64_t o = g.rd[k] > 1 ? ri[k] : xi[k];
      oi += o * g.ostr[k];
      ia += o * g.sa[k];
      ib += o * g.sb[k];
    }
    acc += f(oi, ia, ib);
#pragma unroll
    for (int k = 3; k >= 0; --k) {  // odometer over the reduced dims, row-major
      if (++ri[k] < g.rd[k]) break;
      ri[k] = 0;
    }
  }
  if (gridDim.y == 1) X[ix] = accumulate ? X[ix] + acc : acc;
  else partial[(int64_t)blockIdx.y * g.nx + ix] = acc;
}

template <class T>
__global__ void reduce_finish(T* __restrict__ X, const T* __restrict__ partial, int64_t nx, int chunks, bool accumulate) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nx; i += (int64_t)gridDim.x * blockDim.x) {
    T acc = T(0);
    for (int c = 0; c < chunks; ++c) acc += partial[(int64_t)c * nx + i];
    X[i] = accumulate ? X[i] + acc : acc;
  }
}

template <class T, class F>
void run_reduce(const Geom& g, F f, T* X, bool accumulate) {
  if (g.nx == 0) return;
  const int block = 256;
  int64_t chunks = 1;
  if (g.nr > 32) {  // enough threads in flight: split long reductions into chunks
    int64_t want = std::max<int64_t>(1, (1 << 17) / std::max<int64_t>(1, g.nx));
    chunks = std::min<int64_t>({want, (g.nr + 31) / 32, 1024});
  }
  int64_t chunk_len = (g.nr + chunks - 1) / chunks;
  chunks = (g.nr + chunk_len - 1) / chunk_len;
  dim3 grid((unsigned)((g.nx + block - 1) / block), (unsigned)chunks);
  if (chunks == 1) {
    reduce_bcast<T, F><<<grid, block, 0, stream()>>>(g, f, X, nullptr, chunk_len, accumulate);
    CUDA_CHECK_LAUNCH();
    return;
  }
  DeviceBuffer<T> partial((size_t)(chunks * g.nx));
  reduce_bcast<T, F><<<grid, block, 0, stream()>>>(g, f, X, partial.data(), chunk_len, accumulate);
  CUDA_CHECK_LAUNCH();
  reduce_finish<<<grid_for(g.nx, block), block, 0, stream()>>>(X, partial.data(), g.nx, (int)chunks, accumulate);
  CUDA_CHECK_LAUNCH();
}

// ---- reductions --------------------------------------------------------------------------
template <class T, bool BLOCK>
__global__ void sum_last_axis(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n, bool accumulate) {
  RowGroup<BLOCK> grp;
  if (grp.row >= rows) return;
  const T* xr = x + grp.row * n;
  T s = T(0);
  for (int64_t j = grp.tid; j < n; j += grp.size) s += xr[j];
  s = grp.sum(s);
  if (grp.tid == 0) y[grp.row] = accumulate ? y[grp.row] + s : s;
}

template <class T>
__global__ void sum_axis_bwd_kernel(const T* __restrict__ g, T* __restrict__ dx, int64_t outer, int64_t n, int64_t inner) {
  const int64_t total = outer * n * inner;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t in = i % inner, o = i / (n * inner);
    dx[i] += g[o * inner + in];
  }
}

constexpr int kSumAllBlocks = 256, kSumAllThreads = 256;

template <class T>
__global__ void sum_all_stage1(const T* __restrict__ x, T* __restrict__ partial, int64_t n) {
  T s = T(0);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)kSumAllBlocks * kSumAllThreads)
    s += x[i];
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
template <class T>
__global__ void sum_all_stage2(const T* __restrict__ partial, T* __restrict__ out) {
  T s = block_sum(partial[threadIdx.x]);
  if (threadIdx.x == 0) out[0] = s;
}

}  // namespace

// ---- public entry points -------------------------------------------------------------------
template <class T>
void unary_fwd(Unary op, const T* x, T* y, int64_t n, double alpha, Launch l) {
  if (n <= 0) return;
  const T a = (T)alpha;
#define VM_CALL(OP) unary_fwd_launch<OP, T>(x, y, n, a, l)
  VM_UNARY_SWITCH(op, VM_CALL)
#undef VM_CALL
}

template <class T>
void unary_fwd(Unary op, const T* x, T* y, int64_t n, double alpha) {
  unary_fwd(op, x, y, n, alpha, Launch{});
}

template <class T>
void unary_bwd(Unary op, const T* x, const T* y, const T* dy, T* dx, int64_t n, double alpha) {
  if (n <= 0) return;
  const T a = (T)alpha, am1 = (T)(alpha - 1.0);
  const unsigned grid = grid_for(n, 256);
#define VM_CALL(OP) unary_bwd_kernel<OP, T><<<grid, 256, 0, stream()>>>(x, y, dy, dx, n, a, am1)
  VM_UNARY_SWITCH(op, VM_CALL)
#undef VM_CALL
  CUDA_CHECK_LAUNCH();
}

template <class T>
void binary_fwd(Binary op, const T* a, const std::vector<int64_t>& sa, const T* b, const std::vector<int64_t>& sb,
                T* out) {
  Geom g = make_geom(sa, sb, "cuda binary_fwd");
  if (g.nout == 0) return;
  if (sa == sb) binary_same<<<grid_for(g.nout, 256), 256, 0, stream()>>>(op, a, b, out, g.nout);
  else binary_bcast<<<grid_for(g.nout, 256), 256, 0, stream()>>>(op, g, a, b, out);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void binary_bwd(Binary op, const T* a, const std::vector<int64_t>& sa, const T* b, const std::vector<int64_t>& sb,
                const T* g, T* da, T* db) {
  Geom geo = make_geom(sa, sb, "cuda binary_bwd");
  if (geo.nout == 0) return;
  for (int side = 0; side < 2; ++side) {
    T* X = side ? db : da;
    if (!X) continue;
    set_target(geo, side ? sb : sa, "cuda binary_bwd");
    run_reduce(geo, BinGrad<T>{g, a, b, op, side}, X, true);
  }
}

template <class T>
void sum_axis(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool accumulate) {
  if (outer * inner == 0) return;
  if (n == 0) {
    if (!accumulate) fill_bytes(y, 0, sizeof(T) * (size_t)(outer * inner));
    return;
  }
  if (inner == 1) {
    bool block = n > 2048;
    int threads = block ? 512 : 256;
    if (block) sum_last_axis<T, true><<<row_grid(outer, true, threads), threads, 0, stream()>>>(x, y, outer, n, accumulate);
    else sum_last_axis<T, false><<<row_grid(outer, false, threads), threads, 0, stream()>>>(x, y, outer, n, accumulate);
    CUDA_CHECK_LAUNCH();
    return;
  }
  Geom g = make_geom({outer, n, inner}, {outer, 1, inner}, "cuda sum_axis");
  set_target(g, {outer, 1, inner}, "cuda sum_axis");
  run_reduce(g, ReadAt<T>{x}, y, accumulate);
}

template <class T>
void sum_axis_bwd(const T* g, T* dx, int64_t outer, int64_t n, int64_t inner) {
  int64_t total = outer * n * inner;
  if (total == 0) return;
  sum_axis_bwd_kernel<<<grid_for(total, 256), 256, 0, stream()>>>(g, dx, outer, n, inner);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void sum_all(const T* x, T* out, int64_t n) {
  DeviceBuffer<T> partial(kSumAllBlocks);
  sum_all_stage1<<<kSumAllBlocks, kSumAllThreads, 0, stream()>>>(x, partial.data(), n);
  CUDA_CHECK_LAUNCH();
  sum_all_stage2<<<1, kSumAllBlocks, 0, stream()>>>(partial.data(), out);
  CUDA_CHECK_LAUNCH();
}

VM_INSTANTIATE_KERNELS(VM_ELEMENTWISE_KERNELS)
template void unary_fwd<float>(Unary, const float*, float*, int64_t, double, Launch);
template void unary_fwd<double>(Unary, const double*, double*, int64_t, double, Launch);

}  // namespace vm::kernels::cuda
