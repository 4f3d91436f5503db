// tests/op_cases.cpp — the op table (see op_cases.h). One entry per case; a
// few loops generate the same pattern for sibling ops (binary ops, unary ops).
#include "tests/op_cases.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <regex>
#include <set>
#include <tuple>
#include <type_traits>

#include "core/philox.h"
#include "nn/moe.h"  // plan_dispatch, for the MoE dispatch cases

namespace vm::testing {

// ---- value generators ------------------------------------------------------------
namespace {
PhiloxStream stream_of(uint64_t seed) { return PhiloxStream{seed, 0x0ddc0ffeeULL, 0}; }
}  // namespace

Gen normal(double scale, double mean) {
  return [=](TensorD& t, uint64_t seed) {
    auto s = stream_of(seed);
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = mean + scale * (double)s.normal();
  };
}

Gen uniform(double lo, double hi) {
  return [=](TensorD& t, uint64_t seed) {
    auto s = stream_of(seed);
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = lo + (hi - lo) * (double)s.uniform();
  };
}

Gen positive(double lo, double hi) { return uniform(lo, hi); }

Gen away_from_zero(double margin, double hi) {
  return [=](TensorD& t, uint64_t seed) {
    auto s = stream_of(seed);
    for (int64_t i = 0; i < t.numel(); ++i) {
      double mag = margin + (hi - margin) * (double)s.uniform();
      t[i] = s.uniform() < 0.5f ? -mag : mag;
    }
  };
}

Gen separated(double gap, double lowest) {
  return [=](TensorD& t, uint64_t seed) {
    auto s = stream_of(seed);
    int64_t E = t.ndim() ? t.shape().back() : 1;
    int64_t rows = E ? t.numel() / E : 0;
    std::vector<int64_t> perm((size_t)E);
    for (int64_t r = 0; r < rows; ++r) {
      std::iota(perm.begin(), perm.end(), 0);
      for (int64_t i = E - 1; i > 0; --i)  // Fisher-Yates
        std::swap(perm[i], perm[(int64_t)(s.uniform() * (float)(i + 1)) % (i + 1)]);
      double shift = (double)s.normal();
      for (int64_t e = 0; e < E; ++e)  // rank * gap, jitter < gap / 4: neighbours >= 3/4 gap apart
        t[r * E + e] = (std::isnan(lowest) ? shift + gap * ((double)perm[e] - 0.5 * (double)E)
                                           : lowest + gap * (double)perm[e]) +
                       0.25 * gap * (double)s.uniform();
    }
  };
}

Gen diag_positive(double lo, double hi) {
  return [=](TensorD& t, uint64_t seed) {
    auto s = stream_of(seed);
    int64_t E = t.size(-1);
    for (int64_t i = 0; i < t.numel(); ++i) {
      int64_t r = (i / E) % E, c = i % E;
      t[i] = r == c ? lo + (hi - lo) * (double)s.uniform() : (double)s.normal();
    }
  };
}

Gen ids(int ignore_every, bool all_ignored) {
  return [=](TensorD& t, uint64_t seed) {
    for (int64_t i = 0; i < t.numel(); ++i) {
      int64_t src = i - (i & 1);  // odd positions repeat the id before them
      double id = (double)(philox_u32(seed, 0x1d5, (uint64_t)src) >> 12);  // [0, 2^20)
      if (all_ignored || (ignore_every > 0 && i % ignore_every == ignore_every - 1)) id = -1;
      t[i] = id;
    }
  };
}

std::vector<int64_t> group_offsets(int64_t M, int64_t E) {
  // weights 1, 0, 3, 1, 0, 3, ... (expert 1 empty), cumulative, scaled to M
  std::vector<int64_t> w((size_t)E);
  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) total += (w[e] = E == 1 ? 1 : (e % 3 == 1 ? 0 : e % 3 + 1));
  std::vector<int64_t> off((size_t)E + 1, 0);
  int64_t acc = 0;
  for (int64_t e = 0; e < E; ++e) {
    acc += w[e];
    off[e + 1] = M * acc / total;
  }
  off[E] = M;
  return off;
}

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

std::vector<TensorD> make_inputs(const OpCase& c, bool bench_shapes, uint64_t seed) {
  std::vector<TensorD> xs;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const Input& in = c.inputs[i];
    TensorD t(bench_shapes && !in.bench_shape.empty() ? in.bench_shape : in.shape);
    in.gen(t, hash_name(c.name) ^ (seed * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)(i + 1) * 0xBF58476D1CE4E5B9ULL);
    for (int64_t j = 0; j < t.numel(); ++j) t[j] = (double)(float)t[j];  // identical inputs for all paths
    xs.push_back(std::move(t));
  }
  return xs;
}

std::vector<std::string> ops_declared_in_header(const std::string& text) {
  std::vector<std::string> names;
  std::regex decl(R"(template\s*<\s*class\s+T\s*>\s*(?:VarT<T>|TopK<T>)\s+(\w+)\s*\()");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), decl); it != std::sregex_iterator(); ++it) {
    std::string n = (*it)[1];
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  }
  return names;
}

