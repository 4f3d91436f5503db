// tests/test_moe.cpp — the MoE layer (nn/moe.h, nn/moe.cpp):
//   - E = 1, K = 1 is the dense FFN, forward and backward (gelu and swiglu);
//   - plan_dispatch: stable counting sort, capacity drops exactly the
//     overflow, padding is never dispatched, dropless keeps everything
//     (hand cases + a randomised comparison with a brute-force plan);
//   - dropped assignments contribute nothing to the layer output;
//   - Switch load-balancing loss = 1 at uniform routing, > 1 when skewed;
//   - load-balancing and z-loss ignore padding tokens.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/philox.h"
#include "nn/moe.h"

using namespace vm;
using namespace vm::nn;

namespace {

bool report() {  // VMOER_TEST_REPORT=1 prints the measured numbers
  const char* e = std::getenv("VMOER_TEST_REPORT");
  return e && *e && *e != '0';
}

Tensor randn(Shape shape, double std, uint64_t seed, uint64_t stream) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = (float)std * philox_normal(seed, stream, (uint64_t)i);
  return t;
}

ModelConfig small_cfg(int C, int E, int K, int F, const std::string& act) {
  ModelConfig c;
  c.d_model = C;
  c.n_layers = 1;
  c.n_heads = 1;
  c.n_experts = E;
  c.top_k = K;
  c.d_expert = F;
  c.act = act;
  c.validate();
  return c;
}

RouteCtx eval_ctx() {
  RouteCtx c;
  c.training = false;
  c.seed = 3;
  c.step = 1;
  c.layer = 0;
  c.samples = 1;
  return c;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, (double)std::abs(a[i] - b[i]));
  return m;
}
double max_abs(const Tensor& a) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, (double)std::abs(a[i]));
  return m;
}

}  // namespace

// ---- E = 1 is the dense FFN ---------------------------------------------------------------
TEST_CASE("moe: one expert (E = 1, K = 1) equals the dense FFN, forward and backward") {
  for (std::string act : {"gelu", "swiglu"}) {
    INFO(act);
    const int N = 9, C = 8, F = 16;
    ModelConfig cfg = small_cfg(C, 1, 1, F, act);  // must outlive the layer (held by reference)
    RouterConfig rc;
    ParamStore ps;
    MoELayer moe(cfg, rc, true, ps, "moe.", 21);
    // O(1) outputs (the default init, std 0.02, makes them tiny)
    for (std::string w : {"moe.experts.w1", "moe.experts.w2", "moe.experts.w_up"})
      if (ps.has(w)) {
        Tensor& t = ps.get(w).value();
        for (int64_t i = 0; i < t.numel(); ++i) t[i] = 0.4f * philox_normal(22, name_hash(w), (uint64_t)i);
      }
    // the dense FFN with the same weights, copied
    auto copy2d = [&](const std::string& name, Shape s) {
      return Var(ps.get(name).value().clone().reshaped(std::move(s)), true, name + ".dense");
    };
    Var w1 = copy2d("moe.experts.w1", {C, F}), w2 = copy2d("moe.experts.w2", {F, C});
    Var wup = act == "swiglu" ? copy2d("moe.experts.w_up", {C, F}) : Var();
    Tensor xt = randn({N, C}, 1.0, 5, 1), rt = randn({N, C}, 1.0, 5, 2);
    Var x1(xt.clone(), true), x2(xt.clone(), true);
    std::vector<uint8_t> mask((size_t)N, 1);
    MoEAux aux;
    Var y1 = moe.forward(x1, mask, eval_ctx(), aux);
    Var h = ops::matmul(x2, w1);
    h = act == "swiglu" ? ops::mul(ops::silu(h), ops::matmul(x2, wup)) : ops::gelu(h);
    Var y2 = ops::matmul(h, w2);
    if (report())
      std::printf("  moe E=1 %-6s forward: max |moe − dense| %.2e (max |y| %.3f)\n", act.c_str(),
                  max_abs_diff(y1.value(), y2.value()), max_abs(y2.value()));
    CHECK(max_abs_diff(y1.value(), y2.value()) <= 1e-6 * std::max(1.0, max_abs(y2.value())));
    CHECK(max_abs(y2.value()) > 1e-3);
    // every gate is exactly 1 and nothing is dropped
    for (int64_t i = 0; i < aux.route.gates.numel(); ++i) CHECK(aux.route.gates.value()[i] == 1.0f);
    CHECK(aux.dropped == 0);
    CHECK(aux.expert_counts == std::vector<int64_t>{N});
    CHECK(aux.lb_loss.item() == doctest::Approx(1.0).epsilon(1e-6));  // E Σ f P = 1 · 1 · 1
    // backward through Σ r ⊙ y
    vm::backward(ops::sum_all(ops::mul(y1, ops::constant(rt))));
    vm::backward(ops::sum_all(ops::mul(y2, ops::constant(rt))));
    auto close = [&](const Tensor& a, const Tensor& b, const char* what) {
      INFO("max |diff| " << max_abs_diff(a, b) << ", max |ref| " << max_abs(b));
      if (report())
        std::printf("  moe E=1 %-6s grad %-5s: max |moe − dense| %.2e (max |g| %.3f)\n", act.c_str(), what,
                    max_abs_diff(a, b), max_abs(b));
      CHECK(max_abs(b) > 1e-4);
      CHECK(max_abs_diff(a, b) <= 1e-5 * std::max(1.0, max_abs(b)));
    };
    close(x1.grad(), x2.grad(), "x");
    close(ps.get("moe.experts.w1").grad().reshaped({C, F}), w1.grad(), "w1");
    close(ps.get("moe.experts.w2").grad().reshaped({F, C}), w2.grad(), "w2");
    if (act == "swiglu") close(ps.get("moe.experts.w_up").grad().reshaped({C, F}), wup.grad(), "w_up");
    // the router gets no gradient from the output: a single gate p/p ≡ 1
    const Tensor& gr = ps.get("moe.w_router").grad();
    if (gr.defined()) CHECK(max_abs(gr) <= 1e-6);
  }
}

