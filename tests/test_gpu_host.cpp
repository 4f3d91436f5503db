// tests/test_gpu_host.cpp — the host-side pieces of the GPU path, checked on
// the CPU (where they run too, or where they are plain bookkeeping):
//   the pinned upload ring (core/cuda/staging.h) that lets copy_h2d return
//   without waiting; Indices (core/tensor.h), which leave a selection on its
//   device; items(), which reads several scalars in one transfer; the packed
//   sizes of a dispatch plan (nn/moe.h PlanSizes); the grouped GEMMs as
//   problem lists (kernels/gemm_groups.h), which the GPU runs in one cuBLAS
//   call and the CPU one by one; and the optimiser's table (nn/optim.h), one
//   launch on the GPU.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/cuda/staging.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rowwise.h"
#include "kernels/gemm.h"
#include "kernels/gemm_groups.h"
#include "kernels/optim.h"
#include "nn/moe.h"
#include "nn/optim.h"

using namespace vm;
using vm::kernels::cuda::StagingRing;

TEST_CASE("staging ring: slices in order, aligned, never straddling the end; the first lap waits for nothing") {
  StagingRing<int> r(1024, 256);
  CHECK(r.fits(1));
  CHECK(r.fits(1024));
  CHECK_FALSE(r.fits(1025));
  CHECK_FALSE(r.fits(0));
  auto a = r.reserve(10);  // rounded up to 256
  CHECK(a.offset == 0);
  CHECK(a.end - a.begin == 256);
  CHECK(a.must_finish == 0);
  r.commit(a, 1);
  auto b = r.reserve(300);  // 512 bytes from 256
  CHECK(b.offset == 256);
  CHECK(b.end - b.begin == 512);
  CHECK(b.must_finish == 0);
  r.commit(b, 2);
  // 512 more do not fit before the end (768 + 512 > 1024): the next lap, from 0,
  // reusing the bytes of copy 1 and copy 2 (0..768)
  auto c = r.reserve(512);
  CHECK(c.offset == 0);
  CHECK(c.begin == 1024);
  CHECK(c.must_finish == 2);
  // reserve changes nothing; retiring the two oldest makes the slice free
  CHECK(r.in_flight() == 2);
  r.retire_oldest();
  r.retire_oldest();
  CHECK(r.reserve(512).must_finish == 0);
  r.commit(c, 3);
  CHECK(r.in_flight() == 1);
  CHECK(r.ticket(0) == 3);
}

TEST_CASE("staging ring: a slice after a wrap waits only for the copies whose bytes it reuses") {
  StagingRing<int> r(1024, 256);
  for (int i = 0; i < 4; ++i) r.commit(r.reserve(256), i);  // 0..1024: the whole first lap
  r.retire_oldest();                                          // copy 0 finished: [0, 256) is free
  auto s = r.reserve(256);                                     // [1024, 1280) = bytes 0..256
  CHECK(s.offset == 0);
  CHECK(s.must_finish == 0);
  r.commit(s, 4);
  auto t = r.reserve(512);  // bytes 256..768: copies 1 and 2, not 3
  CHECK(t.offset == 256);
  CHECK(t.must_finish == 2);
  CHECK(r.ticket(0) == 1);
  CHECK(r.ticket(1) == 2);
}

TEST_CASE("staging ring: a large slice at the end of a lap skips the tail and reuses the newest copies' bytes too") {
  // In flight: [512, 1024) from lap 1 and [1024, 1280) = bytes 0..256 of lap 2.
  // A 768-byte slice does not fit after 1280 (256 + 768 = 1024 fits exactly);
  // a 1024-byte one does not, starts lap 3 at 2048 and reuses every byte:
  // both copies must finish.
  StagingRing<int> r(1024, 256);
  r.commit(r.reserve(512), 0);  // [0, 512)
  r.commit(r.reserve(512), 1);  // [512, 1024)
  r.retire_oldest();
  r.commit(r.reserve(256), 2);  // [1024, 1280)
  auto fit = r.reserve(768);    // [1280, 2048): bytes 256..1024 -> copy 1 only
  CHECK(fit.offset == 256);
  CHECK(fit.must_finish == 1);
  auto all = r.reserve(1024);  // [2048, 3072)
  CHECK(all.offset == 0);
  CHECK(all.begin == 2048);
  CHECK(all.must_finish == 2);
}

