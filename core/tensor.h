// core/tensor.h — a minimal dense tensor: row-major, contiguous, up to 4 dims,
// 64-byte aligned storage on the host or device storage on the GPU (the
// CUDA backend's stream-ordered pool, core/cuda/device.h). Templated on the
// scalar so the same code runs in float32 (the product) and float64
// (finite-difference checks).
//
// Device tensors: data() is then a device pointer, to be passed to the CUDA
// kernels only; operator[] and the loops that use it are for host tensors.
// to(Device) copies across; clone, fill, item, to_vector and cast work on
// either device. Building a CUDA tensor without the CUDA backend, or on a
// machine without a GPU, throws vm::Error saying which.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace vm {

enum class Device { CPU, CUDA };
const char* device_name(Device d);

// Every shape/argument problem in the library throws this with a message that
// names the op and the shapes, e.g. "matmul: (4,8) x (7,3): inner dimensions differ".
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void fail(const std::string& msg);
#define VM_CHECK(cond, msg)              \
  do {                                   \
    if (!(cond)) ::vm::fail(msg);        \
  } while (0)

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "(4,8)"
int64_t shape_numel(const Shape& s);

// 64-byte aligned heap buffer shared between tensors that view the same data
// (reshape shares; everything else copies).
void* aligned_alloc64(size_t bytes);
void aligned_free64(void* p);
// The caching allocator's bytes: `live` handed out and not yet freed, `cached`
// freed and kept for reuse (idle), and the most that were ever live at once.
struct PoolStats {
  size_t live = 0, cached = 0, peak_live = 0;
};
PoolStats pool_stats();

template <class T>
class TensorT {
 public:
  TensorT() = default;
  explicit TensorT(Shape shape, Device dev = Device::CPU, bool zero = true);  // zero-filled unless zero=false
  static TensorT zeros(Shape shape) { return TensorT(std::move(shape)); }
  // Uninitialised storage, for outputs an op overwrites completely.
  static TensorT empty(Shape shape) { return TensorT(std::move(shape), Device::CPU, false); }
  static TensorT full(Shape shape, T value);
  static TensorT from(const std::vector<T>& values, Shape shape);
  static TensorT scalar(T value) { return from({value}, {}); }
  // Uninitialised / zero storage on a given device.
  static TensorT empty(Shape shape, Device dev) { return TensorT(std::move(shape), dev, false); }

  const Shape& shape() const { return shape_; }
  int ndim() const { return (int)shape_.size(); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return numel_; }
  bool defined() const { return (bool)buf_; }
  Device device() const { return device_; }

  T* data() { return buf_.get(); }
  const T* data() const { return buf_.get(); }
  T& operator[](int64_t i) { return buf_.get()[i]; }
  const T& operator[](int64_t i) const { return buf_.get()[i]; }
  T item() const;  // single-element tensor -> value

  TensorT clone() const;                 // same device
  TensorT to(Device dev) const;          // copy to dev (a shallow copy when already there)
  bool is_cuda() const { return device_ == Device::CUDA; }
  TensorT reshaped(Shape new_shape) const;  // shares storage; -1 infers one dim
  void fill(T v);
  std::vector<T> to_vector() const;  // host copy of the values (either device)
  template <class U>
  TensorT<U> cast() const {
    if (device_ != Device::CPU) return to(Device::CPU).template cast<U>().to(device_);
    TensorT<U> out(shape_);
    for (int64_t i = 0; i < numel_; ++i) out[i] = (U)(*this)[i];
    return out;
  }

 private:
  std::shared_ptr<T> buf_;
  Shape shape_;
  int64_t numel_ = 0;
  Device device_ = Device::CPU;
};

using Tensor = TensorT<float>;
using TensorD = TensorT<double>;

// The values of single-element tensors, in order, read together: those on
// the GPU are gathered there and come down in one transfer (one wait, where
// reading them one by one with item() waits once each); host ones are read
// directly.
template <class T>
std::vector<T> items(const std::vector<const TensorT<T>*>& ts);

// A list of int32 indices (a selection's (N, k) row-major, a row list) on the
// device of the op that made it, with a host copy made on first host use: on
// the GPU the MoE dispatch and take_cols read the chosen experts where the
// top-K kernel wrote them, and only a caller that looks at them on the host
// (inspection, evaluation traces, tests) pays the one download. Copies share
// the values and the host copy. A host vector converts implicitly.
class Indices {
 public:
  Indices() : Indices(std::vector<int32_t>{}) {}
  Indices(std::vector<int32_t> host);      // NOLINT(google-explicit-constructor): a host list is host Indices
  explicit Indices(TensorT<int32_t> values);  // the values of a tensor (any shape), on its device
  Device device() const;
  size_t size() const;
  bool empty() const { return size() == 0; }
  // The values as a 1-d tensor on dev: the stored tensor when it is there,
  // else a copy (an upload of the host values).
  TensorT<int32_t> on(Device dev) const;
  // The values on the host (downloaded once from the GPU, then kept).
  const std::vector<int32_t>& host() const;
  bool on_host() const;  // host() costs nothing
  operator const std::vector<int32_t>&() const { return host(); }  // NOLINT(google-explicit-constructor)
  int32_t operator[](size_t i) const { return host()[i]; }
  std::vector<int32_t>::const_iterator begin() const { return host().begin(); }
  std::vector<int32_t>::const_iterator end() const { return host().end(); }

 private:
  struct State {
    TensorT<int32_t> t;  // 1-d; undefined for a host list until on(CPU) asks
    std::vector<int32_t> h;
    bool have_h = false;
  };
  std::shared_ptr<State> s_;
};
inline bool operator==(const Indices& a, const Indices& b) { return a.host() == b.host(); }
inline bool operator==(const Indices& a, const std::vector<int32_t>& b) { return a.host() == b; }

// Resolve a possibly negative axis against ndim, with a clear error.
int norm_axis(int axis, int ndim, const char* op);

}  // namespace vm
