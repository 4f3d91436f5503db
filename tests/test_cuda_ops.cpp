// tests/test_cuda_ops.cpp — device tensors and the ops on them (core/tensor.h,
// the ops of autodiff/ops_*.cpp running their kernels/cuda twins):
//   (a) the op-case table's CUDA column: every case of tests/op_cases.cpp run
//       with its inputs on the GPU against the same case on the CPU — the
//       forward value and the gradient of every input, in float64 (only the
//       summation order and 1-ulp libm differences separate them, so the
//       tolerance is tight and any indexing slip shows) and in float32;
//   (b) one training step of the transformer (a dense block and a det-routed
//       MoE block, two configurations): loss, every parameter's gradient and
//       the parameters after one AdamW step, GPU vs CPU, same weights and batch;
//   (c) everywhere, with or without a GPU: a device tensor without a GPU (or
//       without the CUDA backend) fails in one line and Model::to leaves the
//       model where it was;
//   (d) every router (noisy, mc-dropout, sample-k, mfvr, fcvr, vtsr variants):
//       a stage-2 step (selected experts, loss, KL, penalty, gradients of the
//       router heads) and the S = 35 evaluation (router probabilities; the
//       fused S-sample kernel for mfvr/fcvr), GPU vs CPU.
// (a), (b) and (d) need a GPU; without one each prints one "no CUDA device" line.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/philox.h"
#include "nn/optim.h"
#include "nn/routers/common.h"
#include "experiments/train_guards.h"
#include "nn/transformer.h"
#include "tests/op_cases.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif

using namespace vm;
using namespace vm::testing;

namespace {

bool have_device() {
#ifdef VMOER_HAVE_CUDA
  return kernels::cuda::cuda_device_available();
#else
  return false;
#endif
}

bool skip_without_device(const std::string& name) {
  if (have_device()) return false;
#ifdef VMOER_HAVE_CUDA
  MESSAGE("no CUDA device: " << name << " skipped");
#else
  MESSAGE("no CUDA device (this build has no CUDA backend): " << name << " skipped");
#endif
  return true;
}

// |got − want| / max(|want|, floor), NaN-aware
double rel_err(double got, double want, double floor) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want) ? 0.0 : INFINITY;
  if (got == want) return 0.0;
  return std::abs(got - want) / std::max(std::abs(want), floor);
}
double max_rel_err(const TensorD& got, const TensorD& want, double floor) {
  REQUIRE(got.shape() == want.shape());
  double e = 0;
  for (int64_t i = 0; i < got.numel(); ++i) e = std::max(e, rel_err(got[i], want[i], floor));
  return e;
}

struct CaseRun {
  TensorD y;
  std::vector<TensorD> grads;
  std::vector<bool> arrived;
};

// One case on one device: forward, then backward of Σ w ⊙ y with a fixed random w.
template <class T>
CaseRun run_case(const OpCase& c, const std::vector<TensorD>& x, Device dev) {
  std::vector<VarT<T>> v;
  for (size_t i = 0; i < x.size(); ++i) v.emplace_back(x[i].cast<T>().to(dev), c.inputs[i].grad);
  VarT<T> y;
  if constexpr (std::is_same_v<T, float>) y = c.build_f(v);
  else y = c.build_d(v);
  CaseRun r;
  r.y = y.value().to(Device::CPU).template cast<double>();
  if (y.requires_grad()) {
    TensorD w(y.shape());
    normal()(w, hash_name(c.name) ^ 0x5eed);
    backward(y, w.cast<T>().to(dev));
  }
  for (auto& vi : v) {
    r.arrived.push_back(vi.grad().defined());
    r.grads.push_back(vi.grad().defined() ? vi.grad().to(Device::CPU).template cast<double>() : TensorD(vi.shape()));
  }
  return r;
}