TEST_CASE("staging ring: random uploads never overwrite bytes a copy in flight still reads (brute force)") {
  // A model of the buffer: which copy last wrote each byte. Before a slice is
  // written, every copy still in flight that owns one of its bytes must be
  // among the `must_finish` oldest; copies complete at random (oldest first,
  // as on one stream).
  const uint64_t cap = 4096, align = 64;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    StagingRing<int> r(cap, align);
    std::vector<int> owner(cap, -1);
    std::set<int> live;
    uint64_t ctr = 0;
    auto next = [&] { return vm::philox_u32(seed, 77, ctr++); };
    for (int t = 0; t < 400; ++t) {
      // sizes from 1 byte to the whole buffer, mostly small
      uint64_t n = 1 + next() % (next() % 4 == 0 ? cap : 300);
      while (r.in_flight() > 0 && next() % 3 == 0) {  // some copies finish
        live.erase(r.ticket(0));
        r.retire_oldest();
      }
      auto s = r.reserve(n);
      REQUIRE(s.offset % align == 0);
      REQUIRE(s.offset + n <= cap);
      REQUIRE(s.must_finish <= r.in_flight());
      std::set<int> waited;
      for (size_t i = 0; i < s.must_finish; ++i) waited.insert(r.ticket(i));
      for (uint64_t b = s.offset; b < s.offset + n; ++b)
        if (owner[b] >= 0 && live.count(owner[b])) REQUIRE(waited.count(owner[b]) == 1);
      // and it waits for no copy newer than one it needs (a prefix of the queue, no more)
      if (s.must_finish > 0) {
        bool needed_last = false;
        int last = r.ticket(s.must_finish - 1);
        for (uint64_t b = s.offset; b < s.offset + ((s.end - s.begin)); ++b)
          needed_last = needed_last || owner[b % cap] == last;
        CHECK(needed_last);
      }
      for (size_t i = 0; i < s.must_finish; ++i) {
        live.erase(r.ticket(0));
        r.retire_oldest();
      }
      for (uint64_t b = s.offset; b < s.offset + (s.end - s.begin); ++b) owner[b] = t;
      r.commit(s, t);
      live.insert(t);
    }
  }
}

TEST_CASE("staging ring: bad sizes and out-of-order commits are refused") {
  CHECK_THROWS(StagingRing<int>(1000, 256));  // not a multiple of the alignment
  CHECK_THROWS(StagingRing<int>(1024, 100));  // alignment not a power of two
  StagingRing<int> r(1024, 256);
  CHECK_THROWS(r.reserve(2048));
  CHECK_THROWS(r.retire_oldest());
  auto a = r.reserve(100);
  r.commit(a, 0);
  CHECK_THROWS(r.commit(a, 1));  // the same slice twice
}