// ---- the table ------------------------------------------------------------------------
namespace {

// Chained description of one case; appended to the table at the end of the
// full expression that created it.
class Entry {
 public:
  Entry(std::vector<OpCase>& table, std::string op, std::string variant) : table_(table) {
    c_.op = op;
    c_.name = op + "/" + variant;
  }
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;
  ~Entry() { table_.push_back(std::move(c_)); }

  // differentiable input
  Entry& in(Shape s, Gen g = normal(), Shape bench = {}) {
    c_.inputs.push_back(Input{std::move(s), std::move(g), true, std::move(bench)});
    return *this;
  }
  // integer / id input: never differentiated
  Entry& ids_in(Shape s, Gen g = ids(), Shape bench = {}) {
    c_.inputs.push_back(Input{std::move(s), std::move(g), false, std::move(bench)});
    return *this;
  }
  // The builder, written once for both precisions.
  template <class F>
  Entry& op(F f) {
    c_.build_f = [f](const std::vector<Var>& x) -> Var { return f(x); };
    c_.build_d = [f](const std::vector<VarD>& x) -> VarD { return f(x); };
    return *this;
  }
  template <class F>
  Entry& ref(F f) {
    c_.reference = [f](const std::vector<TensorD>& x) -> TensorD { return f(x); };
    return *this;
  }
  Entry& defined_grad(DefinedGradFn g) {
    c_.defined_grad = std::move(g);
    return *this;
  }
  Entry& flops(FlopsFn f) {
    c_.flops = std::move(f);
    return *this;
  }
  // Looser tolerances always come with the reason.
  Entry& grad_tol(double tol, std::string why) {
    c_.grad_tol = tol;
    note(std::move(why));
    return *this;
  }
  Entry& f32_tol(double tol, std::string why) {
    c_.f32_tol = tol;
    note(std::move(why));
    return *this;
  }
  Entry& f32_grad_tol(double tol, std::string why) {
    c_.f32_grad_tol = tol;
    note(std::move(why));
    return *this;
  }
  Entry& no_bench() {
    c_.bench = false;
    return *this;
  }

