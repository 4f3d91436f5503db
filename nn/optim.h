// nn/optim.h — AdamW with decoupled weight decay, cosine schedule with linear
// warm-up, global-norm gradient clipping.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/fields.h"
#include "kernels/optim.h"
#include "nn/params.h"

namespace vm::nn {

struct AdamWConfig {
  double lr = 3e-4;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  double min_lr_ratio = 0.1;  // cosine decays to lr · min_lr_ratio
  int64_t warmup = 0;
  int64_t total_steps = 1;    // set from --steps by the trainer
  double clip = 1.0;          // max global grad norm; 0 = off
  bool operator==(const AdamWConfig&) const = default;
};

}  // namespace vm::nn

namespace vm {
// One row per member (core/fields.h); the flags are `vmoer train`'s.
template <>
struct FieldTable<nn::AdamWConfig> {
  using C = nn::AdamWConfig;
  static constexpr auto rows = std::tuple{
      VM_FIELD(lr, "--lr", Group::optimisation, Use::train, "peak learning rate"),
      VM_FIELD(beta1, "--adam-beta1", Group::optimisation, Use::train, "AdamW β1"),
      VM_FIELD(beta2, "--adam-beta2", Group::optimisation, Use::train, "AdamW β2"),
      VM_FIELD(eps, "--adam-eps", Group::optimisation, Use::train, "AdamW ε"),
      VM_FIELD(weight_decay, "--weight-decay", Group::optimisation, Use::train, "AdamW decoupled weight decay"),
      VM_FIELD(min_lr_ratio, "--min-lr-ratio", Group::optimisation, Use::train, "cosine floor as a fraction of --lr"),
      VM_FIELD(warmup, "--warmup", Group::optimisation, Use::train, "linear warm-up steps"),
      VM_FIELD(total_steps, "", Group::optimisation, Use::derived, "no flag: the trainer sets it to --steps"),
      VM_FIELD(clip, "--clip", Group::optimisation, Use::train, "max global grad norm (0 = off)"),
  };
};
static_assert(fields_complete<nn::AdamWConfig>(), "every member of AdamWConfig needs a row in its table");
}  // namespace vm

namespace vm::nn {

// One row of the optimiser's table: a trainable parameter with a gradient,
// its device and the buffers the update reads and writes.
struct AdamWRow {
  std::string name;
  Device device;
  kernels::AdamWTensor t;
};

// lr at step s (1-based): linear warm-up to lr, then cosine to lr·min_lr_ratio.
double lr_at(const AdamWConfig& c, int64_t step);

// Expert sharding (--expert-parallel P; docs/SCALE.md §8): of an expert
// tensor (E, a, b) this rank updates only its own experts' floats
// [first, first + count) — member q of P: first = q·(E/P)·a·b, count =
// (E/P)·a·b — and keeps (m, v) for those alone, each shaped `shape`
// ((E/P, a, b)); `full` is the tensor's numel. The parameter may hold the
// full tensor or only the slice (sharded weights: then all of its floats).
struct OwnedSlice {
  int64_t first = 0, count = 0, full = 0;
  Shape shape;
};

class AdamW {
 public:
  explicit AdamW(AdamWConfig cfg) : cfg_(cfg) {}
  // Update every parameter that requires grad; returns the pre-clip grad norm.
  // Parameters whose name matches no_decay_pattern (norm gains, biases) skip weight decay.
  // Device parameters are updated on the GPU with the state kept beside them,
  // all in one launch (kernels/optim.h adamw_multi over table()).
  double step(ParamStore& params);
  // The same with the pre-clip norm already computed (global_grad_norm of
  // these gradients; the trainer's non-finite check needs it first): on the
  // GPU the norm is one device-to-host read, not made twice.
  double step(ParamStore& params, double grad_norm);
  // The rows the next step updates, in parameter order (trainable, with a
  // gradient); creates the (m, v) state of a parameter seen for the first time.
  std::vector<AdamWRow> table(ParamStore& params);
  void to(Device dev);  // move the (m, v) state, e.g. after ParamStore::to
  int64_t steps_done() const { return t_; }
  void set_steps_done(int64_t t) { t_ = t; }
  std::map<std::string, std::pair<Tensor, Tensor>>& state() { return state_; }  // name -> (m, v)
  // From now on the parameters named in `owned` are updated on their slice
  // only; a full-size state already held for one (a loaded checkpoint's) is
  // cut to the slice (the checkpoint's shard of this rank).
  void set_owned(std::map<std::string, OwnedSlice> owned);
  const std::map<std::string, OwnedSlice>& owned() const { return owned_; }
  // Floats of (m, v) state this rank holds (2 per updated float).
  int64_t state_floats() const;
  const AdamWConfig& config() const { return cfg_; }
  double last_lr() const { return last_lr_; }

 private:
  AdamWConfig cfg_;
  int64_t t_ = 0;
  double last_lr_ = 0;
  std::map<std::string, std::pair<Tensor, Tensor>> state_;
  std::map<std::string, OwnedSlice> owned_;
};

// sqrt(Σ grad²) over trainable parameters with a gradient (double accumulation
// per block, blocks added in a fixed order: the same for any thread count).
double global_grad_norm(ParamStore& params);

}  // namespace vm::nn