// ---- Indices and items ------------------------------------------------------------------------
TEST_CASE("Indices: a host list and a tensor's values read alike; copies share the host copy") {
  Indices a(std::vector<int32_t>{3, 1, 2});
  CHECK(a.device() == Device::CPU);
  CHECK(a.size() == 3);
  CHECK(a.on_host());
  CHECK(a[0] == 3);
  CHECK(a.host() == std::vector<int32_t>{3, 1, 2});
  CHECK(a.on(Device::CPU).to_vector() == std::vector<int32_t>{3, 1, 2});
  TensorT<int32_t> t = TensorT<int32_t>::from({3, 1, 2, 0}, {2, 2});
  Indices b(t);
  CHECK(b.size() == 4);
  CHECK(b.device() == Device::CPU);
  CHECK(b.on(Device::CPU).data() == t.data());  // the tensor itself, flattened: no copy
  CHECK(b.on(Device::CPU).shape() == Shape{4});
  const std::vector<int32_t> v = b;  // a host vector on demand
  CHECK(v == std::vector<int32_t>{3, 1, 2, 0});
  Indices c = b;
  CHECK(&c.host() == &b.host());  // one host copy for all copies
  CHECK(Indices(std::vector<int32_t>{3, 1, 2}) == a);
  CHECK_FALSE(a == b);
  CHECK(std::set<int32_t>(b.begin(), b.end()) == std::set<int32_t>{0, 1, 2, 3});
  CHECK(Indices().empty());
}

TEST_CASE("take_cols: host lists and indices already on x's device give the same values and gradients") {
  Tensor xv = Tensor::from({0.f, 1.f, 2.f, 10.f, 11.f, 12.f}, {2, 3});
  const std::vector<int32_t> idx{2, 0, 1, 1};
  Var x1(xv.clone(), true), x2(xv.clone(), true);
  Var y1 = ops::take_cols(x1, idx, 2);
  Var y2 = ops::take_cols(x2, Indices(TensorT<int32_t>::from(idx, {2, 2})), 2);
  CHECK(y1.value().to_vector() == std::vector<float>{2.f, 0.f, 11.f, 11.f});
  CHECK(y2.value().to_vector() == y1.value().to_vector());
  backward(ops::sum_all(y1));
  backward(ops::sum_all(y2));
  CHECK(x1.grad().to_vector() == std::vector<float>{1.f, 0.f, 1.f, 0.f, 2.f, 0.f});
  CHECK(x2.grad().to_vector() == x1.grad().to_vector());
  // host values are range-checked
  std::string msg;
  try {
    ops::take_cols(x1, std::vector<int32_t>{0, 3, 1, 1}, 2);
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg == "take_cols: index 3 outside [0, 3)");
}

TEST_CASE("topk_gates: the indices stay where the kernel wrote them and read as ops::topk's") {
  Tensor p = Tensor::from({0.1f, 0.5f, 0.4f, 0.3f, 0.3f, 0.4f}, {2, 3});
  auto tk = ops::topk_gates(Var(p), 2);
  CHECK(tk.indices.device() == Device::CPU);
  CHECK(tk.indices.host() == std::vector<int32_t>{1, 2, 2, 0});  // ties to the lower index
  CHECK(tk.indices == ops::topk(Var(p), 2).indices);
}

TEST_CASE("items: single-element tensors read in order; anything else is refused") {
  Tensor a = Tensor::scalar(1.5f), b = Tensor::from({-2.0f}, {1}), c = Tensor::from({1.f, 2.f}, {2});
  CHECK(items<float>({&a, &b, &a}) == std::vector<float>{1.5f, -2.0f, 1.5f});
  CHECK(items<float>({}).empty());
  std::string msg;
  try {
    items<float>({&a, &c});
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg == "items: value 1 is not a single-element tensor");
}