// ---- plan_dispatch ------------------------------------------------------------------------
TEST_CASE("moe plan_dispatch: stable counting sort grouped by expert") {
  // N = 6, K = 2, E = 3
  const std::vector<int32_t> ex = {2, 0, 0, 1, 2, 1, 1, 0, 0, 2, 2, 1};
  const std::vector<uint8_t> mask(6, 1);
  DispatchPlan p = plan_dispatch(ex, 6, 2, 3, mask, 0.0);
  CHECK(p.offsets == std::vector<int64_t>{0, 4, 8, 12});
  CHECK(p.counts == std::vector<int64_t>{4, 4, 4});
  CHECK(p.wanted == std::vector<int64_t>{4, 4, 4});
  CHECK(p.dropped == 0);
  // expert 0: (t0, j1) (t1, j0) (t3, j1) (t4, j0); expert 1: t1 t2 t3 t5; expert 2: t0 t2 t4 t5
  CHECK(p.token == std::vector<int32_t>{0, 1, 3, 4, 1, 2, 3, 5, 0, 2, 4, 5});
  CHECK(p.slot == std::vector<int32_t>{1, 2, 7, 8, 3, 5, 6, 11, 0, 4, 9, 10});
}

TEST_CASE("moe plan_dispatch: capacity drops exactly the overflow, in token order") {
  // N = 8, K = 2, E = 4, capacity factor 1: cap = ceil(1 · 8 · 2 / 4) = 4.
  // Expert 0 is wanted by tokens 0..6 (7 times): tokens 4, 5, 6 overflow.
  std::vector<int32_t> ex;
  for (int n = 0; n < 8; ++n) {
    ex.push_back(n < 7 ? 0 : 3);
    ex.push_back(n % 2 ? 1 : 2);
  }
  const std::vector<uint8_t> mask(8, 1);
  DispatchPlan p = plan_dispatch(ex, 8, 2, 4, mask, 1.0);
  CHECK(p.wanted == std::vector<int64_t>{7, 4, 4, 1});
  CHECK(p.counts == std::vector<int64_t>{4, 4, 4, 1});
  CHECK(p.dropped == 3);
  CHECK(p.offsets.back() == 13);
  CHECK(std::vector<int32_t>(p.token.begin(), p.token.begin() + 4) == std::vector<int32_t>{0, 1, 2, 3});
  // capacity factor 2: cap 8, nothing dropped; 0.5: cap 2, drops 5 + 2 + 2 = 9
  CHECK(plan_dispatch(ex, 8, 2, 4, mask, 2.0).dropped == 0);
  DispatchPlan q = plan_dispatch(ex, 8, 2, 4, mask, 0.5);
  CHECK(q.counts == std::vector<int64_t>{2, 2, 2, 1});
  CHECK(q.dropped == 9);
  // dropless keeps every assignment
  DispatchPlan d = plan_dispatch(ex, 8, 2, 4, mask, 0.0);
  CHECK(d.dropped == 0);
  CHECK(d.counts == d.wanted);
  CHECK(d.offsets.back() == 16);
}