template <class T>
void check_case_on_gpu(const OpCase& c, double tol_y, double tol_g) {
  auto x = make_inputs(c, false);
  CaseRun cpu = run_case<T>(c, x, Device::CPU);
  CaseRun gpu = run_case<T>(c, x, Device::CUDA);
  const char* prec = std::is_same_v<T, float> ? "float32" : "float64";
  INFO("case " << c.name << " (" << prec << ")");
  CHECK(max_rel_err(gpu.y, cpu.y, 1.0) <= tol_y);
  REQUIRE(gpu.grads.size() == cpu.grads.size());
  for (size_t i = 0; i < cpu.grads.size(); ++i) {
    INFO("gradient of input " << i);
    CHECK(gpu.arrived[i] == cpu.arrived[i]);
    CHECK(max_rel_err(gpu.grads[i], cpu.grads[i], 1.0) <= tol_g);
  }
}

}  // namespace

// ---- (a) the op table's CUDA column -------------------------------------------------------
TEST_CASE("cuda ops: every op-table case on the GPU matches the CPU, forward and gradients (float64, float32)") {
  if (skip_without_device("op-table CUDA column (" + std::to_string(op_cases().size()) + " cases)")) return;
  for (const OpCase& c : op_cases()) {
    // float64: the same formulas in a different summation order (trees on the
    // GPU, loops on the CPU) and CUDA's libm within 1 ulp of glibc's.
    check_case_on_gpu<double>(c, 1e-10, 1e-10);
    // float32: the same, at float precision; twice the case's own
    // float-vs-double tolerance (both sides carry float rounding), at least 1e-4.
    check_case_on_gpu<float>(c, std::max(2 * c.f32_tol, 1e-4), std::max(2 * c.f32_grad_tol, 1e-4));
  }
}

// ---- (b) one training step, GPU vs CPU -------------------------------------------------------
namespace {
struct StepResult {
  double loss = 0;
  std::vector<std::pair<std::string, TensorD>> grads, params_after;
  std::vector<int32_t> experts;  // layer-1 routing decisions
  std::vector<int64_t> counts;   // kept assignments per expert (the dispatch plan)
  int64_t dropped = 0;
};

StepResult train_step(const nn::ModelConfig& mc, Device dev) {
  nn::RouterConfig rc;  // det
  nn::Model model(mc, rc, /*seed=*/7);
  model.to(dev);
  const int B = 3, T = 12;
  std::vector<int32_t> ids(B * T), tg(B * T);
  std::vector<uint8_t> mask(B * T, 1);
  for (int i = 0; i < B * T; ++i) ids[i] = (int32_t)(philox_u32(11, 3, (uint64_t)i) % 256);
  for (int i = 0; i < B * T; ++i) tg[i] = (i % T == T - 1) ? -100 : ids[i + 1];
  for (int t = T - 3; t < T; ++t) {  // row 2 ends in padding
    mask[2 * T + t] = 0;
    tg[2 * T + t] = -100;
  }
  nn::ForwardOptions fo;
  fo.training = true;
  fo.seed = 5;
  auto res = model.forward_lm(ids, B, T, mask, {}, fo);
  Var loss = ops::cross_entropy(res.logits, tg);
  loss = ops::add(loss, ops::mul_scalar(res.lb_loss, 0.01));
  loss = ops::add(loss, ops::mul_scalar(res.z_loss, 1e-3));
  backward(loss);
  StepResult r;
  r.loss = loss.item();
  for (auto& a : res.moe) {
    r.experts.insert(r.experts.end(), a.route.experts.begin(), a.route.experts.end());
    r.counts.insert(r.counts.end(), a.expert_counts.begin(), a.expert_counts.end());
    r.dropped += a.dropped;
  }
  for (auto& [name, v] : model.params().all())
    r.grads.emplace_back(name, v.grad().defined() ? v.grad().to(Device::CPU).cast<double>() : TensorD(v.shape()));
  nn::AdamWConfig oc;
  oc.lr = 1e-3;
  oc.clip = 0.5;  // exercise the clipping path
  nn::AdamW opt(oc);
  opt.step(model.params());
  for (auto& [name, v] : model.params().all()) r.params_after.emplace_back(name, v.value().to(Device::CPU).cast<double>());
  return r;
}

// ||a − b|| / ||b|| (0 when both vanish)
double norm_rel(const TensorD& a, const TensorD& b) {
  double d = 0, n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    n += b[i] * b[i];
  }
  return n == 0 ? std::sqrt(d) : std::sqrt(d / n);
}
}  // namespace

