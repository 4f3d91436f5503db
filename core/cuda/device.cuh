// core/cuda/device.cuh — what every kernel source of the CUDA backend
// shares: the error-check macros, this thread's context (stream + cuBLAS
// handle), launch-size helpers and warp/block reductions. Include from .cu
// files only (the public, plain-C++ API is core/cuda/device.h).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <curand.h>

#include <cstdint>
#include <string>

#include "core/tensor.h"  // vm::Error
#include "core/cuda/device.h"

namespace vm::kernels::cuda::detail {
[[noreturn]] void cuda_fail(cudaError_t e, const char* expr, const char* file, int line);
[[noreturn]] void cublas_fail(cublasStatus_t s, const char* expr, const char* file, int line);
[[noreturn]] void curand_fail(curandStatus_t s, const char* expr, const char* file, int line);
}  // namespace vm::kernels::cuda::detail

// Each throws vm::Error("<file>:<line>: <expr>: <error name>: <error string>").
#define CUDA_CHECK(expr)                                                                \
  do {                                                                                  \
    cudaError_t vm_e_ = (expr);                                                         \
    if (vm_e_ != cudaSuccess) ::vm::kernels::cuda::detail::cuda_fail(vm_e_, #expr, __FILE__, __LINE__); \
  } while (0)
#define CUBLAS_CHECK(expr)                                                              \
  do {                                                                                  \
    cublasStatus_t vm_s_ = (expr);                                                      \
    if (vm_s_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::vm::kernels::cuda::detail::cublas_fail(vm_s_, #expr, __FILE__, __LINE__);       \
  } while (0)
#define CURAND_CHECK(expr)                                                              \
  do {                                                                                  \
    curandStatus_t vm_s_ = (expr);                                                      \
    if (vm_s_ != CURAND_STATUS_SUCCESS)                                                 \
      ::vm::kernels::cuda::detail::curand_fail(vm_s_, #expr, __FILE__, __LINE__);       \
  } while (0)
// After a <<<...>>> launch: configuration errors surface here, asynchronous
// faults at the next synchronising call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace vm::kernels::cuda {

// This host thread's context, created on first use (throws vm::Error without a device).
struct Staging;  // the pinned upload ring (device.cu; core/cuda/staging.h)
struct Context {
  int device = 0;
  int sm_count = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  bool pool = false;  // stream-ordered allocator available
  Staging* staging = nullptr;
};
Context& context();
inline cudaStream_t stream() { return context().stream; }

namespace detail {

// Blocks for a 1-D launch over n items with `block` threads, capped (kernels
// use grid-stride loops, so any cap is correct).
inline unsigned grid_for(int64_t n, int block, int64_t cap = 65535LL * 8) {
  int64_t g = (n + block - 1) / block;
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return (unsigned)g;
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every
// thread gets the result. Contains __syncthreads: call from all threads.
template <class T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T part[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  T r = lane < nw ? part[lane] : T(0);
  return warp_sum(r);
}
template <class T>
__device__ __forceinline__ T block_max(T v) {
  __shared__ T part[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  T r = lane < nw ? part[lane] : v;
  return warp_max(r);
}

// A group of threads that owns one row: one warp (BLOCK = false: blockDim.x/32
// rows per block) or the whole block (BLOCK = true). Reductions are
// deterministic: a fixed tree for a fixed launch configuration.
template <bool BLOCK>
struct RowGroup {
  int tid, size;
  int64_t row;
  __device__ __forceinline__ RowGroup() {
    if constexpr (BLOCK) {
      tid = threadIdx.x;
      size = blockDim.x;
      row = blockIdx.x;
    } else {
      tid = threadIdx.x & 31;
      size = 32;
      row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    }
  }
  template <class T>
  __device__ __forceinline__ T sum(T v) const {
    if constexpr (BLOCK) return block_sum(v);
    else return warp_sum(v);
  }
  template <class T>
  __device__ __forceinline__ T max(T v) const {
    if constexpr (BLOCK) return block_max(v);
    else return warp_max(v);
  }
};

// Grid for a row kernel: `rows` rows, one warp or one block each.
inline unsigned row_grid(int64_t rows, bool block_per_row, int block) {
  int64_t per = block_per_row ? 1 : block / 32;
  int64_t g = (rows + per - 1) / per;
  return (unsigned)(g < 1 ? 1 : g);
}

// Checked narrowing for cuBLAS / launch dimensions.
int to_int(int64_t v, const char* what);

// Before launching `kernel` with `dynamic` bytes of dynamic shared memory:
// checks its static + dynamic shared memory against the device's opt-in
// limit per block (cudaDevAttrMaxSharedMemoryPerBlockOptin; a clear vm::Error
// from check_shared_memory past it), and raises the kernel's dynamic limit
// (cudaFuncAttributeMaxDynamicSharedMemorySize) when `dynamic` exceeds the
// default (48 KB minus the static part). Host-side queries only: no sync.
void prepare_dynamic_smem_raw(const void* kernel, size_t dynamic, const std::string& what);
template <class K>
void prepare_dynamic_smem(K* kernel, size_t dynamic, const std::string& what) {
  prepare_dynamic_smem_raw(reinterpret_cast<const void*>(kernel), dynamic, what);
}

// Precision-explicit math (float -> expf etc., double -> exp): never the
// fast intrinsics, so the kernels follow the CPU formulas' precision.
__device__ __forceinline__ float vexp(float x) { return expf(x); }
__device__ __forceinline__ double vexp(double x) { return ::exp(x); }
__device__ __forceinline__ float vlog(float x) { return logf(x); }
__device__ __forceinline__ double vlog(double x) { return ::log(x); }
__device__ __forceinline__ float vlog1p(float x) { return log1pf(x); }
__device__ __forceinline__ double vlog1p(double x) { return ::log1p(x); }
__device__ __forceinline__ float vsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double vsqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float vtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double vtanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float vpow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double vpow(double x, double p) { return ::pow(x, p); }
__device__ __forceinline__ float vabs(float x) { return fabsf(x); }
__device__ __forceinline__ double vabs(double x) { return ::fabs(x); }
template <class T>
__device__ __forceinline__ T vinf() {
  return (T)INFINITY;
}
// Products that must not be contracted into an FMA with a following add
// (bit-for-bit agreement with a CPU loop that rounds the product first).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

}  // namespace detail
}  // namespace vm::kernels::cuda