TEST_CASE("moe plan_dispatch: padding is never dispatched and does not count towards capacity") {
  const std::vector<int32_t> ex = {0, 1, 0, 1, 0, 1, 0, 1};  // N = 4, K = 2, E = 2
  const std::vector<uint8_t> mask = {1, 0, 1, 0};
  DispatchPlan p = plan_dispatch(ex, 4, 2, 2, mask, 0.0);
  CHECK(p.wanted == std::vector<int64_t>{2, 2});
  CHECK(p.token == std::vector<int32_t>{0, 2, 0, 2});
  CHECK(p.slot == std::vector<int32_t>{0, 4, 1, 5});
  // cap = ceil(1 · n_real · K / E) = 2 with n_real = 2: nothing dropped
  CHECK(plan_dispatch(ex, 4, 2, 2, mask, 1.0).dropped == 0);
  // all padding: an empty plan
  DispatchPlan e = plan_dispatch(ex, 4, 2, 2, std::vector<uint8_t>(4, 0), 1.0);
  CHECK(e.token.empty());
  CHECK(e.offsets == std::vector<int64_t>{0, 0, 0});
  CHECK(e.dropped == 0);
}

TEST_CASE("moe plan_dispatch: randomised plans equal a brute-force reference") {
  for (uint64_t trial = 0; trial < 200; ++trial) {
    PhiloxStream rs{77, trial, 0};
    int E = 2 + (int)(rs.uniform() * 7), K = 1 + (int)(rs.uniform() * std::min(E, 4));
    int64_t N = 1 + (int64_t)(rs.uniform() * 40);
    double cf = rs.uniform() < 0.3 ? 0.0 : 0.25 + 2.0 * rs.uniform();
    std::vector<int32_t> ex;
    std::vector<uint8_t> mask;
    for (int64_t n = 0; n < N; ++n) {
      mask.push_back(rs.uniform() < 0.75);
      std::vector<int32_t> all(E);
      for (int e = 0; e < E; ++e) all[e] = e;
      for (int j = 0; j < K; ++j) {  // K distinct experts, skewed towards low ids
        int pick = j + (int)(rs.uniform() * rs.uniform() * (E - j));
        std::swap(all[j], all[pick]);
        ex.push_back(all[j]);
      }
    }
    DispatchPlan p = plan_dispatch(ex, N, K, E, mask, cf);
    // brute force: for each expert, scan tokens in order, keep the first `cap`
    int64_t n_real = 0;
    for (auto m : mask) n_real += m ? 1 : 0;
    int64_t cap = cf > 0 ? (int64_t)std::ceil(cf * (double)(n_real * K) / E) : INT64_MAX;
    std::vector<int32_t> tok, slot;
    std::vector<int64_t> offsets{0};
    int64_t dropped = 0;
    for (int e = 0; e < E; ++e) {
      int64_t kept = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < K; ++j)
          if (mask[n] && ex[n * K + j] == e) {
            if (kept < cap) {
              tok.push_back((int32_t)n);
              slot.push_back((int32_t)(n * K + j));
              ++kept;
            } else {
              ++dropped;
            }
          }
      offsets.push_back(offsets.back() + kept);
    }
    INFO("trial " << trial << " N " << N << " E " << E << " K " << K << " cf " << cf);
    CHECK(p.token == tok);
    CHECK(p.slot == slot);
    CHECK(p.offsets == offsets);
    CHECK(p.dropped == dropped);
    int64_t wanted = 0;
    for (auto w : p.wanted) wanted += w;
    CHECK(wanted == n_real * K);
    CHECK(p.offsets.back() + p.dropped == n_real * K);
    if (cf == 0) CHECK(p.dropped == 0);
  }
}

TEST_CASE("moe: dropped assignments contribute nothing to the output") {
  // E = 2, K = 1, all tokens prefer expert 0, capacity factor 1: cap = ceil(6/2) = 3.
  const int N = 6, C = 4;
  ModelConfig cfg = small_cfg(C, 2, 1, 8, "gelu");
  cfg.capacity_factor = 1.0;
  RouterConfig rc;
  ParamStore ps;
  MoELayer moe(cfg, rc, true, ps, "moe.", 31);
  Tensor& wr = ps.get("moe.w_router").value();  // (C, E): logit_0 = Σ_c x_c ≫ logit_1
  for (int c = 0; c < C; ++c) {
    wr[c * 2 + 0] = 1.f;
    wr[c * 2 + 1] = -1.f;
  }
  Tensor xt({N, C});
  for (int64_t i = 0; i < xt.numel(); ++i) xt[i] = 0.5f + 0.1f * (float)(i % 5);
  MoEAux aux;
  Var y = moe.forward(Var(xt), std::vector<uint8_t>(N, 1), eval_ctx(), aux);
  CHECK(aux.dropped == 3);
  CHECK(aux.expert_counts == std::vector<int64_t>{3, 0});
  for (int n = 0; n < N; ++n) {
    double s = 0;
    for (int c = 0; c < C; ++c) s += std::abs(y.value()[n * C + c]);
    if (n < 3) CHECK(s > 0);
    else CHECK(s == 0.0);  // tokens 3..5 overflowed: no expert output (no shared expert)
  }
}

