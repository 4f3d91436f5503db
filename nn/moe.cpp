#include "nn/moe.h"

#include <cmath>

#include "autodiff/accumulate.h"
#include "core/dist.h"
#include "core/philox.h"
#include "nn/noise.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#include "kernels/cuda/moe.h"
#endif

namespace vm::nn {

namespace {
// Assignments per expert before capacity, and the real tokens.
std::vector<int64_t> wanted_of(const std::vector<int32_t>& experts, int64_t N, int K, int E,
                               const std::vector<uint8_t>& mask, int64_t& n_real) {
  std::vector<int64_t> w(E, 0);
  n_real = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (!mask[n]) continue;
    ++n_real;
    for (int j = 0; j < K; ++j) ++w[experts[n * K + j]];
  }
  return w;
}
int64_t capacity_of(double capacity_factor, int64_t n_real, int K, int E) {
  return capacity_factor > 0 ? (int64_t)std::ceil(capacity_factor * (double)(n_real * K) / E) : INT64_MAX;
}
}  // namespace

DispatchPlan plan_dispatch(const std::vector<int32_t>& experts, int64_t N, int K, int E,
                           const std::vector<uint8_t>& mask, double capacity_factor) {
  int64_t n_real = 0;
  wanted_of(experts, N, K, E, mask, n_real);
  return plan_dispatch_capped(experts, N, K, E, mask,
                              std::vector<int64_t>((size_t)E, capacity_of(capacity_factor, n_real, K, E)));
}

std::vector<int64_t> ep_kept_counts(const std::vector<std::vector<int64_t>>& wanted,
                                    const std::vector<int64_t>& n_real, int K, int E, double capacity_factor) {
  const size_t P = wanted.size();
  int64_t total = 0;
  for (int64_t n : n_real) total += n;
  const int64_t cap = capacity_of(capacity_factor, total, K, E);
  std::vector<int64_t> kept(P * (size_t)E, 0);
  for (int e = 0; e < E; ++e) {
    int64_t before = 0;  // assignments of members before q
    for (size_t q = 0; q < P; ++q) {
      const int64_t left = cap == INT64_MAX ? INT64_MAX : std::max<int64_t>(cap - before, 0);
      kept[q * (size_t)E + (size_t)e] = std::min(wanted[q][(size_t)e], left);
      before += wanted[q][(size_t)e];
    }
  }
  return kept;
}

std::vector<int64_t> ep_kept_counts_own(const std::vector<std::vector<int64_t>>& wanted,
                                        const std::vector<int64_t>& n_real, int K, int E, double capacity_factor) {
  const size_t P = wanted.size();
  std::vector<int64_t> kept(P * (size_t)E, 0);
  for (size_t q = 0; q < P; ++q) {
    const int64_t cap = capacity_of(capacity_factor, n_real[q], K, E);
    for (int e = 0; e < E; ++e) kept[q * (size_t)E + (size_t)e] = std::min(wanted[q][(size_t)e], cap);
  }
  return kept;
}

DispatchPlan plan_dispatch_capped(const std::vector<int32_t>& experts, int64_t N, int K, int E,
                                  const std::vector<uint8_t>& mask, const std::vector<int64_t>& cap) {
  VM_CHECK((int)cap.size() == E, "plan_dispatch: " + std::to_string(cap.size()) + " capacities for " +
                                     std::to_string(E) + " experts");
  DispatchPlan p;
  int64_t n_real = 0;
  p.wanted = wanted_of(experts, N, K, E, mask, n_real);
  p.counts.assign(E, 0);
  for (int e = 0; e < E; ++e) p.counts[e] = std::min(p.wanted[e], cap[(size_t)e]);
  p.offsets.assign(E + 1, 0);
  for (int e = 0; e < E; ++e) p.offsets[e + 1] = p.offsets[e] + p.counts[e];
  int64_t M = p.offsets[E];
  p.token.resize(M);
  p.slot.resize(M);
  // Counting sort, stable in token order; the first `cap` tokens of an expert are kept.
  std::vector<int64_t> fill(p.offsets.begin(), p.offsets.end() - 1);
  for (int64_t n = 0; n < N; ++n) {
    if (!mask[n]) continue;
    for (int j = 0; j < K; ++j) {
      int e = experts[n * K + j];
      if (fill[e] == p.offsets[e + 1]) {
        ++p.dropped;
        continue;
      }
      p.token[fill[e]] = (int32_t)n;
      p.slot[fill[e]] = (int32_t)(n * K + j);
      ++fill[e];
    }
  }
  return p;
}