// ---- the dispatch plan's sizes in one buffer ------------------------------------------------------
TEST_CASE("dispatch plan sizes: offsets, counts, wanted, dropped side by side, unpacked as the host plan's") {
  for (int E : {1, 3, 8}) {
    INFO("E = " << E);
    const int K = std::min(E, 2);
    const int64_t N = 23;
    std::vector<int32_t> experts((size_t)(N * K));
    std::vector<uint8_t> mask((size_t)N, 1);
    mask[4] = mask[17] = 0;
    for (int64_t n = 0; n < N; ++n)  // K distinct experts per token
      for (int j = 0; j < K; ++j) experts[(size_t)(n * K + j)] = (int32_t)((philox_u32(5, 1, (uint64_t)n) + j) % E);
    const nn::DispatchPlan p = nn::plan_dispatch(experts, N, K, E, mask, 1.0);
    const nn::PlanSizes at(E);
    // the layout moe_dispatch_plan is handed: four disjoint blocks covering the buffer
    CHECK(at.offsets == 0);
    CHECK(at.counts == (size_t)E + 1);
    CHECK(at.wanted == 2 * (size_t)E + 1);
    CHECK(at.dropped == 3 * (size_t)E + 1);
    CHECK(at.total == 3 * (size_t)E + 2);
    std::vector<int64_t> packed(at.total, -7);
    std::copy(p.offsets.begin(), p.offsets.end(), packed.begin() + (ptrdiff_t)at.offsets);
    std::copy(p.counts.begin(), p.counts.end(), packed.begin() + (ptrdiff_t)at.counts);
    std::copy(p.wanted.begin(), p.wanted.end(), packed.begin() + (ptrdiff_t)at.wanted);
    packed[at.dropped] = p.dropped;
    CHECK(std::count(packed.begin(), packed.end(), -7) == 0);  // nothing left unwritten
    std::vector<int64_t> off, cnt, want;
    int64_t drop = -1;
    at.unpack(packed, off, cnt, want, drop);
    CHECK(off == p.offsets);
    CHECK(cnt == p.counts);
    CHECK(want == p.wanted);
    CHECK(drop == p.dropped);
    if (E > 1) CHECK(p.dropped > 0);  // capacity 1.0 with uneven routing drops some
  }
}

// ---- grouped GEMMs as problem lists -----------------------------------------------------------------
namespace {
// C (M, N) = op(A) op(B) [+ C], row-major, by the definition (double).
void naive_gemm(const kernels::GemmProblem<double>& p) {
  for (int64_t i = 0; i < p.M; ++i)
    for (int64_t j = 0; j < p.N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < p.K; ++k) {
        const double a = p.transA ? p.A[k * p.M + i] : p.A[i * p.K + k];
        const double b = p.transB ? p.B[j * p.K + k] : p.B[k * p.N + j];
        s += a * b;
      }
      p.C[i * p.N + j] = (p.accumulate ? p.C[i * p.N + j] : 0.0) + s;
    }
}
std::vector<double> randv(size_t n, uint64_t seed) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = philox_normal(seed, 3, i);
  return v;
}
}  // namespace

