// core/cuda/device.cu — error reporting, device discovery, the per-thread
// context (stream + cuBLAS handle) and the stream-ordered caching allocator.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

#include <cstring>
#include <vector>

#include "core/cuda/device.cuh"
#include "core/cuda/staging.h"

namespace vm::kernels::cuda {
namespace detail {

namespace {
std::string where(const char* expr, const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line) + ": " + expr + ": ";
}
const char* curand_status_name(curandStatus_t s) {
  switch (s) {
    case CURAND_STATUS_VERSION_MISMATCH: return "CURAND_STATUS_VERSION_MISMATCH";
    case CURAND_STATUS_NOT_INITIALIZED: return "CURAND_STATUS_NOT_INITIALIZED";
    case CURAND_STATUS_ALLOCATION_FAILED: return "CURAND_STATUS_ALLOCATION_FAILED";
    case CURAND_STATUS_TYPE_ERROR: return "CURAND_STATUS_TYPE_ERROR";
    case CURAND_STATUS_OUT_OF_RANGE: return "CURAND_STATUS_OUT_OF_RANGE";
    case CURAND_STATUS_LENGTH_NOT_MULTIPLE: return "CURAND_STATUS_LENGTH_NOT_MULTIPLE";
    case CURAND_STATUS_DOUBLE_PRECISION_REQUIRED: return "CURAND_STATUS_DOUBLE_PRECISION_REQUIRED";
    case CURAND_STATUS_LAUNCH_FAILURE: return "CURAND_STATUS_LAUNCH_FAILURE";
    case CURAND_STATUS_PREEXISTING_FAILURE: return "CURAND_STATUS_PREEXISTING_FAILURE";
    case CURAND_STATUS_INITIALIZATION_FAILED: return "CURAND_STATUS_INITIALIZATION_FAILED";
    case CURAND_STATUS_ARCH_MISMATCH: return "CURAND_STATUS_ARCH_MISMATCH";
    case CURAND_STATUS_INTERNAL_ERROR: return "CURAND_STATUS_INTERNAL_ERROR";
    default: return "CURAND_STATUS_UNKNOWN";
  }
}
}  // namespace

void cuda_fail(cudaError_t e, const char* expr, const char* file, int line) {
  throw vm::Error(where(expr, file, line) + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
void cublas_fail(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw vm::Error(where(expr, file, line) + cublasGetStatusName(s) + ": " + cublasGetStatusString(s));
}
void curand_fail(curandStatus_t s, const char* expr, const char* file, int line) {
  throw vm::Error(where(expr, file, line) + curand_status_name(s) + " (" + std::to_string((int)s) + ")");
}

void prepare_dynamic_smem_raw(const void* kernel, size_t dynamic, const std::string& what) {
  cudaFuncAttributes a{};
  CUDA_CHECK(cudaFuncGetAttributes(&a, kernel));
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, context().device));
  check_shared_memory(what, a.sharedSizeBytes, dynamic, (size_t)optin);
  if (dynamic > (size_t)a.maxDynamicSharedSizeBytes)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dynamic));
}

int to_int(int64_t v, const char* what) {
  if (v < 0 || v > INT32_MAX)
    throw vm::Error(std::string("cuda: ") + what + " = " + std::to_string(v) + " does not fit a 32-bit int");
  return (int)v;
}

}  // namespace detail

// ---- discovery --------------------------------------------------------------------
int cuda_device_count() {
  static const int count = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error (no driver / no device)
      return 0;
    }
    return n;
  }();
  return count;
}

bool cuda_device_available() { return cuda_device_count() > 0; }

std::string cuda_device_name() {
  if (!cuda_device_available()) return "no CUDA device";
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return "no CUDA device";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return "no CUDA device";
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs, " +
         std::to_string((unsigned long long)(prop.totalGlobalMem >> 20)) + " MiB)";
}

// ---- context ----------------------------------------------------------------------
// The pinned upload ring of a thread (see copy_h2d): made on the first upload;
// host == nullptr after a failed cudaHostAlloc (every upload then waits).
struct Staging {
  bool tried = false;
  void* host = nullptr;
  StagingRing<cudaEvent_t> ring{kStagingBytes};
  std::vector<cudaEvent_t> spare;  // events of finished copies, for reuse
};

