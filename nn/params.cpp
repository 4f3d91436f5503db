#include "nn/params.h"

namespace vm::nn {

uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

Var& ParamStore::normal(const std::string& name, Shape shape, double std, uint64_t seed) {
  VM_CHECK(!has(name), "parameter '" + name + "' created twice");
  Tensor t(std::move(shape));
  uint64_t stream = name_hash(name);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = (float)std * philox_normal(seed, stream, (uint64_t)i);
  params_.emplace_back(name, Var(std::move(t), true, name));
  return params_.back().second;
}

Var& ParamStore::constant(const std::string& name, Shape shape, float value) {
  VM_CHECK(!has(name), "parameter '" + name + "' created twice");
  params_.emplace_back(name, Var(Tensor::full(std::move(shape), value), true, name));
  return params_.back().second;
}

const Var* ParamStore::find(const std::string& name) const {
  for (auto& [n, v] : params_)
    if (n == name) return &v;
  return nullptr;
}

Var& ParamStore::get(const std::string& name) {
  for (auto& [n, v] : params_)
    if (n == name) return v;
  fail("no parameter named '" + name + "'");
}

std::vector<std::pair<std::string, Var>> ParamStore::trainable() const {
  std::vector<std::pair<std::string, Var>> out;
  for (auto& p : params_)
    if (p.second.requires_grad()) out.push_back(p);
  return out;
}

int ParamStore::set_trainable(const std::string& pattern, bool trainable) {
  std::regex re;
  try {
    re = std::regex(pattern);
  } catch (const std::regex_error&) {
    fail("bad parameter pattern '" + pattern + "' (ECMAScript regex)");
  }
  int n = 0;
  for (auto& [name, v] : params_)
    if (std::regex_search(name, re)) {
      v.set_requires_grad(trainable);
      ++n;
    }
  return n;
}

int64_t ParamStore::count(bool only_trainable) const {
  int64_t n = 0;
  for (auto& [name, v] : params_)
    if (!only_trainable || v.requires_grad()) n += v.numel();
  return n;
}

void ParamStore::zero_grad() {
  for (auto& [name, v] : params_) v.zero_grad();
}

void ParamStore::to(Device dev) {
  for (auto& [name, v] : params_) {
    v.value() = v.value().to(dev);
    v.zero_grad();
  }
}

Device ParamStore::device() const { return params_.empty() ? Device::CPU : params_.front().second.value().device(); }

}  // namespace vm::nn
