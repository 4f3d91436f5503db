// nn/params.h — the named parameters of a model, in creation order.
// Names are dotted paths ("layers.2.moe.w_router"); freezing and checkpoints
// address parameters by these names.
#pragma once
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "autodiff/tape.h"
#include "core/philox.h"

namespace vm::nn {

class ParamStore {
 public:
  // Create a parameter; init "normal" draws N(0, std²) from Philox stream
  // hash(name) under `seed` so every parameter's init is independent of the
  // creation order. "zeros" / "ones" fill a constant.
  Var& normal(const std::string& name, Shape shape, double std, uint64_t seed);
  Var& constant(const std::string& name, Shape shape, float value);
  Var& get(const std::string& name);
  const Var* find(const std::string& name) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }

  std::vector<std::pair<std::string, Var>>& all() { return params_; }
  const std::vector<std::pair<std::string, Var>>& all() const { return params_; }
  // Parameters that currently require grad (what the optimizer updates).
  std::vector<std::pair<std::string, Var>> trainable() const;
  // requires_grad = !frozen for every name matching the ECMAScript regex.
  int set_trainable(const std::string& pattern, bool trainable);
  int64_t count(bool only_trainable = false) const;
  void zero_grad();
  // Move every parameter to `dev` in place (the Vars the model holds see the
  // move: they share the nodes); gradients are dropped. Device of the first
  // parameter (cpu when there is none).
  void to(Device dev);
  Device device() const;

 private:
  std::vector<std::pair<std::string, Var>> params_;
};

uint64_t name_hash(const std::string& s);  // FNV-1a, 64-bit

}  // namespace vm::nn