 private:
  void note(std::string why) { c_.note += (c_.note.empty() ? "" : "; ") + why; }
  std::vector<OpCase>& table_;
  OpCase c_;
};

struct Table {
  std::vector<OpCase> cases;
  Entry add(const std::string& op, const std::string& variant) { return Entry(cases, op, variant); }
};

double matmul_flops(const std::vector<Shape>& s) {
  const Shape &a = s[0], &b = s[1];
  return 2.0 * (double)shape_numel(a) * (double)b.back();  // 2 · (batch·M·K) · N
}

// The dispatch plan of the MoE cases: E = 4 experts, token n's choice j =
// (id + j) mod 4 (distinct per token), every 5th token padding, capacity
// factor 1 (so some assignments are dropped).
nn::DispatchPlan moe_plan(const std::vector<int32_t>& ids, int64_t N, int K) {
  std::vector<int32_t> experts(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) experts[i] = (ids[i] + (int32_t)(i % (size_t)K)) % 4;
  std::vector<uint8_t> mask((size_t)N);
  for (int64_t n = 0; n < N; ++n) mask[(size_t)n] = n % 5 != 4;
  return nn::plan_dispatch(experts, N, K, 4, mask, 1.0);
}
template <class V>
ops::MoEDispatch moe_dispatch_of(const V& ids) {  // ids: (N, K)
  nn::DispatchPlan p = moe_plan(ids_of(ids, 4), ids.size(0), (int)ids.size(1));
  return ops::moe_dispatch(p.token, p.slot, ids.size(0), (int)ids.size(1), ids.value().device());
}

std::vector<OpCase> build_table() {
  Table t;

  // ---- matmul: shared weight (any batch dims) and batched --------------------------------
  auto mm = [](const auto& x) { return ops::matmul(x[0], x[1]); };
  auto mm_ref = [](const auto& x) { return ref::matmul(x[0], x[1]); };
  t.add("matmul", "3x5*5x7").in({3, 5}).in({5, 7}).op(mm).ref(mm_ref).flops(matmul_flops);
  t.add("matmul", "13x17*17x5").in({13, 17}, normal(), {4096, 256}).in({17, 5}, normal(), {256, 1024})
      .op(mm).ref(mm_ref).flops(matmul_flops);
  t.add("matmul", "1x13*13x1").in({1, 13}).in({13, 1}).op(mm).ref(mm_ref).flops(matmul_flops);
  t.add("matmul", "shared_2x3x5*5x7").in({2, 3, 5}, normal(), {8, 512, 1024}).in({5, 7}, normal(), {1024, 256})
      .op(mm).ref(mm_ref).flops(matmul_flops);
  t.add("matmul", "shared_2x3x5x4*4x3").in({2, 3, 5, 4}).in({4, 3}).op(mm).ref(mm_ref).flops(matmul_flops);
  t.add("matmul", "batched_3x5x4*3x4x7").in({3, 5, 4}, normal(), {64, 256, 64}).in({3, 4, 7}, normal(), {64, 64, 256})
      .op(mm).ref(mm_ref).flops(matmul_flops);
  t.add("matmul", "batched_2x3x5x4*2x3x4x6").in({2, 3, 5, 4}).in({2, 3, 4, 6}).op(mm).ref(mm_ref).flops(matmul_flops);

  // ---- broadcasting binary ops: same patterns for all four -------------------------------
  struct Pattern {
    const char* name;
    Shape a, b, bench_a, bench_b;
  };
  const std::vector<Pattern> patterns = {
      {"same_3x5", {3, 5}, {3, 5}, {1024, 1024}, {1024, 1024}},
      {"row_3x5+5", {3, 5}, {5}, {4096, 1024}, {1024}},
      {"outer_3x1+1x5", {3, 1}, {1, 5}, {}, {}},
      {"mid_2x3x5+3x1", {2, 3, 5}, {3, 1}, {}, {}},
      {"left_5+3x5", {5}, {3, 5}, {}, {}},
      {"4d_2x1x3x5+1x4x1x5", {2, 1, 3, 5}, {1, 4, 1, 5}, {}, {}},
      {"scalar_()+3x5", {}, {3, 5}, {}, {}},
  };
  for (const auto& p : patterns) {
    t.add("add", p.name).in(p.a, normal(), p.bench_a).in(p.b, normal(), p.bench_b)
        .op([](const auto& x) { return ops::add(x[0], x[1]); })
        .ref([](const auto& x) { return ref::add(x[0], x[1]); });
    t.add("sub", p.name).in(p.a, normal(), p.bench_a).in(p.b, normal(), p.bench_b)
        .op([](const auto& x) { return ops::sub(x[0], x[1]); })
        .ref([](const auto& x) { return ref::sub(x[0], x[1]); });
    t.add("mul", p.name).in(p.a, normal(), p.bench_a).in(p.b, normal(), p.bench_b)
        .op([](const auto& x) { return ops::mul(x[0], x[1]); })
        .ref([](const auto& x) { return ref::mul(x[0], x[1]); });
    // divisor bounded away from 0 (|b| >= 0.5, both signs)
    t.add("div", p.name).in(p.a, normal(), p.bench_a).in(p.b, away_from_zero(0.5, 2.0), p.bench_b)
        .op([](const auto& x) { return ops::div(x[0], x[1]); })
        .ref([](const auto& x) { return ref::div(x[0], x[1]); });
  }

  // ---- scalar ops ---------------------------------------------------------------------
  t.add("add_scalar", "3x5+2.5").in({3, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::add_scalar(x[0], 2.5); })
      .ref([](const auto& x) { return ref::add_scalar(x[0], 2.5); });
  t.add("mul_scalar", "2x3x5*-1.7").in({2, 3, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::mul_scalar(x[0], -1.7); })
      .ref([](const auto& x) { return ref::mul_scalar(x[0], -1.7); });
  t.add("pow_scalar", "x^2.5").in({3, 5}, positive(0.3, 2.0), {4096, 1024})
      .op([](const auto& x) { return ops::pow_scalar(x[0], 2.5); })
      .ref([](const auto& x) { return ref::pow_scalar(x[0], 2.5); });
  t.add("pow_scalar", "x^3_signed").in({7, 5}, normal())
      .op([](const auto& x) { return ops::pow_scalar(x[0], 3.0); })
      .ref([](const auto& x) { return ref::pow_scalar(x[0], 3.0); });
  t.add("pow_scalar", "x^-0.5").in({2, 7}, positive(0.3, 2.0))
      .op([](const auto& x) { return ops::pow_scalar(x[0], -0.5); })
      .ref([](const auto& x) { return ref::pow_scalar(x[0], -0.5); });
  t.add("neg", "3x5").in({3, 5}).op([](const auto& x) { return ops::neg(x[0]); })
      .ref([](const auto& x) { return ref::mul_scalar(x[0], -1.0); });
  // square = mul(a, a): the same Var twice, so its gradient accumulates from both sides
  t.add("square", "3x5").in({3, 5}).op([](const auto& x) { return ops::square(x[0]); })
      .ref([](const auto& x) { return ref::mul(x[0], x[0]); });
  // constant: cuts the graph; its defined gradient is zero
  t.add("constant", "3x5").in({3, 5}).op([](const auto& x) { return ops::constant(x[0].value().clone()); })
      .ref([](const auto& x) { return x[0].clone(); })
      .defined_grad([](const std::vector<TensorD>& x, const TensorD&) { return std::vector<TensorD>{TensorD(x[0].shape())}; })
      .no_bench();

  // ---- unary ops: two shapes each, generators keep kinks and domains away -------------------
#define VM_UNARY(name, gen)                                                                  \
  for (const Shape& s : {Shape{3, 5}, Shape{2, 3, 7}})                                     \
    t.add(#name, shape_str(s)).in(s, gen, s.size() == 2 ? Shape{4096, 1024} : Shape{})    \
        .op([](const auto& x) { return ops::name(x[0]); })                                 \
        .ref([](const auto& x) { return ref::name(x[0]); });
  VM_UNARY(exp, normal(1.0))
  VM_UNARY(log, positive(0.2, 3.0))   // domain x > 0
  VM_UNARY(sqrt, positive(0.2, 3.0))  // domain x > 0, steep near 0
  VM_UNARY(softplus, normal(3.0))
  VM_UNARY(sigmoid, normal(2.0))
  VM_UNARY(relu, away_from_zero(0.2, 2.0))  // kink at 0: |x| >= 0.2 >> 2h
  VM_UNARY(gelu, normal(2.0))
  VM_UNARY(silu, normal(2.0))
  VM_UNARY(tanh, normal(1.5))
#undef VM_UNARY
  t.add("softplus", "wide_-30..30").in({5, 7}, uniform(-30, 30))
      .op([](const auto& x) { return ops::softplus(x[0]); })
      .ref([](const auto& x) { return ref::softplus(x[0]); });

  // ---- reductions -------------------------------------------------------------------------
  t.add("sum", "3x5_axis0").in({3, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::sum(x[0], 0); })
      .ref([](const auto& x) { return ref::sum(x[0], 0); });
  t.add("sum", "3x5_axis-1_keepdim").in({3, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::sum(x[0], -1, true); })
      .ref([](const auto& x) { return ref::sum(x[0], -1, true); });
  t.add("sum", "2x7x5_axis1").in({2, 7, 5})
      .op([](const auto& x) { return ops::sum(x[0], 1); })
      .ref([](const auto& x) { return ref::sum(x[0], 1); });
  t.add("sum", "2x3x5x7_axis2_keepdim").in({2, 3, 5, 7})
      .op([](const auto& x) { return ops::sum(x[0], 2, true); })
      .ref([](const auto& x) { return ref::sum(x[0], 2, true); });
  t.add("mean", "3x5_axis1").in({3, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::mean(x[0], 1); })
      .ref([](const auto& x) { return ref::mean(x[0], 1); });
  t.add("mean", "2x7x5_axis0_keepdim").in({2, 7, 5})
      .op([](const auto& x) { return ops::mean(x[0], 0, true); })
      .ref([](const auto& x) { return ref::mean(x[0], 0, true); });
  t.add("sum_all", "13x17").in({13, 17}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::sum_all(x[0]); })
      .ref([](const auto& x) { return ref::sum_all(x[0]); });
  t.add("mean_all", "2x3x5").in({2, 3, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::mean_all(x[0]); })
      .ref([](const auto& x) { return ref::mean_all(x[0]); });

  // ---- softmax family ------------------------------------------------------------------------
  for (const auto& [variant, shape, gen, bench] :
       std::vector<std::tuple<std::string, Shape, Gen, Shape>>{
           {"3x5", {3, 5}, normal(), {4096, 1024}},
           {"2x3x7", {2, 3, 7}, normal(), {}},
           {"13", {13}, normal(), {}},
           {"large_logits_4x17", {4, 17}, normal(10.0), {}}}) {
    t.add("softmax", variant).in(shape, gen, bench)
        .op([](const auto& x) { return ops::softmax(x[0]); })
        .ref([](const auto& x) { return ref::softmax(x[0]); });
    t.add("log_softmax", variant).in(shape, gen, bench)
        .op([](const auto& x) { return ops::log_softmax(x[0]); })
        .ref([](const auto& x) { return ref::log_softmax(x[0]); });
    t.add("logsumexp", variant).in(shape, gen, bench)
        .op([](const auto& x) { return ops::logsumexp(x[0]); })
        .ref([](const auto& x) { return ref::logsumexp(x[0]); });
  }

  // ---- norms ------------------------------------------------------------------------------------
  t.add("layernorm", "3x5").in({3, 5}, normal(), {4096, 256}).in({5}, uniform(0.5, 1.5), {256})
      .in({5}, normal(0.5), {256})
      .op([](const auto& x) { return ops::layernorm(x[0], x[1], x[2]); })
      .ref([](const auto& x) { return ref::layernorm(x[0], x[1], x[2]); });
  t.add("layernorm", "2x3x17_eps1e-2").in({2, 3, 17}, normal(2.0, 1.0)).in({17}, uniform(0.5, 1.5))
      .in({17}, normal(0.5))
      .op([](const auto& x) { return ops::layernorm(x[0], x[1], x[2], 1e-2); })
      .ref([](const auto& x) { return ref::layernorm(x[0], x[1], x[2], 1e-2); });
  t.add("rmsnorm", "3x5").in({3, 5}, normal(), {4096, 256}).in({5}, uniform(0.5, 1.5), {256})
      .op([](const auto& x) { return ops::rmsnorm(x[0], x[1]); })
      .ref([](const auto& x) { return ref::rmsnorm(x[0], x[1]); });
  t.add("rmsnorm", "2x7x13_eps1e-2").in({2, 7, 13}).in({13}, uniform(0.5, 1.5))
      .op([](const auto& x) { return ops::rmsnorm(x[0], x[1], 1e-2); })
      .ref([](const auto& x) { return ref::rmsnorm(x[0], x[1], 1e-2); });

  // ---- indexing and layout -------------------------------------------------------------------------
  // embedding: table (V, C), ids tensor (any shape) -> ids.shape + (C); ids repeat in pairs
  auto emb = [](const auto& x) { return ops::embedding(x[0], ids_of(x[1], x[0].size(0)), x[1].shape()); };
  auto emb_ref = [](const auto& x) { return ref::embedding(x[0], ids_of(x[1], x[0].size(0)), x[1].shape()); };
  t.add("embedding", "11x5_ids3x4").in({11, 5}, normal(), {8192, 256}).ids_in({3, 4}, ids(), {16, 256})
      .op(emb).ref(emb_ref);
  t.add("embedding", "7x3_ids17").in({7, 3}).ids_in({17}).op(emb).ref(emb_ref);

  t.add("reshape", "3x5x7_to_-1x7").in({3, 5, 7}, normal(), {64, 512, 7})
      .op([](const auto& x) { return ops::reshape(x[0], {-1, 7}); })
      .ref([](const auto& x) { return ref::reshape(x[0], {-1, 7}); });
  t.add("reshape", "12x5_to_3x4x5").in({12, 5})
      .op([](const auto& x) { return ops::reshape(x[0], {3, 4, 5}); })
      .ref([](const auto& x) { return ref::reshape(x[0], {3, 4, 5}); });

  for (const auto& [variant, shape, d0, d1, bench] : std::vector<std::tuple<std::string, Shape, int, int, Shape>>{
           {"3x5_0_1", {3, 5}, 0, 1, {1024, 1024}},
           {"2x3x5_-1_-2", {2, 3, 5}, -1, -2, {}},
           {"2x3x5x7_1_2", {2, 3, 5, 7}, 1, 2, {8, 256, 8, 32}},
           {"2x3x5x7_0_3", {2, 3, 5, 7}, 0, 3, {}}}) {
    int a0 = d0, a1 = d1;
    t.add("transpose", variant).in(shape, normal(), bench)
        .op([a0, a1](const auto& x) { return ops::transpose(x[0], a0, a1); })
        .ref([a0, a1](const auto& x) { return ref::transpose(x[0], a0, a1); });
  }

  t.add("slice", "7x5_axis0_2:5").in({7, 5}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::slice(x[0], 0, 2, 5); })
      .ref([](const auto& x) { return ref::slice(x[0], 0, 2, 5); });
  t.add("slice", "3x7x5_axis1_1:6").in({3, 7, 5})
      .op([](const auto& x) { return ops::slice(x[0], 1, 1, 6); })
      .ref([](const auto& x) { return ref::slice(x[0], 1, 1, 6); });
  t.add("slice", "3x5_axis-1_full").in({3, 5})
      .op([](const auto& x) { return ops::slice(x[0], -1, 0, 5); })
      .ref([](const auto& x) { return ref::slice(x[0], -1, 0, 5); });
  t.add("slice", "3x5_axis1_empty").in({3, 5})
      .op([](const auto& x) { return ops::slice(x[0], 1, 3, 3); })
      .ref([](const auto& x) { return ref::slice(x[0], 1, 3, 3); })
      .no_bench();

