#include "nn/optim.h"

#include <algorithm>
#include <cmath>

#include "autodiff/ops.h"
#include "kernels/cpu/rowwise.h"
#include "kernels/optim.h"
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

// ‖g‖ = sqrt(Σ_p Σ_b s_p,b), s_p,b = Σ_{i ∈ block b of p} g_i² (double,
// kernels::sum_squares), blocks of kNormBlock floats; the blocks are summed
// in parallel and added in parameter and block order, so the norm does not
// depend on the thread count.
double global_grad_norm(ParamStore& params) {
  constexpr int64_t kNormBlock = 1 << 16;
  std::vector<std::pair<const float*, int64_t>> blocks;  // (first float, length)
#ifdef VMOER_HAVE_CUDA
  std::vector<kernels::cuda::GradSpan> dev;  // device gradients: Σ g² in double on the GPU, one transfer
#endif
  for (auto& [name, v] : params.all()) {
    if (!v.requires_grad() || !v.grad().defined()) continue;
#ifdef VMOER_HAVE_CUDA
    if (v.grad().is_cuda()) {
      dev.push_back({v.grad().data(), v.grad().numel()});
      continue;
    }
#endif
    const float* g = v.grad().data();
    const int64_t n = v.grad().numel();
    for (int64_t b = 0; b < n; b += kNormBlock) blocks.push_back({g + b, std::min(kNormBlock, n - b)});
  }
  std::vector<double> part(blocks.size());
#pragma omp parallel for schedule(dynamic, 4) if (blocks.size() > 8)
  for (int64_t k = 0; k < (int64_t)blocks.size(); ++k)
    part[(size_t)k] = kernels::sum_squares(blocks[(size_t)k].first, blocks[(size_t)k].second);
  double s = 0;
  for (double x : part) s += x;
#ifdef VMOER_HAVE_CUDA
  if (!dev.empty()) s += kernels::cuda::sum_squares(dev);
#endif
  return std::sqrt(s);
}

static bool no_decay(const std::string& name) {
  // norm gains/biases, biases and embeddings' positional table keep no decay
  return name.find("norm") != std::string::npos || (name.size() >= 2 && name.compare(name.size() - 2, 2, ".b") == 0);
}

void AdamW::to(Device dev) {
  for (auto& [name, mv] : state_) {
    mv.first = mv.first.to(dev);
    mv.second = mv.second.to(dev);
  }
}

double AdamW::step(ParamStore& params) { return step(params, global_grad_norm(params)); }

void AdamW::set_owned(std::map<std::string, OwnedSlice> owned) {
  owned_ = std::move(owned);
  for (auto& [name, mv] : state_) {
    auto o = owned_.find(name);
    if (o == owned_.end() || mv.first.numel() == o->second.count) continue;
    VM_CHECK(mv.first.numel() == o->second.full, "adamw: state of '" + name + "' has " +
                                                     std::to_string(mv.first.numel()) + " floats, the parameter " +
                                                     std::to_string(o->second.full));
    for (Tensor* t : {&mv.first, &mv.second}) {  // keep [first, first + count)
      const Tensor h = t->to(Device::CPU);
      Tensor cut(o->second.shape);
      std::copy(h.data() + o->second.first, h.data() + o->second.first + o->second.count, cut.data());
      *t = cut.to(t->device());
    }
  }
}

int64_t AdamW::state_floats() const {
  int64_t n = 0;
  for (auto& [name, mv] : state_) n += mv.first.numel() + mv.second.numel();
  return n;
}

std::vector<AdamWRow> AdamW::table(ParamStore& params) {
  std::vector<AdamWRow> rows;
  for (auto& [name, v] : params.all()) {
    if (!v.requires_grad() || !v.grad().defined()) continue;
    auto it = state_.find(name);
    Device dev = v.value().device();
    // an owned slice (expert sharding): the update reads and writes those floats only
    auto own = owned_.find(name);
    const bool sliced = own != owned_.end();
    // (the parameter holds the full tensor, or only the slice: then all of it)
    const int64_t first = sliced && v.numel() != own->second.count ? own->second.first : 0;
    const int64_t n = sliced ? own->second.count : v.numel();
    VM_CHECK(!sliced || v.numel() == own->second.full || v.numel() == own->second.count,
             "adamw: '" + name + "' holds " + std::to_string(v.numel()) + " floats, neither the tensor's " +
                 std::to_string(own->second.full) + " nor the owned slice's " + std::to_string(own->second.count));
    const Shape& sshape = sliced ? own->second.shape : v.shape();
    if (it == state_.end()) it = state_.emplace(name, std::make_pair(Tensor(sshape, dev), Tensor(sshape, dev))).first;
    VM_CHECK(it->second.first.numel() == n, "adamw: state of '" + name + "' holds " +
                                                std::to_string(it->second.first.numel()) + " floats, the update " +
                                                std::to_string(n));
    VM_CHECK(it->second.first.device() == dev && v.grad().device() == dev,
             "adamw: state of '" + name + "' is on " + device_name(it->second.first.device()) + ", parameter on " +
                 device_name(dev) + " (move the optimizer state with AdamW::to)");
    kernels::AdamWTensor t{v.value().data() + first, v.grad().data() + first, it->second.first.data(),
                           it->second.second.data(), n, no_decay(name) ? 0.0f : (float)cfg_.weight_decay};
    rows.push_back({name, dev, t});
  }
  return rows;
}

double AdamW::step(ParamStore& params, double norm) {
  float scale = 1.0f;
  if (cfg_.clip > 0 && norm > cfg_.clip) scale = (float)(cfg_.clip / (norm + 1e-6));
  ++t_;
  last_lr_ = lr_at(cfg_, t_);
  // One table per device, in parameter order: the CPU runs its rows one by
  // one (the clipping scale, then adamw_step), the GPU all of them in one launch.
  std::vector<kernels::AdamWTensor> host, device;
  for (const AdamWRow& r : table(params)) (r.device == Device::CUDA ? device : host).push_back(r.t);
  const kernels::AdamWHyper h{(float)last_lr_, (float)cfg_.beta1, (float)cfg_.beta2, (float)cfg_.eps, t_, scale};
  if (!host.empty()) kernels::adamw_multi(host, h);
#ifdef VMOER_HAVE_CUDA
  if (!device.empty()) kernels::cuda::adamw_multi(device, h);
#endif
  return norm;
}

}  // namespace vm::nn
