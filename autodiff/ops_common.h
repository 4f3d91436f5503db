// autodiff/ops_common.h — what the op files share (not public API).
//
// One definition per op serves both devices: it validates its arguments,
// takes the device of its inputs (device_of), allocates its outputs there and
// calls that device's kernel through VM_RUN — kernels::name on the CPU,
// kernels::cuda::name on the GPU, one signature for both (kernels/table.h) —
// in its forward and in its backward closure. So the tape (autodiff/tape.h)
// is the same on either device, and a graph built on device tensors runs end
// to end on the GPU.
//
// Host <-> device traffic on the GPU: integer arguments given on the host
// (ids, targets, row lists) are uploaded (ints_on), through the staging ring
// without a wait (core/cuda/device.h copy_h2d); Indices already on the device
// (topk_gates' experts, the routers' selections) are read there. No op
// downloads: cross_entropy keeps its loss on the GPU and its backward reads
// the output gradient there; only ops::topk (and topk_gates past the warp
// top-K's limits) select on a host copy.
#pragma once
#include <memory>
#include <string>

#include "autodiff/accumulate.h"
#include "autodiff/ops.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/layout.h"
#include "kernels/moe.h"
#include "kernels/nn.h"
#include "kernels/rowwise.h"

// The kernel `name` of device `dev`, called with the same arguments on either.
// Without the CUDA backend no device tensor can exist: only the CPU kernel is named.
#ifdef VMOER_HAVE_CUDA
#define VM_RUN(dev, name, ...) \
  ((dev) == ::vm::Device::CUDA ? ::vm::kernels::cuda::name(__VA_ARGS__) : ::vm::kernels::name(__VA_ARGS__))
#else
#define VM_RUN(dev, name, ...) ((void)(dev), ::vm::kernels::name(__VA_ARGS__))
#endif

// The float and double instances of op `name`, from its declaration in ops.h
// (after its definition, inside namespace vm::ops).
#define VM_INSTANTIATE_OP(name)                  \
  template decltype(name<float>) name<float>;    \
  template decltype(name<double>) name<double>;

namespace vm::ops::detail {

// The device of an op's inputs; inputs on different devices fail with
// "<op>: inputs on cpu and cuda" (no implicit copies).
template <class T, class... Rest>
Device device_of(const char* op, const VarT<T>& a, const Rest&... rest) {
  Device d = a.value().device();
  auto same = [&](const VarT<T>& v) {
    if (v.value().device() != d)
      fail(std::string(op) + ": inputs on " + device_name(d) + " and " + device_name(v.value().device()) +
           " (move them with Tensor::to first)");
  };
  (same(rest), ...);
  (void)same;  // single-input ops
  return d;
}
template <class T>
Device device_of(const char* op, const std::vector<VarT<T>>& xs) {
  for (auto& x : xs) device_of(op, xs[0], x);
  return xs.empty() ? Device::CPU : xs[0].value().device();
}

// An integer argument (host vector) where the kernels of `dev` read it (a
// staged upload on the GPU: no wait); the backward closures keep it (a copy
// of the tensor shares the storage).
inline TensorT<int32_t> ints_on(const std::vector<int32_t>& v, Device dev) {
  return TensorT<int32_t>::from(v, {(int64_t)v.size()}).to(dev);
}

// numpy broadcasting of two shapes, with "<op>: (a) and (b) do not broadcast".
Shape broadcast_shape(const Shape& a, const Shape& b, const char* op);
// parent's gradient buffer, or nullptr when that parent needs no gradient.
template <class T>
TensorT<T>* grad_of(Node<T>& self, size_t i) {
  auto& p = self.parents[i];
  return p->requires_grad ? &p->grad_buffer() : nullptr;
}
template <class T>
T* ptr(TensorT<T>* t) {
  return t ? t->data() : nullptr;
}
// View a tensor as (outer, n, inner) around `axis`.
inline void split_axis(const Shape& s, int ax, int64_t& outer, int64_t& n, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (int i = 0; i < ax; ++i) outer *= s[i];
  n = s[ax];
  for (int i = ax + 1; i < (int)s.size(); ++i) inner *= s[i];
}
// Indices (N, k) of the k largest entries of each row of x (N, E), ties to
// the lower index (host tensor): topk's selection.
template <class T>
std::vector<int32_t> topk_indices(const TensorT<T>& x, int k);
// rows/cols view of the last axis: (..., C) -> rows = numel / C, cols = C.
inline void rows_cols(const Shape& s, int64_t& rows, int64_t& cols) {
  cols = s.empty() ? 1 : s.back();
  rows = cols ? shape_numel(s) / cols : 0;
}

}  // namespace vm::ops::detail