  t.add("concat", "3x5+3x2_axis-1").in({3, 5}, normal(), {4096, 512}).in({3, 2}, normal(), {4096, 512})
      .op([](const auto& x) { return ops::concat(x, -1); })
      .ref([](const auto& x) { return ref::concat(x, -1); });
  t.add("concat", "3_parts_axis1").in({2, 3, 5}).in({2, 1, 5}).in({2, 4, 5})
      .op([](const auto& x) { return ops::concat(x, 1); })
      .ref([](const auto& x) { return ref::concat(x, 1); });
  t.add("concat", "3x5+4x5_axis0").in({3, 5}).in({4, 5})
      .op([](const auto& x) { return ops::concat(x, 0); })
      .ref([](const auto& x) { return ref::concat(x, 0); });

  // ---- attention ----------------------------------------------------------------------------------
  auto attn_flops = [](const std::vector<Shape>& s) {  // q kᵀ and P v: 2 · 2 · BH · T² · D
    return 4.0 * (double)(s[0][0] * s[0][1]) * (double)(s[0][2] * s[0][2]) * (double)s[0][3];
  };
  for (bool causal : {false, true}) {
    std::string c = causal ? "causal" : "full";
    auto f = [causal](const auto& x) { return ops::attention(x[0], x[1], x[2], causal); };
    auto r = [causal](const auto& x) { return ref::attention(x[0], x[1], x[2], causal); };
    t.add("attention", "1x1x5x3_" + c).in({1, 1, 5, 3}).in({1, 1, 5, 3}).in({1, 1, 5, 3}).op(f).ref(r)
        .flops(attn_flops);
    t.add("attention", "2x3x7x4_" + c).in({2, 3, 7, 4}, normal(), {4, 8, 256, 64})
        .in({2, 3, 7, 4}, normal(), {4, 8, 256, 64}).in({2, 3, 7, 4}, normal(), {4, 8, 256, 64})
        .op(f).ref(r).flops(attn_flops);
    t.add("attention", "1x2x1x4_" + c).in({1, 2, 1, 4}).in({1, 2, 1, 4}).in({1, 2, 1, 4}).op(f).ref(r)
        .no_bench();
  }