namespace {
std::atomic<int> g_selected{-1};  // select_device's choice, for every thread's context
}  // namespace

int select_device(int local_rank) {
  const int n = cuda_device_count();
  if (n == 0) return -1;
  const int dev = local_rank % n;
  g_selected.store(dev);
  CUDA_CHECK(cudaSetDevice(dev));
  return dev;
}

namespace {
struct ContextOwner {
  Context c;
  Staging staging;
  ~ContextOwner() {
    // Best effort at thread exit; errors here cannot be reported.
    if (c.blas) cublasDestroy(c.blas);
    if (c.stream) {
      cudaStreamSynchronize(c.stream);
      cudaStreamDestroy(c.stream);
    }
    while (staging.ring.in_flight() > 0) {
      cudaEventDestroy(staging.ring.ticket(0));
      staging.ring.retire_oldest();
    }
    for (cudaEvent_t e : staging.spare) cudaEventDestroy(e);
    if (staging.host) cudaFreeHost(staging.host);
  }
};

std::once_flag g_pool_once;

void configure_pool(int dev) {
  // Keep freed memory cached in the pool (release threshold = max): the
  // caching-allocator behaviour, ordered by the stream.
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
    uint64_t thr = UINT64_MAX;
    (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &thr);
  }
  (void)cudaGetLastError();
}
}  // namespace

Context& context() {
  thread_local std::unique_ptr<ContextOwner> owner;
  if (!owner) {
    if (!cuda_device_available()) throw vm::Error("cuda: no CUDA device (cudaGetDeviceCount found none)");
    auto o = std::make_unique<ContextOwner>();
    if (int sel = g_selected.load(); sel >= 0) CUDA_CHECK(cudaSetDevice(sel));  // the device is per host thread
    CUDA_CHECK(cudaGetDevice(&o->c.device));
    CUDA_CHECK(cudaDeviceGetAttribute(&o->c.sm_count, cudaDevAttrMultiProcessorCount, o->c.device));
    int pools = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, o->c.device));
    o->c.pool = pools != 0;
    if (o->c.pool) std::call_once(g_pool_once, configure_pool, o->c.device);
    CUDA_CHECK(cudaStreamCreate(&o->c.stream));
    CUBLAS_CHECK(cublasCreate(&o->c.blas));
    CUBLAS_CHECK(cublasSetStream(o->c.blas, o->c.stream));
    o->c.staging = &o->staging;
    owner = std::move(o);
  }
  return owner->c;
}

// ---- synchronisation counts --------------------------------------------------------
namespace {
std::atomic<uint64_t> g_h2d{0}, g_d2h{0}, g_waits{0}, g_staged{0};
}  // namespace
SyncCounts sync_counts() { return {g_h2d.load(), g_d2h.load(), g_waits.load(), g_staged.load()}; }
void reset_sync_counts() {
  g_h2d = 0;
  g_d2h = 0;
  g_waits = 0;
  g_staged = 0;
}

// ---- memory -----------------------------------------------------------------------
void* device_malloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  Context& c = context();
  void* p = nullptr;
  if (c.pool) {
    cudaError_t e = cudaMallocAsync(&p, bytes, c.stream);
    if (e == cudaErrorMemoryAllocation) {  // give cached blocks back and retry once
      (void)cudaGetLastError();
      ++g_waits;
      CUDA_CHECK(cudaStreamSynchronize(c.stream));
      trim_pool();
      e = cudaMallocAsync(&p, bytes, c.stream);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw vm::Error("cuda: cannot allocate " + std::to_string(bytes) + " bytes: " + cudaGetErrorString(e));
    }
  } else {
    CUDA_CHECK(cudaMalloc(&p, bytes));
  }
  return p;
}

void device_free(void* p) noexcept {
  if (!p) return;
  try {
    Context& c = context();
    cudaError_t e = c.pool ? cudaFreeAsync(p, c.stream) : cudaFree(p);
    if (e != cudaSuccess) {
      std::fprintf(stderr, "vmoer cuda: free failed: %s\n", cudaGetErrorString(e));
      (void)cudaGetLastError();
    }
  } catch (...) {
  }
}