TEST_CASE("grouped gemm problem lists: one product per non-empty group, and run one by one they are the grouped products") {
  const int64_t C = 5, F = 7;
  const std::vector<int64_t> off{0, 3, 3, 9, 10};  // E = 4, group 1 empty
  const int64_t M = off.back(), E = 4;
  auto x = randv((size_t)(M * C), 1), w = randv((size_t)(E * C * F), 2), g = randv((size_t)(M * F), 3);
  // forward: out rows of group e = x rows · w[e]
  std::vector<double> out((size_t)(M * F), 99.0), want((size_t)(M * F), 0.0);
  auto fwd = kernels::grouped_gemm_problems(out.data(), x.data(), w.data(), off, C, F);
  REQUIRE(fwd.size() == 3);
  CHECK(fwd[1].C == out.data() + 3 * F);  // group 2: rows 3..9
  CHECK(fwd[1].A == x.data() + 3 * C);
  CHECK(fwd[1].B == w.data() + 2 * C * F);
  CHECK((fwd[1].M == 6 && fwd[1].N == F && fwd[1].K == C && !fwd[1].transA && !fwd[1].transB && !fwd[1].accumulate));
  for (auto& p : fwd) naive_gemm(p);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t f = 0; f < F; ++f) {
        double s = 0;
        for (int64_t c = 0; c < C; ++c) s += x[r * C + c] * w[(e * C + c) * F + f];
        want[r * F + f] = s;
      }
  for (size_t i = 0; i < out.size(); ++i) REQUIRE(std::abs(out[i] - want[i]) < 1e-12);
  // backward: dx rows += g rows · w[e]ᵀ, dw[e] += x rowsᵀ g rows (accumulating onto what is there)
  auto dx = randv((size_t)(M * C), 4), dw = randv((size_t)(E * C * F), 5);
  std::vector<double> wdx = dx, wdw = dw;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r) {
      for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t f = 0; f < F; ++f) s += g[r * F + f] * w[(e * C + c) * F + f];
        wdx[r * C + c] += s;
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t f = 0; f < F; ++f) wdw[(e * C + c) * F + f] += x[r * C + c] * g[r * F + f];
    }
  auto bwd = kernels::grouped_gemm_bwd_problems(x.data(), w.data(), g.data(), dx.data(), dw.data(), off, C, F);
  REQUIRE(bwd.size() == 6);  // dx, dw for each of the 3 non-empty groups
  for (auto& p : bwd) naive_gemm(p);
  for (size_t i = 0; i < dx.size(); ++i) REQUIRE(std::abs(dx[i] - wdx[i]) < 1e-12);
  for (size_t i = 0; i < dw.size(); ++i) REQUIRE(std::abs(dw[i] - wdw[i]) < 1e-12);
  // the empty group's weight gradient is untouched; null outputs make no products
  CHECK(kernels::grouped_gemm_bwd_problems<double>(x.data(), w.data(), g.data(), nullptr, dw.data(), off, C, F).size() == 3);
  CHECK(kernels::grouped_gemm_bwd_problems<double>(x.data(), w.data(), g.data(), dx.data(), nullptr, off, C, F).size() == 3);
  CHECK(kernels::grouped_gemm_bwd_problems<double>(x.data(), w.data(), g.data(), nullptr, nullptr, off, C, F).empty());
  CHECK(kernels::grouped_gemm_problems<double>(out.data(), x.data(), w.data(), {0, 0, 0}, C, F).empty());
}

TEST_CASE("grouped gemm on the CPU: the problem lists give the per-group products bit for bit") {
  // kernels::grouped_gemm(_bwd) run their lists through kernels::gemm: the
  // same calls, in the same order, as one gemm per group did.
  const int64_t C = 24, F = 40;
  const std::vector<int64_t> off{0, 7, 7, 30, 31};
  const int64_t M = off.back(), E = 4;
  std::vector<float> x(M * C), w(E * C * F), g(M * F);
  for (size_t i = 0; i < x.size(); ++i) x[i] = philox_normal(7, 1, i);
  for (size_t i = 0; i < w.size(); ++i) w[i] = philox_normal(7, 2, i);
  for (size_t i = 0; i < g.size(); ++i) g[i] = philox_normal(7, 3, i);
  std::vector<float> out(M * F), want(M * F);
  kernels::grouped_gemm(out.data(), x.data(), w.data(), off, C, F);
  for (int64_t e = 0; e < E; ++e)
    if (off[e + 1] > off[e])
      kernels::gemm(want.data() + off[e] * F, x.data() + off[e] * C, w.data() + e * C * F, off[e + 1] - off[e], F, C,
                    false, false, false);
  CHECK(out == want);
  std::vector<float> dx(M * C, 0.5f), dw(E * C * F, -0.25f), wdx = dx, wdw = dw;
  kernels::grouped_gemm_bwd(x.data(), w.data(), g.data(), dx.data(), dw.data(), off, C, F);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = off[e], m = off[e + 1] - r0;
    if (!m) continue;
    kernels::gemm(wdx.data() + r0 * C, g.data() + r0 * F, w.data() + e * C * F, m, C, F, false, true, true);
    kernels::gemm(wdw.data() + e * C * F, x.data() + r0 * C, g.data() + r0 * F, C, F, m, true, false, true);
  }
  CHECK(dx == wdx);
  CHECK(dw == wdw);
}