TEST_CASE("cuda train step: transformer (dense + det-MoE block) loss, gradients and AdamW update match the CPU") {
  if (skip_without_device("transformer training step GPU vs CPU")) return;
  nn::ModelConfig a;
  a.max_seq = 16;
  a.d_model = 32;
  a.n_layers = 2;
  a.n_heads = 4;
  a.n_experts = 4;
  a.top_k = 2;
  a.d_expert = 48;
  a.moe_layers = {1};  // layer 0 dense FFN, layer 1 MoE
  nn::ModelConfig b = a;
  b.norm = "layer";
  b.act = "swiglu";
  b.tied_head = false;
  b.shared_expert = true;
  b.capacity_factor = 1.0;  // some tokens dropped
  for (const nn::ModelConfig& mc : {a, b}) {
    INFO("norm " << mc.norm << ", act " << mc.act);
    StepResult cpu = train_step(mc, Device::CPU), gpu = train_step(mc, Device::CUDA);
    // Routing is decided on float router probabilities; a flip here would be
    // a near-tie, not a kernel bug, and would make the gradients incomparable.
    REQUIRE(gpu.experts == cpu.experts);
    // the device dispatch plan (kernels/cuda/moe.h) against nn::plan_dispatch
    CHECK(gpu.counts == cpu.counts);
    CHECK(gpu.dropped == cpu.dropped);
    if (mc.capacity_factor > 0) CHECK(cpu.dropped > 0);  // the capacity path is exercised
    CHECK(rel_err(gpu.loss, cpu.loss, 1.0) <= 1e-5);
    for (size_t i = 0; i < cpu.grads.size(); ++i) {
      INFO("gradient of " << cpu.grads[i].first);
      // float32 through two blocks: different summation orders (cuBLAS vs
      // Eigen, trees vs loops) give ~1e-6 relative per op.
      CHECK(norm_rel(gpu.grads[i].second, cpu.grads[i].second) <= 1e-4);
    }
    // After one AdamW step the update is ≈ lr · sign(g) elementwise, so an
    // element whose gradient is at rounding level may move the other way;
    // every other element must agree closely.
    for (size_t i = 0; i < cpu.params_after.size(); ++i) {
      const TensorD &pg = gpu.params_after[i].second, &pc = cpu.params_after[i].second, &g = cpu.grads[i].second;
      double gmax = 0;
      for (int64_t k = 0; k < g.numel(); ++k) gmax = std::max(gmax, std::abs(g[k]));
      int64_t bad = 0;
      for (int64_t k = 0; k < pc.numel(); ++k)
        if (std::abs(pg[k] - pc[k]) > 1e-6 + 1e-5 * std::abs(pc[k]) && std::abs(g[k]) > 1e-4 * gmax) ++bad;
      INFO("parameter " << cpu.params_after[i].first);
      CHECK(bad == 0);
    }
  }
}

