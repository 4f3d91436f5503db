// experiments/data_parallel.cpp — see data_parallel.h.
#include "experiments/data_parallel.h"

#include <cmath>

#include "autodiff/ops.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif

namespace vm::exp::dp {

ShardRange shard_range(int S, int ranks, int rank) {
  return {(int)((int64_t)rank * S / ranks), (int)((int64_t)(rank + 1) * S / ranks)};
}

GradLayout grad_layout(nn::ParamStore& ps) {
  GradLayout L;
  for (auto& [name, v] : ps.all()) {
    if (!v.requires_grad()) continue;
    L.names.push_back(name);
    L.offset.push_back(L.total);
    L.numel.push_back(v.numel());
    L.total += v.numel();
  }
  return L;
}

// n floats from src to dst, both on `dev`.
static void copy_floats(float* dst, const float* src, int64_t n, Device dev) {
#ifdef VMOER_HAVE_CUDA
  if (dev == Device::CUDA) {
    kernels::cuda::copy_d2d(dst, src, (size_t)n * sizeof(float));
    return;
  }
#endif
  std::copy(src, src + n, dst);
}

Tensor take_grads(nn::ParamStore& ps, const GradLayout& L, std::vector<uint8_t>& defined) {
  const Device dev = ps.device();
  Tensor g({L.total}, dev);  // zeros
  defined.resize(L.names.size(), 0);
  for (size_t k = 0; k < L.names.size(); ++k) {
    Var& v = ps.get(L.names[k]);
    if (!v.grad().defined()) continue;
    defined[k] = 1;
    copy_floats(g.data() + L.offset[k], v.grad().data(), L.numel[k], dev);
    v.zero_grad();
  }
  return g;
}

void put_grads(nn::ParamStore& ps, const GradLayout& L, const Tensor& g, const std::vector<uint8_t>& defined) {
  for (size_t k = 0; k < L.names.size(); ++k) {
    Var& v = ps.get(L.names[k]);
    if (!defined[k]) {
      v.zero_grad();
      continue;
    }
    Tensor t(v.shape(), g.device(), false);
    copy_floats(t.data(), g.data() + L.offset[k], L.numel[k], g.device());
    v.grad() = t;
  }
}

std::string first_nonfinite(const GradLayout& L, const Tensor& g) {
  if (g.is_cuda()) {  // a finite sum means every element is finite: one scalar leaves the GPU
    NoGradGuard ng;
    if (std::isfinite(ops::sum_all(Var(g)).item())) return "";
  }
  const Tensor h = g.to(Device::CPU);
  for (size_t k = 0; k < L.names.size(); ++k)
    for (int64_t i = L.offset[k]; i < L.offset[k] + L.numel[k]; ++i)
      if (!std::isfinite(h[i])) return L.names[k];
  return "";
}

void add_into(Tensor& a, const Tensor& b) {
  NoGradGuard ng;
  a = ops::add(Var(a), Var(b)).value();
}

void allreduce_grads(Tensor& g, int64_t bucket) {
  if (!dist::active()) return;
  if (!g.is_cuda()) {
    dist::allreduce_sum(g.data(), g.numel(), bucket, "gradient all-reduce");
    return;
  }
  if (dist::nccl_usable()) {
    dist::device_allreduce_sum(g.data(), g.numel(), "gradient all-reduce");
    return;
  }
  Tensor h = g.to(Device::CPU);
  dist::allreduce_sum(h.data(), h.numel(), bucket, "gradient all-reduce");
  g = h.to(g.device());
}

uint64_t state_hash(nn::ParamStore& ps) {
  uint64_t h = 1469598103934665603ULL;
  for (auto& [name, v] : ps.all()) {
    const Tensor t = v.value().to(Device::CPU);
    const unsigned char* b = reinterpret_cast<const unsigned char*>(t.data());
    for (int64_t i = 0; i < t.numel() * (int64_t)sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
  return h;
}

}  // namespace vm::exp::dp