  // ---- cross-entropy: targets = ids % C, negative ids -> ignore_index ----------------------------------
  t.add("cross_entropy", "7x5_ignore_every_3rd").in({7, 5}, normal(), {2048, 4096}).ids_in({7}, ids(3), {2048})
      .op([](const auto& x) { return ops::cross_entropy(x[0], ids_of(x[1], x[0].size(1), -100)); })
      .ref([](const auto& x) { return ref::cross_entropy(x[0], ids_of(x[1], x[0].size(1), -100)); });
  t.add("cross_entropy", "13x17_large_logits").in({13, 17}, normal(5.0)).ids_in({13})
      .op([](const auto& x) { return ops::cross_entropy(x[0], ids_of(x[1], x[0].size(1), -100)); })
      .ref([](const auto& x) { return ref::cross_entropy(x[0], ids_of(x[1], x[0].size(1), -100)); });
  // a valid class id (2) used as ignore_index: those rows are skipped, class 2 elsewhere too
  t.add("cross_entropy", "9x4_ignore_index_2").in({9, 4}).ids_in({9})
      .op([](const auto& x) { return ops::cross_entropy(x[0], ids_of(x[1], x[0].size(1)), 2); })
      .ref([](const auto& x) { return ref::cross_entropy(x[0], ids_of(x[1], x[0].size(1)), 2); });
  t.add("cross_entropy", "5x3_all_ignored").in({5, 3}).ids_in({5}, ids(0, true))
      .op([](const auto& x) { return ops::cross_entropy(x[0], ids_of(x[1], x[0].size(1), -100)); })
      .ref([](const auto& x) { return ref::cross_entropy(x[0], ids_of(x[1], x[0].size(1), -100)); })
      .no_bench();