// ---- (b') host <-> device synchronisations of a training step -------------------------------------
// The device layer counts every wait of the host for the GPU
// (kernels::cuda::sync_counts). Uploads go through the pinned staging ring
// and do not wait (counted as `staged`); what waits is a download. A
// det-routed training step downloads, from the code:
//   per MoE layer  1  the dispatch plan's sizes (offsets, counts, wanted,
//                     dropped in one buffer): the expert GEMMs need the group
//                     sizes on the host (nn/moe.cpp device_plan); the chosen
//                     experts stay on the GPU (topk_gates' Indices), the mask
//                     and the load shares go up staged
//   per step       2  the logged loss (the trainer reads its scalars in one
//                     transfer, items()), and the global gradient norm
//                     (kernels/optim.h sum_squares); cross-entropy keeps its
//                     loss and reads its output gradient on the GPU, AdamW
//                     and the clipping are one launch with the table staged
// and nothing else: no upload waits (none is larger than the ring), nothing
// synchronises. Dense blocks add nothing. The update after backward waits
// exactly once (the norm's read), whatever the number of parameters; the old
// non-finite check downloaded every gradient (one wait per parameter, which
// first_nonfinite_grad still costs when it runs).
#ifdef VMOER_HAVE_CUDA
namespace {
struct StepSyncs {
  kernels::cuda::SyncCounts step, update, old_guard;
  int64_t params_with_grad = 0;
};
StepSyncs count_step_syncs(const nn::ModelConfig& mc) {
  namespace kc = kernels::cuda;
  nn::RouterConfig rc;  // det, no jitter
  nn::Model model(mc, rc, /*seed=*/7);
  model.to(Device::CUDA);
  const int B = 3, T = 12;
  std::vector<int32_t> ids(B * T), tg(B * T);
  std::vector<uint8_t> mask(B * T, 1);
  for (int i = 0; i < B * T; ++i) ids[i] = (int32_t)(philox_u32(11, 3, (uint64_t)i) % 256);
  for (int i = 0; i < B * T; ++i) tg[i] = (i % T == T - 1) ? -100 : ids[i + 1];
  nn::AdamWConfig oc;
  oc.clip = 0.5;
  nn::AdamW opt(oc);
  nn::ForwardOptions fo;
  fo.training = true;
  fo.seed = 5;
  kc::synchronize();
  kc::reset_sync_counts();
  auto res = model.forward_lm(ids, B, T, mask, {}, fo);
  Var loss = ops::cross_entropy(res.logits, tg);
  loss = ops::add(loss, ops::mul_scalar(res.lb_loss, 0.01));
  loss = ops::add(loss, ops::mul_scalar(res.z_loss, 1e-3));
  backward(loss);
  // the logged terms, read together as the trainer reads them
  const std::vector<float> logged = items<float>({&loss.value(), &res.lb_loss.value(), &res.z_loss.value()});
  CHECK(std::isfinite(logged[0]));
  const kc::SyncCounts before = kc::sync_counts();
  // the trainer's update (experiments/trainer.cpp): norm, guard, AdamW with that norm
  const double gn = nn::global_grad_norm(model.params());
  CHECK(std::isfinite(gn));
  CHECK(exp::nonfinite_grad_given_norm(model.params(), gn).empty());
  opt.step(model.params(), gn);
  StepSyncs r;
  r.step = kc::sync_counts();
  r.update = {r.step.h2d - before.h2d, r.step.d2h - before.d2h, r.step.waits - before.waits,
              r.step.staged - before.staged};
  kc::reset_sync_counts();
  CHECK(exp::first_nonfinite_grad(model.params()).empty());  // the check as it was
  r.old_guard = kc::sync_counts();
  for (auto& [name, v] : model.params().all()) r.params_with_grad += v.grad().defined() && v.numel() > 0;
  return r;
}
}  // namespace
#endif

TEST_CASE("cuda synchronisations: a det-routed step waits twice plus once per MoE layer; uploads never wait") {
  if (skip_without_device("synchronisations per training step")) return;
#ifdef VMOER_HAVE_CUDA
  nn::ModelConfig a;
  a.max_seq = 16;
  a.d_model = 32;
  a.n_layers = 2;
  a.n_heads = 4;
  a.n_experts = 4;
  a.top_k = 2;
  a.d_expert = 48;
  a.moe_layers = {1};
  nn::ModelConfig deeper = a;  // two more dense blocks: more parameters, the same MoE layer
  deeper.n_layers = 4;
  nn::ModelConfig two_moe = a;
  two_moe.moe_layers = {0, 1};
  StepSyncs sa = count_step_syncs(a), sd = count_step_syncs(deeper), s2 = count_step_syncs(two_moe);
  for (auto* s : {&sa, &sd, &s2}) {
    MESSAGE("step: " << s->step.h2d << " h2d + " << s->step.d2h << " d2h + " << s->step.waits << " waits ("
                     << s->step.staged << " uploads staged without a wait); update " << s->update.total()
                     << "; the old gradient check alone " << s->old_guard.total() << " for " << s->params_with_grad
                     << " gradients");
    // the update: the norm's one read, nothing else (the AdamW table goes up staged)
    CHECK(s->update.d2h == 1);
    CHECK(s->update.total() == 1);
    CHECK(s->update.staged >= 2);  // the norm's table and AdamW's
    // no upload waited: every one went through the staging ring
    CHECK(s->step.h2d == 0);
    CHECK(s->step.waits == 0);
    CHECK(s->step.staged > 0);
    // the old check: one download per gradient (what the update no longer does)
    CHECK((int64_t)s->old_guard.d2h == s->params_with_grad);
  }
  CHECK(sd.params_with_grad > sa.params_with_grad);
  // Dense blocks wait nowhere: more parameters, the same count.
  CHECK(sd.step.total() == sa.step.total());
  // The counted sites (above): 2 per step, 1 per MoE layer.
  const uint64_t per_layer = s2.step.total() - sa.step.total();
  MESSAGE("per MoE layer: " << per_layer);
  CHECK(per_layer == 1);
  CHECK(sa.step.total() == 2 + 1 * 1);
  CHECK(s2.step.total() == 2 + 1 * 2);
#endif
}

