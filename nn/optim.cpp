#include "nn/optim.h"

#include <cmath>

#include "autodiff/ops.h"
#include "kernels/cpu/rowwise.h"
#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/rowwise.h"
#endif

namespace vm::nn {

double lr_at(const AdamWConfig& c, int64_t step) {
  if (c.warmup > 0 && step <= c.warmup) return c.lr * (double)step / (double)c.warmup;
  double denom = std::max<int64_t>(1, c.total_steps - c.warmup);
  double prog = std::min(1.0, (double)(step - c.warmup) / (double)denom);
  double minlr = c.lr * c.min_lr_ratio;
  return minlr + 0.5 * (c.lr - minlr) * (1.0 + std::cos(M_PI * prog));
}

double global_grad_norm(ParamStore& params) {
  double s = 0;
  Var dev_sum;  // device gradients: Σ g² summed on the GPU (float), one transfer at the end
  for (auto& [name, v] : params.all()) {
    if (!v.requires_grad() || !v.grad().defined()) continue;
    if (v.grad().is_cuda()) {
      NoGradGuard ng;
      Var g(v.grad());
      Var sq = ops::sum_all(ops::mul(g, g));
      dev_sum = dev_sum.defined() ? ops::add(dev_sum, sq) : sq;
      continue;
    }
    const float* g = v.grad().data();
    for (int64_t i = 0; i < v.numel(); ++i) s += (double)g[i] * g[i];
  }
  if (dev_sum.defined()) s += (double)dev_sum.item();
  return std::sqrt(s);
}

static bool no_decay(const std::string& name) {
  // norm gains/biases, biases and embeddings' positional table keep no decay
  return name.find("norm") != std::string::npos || name.size() >= 2 && name.compare(name.size() - 2, 2, ".b") == 0;
}

void AdamW::to(Device dev) {
  for (auto& [name, mv] : state_) {
    mv.first = mv.first.to(dev);
    mv.second = mv.second.to(dev);
  }
}

double AdamW::step(ParamStore& params) { return step(params, global_grad_norm(params)); }

double AdamW::step(ParamStore& params, double norm) {
  float scale = 1.0f;
  if (cfg_.clip > 0 && norm > cfg_.clip) scale = (float)(cfg_.clip / (norm + 1e-6));
  ++t_;
  last_lr_ = lr_at(cfg_, t_);
  for (auto& [name, v] : params.all()) {
    if (!v.requires_grad() || !v.grad().defined()) continue;
    auto it = state_.find(name);
    Device dev = v.value().device();
    if (it == state_.end())
      it = state_.emplace(name, std::make_pair(Tensor(v.shape(), dev), Tensor(v.shape(), dev))).first;
    VM_CHECK(it->second.first.device() == dev,
             "adamw: state of '" + name + "' is on " + device_name(it->second.first.device()) + ", parameter on " +
                 device_name(dev) + " (move the optimizer state with AdamW::to)");
    Tensor& g = v.grad();
#ifdef VMOER_HAVE_CUDA
    if (dev == Device::CUDA) {
      if (scale != 1.0f) {
        NoGradGuard ng;
        g = ops::mul_scalar(Var(g), (double)scale).value();
      }
      kernels::cuda::adamw_step(v.value().data(), g.data(), it->second.first.data(), it->second.second.data(),
                                v.numel(), (float)last_lr_, (float)cfg_.beta1, (float)cfg_.beta2, (float)cfg_.eps,
                                no_decay(name) ? 0.0f : (float)cfg_.weight_decay, t_);
      continue;
    }
#endif
    if (scale != 1.0f)
      for (int64_t i = 0; i < g.numel(); ++i) g[i] *= scale;
    kernels::adamw_step(v.value().data(), g.data(), it->second.first.data(), it->second.second.data(), v.numel(),
                        (float)last_lr_, (float)cfg_.beta1, (float)cfg_.beta2, (float)cfg_.eps,
                        no_decay(name) ? 0.0f : (float)cfg_.weight_decay, t_);
  }
  return norm;
}

}  // namespace vm::nn