PlanSizes::PlanSizes(int E) : offsets(0), counts((size_t)E + 1), wanted(2 * (size_t)E + 1), dropped(3 * (size_t)E + 1),
                                 total(3 * (size_t)E + 2) {}

void PlanSizes::unpack(const std::vector<int64_t>& packed, std::vector<int64_t>& off, std::vector<int64_t>& cnt,
                       std::vector<int64_t>& want, int64_t& drop) const {
  VM_CHECK(packed.size() == total, "PlanSizes::unpack: " + std::to_string(packed.size()) + " values for " +
                                       std::to_string(total));
  off.assign(packed.begin() + (ptrdiff_t)offsets, packed.begin() + (ptrdiff_t)counts);
  cnt.assign(packed.begin() + (ptrdiff_t)counts, packed.begin() + (ptrdiff_t)wanted);
  want.assign(packed.begin() + (ptrdiff_t)wanted, packed.begin() + (ptrdiff_t)dropped);
  drop = packed[dropped];
}

#ifdef VMOER_HAVE_CUDA
namespace {
namespace kc = vm::kernels::cuda;

// The dispatch plan of a device batch, made on the GPU (kernels/cuda/moe.h
// moe_dispatch_plan: histogram, prefix sum, stable permutation, capacity —
// nn::plan_dispatch exactly) from the experts where the router chose them;
// ops::moe_gather / moe_combine then route the rows with it (no atomics;
// bit-identical to the ops path below).
struct DevicePlan {
  ops::MoEDispatch dispatch;  // token, slot, pos: (N*K) each on the GPU; the first M of token/slot are used
  std::vector<int64_t> offsets, counts, wanted;
  int64_t dropped = 0;
};

DevicePlan device_plan(const Indices& experts, const std::vector<uint8_t>& mask, int64_t N, int K, int E,
                       double capacity_factor) {
  DevicePlan p;
  Shape NK{std::max<int64_t>(N * K, 1)};
  const TensorT<int32_t> ex = experts.on(Device::CUDA);  // already there when the router ran on the GPU
  kc::DeviceBuffer<uint8_t> m(mask);                      // staged upload: no wait
  ops::MoEDispatch& d = p.dispatch;
  d.token = TensorT<int32_t>(NK, Device::CUDA, false);
  d.slot = TensorT<int32_t>(NK, Device::CUDA, false);
  d.pos = TensorT<int32_t>(NK, Device::CUDA, false);
  // offsets (E+1), counts (E), wanted (E), dropped (1) side by side: one download
  const PlanSizes at(E);
  kc::DeviceBuffer<int64_t> sizes(at.total);
  kc::moe_dispatch_plan(ex.data(), N > 0 ? m.data() : nullptr, N, K, E, capacity_factor, d.token.data(),
                        d.slot.data(), d.pos.data(), sizes.data() + at.offsets, sizes.data() + at.counts,
                        sizes.data() + at.wanted, sizes.data() + at.dropped);
  const std::vector<int64_t> h = sizes.to_host();  // the layer's one wait: the expert GEMMs need the group sizes
  at.unpack(h, p.offsets, p.counts, p.wanted, p.dropped);
  d.n = N;
  d.m = p.offsets[E];
  d.k = K;
  return p;
}
}  // namespace
#endif

