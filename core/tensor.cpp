#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <malloc.h>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>

#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif

namespace vm {

// glibc returns large blocks (above a 128 KiB..32 MiB dynamic threshold) to the
// kernel on free and maps fresh zero pages on the next malloc, so Eigen's
// per-GEMM workspaces and other large temporaries paid a page fault per 4 KiB
// on every call. Keep freed memory in the heap instead.
namespace {
struct MallocTuning {
  MallocTuning() {
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
  }
} g_malloc_tuning;
}  // namespace

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

void fail(const std::string& msg) { throw Error(msg); }

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? "," : "") << s[i];
  o << ")";
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// A small caching allocator: freed buffers are kept in per-size free lists
// and handed out again, so the many same-sized temporaries of a training step
// neither hit the system allocator nor fault fresh pages in every step.
namespace {
struct Pool {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  std::unordered_map<void*, size_t> sizes;
  size_t cached = 0;
  size_t live = 0, peak_live = 0;  // bytes handed out (size classes), and their maximum
  static constexpr size_t kMaxCached = size_t(4) << 30;  // keep at most 4 GiB idle
};
Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction
  return *p;
}
}  // namespace

// Size classes: round up to a multiple of a quarter of the largest power of
// two below the size (at most 25% slack), so the buffers of batches whose
// sequence length varies (padded prompts) are reused instead of faulting in
// fresh pages every step.
static size_t size_class(size_t bytes) {
  size_t rounded = ((bytes + 63) / 64) * 64;
  if (rounded <= 4096) return rounded == 0 ? 64 : rounded;
  size_t p = size_t(1) << (63 - __builtin_clzll(rounded));
  size_t q = p / 4;
  return (rounded + q - 1) / q * q;
}

void* aligned_alloc64(size_t bytes) {
  size_t rounded = size_class(bytes);
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> g(P.mu);
    auto it = P.free_lists.find(rounded);
    if (it != P.free_lists.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      P.cached -= rounded;
      P.live += rounded;
      P.peak_live = std::max(P.peak_live, P.live);
      return p;
    }
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("out of memory allocating " + std::to_string(bytes) + " bytes");
  std::lock_guard<std::mutex> g(P.mu);
  P.sizes[p] = rounded;
  P.live += rounded;
  P.peak_live = std::max(P.peak_live, P.live);
  return p;
}

void aligned_free64(void* p) {
  if (!p) return;
  Pool& P = pool();
  std::lock_guard<std::mutex> g(P.mu);
  size_t n = P.sizes.at(p);
  P.live -= n;
  if (P.cached + n > Pool::kMaxCached) {
    P.sizes.erase(p);
    std::free(p);
    return;
  }
  P.free_lists[n].push_back(p);
  P.cached += n;
}

PoolStats pool_stats() {
  Pool& P = pool();
  std::lock_guard<std::mutex> g(P.mu);
  return {P.live, P.cached, P.peak_live};
}

int norm_axis(int axis, int ndim, const char* op) {
  int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    fail(std::string(op) + ": axis " + std::to_string(axis) + " out of range for " +
         std::to_string(ndim) + "-d tensor");
  return a;
}

// Device storage: at least one element, so that an empty device tensor is
// still defined(), as an empty host tensor is.
template <class T>
static std::shared_ptr<T> device_storage(int64_t numel, bool zero) {
#ifdef VMOER_HAVE_CUDA
  size_t bytes = sizeof(T) * (size_t)std::max<int64_t>(numel, 1);
  T* p = static_cast<T*>(kernels::cuda::device_malloc(bytes));
  std::shared_ptr<T> buf(p, [](T* q) { kernels::cuda::device_free(q); });
  if (zero) kernels::cuda::fill_bytes(p, 0, bytes);
  return buf;
#else
  (void)numel;
  (void)zero;
  fail("tensor: --device cuda needs the CUDA backend, and this build has none (configure with -DVMOER_CUDA=ON "
       "where nvcc is installed)");
#endif
}

template <class T>
TensorT<T>::TensorT(Shape shape, Device dev, bool zero) : shape_(std::move(shape)), device_(dev) {
  VM_CHECK(shape_.size() <= 4, "tensor: at most 4 dimensions, got " + shape_str(shape_));
  for (auto d : shape_) VM_CHECK(d >= 0, "tensor: negative dimension in " + shape_str(shape_));
  numel_ = shape_numel(shape_);
  if (dev == Device::CUDA) {
    buf_ = device_storage<T>(numel_, zero);
    return;
  }
  T* p = static_cast<T*>(aligned_alloc64(sizeof(T) * (size_t)numel_));
  if (zero) {
    size_t bytes = sizeof(T) * (size_t)numel_;
    if (bytes < (size_t(1) << 20)) {
      std::memset(p, 0, bytes);
    } else {  // large buffers: zero in parallel chunks
      const int64_t chunk = int64_t(1) << 18;
      int64_t nchunks = ((int64_t)bytes + chunk - 1) / chunk;
      char* base = reinterpret_cast<char*>(p);
#pragma omp parallel for schedule(static)
      for (int64_t c = 0; c < nchunks; ++c)
        std::memset(base + c * chunk, 0, (size_t)std::min<int64_t>(chunk, (int64_t)bytes - c * chunk));
    }
  }
  buf_ = std::shared_ptr<T>(p, [](T* q) { aligned_free64(q); });
}

template <class T>
TensorT<T> TensorT<T>::full(Shape shape, T value) {
  TensorT t(std::move(shape));
  t.fill(value);
  return t;
}

