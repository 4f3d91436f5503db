// experiments/data_parallel.cpp — see data_parallel.h.
#include "experiments/data_parallel.h"

#include <cmath>

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

std::vector<float> take_grads(nn::ParamStore& ps, const GradLayout& L, std::vector<uint8_t>& defined) {
  std::vector<float> g((size_t)L.total, 0.0f);
  defined.resize(L.names.size(), 0);
  for (size_t k = 0; k < L.names.size(); ++k) {
    Var& v = ps.get(L.names[k]);
    if (!v.grad().defined()) continue;
    defined[k] = 1;
    const Tensor h = v.grad().to(Device::CPU);  // no copy on the CPU
    std::copy(h.data(), h.data() + L.numel[k], g.data() + L.offset[k]);
    v.zero_grad();
  }
  return g;
}

void put_grads(nn::ParamStore& ps, const GradLayout& L, const std::vector<float>& g, const std::vector<uint8_t>& defined) {
  for (size_t k = 0; k < L.names.size(); ++k) {
    Var& v = ps.get(L.names[k]);
    if (!defined[k]) {
      v.zero_grad();
      continue;
    }
    Tensor t(v.shape());
    std::copy(g.data() + L.offset[k], g.data() + L.offset[k] + L.numel[k], t.data());
    v.grad() = t.to(v.value().device());
  }
}

std::string first_nonfinite(const GradLayout& L, const std::vector<float>& g) {
  for (size_t k = 0; k < L.names.size(); ++k)
    for (int64_t i = L.offset[k]; i < L.offset[k] + L.numel[k]; ++i)
      if (!std::isfinite(g[(size_t)i])) return L.names[k];
  return "";
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
