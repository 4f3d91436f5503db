// core/cuda/device.h — the CUDA runtime pieces the rest of the project
// (and the tests, compiled as plain C++) may use: device discovery, a
// stream-ordered caching allocator, RAII device buffers and copies.
//
// Plain C++ on purpose (no CUDA headers): tests/test_cuda.cpp and any .cpp
// file can include it. Kernel sources include core/cuda/device.cuh, which
// adds the CUDA-specific helpers (error-check macros, the stream, cuBLAS).
//
// Context: every host thread gets its own context on first use — one CUDA
// stream and one cuBLAS handle bound to it. All kernels of this backend are
// launched on the calling thread's stream, so a sequence of calls from one
// thread is ordered without explicit synchronisation; results a host function
// returns by value (a download: the dispatch sizes, a logged scalar)
// synchronise, uploads do not (copy_h2d).
//
// Allocator: device_malloc/device_free use the device's stream-ordered memory
// pool (cudaMallocAsync / cudaFreeAsync on the context stream) with the release
// threshold raised to "never", i.e. a caching allocator whose reuse is ordered
// by the stream: a buffer freed after enqueuing the kernels that read it can be
// handed out again at once without a race. Devices without pool support fall
// back to cudaMalloc/cudaFree.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vm::kernels::cuda {

// True when a CUDA driver and at least one device are present. Never throws
// and never aborts: on a machine without a driver or GPU it returns false.
bool cuda_device_available();
int cuda_device_count();  // 0 without driver/device
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" or "no CUDA device".
std::string cuda_device_name();
// Several processes per machine (mpirun): process-wide, every host thread's
// context uses device local_rank % cuda_device_count() (call before any other
// CUDA use; no-op without a device). Returns the device, or -1.
int select_device(int local_rank);

// ---- memory --------------------------------------------------------------------
void* device_malloc(size_t bytes);  // stream-ordered on this thread's stream; throws vm::Error
void device_free(void* p) noexcept;
// Host <-> device copies. copy_h2d returns as soon as the host bytes are
// copied into the thread's pinned staging ring (core/cuda/staging.h; uploads
// up to kStagingBytes): the host memory is free at once and the work queued
// after it on the stream sees the data, without the host waiting for the GPU
// (it waits only when the ring's slice is still being copied from, a lap
// later). Larger uploads, or all of them where pinned memory cannot be had,
// wait for the copy. copy_d2h returns when the copy is complete (it
// synchronises the context stream); d2d and fill are asynchronous on it.
// Device memory is ordered by this thread's stream only: a buffer is used on
// the thread that made it (as the stream-ordered allocator already requires).
inline constexpr size_t kStagingBytes = size_t(16) << 20;
void copy_h2d(void* dst_dev, const void* src_host, size_t bytes);
void copy_d2h(void* dst_host, const void* src_dev, size_t bytes);
void copy_d2d(void* dst_dev, const void* src_dev, size_t bytes);
void fill_bytes(void* dst_dev, int byte_value, size_t bytes);
// p[i] = v for i < n (T = int32_t, float, double; asynchronous, like fill_bytes)
template <class T>
void fill_value(T* p, int64_t n, T v);
void synchronize();  // wait for everything enqueued on this thread's stream
// Host <-> device synchronisations: every call above that makes the host wait
// for the GPU counts one, over all threads — the only ways this backend waits,
// so tests can bound the waits of a training step (tests/test_cuda_ops.cpp):
//   h2d    an upload that waited (larger than the staging ring, or no pinned memory)
//   d2h    a download (always waits)
//   waits  synchronize(), the allocator's retry after an out-of-memory, and an
//          upload that had to wait for its staging slice to be free
// `staged` counts the uploads that went through the ring without waiting (not a wait).
struct SyncCounts {
  uint64_t h2d = 0, d2h = 0, waits = 0;
  uint64_t staged = 0;
  uint64_t total() const { return h2d + d2h + waits; }
};
SyncCounts sync_counts();
void reset_sync_counts();
// A launch's shared memory: throws vm::Error("<what>: needs S bytes of static
// + D bytes of dynamic shared memory per block; the device allows at most L")
// when static_bytes + dynamic_bytes > limit. (Plain arithmetic: no device needed.)
void check_shared_memory(const std::string& what, size_t static_bytes, size_t dynamic_bytes, size_t limit);
// Bytes the pool holds from the driver (reserved) and hands out (used).
struct PoolStats {
  uint64_t reserved = 0, used = 0;
};
PoolStats pool_stats();
void trim_pool();  // return cached, unused memory to the driver

// An owning device array of n elements of T (trivially copyable T only).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_) p_ = static_cast<T*>(device_malloc(n_ * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host.data(), host.size()); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  bool empty() const { return n_ == 0; }

  void upload(const T* host, size_t n) { copy_h2d(p_, host, n * sizeof(T)); }
  void upload(const std::vector<T>& host) { upload(host.data(), host.size()); }
  void download(T* host, size_t n) const { copy_d2h(host, p_, n * sizeof(T)); }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    if (n_) download(h.data(), n_);
    return h;
  }
  void zero() {
    if (n_) fill_bytes(p_, 0, bytes());
  }
  void reset() noexcept {
    if (p_) device_free(p_);
    p_ = nullptr;
    n_ = 0;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace vm::kernels::cuda