template <class T>
TensorT<T> TensorT<T>::from(const std::vector<T>& values, Shape shape) {
  TensorT t(std::move(shape));
  VM_CHECK((int64_t)values.size() == t.numel(),
           "tensor: " + std::to_string(values.size()) + " values for shape " + shape_str(t.shape()));
  // memcpy's pointers must be valid even for zero bytes; an empty vector's data() may be null.
  if (!values.empty()) std::memcpy(t.data(), values.data(), sizeof(T) * values.size());
  return t;
}

template <class T>
int64_t TensorT<T>::size(int dim) const {
  return shape_[norm_axis(dim, ndim(), "size")];
}

template <class T>
T TensorT<T>::item() const {
  VM_CHECK(numel_ == 1, "item: tensor of shape " + shape_str(shape_) + " is not a single value");
  if (device_ == Device::CUDA) return to_vector()[0];
  return data()[0];
}

template <class T>
TensorT<T> TensorT<T>::clone() const {
  TensorT t(shape_, device_, false);
  if (!numel_) return t;
#ifdef VMOER_HAVE_CUDA
  if (device_ == Device::CUDA) {
    kernels::cuda::copy_d2d(t.data(), data(), sizeof(T) * (size_t)numel_);
    return t;
  }
#endif
  std::memcpy(t.data(), data(), sizeof(T) * (size_t)numel_);
  return t;
}

template <class T>
TensorT<T> TensorT<T>::to(Device dev) const {
  if (dev == device_) return *this;
  TensorT t(shape_, dev, false);
  if (!numel_) return t;
#ifdef VMOER_HAVE_CUDA
  size_t bytes = sizeof(T) * (size_t)numel_;
  if (dev == Device::CUDA) kernels::cuda::copy_h2d(t.data(), data(), bytes);
  else kernels::cuda::copy_d2h(t.data(), data(), bytes);
#endif
  return t;
}

template <class T>
std::vector<T> TensorT<T>::to_vector() const {
  if (device_ == Device::CPU) return std::vector<T>(data(), data() + numel_);
  std::vector<T> v((size_t)numel_);
#ifdef VMOER_HAVE_CUDA
  if (numel_) kernels::cuda::copy_d2h(v.data(), data(), sizeof(T) * (size_t)numel_);
#endif
  return v;
}

template <class T>
TensorT<T> TensorT<T>::reshaped(Shape s) const {
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      VM_CHECK(infer < 0, "reshape: more than one -1 in " + shape_str(s));
      infer = (int)i;
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    VM_CHECK(known > 0 && numel_ % known == 0,
             "reshape: cannot infer -1 in " + shape_str(s) + " from " + shape_str(shape_));
    s[infer] = numel_ / known;
  }
  VM_CHECK(s.size() <= 4, "reshape: at most 4 dimensions, got " + shape_str(s));
  VM_CHECK(shape_numel(s) == numel_,
           "reshape: " + shape_str(shape_) + " -> " + shape_str(s) + ": element counts differ");
  TensorT t = *this;
  t.shape_ = std::move(s);
  return t;
}

template <class T>
void TensorT<T>::fill(T v) {
#ifdef VMOER_HAVE_CUDA
  if (device_ == Device::CUDA) {
    kernels::cuda::fill_value(data(), numel_, v);
    return;
  }
#endif
  T* p = data();
  for (int64_t i = 0; i < numel_; ++i) p[i] = v;
}

template class TensorT<float>;
template class TensorT<double>;
template class TensorT<int32_t>;

template <class T>
std::vector<T> items(const std::vector<const TensorT<T>*>& ts) {
  std::vector<T> out(ts.size());
  std::vector<size_t> dev;  // positions of the device values
  for (size_t i = 0; i < ts.size(); ++i) {
    VM_CHECK(ts[i] && ts[i]->numel() == 1, "items: value " + std::to_string(i) + " is not a single-element tensor");
    if (ts[i]->device() == Device::CPU) out[i] = ts[i]->data()[0];
    else dev.push_back(i);
  }
  if (dev.empty()) return out;
#ifdef VMOER_HAVE_CUDA
  TensorT<T> gathered({(int64_t)dev.size()}, Device::CUDA, false);
  for (size_t j = 0; j < dev.size(); ++j) kernels::cuda::copy_d2d(gathered.data() + j, ts[dev[j]]->data(), sizeof(T));
  const std::vector<T> h = gathered.to_vector();  // the one wait
  for (size_t j = 0; j < dev.size(); ++j) out[dev[j]] = h[j];
#endif
  return out;
}
template std::vector<float> items(const std::vector<const TensorT<float>*>&);
template std::vector<double> items(const std::vector<const TensorT<double>*>&);


// ---- Indices ------------------------------------------------------------------------
Indices::Indices(std::vector<int32_t> host) : s_(std::make_shared<State>()) {
  s_->h = std::move(host);
  s_->have_h = true;
}
Indices::Indices(TensorT<int32_t> values) : s_(std::make_shared<State>()) {
  VM_CHECK(values.defined(), "Indices: undefined tensor");
  s_->t = values.reshaped({values.numel()});
}
Device Indices::device() const { return s_->t.defined() ? s_->t.device() : Device::CPU; }
size_t Indices::size() const { return s_->have_h ? s_->h.size() : (size_t)s_->t.numel(); }
bool Indices::on_host() const { return s_->have_h || s_->t.device() == Device::CPU; }
TensorT<int32_t> Indices::on(Device dev) const {
  if (s_->t.defined() && s_->t.device() == dev) return s_->t;
  const std::vector<int32_t>& h = host();
  return TensorT<int32_t>::from(h, {(int64_t)h.size()}).to(dev);
}
const std::vector<int32_t>& Indices::host() const {
  if (!s_->have_h) {
    s_->h = s_->t.to_vector();
    s_->have_h = true;
  }
  return s_->h;
}

}  // namespace vm