// ---- load balancing -----------------------------------------------------------------------
namespace {
// E Σ_e f_e P_e in double from the layer's own routing (reference for lb_loss).
double lb_reference(const MoEAux& aux, int E, int K, const std::vector<uint8_t>& mask) {
  int64_t N = (int64_t)mask.size();
  std::vector<double> f(E, 0), P(E, 0);
  double n_real = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (!mask[n]) continue;
    n_real += 1;
    double mx = -1e300, z = 0;
    for (int e = 0; e < E; ++e) mx = std::max(mx, (double)aux.route.logits.value()[n * E + e]);
    for (int e = 0; e < E; ++e) z += std::exp(aux.route.logits.value()[n * E + e] - mx);
    for (int e = 0; e < E; ++e) P[e] += std::exp(aux.route.logits.value()[n * E + e] - mx) / z;
    for (int j = 0; j < K; ++j) f[aux.route.experts[n * K + j]] += 1;
  }
  double lb = 0;
  for (int e = 0; e < E; ++e) lb += (f[e] / (n_real * K)) * (P[e] / n_real);
  return E * lb;
}
}  // namespace

TEST_CASE("moe load balancing: exactly 1 at uniform routing, > 1 when skewed") {
  const int E = 4, K = 2, C = 4, N = 8;
  ModelConfig cfg = small_cfg(C, E, K, 8, "gelu");
  RouterConfig rc;
  ParamStore ps;
  MoELayer moe(cfg, rc, true, ps, "moe.", 41);
  Tensor& wr = ps.get("moe.w_router").value();
  std::vector<uint8_t> mask(N, 1);
  const float base[E] = {2.f, 1.f, 0.f, -1.f};
  SUBCASE("W_r = 0: every probability is 1/E") {
    wr.fill(0.f);
    MoEAux aux;
    moe.forward(Var(randn({N, C}, 1.0, 9, 1)), mask, eval_ctx(), aux);
    CHECK(aux.lb_loss.item() == 1.0f);
    // ties break towards the lower index: every token picks {0, 1}
    // (element-wise: GCC 12.2 with AVX-512VL miscompiles `std::vector<int64_t> v = {N, N, 0, 0}`
    // into {8, 8, 8, 8} here, see the report)
    REQUIRE(aux.expert_counts.size() == 4);
    CHECK(aux.expert_counts[0] == N);
    CHECK(aux.expert_counts[1] == N);
    CHECK(aux.expert_counts[2] == 0);
    CHECK(aux.expert_counts[3] == 0);
  }
  SUBCASE("cyclic logits: balanced counts and uniform mean probability") {
    wr.fill(0.f);
    for (int c = 0; c < C; ++c) wr[c * E + c] = 1.f;  // W_r = I: l = x
    Tensor xt({N, C});
    for (int n = 0; n < N; ++n)
      for (int e = 0; e < E; ++e) xt[n * C + e] = base[(e + n) % E];
    MoEAux aux;
    moe.forward(Var(xt), mask, eval_ctx(), aux);
    CHECK(aux.expert_counts == std::vector<int64_t>{4, 4, 4, 4});
    CHECK(aux.lb_loss.item() == doctest::Approx(1.0).epsilon(1e-6));
  }
  SUBCASE("skewed: every token has the same logits") {
    wr.fill(0.f);
    for (int c = 0; c < C; ++c) wr[c * E + c] = 1.f;
    Tensor xt({N, C});
    for (int n = 0; n < N; ++n)
      for (int e = 0; e < E; ++e) xt[n * C + e] = base[e];
    MoEAux aux;
    moe.forward(Var(xt), mask, eval_ctx(), aux);
    double z = 0;
    for (float b : base) z += std::exp((double)b);
    double expect = E * 0.5 * (std::exp(2.0) + std::exp(1.0)) / z;  // f = (½, ½, 0, 0)
    CHECK(aux.lb_loss.item() == doctest::Approx(expect).epsilon(1e-6));
    CHECK(aux.lb_loss.item() > 1.5);
    if (report()) std::printf("  moe lb skewed: %.6f (expected %.6f)\n", aux.lb_loss.item(), expect);
  }
  SUBCASE("random routing: lb_loss = E Σ_e f_e P_e") {
    Tensor xt = randn({N, C}, 1.0, 9, 2);
    for (int64_t i = 0; i < wr.numel(); ++i) wr[i] = 2.0f * philox_normal(9, 3, (uint64_t)i);
    MoEAux aux;
    moe.forward(Var(xt), mask, eval_ctx(), aux);
    CHECK(aux.lb_loss.item() == doctest::Approx(lb_reference(aux, E, K, mask)).epsilon(1e-5));
  }
}