// ---- the fused KL kernels against the composed ops, at O(1) values --------------------------------
// (In a router at initialisation the KL is ~1e-5 per token, too small to test
// the kernels' arithmetic; here every term is O(1) and s² != 1.)
TEST_CASE("cuda KL: kl_mf / kl_fc fused kernels vs the composed CPU ops, value and gradients") {
  if (skip_without_device("fused KL vs composed ops")) return;
  const int64_t N = 7;
  const int E = 5;
  auto randn = [](Shape s, uint64_t seed, double scale) {
    Tensor t(s);
    PhiloxStream st{seed, 9, 0};
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = (float)(scale * st.normal());
    return t;
  };
  Tensor d = randn({N, E}, 1, 1.0), lv = randn({N, E}, 2, 0.5), L = randn({N, E, E}, 3, 0.5);
  for (int64_t n = 0; n < N; ++n)  // lower triangular, positive diagonal, as fill_tril_expdiag makes it
    for (int i = 0; i < E; ++i)
      for (int j = 0; j < E; ++j) {
        float& x = L[(n * E + i) * E + j];
        if (j > i) x = 0;
        if (j == i) x = 0.5f + std::abs(x);
      }
  TensorD w({N});
  normal()(w, 77);
  for (double s2 : {0.49, 2.25}) {
    for (bool full : {false, true}) {
      INFO((full ? "kl_fc" : "kl_mf") << " s2 = " << s2);
      std::vector<TensorD> val, gd, g2;
      for (Device dev : {Device::CPU, Device::CUDA}) {
        Var vd(d.to(dev), true), v2((full ? L : lv).to(dev), true);
        Var kl = full ? ops::kl_fc(vd, v2, s2) : ops::kl_mf(vd, v2, s2);
        backward(kl, w.cast<float>().to(dev));
        val.push_back(kl.value().to(Device::CPU).cast<double>());
        gd.push_back(vd.grad().to(Device::CPU).cast<double>());
        g2.push_back(v2.grad().to(Device::CPU).cast<double>());
      }
      CHECK(max_rel_err(val[1], val[0], 1.0) <= 1e-5);
      CHECK(max_rel_err(gd[1], gd[0], 1.0) <= 1e-5);
      CHECK(max_rel_err(g2[1], g2[0], 1.0) <= 1e-5);
    }
  }
}