// ---- the optimiser's table ----------------------------------------------------------------------------
namespace {
void make_params(nn::ParamStore& ps) {
  ps.normal("a.w", {4, 3}, 0.5, 1);
  ps.normal("layers.0.norm1.g", {3}, 0.5, 1);  // no decay (norm)
  ps.normal("head.b", {5}, 0.5, 1);            // no decay (bias)
  ps.normal("frozen.w", {2, 2}, 0.5, 1);       // not trainable
  ps.normal("nograd.w", {3}, 0.5, 1);          // trainable, no gradient this step
  ps.get("frozen.w").set_requires_grad(false);
}
void set_grads(nn::ParamStore& ps, uint64_t seed) {
  for (auto& [name, v] : ps.all()) {
    if (name == "nograd.w") {
      v.zero_grad();
      continue;
    }
    Tensor g(v.shape());
    for (int64_t i = 0; i < g.numel(); ++i) g[i] = 3.0f * philox_normal(seed, nn::name_hash(name), (uint64_t)i);
    v.grad() = g;
  }
}
}  // namespace

TEST_CASE("AdamW: the table holds every trainable parameter with a gradient, in order; the step is the per-parameter loop bit for bit") {
  nn::ParamStore ps, ref;
  make_params(ps);
  make_params(ref);
  nn::AdamWConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.1;
  c.clip = 0.5;  // the gradients' norm is far above: clipping on
  c.total_steps = 10;
  nn::AdamW opt(c);
  std::map<std::string, std::pair<Tensor, Tensor>> state;  // the reference's (m, v)
  for (int64_t t = 1; t <= 3; ++t) {
    set_grads(ps, 100 + t);
    set_grads(ref, 100 + t);
    const auto rows = opt.table(ps);
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].name == "a.w");
    CHECK(rows[1].name == "layers.0.norm1.g");
    CHECK(rows[2].name == "head.b");
    CHECK(rows[0].t.weight_decay == 0.1f);
    CHECK(rows[1].t.weight_decay == 0.0f);
    CHECK(rows[2].t.weight_decay == 0.0f);
    CHECK(rows[0].t.param == ps.get("a.w").value().data());
    CHECK(rows[0].t.grad == ps.get("a.w").grad().data());
    CHECK(rows[2].t.n == 5);
    const double norm = opt.step(ps);
    // the loop AdamW::step ran before the table: per parameter, clip then adamw_step
    const double rnorm = nn::global_grad_norm(ref);
    CHECK(norm == rnorm);
    const float scale = (float)(c.clip / (rnorm + 1e-6));
    REQUIRE(scale < 1.0f);
    for (auto& [name, v] : ref.all()) {
      if (!v.requires_grad() || !v.grad().defined()) continue;
      auto it = state.emplace(name, std::make_pair(Tensor(v.shape()), Tensor(v.shape()))).first;
      Tensor& g = v.grad();
      for (int64_t i = 0; i < g.numel(); ++i) g[i] *= scale;
      const bool decay = name == "a.w";
      kernels::adamw_step(v.value().data(), g.data(), it->second.first.data(), it->second.second.data(), v.numel(),
                          (float)nn::lr_at(c, t), (float)c.beta1, (float)c.beta2, (float)c.eps,
                          decay ? (float)c.weight_decay : 0.0f, t);
    }
    for (auto& [name, v] : ps.all()) {
      INFO(name << " at step " << t);
      CHECK(v.value().to_vector() == ref.get(name).value().to_vector());
      if (v.grad().defined()) CHECK(v.grad().to_vector() == ref.get(name).grad().to_vector());  // clipped in place
    }
  }
  // untouched: the frozen parameter and the one that never had a gradient
  nn::ParamStore fresh;
  make_params(fresh);
  CHECK(ps.get("frozen.w").value().to_vector() == fresh.get("frozen.w").value().to_vector());
  CHECK(ps.get("nograd.w").value().to_vector() == fresh.get("nograd.w").value().to_vector());
}