TEST_CASE("moe load balancing and z-loss ignore padding tokens") {
  const int E = 4, K = 2, C = 6, N = 10;
  const std::vector<uint8_t> mask = {1, 1, 0, 1, 0, 1, 1, 0, 1, 1};
  for (std::string router : {"det", "mfvr"}) {
    INFO(router);
    ModelConfig cfg = small_cfg(C, E, K, 8, "gelu");
    RouterConfig rc;
    rc.name = router;
    ParamStore ps;
    MoELayer moe(cfg, rc, true, ps, "moe.", 51);
    Tensor& wr = ps.get("moe.w_router").value();
    for (int64_t i = 0; i < wr.numel(); ++i) wr[i] = 1.5f * philox_normal(51, 7, (uint64_t)i);
    Tensor xt = randn({N, C}, 1.0, 52, 1);
    Var x(xt.clone(), true);
    MoEAux a1;
    Var y1 = moe.forward(x, mask, eval_ctx(), a1);
    float lb = a1.lb_loss.item(), zl = a1.z_loss.item();
    CHECK(lb == doctest::Approx(lb_reference(a1, E, K, mask)).epsilon(1e-5));
    // z-loss: mean over real tokens of logsumexp(l)²
    double zref = 0;
    for (int n = 0; n < N; ++n)
      if (mask[n]) {
        double s = 0;
        for (int e = 0; e < E; ++e) s += std::exp((double)a1.route.logits.value()[n * E + e]);
        zref += std::log(s) * std::log(s) / 7.0;
      }
    CHECK(zl == doctest::Approx(zref).epsilon(1e-5));
    // no gradient of lb + z reaches the padded rows
    vm::backward(ops::add(a1.lb_loss, a1.z_loss));
    double g_pad = 0, g_real = 0;
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) (mask[n] ? g_real : g_pad) += std::abs(x.grad()[n * C + c]);
    CHECK(g_pad == 0.0);
    CHECK(g_real > 0.0);
    // changing the padded rows changes neither loss (nor the real rows' outputs)
    Tensor xt2 = xt.clone();
    for (int n = 0; n < N; ++n)
      if (!mask[n])
        for (int c = 0; c < C; ++c) xt2[n * C + c] = 5.0f * philox_normal(53, (uint64_t)n, (uint64_t)c);
    MoEAux a2;
    Var y2 = moe.forward(Var(xt2), mask, eval_ctx(), a2);
    CHECK(a2.lb_loss.item() == lb);
    CHECK(a2.z_loss.item() == zl);
    if (router == "det")
      for (int n = 0; n < N; ++n)
        if (mask[n])
          for (int c = 0; c < C; ++c) CHECK(y2.value()[n * C + c] == y1.value()[n * C + c]);
    // ...and they equal the same layer run on the real rows alone
    std::vector<int> real;
    for (int n = 0; n < N; ++n)
      if (mask[n]) real.push_back(n);
    Tensor xr({(int64_t)real.size(), C});
    for (size_t i = 0; i < real.size(); ++i)
      for (int c = 0; c < C; ++c) xr[(int64_t)i * C + c] = xt[real[i] * C + c];
    MoEAux a3;
    moe.forward(Var(xr), std::vector<uint8_t>(real.size(), 1), eval_ctx(), a3);
    // (mfvr draws its ε by row index, so its choices — hence f — move with the rows)
    if (router == "det") CHECK(a3.lb_loss.item() == doctest::Approx(lb).epsilon(1e-6));
    CHECK(a3.z_loss.item() == doctest::Approx(zl).epsilon(1e-6));
    // all padding: both losses are 0
    MoEAux a4;
    moe.forward(Var(xt), std::vector<uint8_t>(N, 0), eval_ctx(), a4);
    CHECK(a4.lb_loss.item() == 0.0f);
    CHECK(a4.z_loss.item() == 0.0f);
    CHECK(a4.n_real == 0);
  }
}