// ---- (c) everywhere -------------------------------------------------------------------------------
TEST_CASE("device tensors: without a GPU a CUDA tensor fails in one line naming the reason") {
  if (have_device()) {
    Tensor t = Tensor::from({1, 2, 3}, {3}).to(Device::CUDA);
    CHECK(t.is_cuda());
    CHECK(t.to_vector() == std::vector<float>{1, 2, 3});
    CHECK(t.clone().to(Device::CPU).to_vector() == std::vector<float>{1, 2, 3});
    Tensor z({2, 2}, Device::CUDA);
    CHECK(z.to_vector() == std::vector<float>(4, 0.0f));
    z.fill(2.5f);
    CHECK(z.to_vector() == std::vector<float>(4, 2.5f));
    CHECK(Tensor::scalar(4).to(Device::CUDA).item() == 4.0f);
    return;
  }
  try {
    Tensor t({2, 3}, Device::CUDA);
    FAIL("a CUDA tensor was created without a GPU");
  } catch (const Error& e) {
    std::string m = e.what();
    CHECK(m.find("CUDA") != std::string::npos);
    CHECK(m.find('\n') == std::string::npos);
  }
  // host tensors: to(cpu) is a shallow copy, to_vector / item / cast unchanged
  Tensor h = Tensor::from({1, 2}, {2});
  CHECK(h.to(Device::CPU).data() == h.data());
  CHECK(h.to_vector() == std::vector<float>{1, 2});
}

TEST_CASE("Model::to: cpu is a no-op; cuda without a GPU fails in one line and leaves the model on the CPU") {
  nn::ModelConfig mc;
  mc.d_model = 16;
  mc.n_layers = 2;
  mc.n_heads = 2;
  mc.n_experts = 4;
  mc.d_expert = 16;
  mc.max_seq = 8;
  nn::RouterConfig rc;
  rc.name = "fcvr";
  nn::Model m(mc, rc, 1);
  const float* before = m.params().all().front().second.value().data();
  m.to(Device::CPU);
  CHECK(m.device() == Device::CPU);
  CHECK(m.params().all().front().second.value().data() == before);  // no copy
  if (have_device()) return;
  std::string msg;
  try {
    m.to(Device::CUDA);
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("CUDA") != std::string::npos);
  CHECK(msg.find('\n') == std::string::npos);
  for (auto& [name, v] : m.params().all()) CHECK(v.value().device() == Device::CPU);
}

// ---- (d) every router on the GPU: a stage-2 step and the S = 35 evaluation -------------------
namespace {
struct RouterRun {
  double loss = 0, kl = 0, penalty = 0;
  std::vector<std::vector<int32_t>> experts;  // per MoE layer
  std::vector<TensorD> probs;                 // per MoE layer (evaluation only)
  std::vector<std::pair<std::string, TensorD>> grads;
};

nn::ModelConfig router_model() {
  nn::ModelConfig mc;
  mc.max_seq = 16;
  mc.d_model = 32;
  mc.n_layers = 2;
  mc.n_heads = 4;
  mc.n_experts = 6;
  mc.top_k = 2;
  mc.d_expert = 32;
  return mc;
}

// training = true: one stage-2 step (only the router heads trainable; loss =
// CE + KL/N_real + penalty), gradients kept. training = false: evaluation with
// S = 35 samples (the fused kernel on the GPU), probabilities kept.
RouterRun router_run(const nn::RouterConfig& rc, Device dev, bool training) {
  nn::Model model(router_model(), rc, /*seed=*/3);
  model.to(dev);
  model.params().set_trainable(".*", false);
  model.params().set_trainable("\\.router\\.", true);
  const int B = 2, T = 10;
  std::vector<int32_t> ids(B * T), tg(B * T);
  std::vector<uint8_t> mask(B * T, 1);
  for (int i = 0; i < B * T; ++i) ids[i] = (int32_t)(philox_u32(21, 4, (uint64_t)i) % 256);
  for (int i = 0; i < B * T; ++i) tg[i] = (i % T == T - 1) ? -100 : ids[i + 1];
  for (int t = T - 3; t < T; ++t) {  // row 1 ends in padding: masked KL, penalty and dispatch
    mask[T + t] = 0;
    tg[T + t] = -100;
  }
  nn::ForwardOptions fo;
  fo.training = training;
  fo.seed = 9;
  fo.step = 4;
  fo.samples = training ? rc.train_samples : 35;
  RouterRun r;
  if (!training) {
    NoGradGuard ng;
    auto res = model.forward_lm(ids, B, T, mask, {}, fo);
    for (auto& a : res.moe) {
      r.experts.push_back(a.route.experts);
      r.probs.push_back(a.route.probs.value().to(Device::CPU).cast<double>());
    }
    return r;
  }
  auto res = model.forward_lm(ids, B, T, mask, {}, fo);
  Var loss = ops::add(ops::cross_entropy(res.logits, tg), ops::mul_scalar(res.kl, 1.0 / (B * T)));
  loss = ops::add(loss, res.penalty);
  backward(loss);
  r.loss = loss.item();
  r.kl = res.kl.item();
  r.penalty = res.penalty.item();
  for (auto& a : res.moe) r.experts.push_back(a.route.experts);
  for (auto& [name, v] : model.params().trainable())
    r.grads.emplace_back(name, v.grad().defined() ? v.grad().to(Device::CPU).cast<double>() : TensorD(v.shape()));
  return r;
}
}  // namespace