  // ---- dropout (fixed Philox mask: linear in x, so finite differences apply) -----------------------------
  t.add("dropout", "7x13_p0.3").in({7, 13}, normal(), {4096, 1024})
      .op([](const auto& x) { return ops::dropout(x[0], 0.3, 42, 3, 1000); })
      .ref([](const auto& x) { return ref::dropout(x[0], 0.3, 42, 3, 1000); });
  t.add("dropout", "13x17_p0.9").in({13, 17})
      .op([](const auto& x) { return ops::dropout(x[0], 0.9, 7, 0, 0); })
      .ref([](const auto& x) { return ref::dropout(x[0], 0.9, 7, 0, 0); });
  t.add("dropout", "3x5_p0").in({3, 5})
      .op([](const auto& x) { return ops::dropout(x[0], 0.0, 1, 2, 3); })
      .ref([](const auto& x) { return ref::dropout(x[0], 0.0, 1, 2, 3); })
      .no_bench();

  // ---- selection, dispatch, combine ------------------------------------------------------------------
  // topk: values >= 0.3 apart per row, so the ±2h stencil never changes the selection
  for (const auto& [variant, shape, k, bench] : std::vector<std::tuple<std::string, Shape, int, Shape>>{
           {"7x5_k1", {7, 5}, 1, {4096, 8}},
           {"7x5_k2", {7, 5}, 2, {4096, 8}},
           {"7x5_k=E", {7, 5}, 5, {}},
           {"13x8_k3", {13, 8}, 3, {4096, 64}}}) {
    int kk = k;
    t.add("topk", variant).in(shape, separated(0.3), bench)
        .op([kk](const auto& x) { return ops::topk(x[0], kk).values; })
        .ref([kk](const auto& x) { return ref::topk_values(x[0], kk); });
  }
  // take_cols: idx (N, k) % E; pairs of equal ids -> repeated columns in a row accumulate
  t.add("take_cols", "7x5_k3").in({7, 5}, normal(), {4096, 64}).ids_in({7, 3}, ids(), {4096, 2})
      .op([](const auto& x) { return ops::take_cols(x[0], ids_of(x[1], x[0].size(1)), (int)x[1].size(1)); })
      .ref([](const auto& x) { return ref::take_cols(x[0], ids_of(x[1], x[0].size(1)), (int)x[1].size(1)); });
  t.add("take_cols", "4x6_k1").in({4, 6}).ids_in({4, 1})
      .op([](const auto& x) { return ops::take_cols(x[0], ids_of(x[1], x[0].size(1)), (int)x[1].size(1)); })
      .ref([](const auto& x) { return ref::take_cols(x[0], ids_of(x[1], x[0].size(1)), (int)x[1].size(1)); });
  // gather_rows / scatter_add_rows: repeated rows (pairs), some rows never hit
  t.add("gather_rows", "7x5_rows11").in({7, 5}, normal(), {4096, 256}).ids_in({11}, ids(), {8192})
      .op([](const auto& x) { return ops::gather_rows(x[0], ids_of(x[1], x[0].size(0))); })
      .ref([](const auto& x) { return ref::gather_rows(x[0], ids_of(x[1], x[0].size(0))); });
  t.add("gather_rows", "13x3_rows5").in({13, 3}).ids_in({5})
      .op([](const auto& x) { return ops::gather_rows(x[0], ids_of(x[1], x[0].size(0))); })
      .ref([](const auto& x) { return ref::gather_rows(x[0], ids_of(x[1], x[0].size(0))); });
  // n_rows = 2M/3 + 1 (derived from M so the bench shape works)
  auto sar = [](const auto& x) {
    int64_t n = x[0].size(0) * 2 / 3 + 1;
    return ops::scatter_add_rows(x[0], ids_of(x[1], n), n);
  };
  auto sar_ref = [](const auto& x) {
    int64_t n = x[0].size(0) * 2 / 3 + 1;
    return ref::scatter_add_rows(x[0], ids_of(x[1], n), n);
  };
  t.add("scatter_add_rows", "11x5").in({11, 5}, normal(), {8192, 256}).ids_in({11}, ids(), {8192}).op(sar).ref(sar_ref);
  t.add("scatter_add_rows", "4x7").in({4, 7}).ids_in({4}).op(sar).ref(sar_ref);