Var moe_lb_loss(const Var& p_mean, const std::vector<int64_t>& wanted, float n_real, int K) {
  const int E = (int)wanted.size();
  Tensor f({1, (int64_t)E});
  for (int e = 0; e < E; ++e) f[e] = (float)wanted[e] / (n_real * (float)K);
  return ops::mul_scalar(ops::sum_all(ops::mul(p_mean, ops::constant(f.to(p_mean.value().device())))), (double)E);
}

MoELayer::MoELayer(const ModelConfig& cfg, const RouterConfig& rcfg, bool bayes_layer, ParamStore& params,
                   const std::string& prefix, uint64_t seed)
    : cfg_(cfg), rcfg_(rcfg) {
  int C = cfg.d_model, E = cfg.n_experts, F = cfg.d_expert;
  double std_in = 0.02, std_out = 0.02 / std::sqrt(2.0 * cfg.n_layers);  // GPT-2 style residual scaling
  w_router_ = params.normal(prefix + "w_router", {C, E}, std_in, seed);
  w1_ = params.normal(prefix + kExpertTensors[0], {E, C, F}, std_in, seed);
  if (cfg.act == Act::swiglu) w_up_ = params.normal(prefix + kExpertTensors[1], {E, C, F}, std_in, seed);
  w2_ = params.normal(prefix + kExpertTensors[2], {E, F, C}, std_out, seed);
  if (cfg.shared_expert) {
    s_w1_ = params.normal(prefix + "shared.w1", {C, F}, std_in, seed);
    if (cfg.act == Act::swiglu) s_up_ = params.normal(prefix + "shared.w_up", {C, F}, std_in, seed);
    s_w2_ = params.normal(prefix + "shared.w2", {F, C}, std_out, seed);
  }
  router_ = make_router(rcfg, bayes_layer, params, prefix + "router.", C, E, seed);
}

Var MoELayer::experts_ffn(const Var& xs, const std::vector<int64_t>& offsets) {
  return experts_ffn(xs, offsets, w1_, w_up_, w2_);
}
Var MoELayer::experts_ffn(const Var& xs, const std::vector<int64_t>& offsets, const Var& w1, const Var& w_up,
                          const Var& w2) {
  // GELU:   y = gelu(x W1_e) W2_e
  // SwiGLU: y = (silu(x W1_e) ⊙ (x Wup_e)) W2_e
  Var h = ops::grouped_matmul(xs, w1, offsets);
  if (cfg_.act == Act::swiglu) h = ops::mul(ops::silu(h), ops::grouped_matmul(xs, w_up, offsets));
  else h = ops::gelu(h);
  return ops::grouped_matmul(h, w2, offsets);
}

namespace {
// Rows between the members of this rank's expert group, as an op of the tape:
// x (Σ send_rows, C), rows laid out by member -> (Σ recv_rows, C), rows laid
// out by member (dist::ep_alltoallv). Its gradient is the reverse exchange
// (recv_rows back, send_rows received), accumulated into x's. Every member
// records the same exchanges in the same order and the tape runs their
// backward steps in the reverse order on every member (each exchange is an
// ancestor of the next through the residual stream or the expert FFN), so
// the backward exchanges pair up as the forward ones did.
Var ep_exchange(const Var& x, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                const char* what, const char* what_bwd) {
  VM_CHECK(x.ndim() == 2, "ep_exchange: rows (M, C) needed");
  const Device dev = x.value().device();
  // device rows: NCCL (or through the host), core/dist.h
  auto exchange = [dev](const float* s, const std::vector<int64_t>& sr, float* r, const std::vector<int64_t>& rr,
                        int64_t C, const char* w) {
    if (dev == Device::CUDA) dist::ep_device_alltoallv(s, sr, r, rr, C, w);
    else dist::ep_alltoallv(s, sr, r, rr, C, w);
  };
  const int64_t C = x.size(1);
  int64_t m = 0;
  for (int64_t r : recv_rows) m += r;
  Tensor out = Tensor::empty({m, C}, dev);
  exchange(x.value().data(), send_rows, out.data(), recv_rows, C, what);
  return make_result<float>(std::move(out), "ep_exchange", {x}, [send_rows, recv_rows, C, what_bwd, dev,
                                                               exchange](Node<float>& self) {
    int64_t back = 0;
    for (int64_t r : send_rows) back += r;
    Tensor g = Tensor::empty({back, C}, dev);
    exchange(self.grad.data(), recv_rows, g.data(), send_rows, C, what_bwd);
    if (!self.parents[0]->requires_grad) return;
    ops::detail::accumulate(self.parents[0]->grad_buffer(), g);
  });
}
}  // namespace