TEST_CASE("cuda routers: every router's stage-2 step and S = 35 evaluation on the GPU match the CPU") {
  if (skip_without_device("routers GPU vs CPU")) return;
  struct Variant {
    const char* name;
    std::function<void(nn::RouterConfig&)> set;
  };
  std::vector<Variant> variants{
      {"noisy", [](nn::RouterConfig& c) { c.name = "noisy"; }},
      {"mc-dropout", [](nn::RouterConfig& c) { c.name = "mc-dropout"; }},
      {"sample-k", [](nn::RouterConfig& c) { c.name = "sample-k"; }},
      {"sample-k authors", [](nn::RouterConfig& c) { c.name = "sample-k", c.vtsr_sampler = "authors"; }},
      {"mfvr", [](nn::RouterConfig& c) { c.name = "mfvr"; }},
      {"fcvr", [](nn::RouterConfig& c) { c.name = "fcvr"; }},
      {"fcvr S=4 train", [](nn::RouterConfig& c) { c.name = "fcvr", c.train_samples = 4; }},
      {"vtsr point", [](nn::RouterConfig& c) { c.name = "vtsr"; }},
      {"vtsr lognormal per-expert",
       [](nn::RouterConfig& c) { c.name = "vtsr", c.temp_posterior = "lognormal", c.temp_mode = "per-expert"; }},
      {"vtsr authors", [](nn::RouterConfig& c) { c.name = "vtsr", c.vtsr_sampler = "authors"; }},
  };
  for (auto& v : variants) {
    nn::RouterConfig rc;
    rc.prior_scale = 0.7;       // s² != 1: the 1/s² and log s² terms of the KL count
    rc.temp_prior_scale = 1.5;  // likewise for vtsr's lognormal prior
    v.set(rc);
    INFO("router " << v.name);
    // Stage-2 step. Selections are made on float values; a flip would be a
    // near-tie (CUDA's logf within 1 ulp of glibc's in the Gumbel noise),
    // which these seeds do not have.
    RouterRun c = router_run(rc, Device::CPU, true), g = router_run(rc, Device::CUDA, true);
    REQUIRE(g.experts == c.experts);
    CHECK(rel_err(g.loss, c.loss, 1.0) <= 1e-5);
    CHECK(rel_err(g.kl, c.kl, 1.0) <= 1e-5);
    CHECK(rel_err(g.penalty, c.penalty, 1.0) <= 1e-5);
    REQUIRE(g.grads.size() == c.grads.size());
    for (size_t i = 0; i < c.grads.size(); ++i) {
      INFO("gradient of " << c.grads[i].first);
      CHECK(norm_rel(g.grads[i].second, c.grads[i].second) <= 1e-4);
    }
    // Evaluation, S = 35: mfvr/fcvr run the fused S-sample kernel on the GPU
    // (one launch per layer) against the CPU's per-token loop, same noise.
    RouterRun ce = router_run(rc, Device::CPU, false), ge = router_run(rc, Device::CUDA, false);
    REQUIRE(ge.experts == ce.experts);
    for (size_t l = 0; l < ce.probs.size(); ++l) {
      INFO("layer " << l);
      CHECK(max_rel_err(ge.probs[l], ce.probs[l], 1.0) <= 1e-5);  // |Δp| (probabilities <= 1)
    }
  }
}