  // grouped_matmul: x (M, C), w (E, C, F), uneven groups, expert 1 empty
  auto gmm = [](const auto& x) { return ops::grouped_matmul(x[0], x[1], group_offsets(x[0].size(0), x[1].size(0))); };
  auto gmm_ref = [](const auto& x) { return ref::grouped_matmul(x[0], x[1], group_offsets(x[0].size(0), x[1].size(0))); };
  auto gmm_flops = [](const std::vector<Shape>& s) { return 2.0 * (double)(s[0][0] * s[0][1] * s[1][2]); };
  t.add("grouped_matmul", "11x5_E4_F3").in({11, 5}, normal(), {8192, 256}).in({4, 5, 3}, normal(), {8, 256, 1024})
      .op(gmm).ref(gmm_ref).flops(gmm_flops);
  t.add("grouped_matmul", "7x5_E1_F3").in({7, 5}).in({1, 5, 3}).op(gmm).ref(gmm_ref).flops(gmm_flops);

  // ---- Cholesky pieces (E = 1 and E = 5) ------------------------------------------------------------
  auto tril_E = [](int64_t P) { return (int)((std::sqrt(8.0 * (double)P + 1.0) - 1.0) / 2.0 + 0.5); };
  t.add("fill_tril_expdiag", "3_E1").in({3, 1}, normal(0.5))
      .op([tril_E](const auto& x) { return ops::fill_tril_expdiag(x[0], tril_E(x[0].size(1))); })
      .ref([tril_E](const auto& x) { return ref::fill_tril_expdiag(x[0], tril_E(x[0].size(1))); });
  t.add("fill_tril_expdiag", "4_E5").in({4, 15}, normal(0.5), {4096, 36})
      .op([tril_E](const auto& x) { return ops::fill_tril_expdiag(x[0], tril_E(x[0].size(1))); })
      .ref([tril_E](const auto& x) { return ref::fill_tril_expdiag(x[0], tril_E(x[0].size(1))); });
  // the upper triangle of L is ignored (its gradient is 0, and so is the finite difference)
  t.add("tril_matvec", "3_E1").in({3, 1, 1}).in({3, 1})
      .op([](const auto& x) { return ops::tril_matvec(x[0], x[1]); })
      .ref([](const auto& x) { return ref::tril_matvec(x[0], x[1]); });
  t.add("tril_matvec", "4_E5").in({4, 5, 5}, normal(), {4096, 8, 8}).in({4, 5}, normal(), {4096, 8})
      .op([](const auto& x) { return ops::tril_matvec(x[0], x[1]); })
      .ref([](const auto& x) { return ref::tril_matvec(x[0], x[1]); });
  t.add("sum_log_diag", "3_E1").in({3, 1, 1}, diag_positive())
      .op([](const auto& x) { return ops::sum_log_diag(x[0]); })
      .ref([](const auto& x) { return ref::sum_log_diag(x[0]); });
  t.add("sum_log_diag", "4_E5").in({4, 5, 5}, diag_positive(), {4096, 8, 8})
      .op([](const auto& x) { return ops::sum_log_diag(x[0]); })
      .ref([](const auto& x) { return ref::sum_log_diag(x[0]); });