Var MoELayer::forward_ep(const Var& x, const std::vector<uint8_t>& mask, const RouterOut& r, bool own_capacity,
                         MoEAux& aux, std::vector<int64_t>& wanted) {
  const int64_t N = x.size(0);
  const int E = cfg_.n_experts, K = cfg_.top_k, P = dist::ep_size(), me = dist::ep_rank();
  const int El = E / P;  // experts per member: member q owns [q·El, (q+1)·El)
  const std::vector<int32_t>& experts = r.experts.host();
  // 1. every member's wanted counts and real tokens -> the kept counts of every
  //    member (global capacity, or each member's own in evaluation: decided
  //    identically on every member)
  int64_t n_real = 0;
  std::vector<int64_t> my_wanted = wanted_of(experts, N, K, E, mask, n_real);
  std::vector<int64_t> send((size_t)P * (E + 1));
  for (int q = 0; q < P; ++q) {
    std::copy(my_wanted.begin(), my_wanted.end(), send.begin() + (ptrdiff_t)q * (E + 1));
    send[(size_t)q * (E + 1) + E] = n_real;
  }
  std::vector<int64_t> all = dist::ep_alltoall_ints(send, E + 1, "expert-parallel dispatch counts");
  std::vector<std::vector<int64_t>> w_all((size_t)P);
  std::vector<int64_t> n_all((size_t)P);
  for (int q = 0; q < P; ++q) {
    w_all[q].assign(all.begin() + (ptrdiff_t)q * (E + 1), all.begin() + (ptrdiff_t)q * (E + 1) + E);
    n_all[q] = all[(size_t)q * (E + 1) + E];
  }
  const std::vector<int64_t> kept = own_capacity ? ep_kept_counts_own(w_all, n_all, K, E, cfg_.capacity_factor)
                                                 : ep_kept_counts(w_all, n_all, K, E, cfg_.capacity_factor);
  // 2. this member's plan: its assignments grouped by expert, hence by owner
  DispatchPlan plan = plan_dispatch_capped(
      experts, N, K, E, mask, std::vector<int64_t>(kept.begin() + (ptrdiff_t)me * E, kept.begin() + (ptrdiff_t)(me + 1) * E));
  aux.expert_counts = plan.counts;
  aux.dropped = plan.dropped;
  wanted = plan.wanted;
  std::vector<int64_t> send_rows((size_t)P), recv_rows((size_t)P, 0);
  for (int q = 0; q < P; ++q) send_rows[q] = plan.offsets[(size_t)(q + 1) * El] - plan.offsets[(size_t)q * El];
  for (int s = 0; s < P; ++s)
    for (int i = 0; i < El; ++i) recv_rows[s] += kept[(size_t)s * E + (size_t)(me * El + i)];
  // 3. dispatch: the rows to their owners
  Var xs = ops::gather_rows(x, plan.token);  // (M, C) in plan order
  Var recv = ep_exchange(xs, send_rows, recv_rows, "expert-parallel dispatch", "expert-parallel combine (backward)");
  // 4. the owned experts on each source's rows, one source at a time: the
  //    products (rows, order, shapes) a process computing that source's shard
  //    alone makes; each source through its own alias of the weights, so that
  //    its weight gradient is a product of its own (not accumulated into
  //    another source's inside the GEMM) and the sources' gradients are added
  //    afterwards, as the data-parallel sum of shards adds them
  //    The weights hold either every expert (E, ·, ·) or, sharded (the
  //    trainer's --expert-parallel), only this member's (E/P, ·, ·): then the
  //    groups are the owned experts alone (the same products per expert).
  const bool sliced = w1_.size(0) == El && El != E;
  VM_CHECK(sliced || w1_.size(0) == E, "moe: expert weights of " + std::to_string(w1_.size(0)) + " experts, not " +
                                           std::to_string(E) + " or this member's " + std::to_string(El));
  std::vector<Var> ys_parts;
  int64_t at = 0;
  for (int s = 0; s < P; ++s) {
    std::vector<int64_t> off((size_t)(sliced ? El : E) + 1, 0);
    for (int e = 0, i = 0; e < E; ++e) {
      const bool mine = e >= me * El && e < (me + 1) * El;
      if (sliced && !mine) continue;
      off[(size_t)i + 1] = off[(size_t)i] + (mine ? kept[(size_t)s * E + (size_t)e] : 0);
      ++i;
    }
    Var xs_s = ops::slice(recv, 0, at, at + recv_rows[s]);
    Var w1 = ops::reshape(w1_, w1_.shape()), w2 = ops::reshape(w2_, w2_.shape());
    Var wu = w_up_.defined() ? ops::reshape(w_up_, w_up_.shape()) : Var();
    ys_parts.push_back(experts_ffn(xs_s, off, w1, wu, w2));
    at += recv_rows[s];
  }
  Var ys_owned = P == 1 ? ys_parts[0] : ops::concat(ys_parts, 0);
  // 5. combine: the outputs back to the tokens' members, summed per token as locally
  Var ys = ep_exchange(ys_owned, recv_rows, send_rows, "expert-parallel combine", "expert-parallel dispatch (backward)");
  Var g = ops::gather_rows(ops::reshape(r.gates, {N * K, 1}), plan.slot);  // (M, 1)
  return ops::scatter_add_rows(ops::mul(ys, g), plan.token, N);            // (N, C): Σ_k g_k E_k(x)
}