namespace {
// An upload through the pinned ring (core/cuda/staging.h): false when it cannot
// take these bytes (too many, or no pinned memory), and the caller copies and waits.
bool staged_h2d(Context& c, void* dst, const void* src, size_t bytes) {
  Staging& st = *c.staging;
  if (!st.tried) {
    st.tried = true;
    if (cudaHostAlloc(&st.host, kStagingBytes, cudaHostAllocDefault) != cudaSuccess) {
      (void)cudaGetLastError();
      st.host = nullptr;
    }
  }
  if (!st.host || !st.ring.fits(bytes)) return false;
  StagingRing<cudaEvent_t>& ring = st.ring;
  auto retire = [&] {
    st.spare.push_back(ring.ticket(0));
    ring.retire_oldest();
  };
  while (ring.in_flight() > 0) {  // finished copies free their slices without a wait
    cudaError_t q = cudaEventQuery(ring.ticket(0));
    if (q == cudaErrorNotReady) {
      (void)cudaGetLastError();
      break;
    }
    CUDA_CHECK(q);
    retire();
  }
  const auto r = ring.reserve(bytes);
  if (r.must_finish > 0) {  // the slice is still being copied from: wait for that copy
    ++g_waits;
    CUDA_CHECK(cudaEventSynchronize(ring.ticket(r.must_finish - 1)));
    for (size_t i = 0; i < r.must_finish; ++i) retire();
  }
  char* slice = static_cast<char*>(st.host) + r.offset;
  std::memcpy(slice, src, bytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, slice, bytes, cudaMemcpyHostToDevice, c.stream));
  cudaEvent_t ev;
  if (st.spare.empty()) {
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  } else {
    ev = st.spare.back();
    st.spare.pop_back();
  }
  CUDA_CHECK(cudaEventRecord(ev, c.stream));
  ring.commit(r, ev);
  ++g_staged;
  return true;
}
}  // namespace

void copy_h2d(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  Context& c = context();
  if (staged_h2d(c, dst, src, bytes)) return;
  ++g_h2d;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c.stream));
  CUDA_CHECK(cudaStreamSynchronize(c.stream));
}
void copy_d2h(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  Context& c = context();
  ++g_d2h;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c.stream));
  CUDA_CHECK(cudaStreamSynchronize(c.stream));
}
void copy_d2d(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}
void fill_bytes(void* dst, int value, size_t bytes) {
  if (!bytes) return;
  CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream()));
}
void synchronize() {
  cudaStream_t s = stream();
  ++g_waits;
  CUDA_CHECK(cudaStreamSynchronize(s));
}

void check_shared_memory(const std::string& what, size_t static_bytes, size_t dynamic_bytes, size_t limit) {
  if (static_bytes + dynamic_bytes <= limit) return;
  throw vm::Error(what + ": needs " + std::to_string(static_bytes) + " bytes of static + " +
                  std::to_string(dynamic_bytes) + " bytes of dynamic shared memory per block; the device allows at most " +
                  std::to_string(limit));
}

namespace {
template <class T>
__global__ void fill_k(T* p, int64_t n, T v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    p[i] = v;
}
}  // namespace

template <class T>
void fill_value(T* p, int64_t n, T v) {
  if (n <= 0) return;
  constexpr int kBlock = 256;
  fill_k<<<detail::grid_for(n, kBlock), kBlock, 0, stream()>>>(p, n, v);
  CUDA_CHECK_LAUNCH();
}
template void fill_value<int32_t>(int32_t*, int64_t, int32_t);
template void fill_value<float>(float*, int64_t, float);
template void fill_value<double>(double*, int64_t, double);

PoolStats pool_stats() {
  PoolStats s;
  Context& c = context();
  if (!c.pool) return s;
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, c.device));
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &s.reserved));
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &s.used));
  return s;
}

void trim_pool() {
  Context& c = context();
  if (!c.pool) return;
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, c.device));
  CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
}

}  // namespace vm::kernels::cuda