  // ---- the routers' gates: top-k of probabilities renormalised ----------------------------------------
  // positive values >= 0.3 apart per row, so the ±2h stencil never changes the selection
  for (const auto& [variant, shape, k, bench] : std::vector<std::tuple<std::string, Shape, int, Shape>>{
           {"7x5_k2", {7, 5}, 2, {4096, 8}},
           {"13x8_k3", {13, 8}, 3, {4096, 64}},
           {"7x5_k=E", {7, 5}, 5, {}},
           {"4x3_k1", {4, 3}, 1, {}}}) {
    int kk = k;
    t.add("topk_gates", variant).in(shape, separated(0.3, 0.2), bench)
        .op([kk](const auto& x) { return ops::topk_gates(x[0], kk).values; })
        .ref([kk](const auto& x) { return ref::topk_gates(x[0], kk); });
  }

  // ---- MoE dispatch (gather into expert groups) and combine (weighted sum back per token) ----------------
  // ids (N, K) -> a plan with padding and dropped assignments (moe_plan); combine's ys are
  // the first M rows of an (N·K, C) input (M depends on the plan)
  t.add("moe_gather", "N9_K2_C5").in({9, 5}, normal(), {4096, 256}).ids_in({9, 2}, ids(), {4096, 2})
      .op([](const auto& x) { return ops::moe_gather(x[0], moe_dispatch_of(x[1])); })
      .ref([](const auto& x) {
        return ref::moe_gather(x[0], moe_plan(ids_of(x[1], 4), x[1].size(0), (int)x[1].size(1)).token);
      });
  t.add("moe_gather", "N6_K1_C3").in({6, 3}).ids_in({6, 1})
      .op([](const auto& x) { return ops::moe_gather(x[0], moe_dispatch_of(x[1])); })
      .ref([](const auto& x) {
        return ref::moe_gather(x[0], moe_plan(ids_of(x[1], 4), x[1].size(0), (int)x[1].size(1)).token);
      });
  auto combine = [](const auto& x) {
    auto d = moe_dispatch_of(x[2]);
    return ops::moe_combine(ops::slice(x[0], 0, 0, d.m), x[1], d);
  };
  auto combine_ref = [](const auto& x) {
    nn::DispatchPlan p = moe_plan(ids_of(x[2], 4), x[2].size(0), (int)x[2].size(1));
    return ref::moe_combine(ref::slice(x[0], 0, 0, (int64_t)p.token.size()), x[1], p.token, p.slot);
  };
  t.add("moe_combine", "N9_K2_C5").in({18, 5}, normal(), {8192, 256}).in({9, 2}, uniform(0.1, 1.0), {4096, 2})
      .ids_in({9, 2}, ids(), {4096, 2}).op(combine).ref(combine_ref);
  t.add("moe_combine", "N10_K3_C4").in({30, 4}).in({10, 3}, uniform(0.1, 1.0)).ids_in({10, 3}).op(combine)
      .ref(combine_ref);

  // ---- closed-form KLs of the variational routers (s2 != 1: the 1/s2 and log s2 terms count) ---------
  for (double s2 : {0.49, 2.25}) {
    std::string v = "s2=" + std::string(s2 < 1 ? "0.49" : "2.25");
    t.add("kl_mf", "7x5_" + v).in({7, 5}).in({7, 5}, normal(0.5), {}).op([s2](const auto& x) {
          return ops::kl_mf(x[0], x[1], s2);
        }).ref([s2](const auto& x) { return ref::kl_mf(x[0], x[1], s2); });
    t.add("kl_fc", "4_E5_" + v).in({4, 5}).in({4, 5, 5}, diag_positive()).op([s2](const auto& x) {
          return ops::kl_fc(x[0], x[1], s2);
        }).ref([s2](const auto& x) { return ref::kl_fc(x[0], x[1], s2); });
  }
  t.add("kl_mf", "3x1_s2=0.64").in({3, 1}, normal(), {4096, 64}).in({3, 1}, normal(0.5), {4096, 64})
      .op([](const auto& x) { return ops::kl_mf(x[0], x[1], 0.64); })
      .ref([](const auto& x) { return ref::kl_mf(x[0], x[1], 0.64); });
  t.add("kl_fc", "3_E1_s2=0.64").in({3, 1}, normal(), {4096, 8}).in({3, 1, 1}, diag_positive(), {4096, 8, 8})
      .op([](const auto& x) { return ops::kl_fc(x[0], x[1], 0.64); })
      .ref([](const auto& x) { return ref::kl_fc(x[0], x[1], 0.64); });

  // ---- straight-through: forward = hard, gradient defined as identity into soft ------------------------
  t.add("straight_through", "7x5").in({7, 5}, uniform(0, 1), {4096, 64}).in({7, 5}, normal(), {4096, 64})
      .op([](const auto& x) { return ops::straight_through(x[0], x[1]); })
      .ref([](const auto& x) { return ref::straight_through(x[0], x[1]); })
      .defined_grad([](const std::vector<TensorD>& x, const TensorD& w) {
        return std::vector<TensorD>{TensorD(x[0].shape()), w.clone()};  // hard: none, soft: w
      });

  return std::move(t.cases);
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> table = build_table();
  return table;
}

}  // namespace vm::testing