Var MoELayer::forward(const Var& x, const std::vector<uint8_t>& mask, const RouteCtx& ctx, MoEAux& aux) {
  // x: (N, C)
  int64_t N = x.size(0), C = x.size(1);
  int E = cfg_.n_experts, K = cfg_.top_k;
  VM_CHECK((int64_t)mask.size() == N, "moe: mask of " + std::to_string(mask.size()) + " for " +
                                          std::to_string(N) + " tokens");
  aux.layer = ctx.layer;
  // Router jitter (Switch): u = x ⊙ U(1−j, 1+j), training only.
  Var u = x;
  if (ctx.training && rcfg_.jitter > 0) {
    uint64_t stream = router_stream(ctx.seed, ctx.layer, ctx.step, "jitter");
    // element (n, c) draws counter (row0 + n)·C + c: its row in the whole batch (RouteCtx::row0)
    const uint64_t first = (uint64_t)ctx.row0 * (uint64_t)C;
    Tensor noise;
    if (x.value().is_cuda()) {
      noise = device_jitter({N, C}, rcfg_.jitter, ctx.seed, stream, first);  // drawn on the GPU (nn/noise.h)
    } else {
      noise = Tensor({N, C});
      for (int64_t i = 0; i < noise.numel(); ++i)
        noise[i] = 1.0f + (float)rcfg_.jitter * (2.0f * philox_uniform(ctx.seed, stream, first + (uint64_t)i) - 1.0f);
    }
    u = ops::mul(x, ops::constant(noise));
  }
  aux.route = router_->route(u, w_router_, K, mask, ctx);
  const RouterOut& r = aux.route;

  // ---- dispatch: group (token, slot) assignments by expert -------------------------
  std::vector<int64_t> wanted;
  Var out;
  if (ctx.expert_parallel && dist::ep_size() > 1) out = forward_ep(x, mask, r, ctx.ep_own_capacity, aux, wanted);
  else
    VM_CHECK(w1_.size(0) == E, "moe: the expert weights hold " + std::to_string(w1_.size(0)) + " of the " +
                                   std::to_string(E) + " experts (sharded: gather them before a full forward)");
#ifdef VMOER_HAVE_CUDA
  if (!out.defined() && x.value().is_cuda() && E <= 2048 && K <= 16) {  // the plan on the GPU (see device_plan)
    DevicePlan plan = device_plan(r.experts, mask, N, K, E, cfg_.capacity_factor);
    aux.expert_counts = plan.counts;
    aux.dropped = plan.dropped;
    wanted = plan.wanted;
    Var xs = ops::moe_gather(x, plan.dispatch);                              // (M, C)
    Var ys = experts_ffn(xs, plan.offsets);                                  // (M, C)
    out = ops::moe_combine(ys, r.gates, plan.dispatch);                      // (N, C): Σ_k g_k E_k(x)
  }
#endif
  if (!out.defined()) {
    DispatchPlan plan = plan_dispatch(r.experts, N, K, E, mask, cfg_.capacity_factor);
    aux.expert_counts = plan.counts;
    aux.dropped = plan.dropped;
    wanted = plan.wanted;
    Var xs = ops::gather_rows(x, plan.token);                                // (M, C)
    Var ys = experts_ffn(xs, plan.offsets);                                  // (M, C)
    Var g = ops::gather_rows(ops::reshape(r.gates, {N * K, 1}), plan.slot);  // (M, 1)
    out = ops::scatter_add_rows(ops::mul(ys, g), plan.token, N);             // (N, C): Σ_k g_k E_k(x)
  }
  if (cfg_.shared_expert) {
    Var h = ops::matmul(x, s_w1_);
    h = cfg_.act == Act::swiglu ? ops::mul(ops::silu(h), ops::matmul(x, s_up_)) : ops::gelu(h);
    out = ops::add(out, ops::matmul(h, s_w2_));
  }

  // ---- auxiliary losses over real tokens ------------------------------------------
  float n_real = count_real(mask);
  aux.n_real = (int64_t)n_real;
  aux.wanted = wanted;
  // The per-token means divide by the real tokens of the whole batch (this
  // call's unless it is a shard of a larger one: RouteCtx::n_real).
  const float n_norm = ctx.n_real > 0 ? (float)ctx.n_real : n_real;
  Tensor mrow({1, N});
  for (int64_t n = 0; n < N; ++n) mrow[n] = mask[n] ? 1.0f : 0.0f;
  Device dev = x.value().device();
  Var mask_row = ops::constant(mrow.to(dev));
  if (n_real > 0) {
    // Switch load balancing: L_lb = E Σ_e f_e P_e, f_e = share of the N_real·K
    // assignments routed to e (before capacity, no gradient), P_e = mean
    // router probability over real tokens (softmax of the deterministic logits).
    aux.p_mean = ops::mul_scalar(ops::matmul(mask_row, ops::softmax(r.logits)), 1.0 / n_norm);  // (1, E)
    aux.lb_loss = moe_lb_loss(aux.p_mean, wanted, n_norm, K);
    // z-loss: mean over real tokens of logsumexp(l)²
    Var lse = ops::reshape(ops::logsumexp(r.logits), {1, N});
    aux.z_loss = ops::mul_scalar(ops::sum_all(ops::mul(ops::square(lse), mask_row)), 1.0 / n_norm);
  } else {
    aux.lb_loss = ops::constant(Tensor::scalar(0).to(dev));
    aux.z_loss = ops::constant(Tensor::scalar(0).to(dev));
  }
  return out;
}

}  // namespace vm::nn
