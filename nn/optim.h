// nn/optim.h — AdamW with decoupled weight decay, cosine schedule with linear
// warm-up, global-norm gradient clipping.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "nn/params.h"

namespace vm::nn {

struct AdamWConfig {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double min_lr_ratio = 0.1;  // cosine decays to lr · min_lr_ratio
  int64_t warmup = 0, total_steps = 1;
  double clip = 1.0;          // max global grad norm; 0 = off
};

// lr at step s (1-based): linear warm-up to lr, then cosine to lr·min_lr_ratio.
double lr_at(const AdamWConfig& c, int64_t step);

class AdamW {
 public:
  explicit AdamW(AdamWConfig cfg) : cfg_(cfg) {}
  // Update every parameter that requires grad; returns the pre-clip grad norm.
  // Parameters whose name matches no_decay_pattern (norm gains, biases) skip weight decay.
  // Device parameters are updated on the GPU (kernels/cuda adamw_step), with
  // the state kept beside them.
  double step(ParamStore& params);
  void to(Device dev);  // move the (m, v) state, e.g. after ParamStore::to
  int64_t steps_done() const { return t_; }
  void set_steps_done(int64_t t) { t_ = t; }
  std::map<std::string, std::pair<Tensor, Tensor>>& state() { return state_; }  // name -> (m, v)
  const AdamWConfig& config() const { return cfg_; }
  double last_lr() const { return last_lr_; }

 private:
  AdamWConfig cfg_;
  int64_t t_ = 0;
  double last_lr_ = 0;
  std::map<std::string, std::pair<Tensor, Tensor>> state_;
};

// sqrt(Σ grad²) over trainable parameters with a gradient (double accumulation, fixed order).
double global_grad_norm(ParamStore& params);

}  // namespace vm::nn
