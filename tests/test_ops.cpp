// tests/test_ops.cpp — every op is checked, driven by the one op table
// (tests/op_cases.cpp):
//   (a) gradients: analytic (double) vs a 4-point central finite difference of
//       the random projection L = Σ w ⊙ op(x), for every input element;
//   (b) parity: float32 and float64 forward vs the plain double reference
//       (kernels/cpu/reference.h), and float32 vs float64 gradients;
//   (c) guards: every raw-pointer kernel in kernels/cpu runs on buffers with
//       sentinel-filled guard zones (and NaN-poisoned outputs) and is compared
//       with the reference;
//   (d) coverage: every op declared in autodiff/ops.h has a case.
// Plus clear shape errors, topk tie-breaking and thread-count independence.
//
// VMOER_OP_REPORT=1 prints the per-case maximum errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "core/philox.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_packed.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/rowwise.h"
#include "nn/moe.h"
#include "nn/routers/selection.h"
#include "tests/op_cases.h"

using namespace vm;
using namespace vm::testing;

namespace {

bool report() {
  const char* e = std::getenv("VMOER_OP_REPORT");
  return e && *e && *e != '0';
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

// |got − want| / max(|want|, floor)
double rel_err(double got, double want, double floor) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want) ? 0.0 : INFINITY;
  if (got == want) return 0.0;  // equal infinities too
  return std::abs(got - want) / std::max(std::abs(want), floor);
}

struct MaxErr {
  double err = 0;
  std::string where;
  void add(double e, const std::string& w) {
    if (!(e <= err)) {  // NaN-safe: a NaN error always wins
      err = e;
      where = w;
    }
  }
};

double max_rel_err(const TensorD& got, const TensorD& want, double floor, std::string* where = nullptr) {
  double m = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    double e = rel_err(got[i], want[i], floor);
    if (!(e <= m)) {
      m = e;
      if (where) *where = "[" + std::to_string(i) + "] got " + num(got[i]) + " want " + num(want[i]);
    }
  }
  return m;
}

template <class T>
std::vector<VarT<T>> to_vars(const OpCase& c, const std::vector<TensorD>& x, bool with_grad) {
  std::vector<VarT<T>> v;
  for (size_t i = 0; i < x.size(); ++i) v.emplace_back(x[i].cast<T>(), with_grad && c.inputs[i].grad);
  return v;
}

// Ops may allocate outputs uninitialised (TensorT::empty). Fresh pages read as
// zero, which would hide an element an op forgot to write; so before running
// an op, allocate and free NaN-filled blocks of the sizes it is about to
// allocate, and the allocator hands that NaN memory back to it.
void poison_heap(const std::vector<int64_t>& numels) {
  std::vector<void*> blocks;
  for (int64_t numel : numels)
    for (size_t bytes : {(size_t)numel * sizeof(float), (size_t)numel * sizeof(double)}) {
      for (int i = 0; i < 3; ++i) {
      void* p = aligned_alloc64(bytes);
        std::memset(p, 0xFF, ((bytes + 63) / 64) * 64);  // all-ones bytes: NaN in float and double
        blocks.push_back(p);
      }
    }
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) aligned_free64(*it);
}

// sizes to poison for an op: its output and its inputs
std::vector<int64_t> sizes_of(const std::vector<TensorD>& x, int64_t out_numel) {
  std::vector<int64_t> n{out_numel};
  for (auto& t : x) n.push_back(t.numel());
  return n;
}

template <class T>
VarT<T> build(const OpCase& c, const std::vector<VarT<T>>& x) {
  if constexpr (std::is_same_v<T, float>) return c.build_f(x);
  else return c.build_d(x);
}

// forward only, output copied (some ops share their input's storage)
template <class T>
TensorD forward(const OpCase& c, const std::vector<TensorD>& x, int64_t poison_out_numel = -1) {
  NoGradGuard ng;
  auto v = to_vars<T>(c, x, false);
  if (poison_out_numel >= 0) poison_heap(sizes_of(x, poison_out_numel));
  return build<T>(c, v).value().template cast<double>();
}

TensorD projection(const Shape& s, uint64_t seed) {
  TensorD w(s);
  normal()(w, seed);
  return w;
}

// Analytic gradient of L = Σ w ⊙ op(x) for every input (zeros where none arrived).
template <class T>
std::vector<TensorD> analytic_grads(const OpCase& c, const std::vector<TensorD>& x, const TensorD& w,
                                    std::vector<bool>* arrived = nullptr, bool poison = false) {
  auto v = to_vars<T>(c, x, true);
  auto seed = w.cast<T>();
  if (poison) poison_heap(sizes_of(x, w.numel()));
  VarT<T> y = build<T>(c, v);
  REQUIRE(y.shape() == w.shape());
  if (poison) poison_heap(sizes_of(x, w.numel()));
  if (y.requires_grad()) backward(y, seed);
  std::vector<TensorD> g;
  if (arrived) arrived->clear();
  for (auto& vi : v) {
    if (arrived) arrived->push_back(vi.grad().defined());
    g.push_back(vi.grad().defined() ? vi.grad().template cast<double>() : TensorD(vi.shape()));
  }
  return g;
}

// ∂L/∂x by the fourth-order central stencil
// (8 (L(x+h) − L(x−h)) − (L(x+2h) − L(x−2h))) / 12h, with L differences taken
// output-wise (Σ w ⊙ (y₊ − y₋)) so unaffected outputs cancel exactly.
TensorD numeric_grad(const OpCase& c, std::vector<TensorD> x, size_t which, const TensorD& w) {
  TensorD g(x[which].shape());
  const double h = c.fd_step;
  auto dL = [&](const TensorD& a, const TensorD& b) {
    double s = 0;
    for (int64_t o = 0; o < w.numel(); ++o) s += w[o] * (a[o] - b[o]);
    return s;
  };
  for (int64_t j = 0; j < x[which].numel(); ++j) {
    double x0 = x[which][j];
    auto at = [&](double d) {
      x[which][j] = x0 + d;
      return forward<double>(c, x);
    };
    TensorD p1 = at(h), m1 = at(-h), p2 = at(2 * h), m2 = at(-2 * h);
    x[which][j] = x0;
    g[j] = (8.0 * dL(p1, m1) - dL(p2, m2)) / (12.0 * h);
  }
  return g;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const vm::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a vm::Error> ") + e.what();
  }
  return "<no error>";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Sets the OpenMP thread count for a scope (restored even when a REQUIRE throws).
struct ThreadsGuard {
  int saved = omp_get_max_threads();
  explicit ThreadsGuard(int n) { omp_set_num_threads(n); }
  ~ThreadsGuard() { omp_set_num_threads(saved); }
};

}  // namespace

// ---- (d) the table itself and coverage -------------------------------------------------------
TEST_CASE("op table: well formed, unique names") {
  const auto& cases = op_cases();
  CHECK(cases.size() > 100);
  std::set<std::string> names;
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(names.insert(c.name).second);
    CHECK(!c.inputs.empty());
    CHECK(c.build_f);
    CHECK(c.build_d);
    CHECK(c.has_grad_inputs());
    CHECK(!c.op.empty());
    if (c.grad_tol > 1e-6 || c.f32_tol > 1e-5 || c.f32_grad_tol > 1e-4) CHECK_MESSAGE(!c.note.empty(), "looser tolerance without a reason");
  }
}

TEST_CASE("op table: every op declared in autodiff/ops.h has a case") {
  std::string header = read_file(std::string(VMOER_SOURCE_DIR) + "/autodiff/ops.h");
  REQUIRE(!header.empty());
  std::vector<std::string> declared = ops_declared_in_header(header);
  // The parser must at least see these (guards against a parser that finds nothing).
  const std::vector<std::string> known = {
      "matmul", "add", "sub", "mul", "div", "add_scalar", "mul_scalar", "pow_scalar", "exp", "log", "sqrt",
      "softplus", "sigmoid", "relu", "gelu", "silu", "tanh", "sum", "mean", "sum_all", "mean_all", "softmax",
      "log_softmax", "logsumexp", "layernorm", "rmsnorm", "embedding", "reshape", "transpose", "slice", "concat",
      "attention", "cross_entropy", "dropout", "topk", "take_cols", "gather_rows", "scatter_add_rows",
      "grouped_matmul", "fill_tril_expdiag", "tril_matvec", "sum_log_diag", "straight_through", "neg", "square",
      "constant", "topk_gates", "moe_gather", "moe_combine", "kl_mf", "kl_fc"};
  for (const auto& k : known) CHECK_MESSAGE(std::find(declared.begin(), declared.end(), k) != declared.end(), k);
  std::set<std::string> covered;
  for (const auto& c : op_cases()) covered.insert(c.op);
  for (const auto& d : declared) CHECK_MESSAGE(covered.count(d), "op '" << d << "' in autodiff/ops.h has no entry in tests/op_cases.cpp");
  for (const auto& c : covered)
    CHECK_MESSAGE(std::find(declared.begin(), declared.end(), c) != declared.end(), "case for unknown op " << c);
  if (report()) std::printf("[op table] %zu ops declared, %zu covered, %zu cases\n", declared.size(), covered.size(), op_cases().size());
}

// ---- (a) finite-difference gradients in double -------------------------------------------------
TEST_CASE("op table: analytic gradients match finite differences (double)") {
  // Tens of thousands of tiny forwards: one thread avoids OpenMP fork/join cost
  // (results do not depend on the thread count, tested below).
  ThreadsGuard one_thread(1);
  MaxErr worst;
  for (const auto& c : op_cases()) {
    INFO("case " << c.name << (c.note.empty() ? "" : "  [" + c.note + "]"));
    auto x = make_inputs(c, false);
    TensorD y = forward<double>(c, x);
    TensorD w = projection(y.shape(), hash_name(c.name) ^ 0x5EEDULL);
    std::vector<bool> arrived;
    auto ga = analytic_grads<double>(c, x, w, &arrived);
    std::vector<TensorD> expected;
    if (c.defined_grad) expected = c.defined_grad(x, w);
    MaxErr e;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!c.inputs[i].grad) {
        CHECK_MESSAGE(!arrived[i], "id input " << i << " received a gradient");
        continue;
      }
      TensorD gn = c.defined_grad ? expected[i] : numeric_grad(c, x, i, w);
      for (int64_t j = 0; j < gn.numel(); ++j) {
        double a = ga[i][j], n = gn[j];
        double err = a == n ? 0.0 : std::abs(a - n) / std::max({std::abs(a), std::abs(n), c.grad_floor});
        e.add(err, "input " + std::to_string(i) + " [" + std::to_string(j) + "] analytic " + num(a) + " numeric " + num(n));
      }
    }
    CHECK_MESSAGE(e.err <= c.grad_tol, "max rel err " << e.err << " > " << c.grad_tol << " at " << e.where);
    worst.add(e.err, c.name + " " + e.where);
    if (report()) std::printf("[grad] %-44s %.2e (tol %.0e)%s\n", c.name.c_str(), e.err, c.grad_tol, c.defined_grad ? " defined" : "");
  }
  if (report()) std::printf("[grad] worst %.3e at %s\n", worst.err, worst.where.c_str());
}

// ---- (b) forward parity with the reference, float32 and float64 ---------------------------------
TEST_CASE("op table: forward matches the double reference (float32 and float64)") {
  MaxErr worst32, worst64;
  int with_ref = 0;
  for (const auto& c : op_cases()) {
    if (!c.reference) continue;
    ++with_ref;
    INFO("case " << c.name << (c.note.empty() ? "" : "  [" + c.note + "]"));
    auto x = make_inputs(c, false);
    TensorD r = c.reference(x);
    // heap poisoned with NaN first: an output element the op does not write shows up
    TensorD y32 = forward<float>(c, x, r.numel()), y64 = forward<double>(c, x, r.numel());
    REQUIRE(y32.shape() == r.shape());
    REQUIRE(y64.shape() == r.shape());
    std::string w32, w64;
    double e32 = max_rel_err(y32, r, 1.0, &w32), e64 = max_rel_err(y64, r, 1.0, &w64);
    CHECK_MESSAGE(e32 <= c.f32_tol, "float32 err " << e32 << " > " << c.f32_tol << " at " << w32);
    CHECK_MESSAGE(e64 <= c.f64_tol, "float64 err " << e64 << " > " << c.f64_tol << " at " << w64);
    worst32.add(e32, c.name);
    worst64.add(e64, c.name);
    if (report()) std::printf("[fwd]  %-44s f32 %.2e (tol %.0e)  f64 %.2e\n", c.name.c_str(), e32, c.f32_tol, e64);
  }
  CHECK(with_ref == (int)op_cases().size());  // every case has a reference
  if (report())
    std::printf("[fwd] worst f32 %.3e (%s), worst f64 %.3e (%s)\n", worst32.err, worst32.where.c_str(), worst64.err,
                worst64.where.c_str());
}

TEST_CASE("op table: float32 gradients match float64 gradients") {
  MaxErr worst;
  for (const auto& c : op_cases()) {
    INFO("case " << c.name << (c.note.empty() ? "" : "  [" + c.note + "]"));
    auto x = make_inputs(c, false);
    TensorD w = projection(forward<double>(c, x).shape(), hash_name(c.name) ^ 0x5EEDULL);
    for (int64_t i = 0; i < w.numel(); ++i) w[i] = (double)(float)w[i];
    auto g32 = analytic_grads<float>(c, x, w, nullptr, true), g64 = analytic_grads<double>(c, x, w, nullptr, true);
    double e = 0;
    for (size_t i = 0; i < x.size(); ++i) e = std::max(e, max_rel_err(g32[i], g64[i], 1.0));
    CHECK_MESSAGE(e <= c.f32_grad_tol, "float32 gradient err " << e << " > " << c.f32_grad_tol);
    worst.add(e, c.name);
  }
  if (report()) std::printf("[grad32] worst %.3e (%s)\n", worst.err, worst.where.c_str());
}

TEST_CASE("heap poisoning hands NaN memory to the next allocation of that size") {
  for (int64_t n : {1, 15, 35, 1000}) {
    poison_heap({n});
    float* p = static_cast<float*>(aligned_alloc64((size_t)n * sizeof(float)));
    int nan = 0;
    for (int64_t i = 0; i < n; ++i) nan += std::isnan(p[i]);
    aligned_free64(p);
    CHECK_MESSAGE(nan == n, "n=" << n << ": only " << nan << " NaN");  // else the parity tests lose this power
  }
}

// ---- the reference itself, on values computed by hand ---------------------------------------------
TEST_CASE("reference: hand-computed values") {
  auto T = [](std::vector<double> v, Shape s) { return TensorD::from(v, std::move(s)); };
  CHECK(ref::matmul(T({1, 2, 3, 4}, {2, 2}), T({5, 6, 7, 8}, {2, 2})).to_vector() == std::vector<double>{19, 22, 43, 50});
  CHECK(ref::add(T({1, 2, 3, 4, 5, 6}, {2, 3}), T({10, 20}, {2, 1})).to_vector() ==
        std::vector<double>{11, 12, 13, 24, 25, 26});
  CHECK(ref::sum(T({1, 2, 3, 4, 5, 6}, {2, 3}), 0).to_vector() == std::vector<double>{5, 7, 9});
  CHECK(ref::sum(T({1, 2, 3, 4, 5, 6}, {2, 3}), 1, true).shape() == Shape{2, 1});
  auto sm = ref::softmax(T({0, std::log(2.0)}, {2}));
  CHECK(sm[0] == doctest::Approx(1.0 / 3).epsilon(1e-15));
  CHECK(sm[1] == doctest::Approx(2.0 / 3).epsilon(1e-15));
  CHECK(ref::logsumexp(T({1000, 1000}, {2}))[0] == doctest::Approx(1000 + std::log(2.0)).epsilon(1e-15));
  CHECK(ref::transpose(T({1, 2, 3, 4, 5, 6}, {2, 3}), 0, 1).to_vector() == std::vector<double>{1, 4, 2, 5, 3, 6});
  CHECK(ref::concat({T({1, 2}, {2, 1}), T({3, 4, 5, 6}, {2, 2})}, 1).to_vector() ==
        std::vector<double>{1, 3, 4, 2, 5, 6});
  CHECK(ref::slice(T({1, 2, 3, 4, 5, 6}, {2, 3}), 1, 1, 3).to_vector() == std::vector<double>{2, 3, 5, 6});
  // layernorm of (1, 3): mean 2, var 1 -> (-1, 1) (eps 0)
  CHECK(ref::layernorm(T({1, 3}, {1, 2}), T({1, 1}, {2}), T({0, 0}, {2}), 0.0).to_vector() == std::vector<double>{-1, 1});
  // one key: attention returns v; causal first query sees only key 0
  TensorD q = T({1, 2}, {1, 1, 1, 2}), v = T({7, 8}, {1, 1, 1, 2});
  CHECK(ref::attention(q, q, v, false).to_vector() == std::vector<double>{7, 8});
  TensorD q2 = T({1, 0, 0, 1}, {1, 1, 2, 2}), v2 = T({1, 2, 3, 4}, {1, 1, 2, 2});
  CHECK(ref::attention(q2, q2, v2, true).to_vector()[0] == 1);
  CHECK(ref::attention(q2, q2, v2, true).to_vector()[1] == 2);
  // cross-entropy of uniform logits over 4 classes is log 4; ignored rows do not count
  CHECK(ref::cross_entropy(TensorD({2, 4}), {1, -100})[0] == doctest::Approx(std::log(4.0)).epsilon(1e-15));
  CHECK(ref::cross_entropy(TensorD({2, 4}), {-100, -100})[0] == 0.0);
  CHECK(ref::fill_tril_expdiag(T({0, 2, 0}, {1, 3}), 2).to_vector() == std::vector<double>{1, 0, 2, 1});
  CHECK(ref::tril_matvec(T({1, 9, 2, 3}, {1, 2, 2}), T({1, 1}, {1, 2})).to_vector() == std::vector<double>{1, 5});
  CHECK(ref::scatter_add_rows(T({1, 2, 3}, {3, 1}), {2, 0, 2}, 3).to_vector() == std::vector<double>{2, 0, 4});
  CHECK(ref::topk_indices(T({3, 1, 3, 2}, {1, 4}), 2) == std::vector<int32_t>{0, 2});
  CHECK(ref::grouped_matmul(T({1, 2}, {2, 1}), T({10, 100}, {2, 1, 1}), {0, 1, 2}).to_vector() ==
        std::vector<double>{10, 200});
}

// ---- selection details ---------------------------------------------------------------------------
TEST_CASE("topk: indices match the reference, ties go to the lower index") {
  TensorD x = TensorD::from({1, 3, 3, 2, 3, /**/ 5, 5, 5, 5, 5, /**/ -1, 0, -2, 7, 0}, {3, 5});
  for (int k : {1, 2, 3, 5}) {
    auto r = ops::topk(Var(x.cast<float>()), k);
    CHECK(r.indices == ref::topk_indices(x, k));
  }
  auto r = ops::topk(Var(x.cast<float>()), 3);
  CHECK(r.indices == std::vector<int32_t>{1, 2, 4, 0, 1, 2, 3, 1, 4});
  for (const auto& c : op_cases()) {
    if (c.op != "topk") continue;
    auto xs = make_inputs(c, false);
    for (int k = 1; k <= xs[0].size(1); ++k)
      CHECK(ops::topk(Var(xs[0].cast<float>()), k).indices == ref::topk_indices(xs[0], k));
  }
}

// NaN in a row (a diverging router): it ranks as −inf, tied with −inf, ties
// to the lower index (kernels/moe.h, topk_key) — in ops::topk, topk_gates,
// the reference and the routers' Gumbel top-K — so each row's experts are
// distinct and the choice is defined (a raw NaN in the comparator is no
// strict weak order: std::partial_sort's result was undefined, and the GPU's
// warp top-K could pick one expert twice).
TEST_CASE("topk with NaN: NaN ranks as -inf (ties to the lower index), experts distinct, every top-K agrees") {
  const float nan = std::nanf(""), inf = INFINITY;
  const int E = 6;
  const std::vector<float> rows = {nan, 0.3f, nan, 0.5f, -inf, 0.1f,  /**/ nan, nan, nan, nan, nan, nan,
                                   -inf, nan, 2.0f, nan, -inf, 1.0f,  /**/ 0.2f, 0.2f, nan, 0.9f, 0.2f, nan};
  const int64_t N = (int64_t)rows.size() / E;
  // the definition: sort (key desc, index asc), key = NaN ? −inf : value
  auto expected = [&](int k) {
    std::vector<int32_t> out;
    for (int64_t n = 0; n < N; ++n) {
      std::vector<std::pair<float, int32_t>> kv;
      for (int e = 0; e < E; ++e) {
        float v = rows[(size_t)(n * E + e)];
        kv.push_back({std::isnan(v) ? -inf : v, e});
      }
      std::stable_sort(kv.begin(), kv.end(), [](auto& a, auto& b) { return a.first > b.first; });
      for (int j = 0; j < k; ++j) out.push_back(kv[(size_t)j].second);
    }
    return out;
  };
  CHECK(expected(4) == std::vector<int32_t>{3, 1, 5, 0, /**/ 0, 1, 2, 3, /**/ 2, 5, 0, 1, /**/ 3, 0, 1, 4});
  Tensor x = Tensor::from(rows, {N, E});
  TensorD xd = x.cast<double>();
  for (int k = 1; k <= E; ++k) {
    CAPTURE(k);
    auto want = expected(k);
    CHECK(ops::topk(Var(x), k).indices == want);
    CHECK(ops::topk_gates(Var(x), k).indices == want);
    CHECK(ref::topk_indices(xd, k) == want);
  }
  // larger rows, NaN and −inf sprinkled: the op agrees with the reference; experts distinct
  const int64_t N2 = 300;
  const int E2 = 64;
  std::vector<float> big((size_t)(N2 * E2));
  for (size_t i = 0; i < big.size(); ++i) {
    float u = philox_uniform(5, 6, i);
    big[i] = u < 0.15f ? nan : u < 0.2f ? -inf : (float)(philox_u32(5, 7, i) % 50) / 7.0f;  // many ties too
  }
  TensorD bd = Tensor::from(big, {N2, E2}).cast<double>();
  for (int k : {1, 4, 16, 64}) {
    CAPTURE(k);
    auto got = ops::topk(Var(Tensor::from(big, {N2, E2})), k).indices;
    CHECK(got == ref::topk_indices(bd, k));
    for (int64_t n = 0; n < N2; ++n) {
      std::set<int32_t> seen(got.begin() + n * k, got.begin() + (n + 1) * k);
      CHECK(seen.size() == (size_t)k);
    }
  }
  // the routers' Gumbel top-K: NaN logits are chosen only after every finite one
  std::vector<int32_t> pick((size_t)(N2 * 8));
  nn::routers::gumbel_topk(big.data(), N2, E2, 8, 3, 4, pick.data());
  for (int64_t n = 0; n < N2; ++n) {
    int finite = 0;
    for (int e = 0; e < E2; ++e) finite += !std::isnan(big[(size_t)(n * E2 + e)]) && big[(size_t)(n * E2 + e)] > -inf;
    std::set<int32_t> seen;
    for (int j = 0; j < 8; ++j) {
      int32_t e = pick[(size_t)(n * 8 + j)];
      seen.insert(e);
      if (j < finite) CHECK_MESSAGE(std::isfinite(big[(size_t)(n * E2 + e)]), "row " << n << " rank " << j);
    }
    CHECK(seen.size() == 8u);
  }
}

TEST_CASE("dropout: the kept fraction is 1 - p and the mask is the Philox formula") {
  TensorD x = TensorD::full({200, 500}, 1.0);
  Var y = ops::dropout(Var(x.cast<float>()), 0.25, 9, 1, 77);
  int64_t kept = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    bool k = philox_uniform(9, 1, 77 + (uint64_t)i) >= 0.25f;
    CHECK(y.value()[i] == (k ? 1.0f / 0.75f : 0.0f));
    kept += y.value()[i] != 0;
  }
  CHECK(std::abs((double)kept / (double)y.numel() - 0.75) < 0.01);
}

// ---- the router and MoE ops against the ops they replaced ---------------------------------------
namespace {
bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * (size_t)a.numel()) == 0;
}
Var leaf_of(const TensorD& t) { return Var(t.cast<float>(), true); }
TensorD randn_d(Shape s, uint64_t seed, double scale = 1.0) {
  TensorD t(std::move(s));
  normal(scale)(t, seed);
  return t;
}
}  // namespace

// On the CPU, topk_gates, moe_gather / moe_combine, kl_mf and kl_fc run the
// kernels of the ops they replaced, step by step (kernels/cpu/moe.cpp), so a
// model computes the same float bits as before they became ops: values and
// gradients, with the formula's input also consumed elsewhere, that use added
// to the loss before the formula (as the trainer's task loss is) or after it.
TEST_CASE("ops: topk_gates, moe_gather / moe_combine, kl_mf, kl_fc equal the composed ops bit for bit (float, CPU)") {
  for (bool other_first : {true, false}) {
    CAPTURE(other_first);
    // loss = Σ w ⊙ formula + Σ w2 ⊙ exp(a / 2) (a: an input of the formula), in either order
    auto loss_of = [&](const Var& y, const Var& a, uint64_t seed) {
      Var t1 = ops::sum_all(ops::mul(y, ops::constant(randn_d(y.shape(), seed).cast<float>())));
      Var t2 = ops::sum_all(ops::mul(ops::exp(ops::mul_scalar(a, 0.5)),
                                     ops::constant(randn_d(a.shape(), seed + 1).cast<float>())));
      return other_first ? ops::add(t2, t1) : ops::add(t1, t2);
    };
    const TensorD d = randn_d({9, 6}, 1), lv = randn_d({9, 6}, 2, 0.5), Lraw = randn_d({9, 6, 6}, 3, 0.4);
    TensorD L = Lraw.clone();
    for (int64_t i = 0; i < L.numel(); ++i)  // lower triangular, positive diagonal
      if ((i / 6) % 6 == i % 6) L[i] = 0.5 + std::abs(L[i]);
      else if (i % 6 > (i / 6) % 6) L[i] = 0;
    for (double s2 : {0.49, 2.25}) {
      CAPTURE(s2);
      const double c = 6.0 * (std::log(s2) - 1.0);
      {  // kl_mf
        Var d1 = leaf_of(d), l1 = leaf_of(lv), d2 = leaf_of(d), l2 = leaf_of(lv);
        Var y1 = ops::kl_mf(d1, l1, s2);
        Var t = ops::add(ops::mul_scalar(ops::add(ops::exp(l2), ops::square(d2)), 1.0 / s2), ops::neg(l2));
        Var y2 = ops::mul_scalar(ops::add_scalar(ops::sum(t, 1), c), 0.5);
        backward(loss_of(y1, l1, 10));
        backward(loss_of(y2, l2, 10));
        CHECK(same_bits(y1.value(), y2.value()));
        CHECK(same_bits(d1.grad(), d2.grad()));
        CHECK(same_bits(l1.grad(), l2.grad()));
      }
      {  // kl_fc
        Var d1 = leaf_of(d), L1 = leaf_of(L), d2 = leaf_of(d), L2 = leaf_of(L);
        Var y1 = ops::kl_fc(d1, L1, s2);
        Var tr = ops::sum(ops::reshape(ops::square(L2), {9, 36}), 1);
        Var t = ops::mul_scalar(ops::add(tr, ops::sum(ops::square(d2), 1)), 1.0 / s2);
        t = ops::sub(t, ops::mul_scalar(ops::sum_log_diag(L2), 2.0));
        Var y2 = ops::mul_scalar(ops::add_scalar(t, c), 0.5);
        backward(loss_of(y1, L1, 20));
        backward(loss_of(y2, L2, 20));
        CHECK(same_bits(y1.value(), y2.value()));
        CHECK(same_bits(d1.grad(), d2.grad()));
        CHECK(same_bits(L1.grad(), L2.grad()));
      }
    }
    {  // topk_gates of router probabilities
      const TensorD logits = randn_d({13, 8}, 4, 2.0);
      for (int k : {1, 2, 3, 8}) {
        CAPTURE(k);
        Var x1 = leaf_of(logits), x2 = leaf_of(logits);
        Var p1 = ops::softmax(x1), p2 = ops::softmax(x2);
        auto g1 = ops::topk_gates(p1, k);
        auto tk = ops::topk(p2, k);
        Var g2 = ops::div(tk.values, ops::sum(tk.values, 1, true));
        backward(loss_of(g1.values, p1, 30));
        backward(loss_of(g2, p2, 30));
        CHECK(g1.indices == tk.indices);
        CHECK(same_bits(g1.values.value(), g2.value()));
        CHECK(same_bits(x1.grad(), x2.grad()));
      }
    }
    {  // moe_gather -> experts -> moe_combine, with padding and dropped assignments
      const int64_t N = 23, C = 7;
      const int K = 2, E = 4;
      std::vector<int32_t> experts((size_t)(N * K));
      std::vector<uint8_t> mask((size_t)N);
      for (int64_t n = 0; n < N; ++n) {
        mask[(size_t)n] = n % 6 != 5;
        experts[(size_t)(n * K)] = n % 5 == 0 ? 2 : 0;  // expert 0 over capacity
        experts[(size_t)(n * K + 1)] = n % 2 ? 1 : 3;
      }
      nn::DispatchPlan plan = nn::plan_dispatch(experts, N, K, E, mask, 1.0);
      REQUIRE(plan.dropped > 0);
      const ops::MoEDispatch dsp = ops::moe_dispatch(plan.token, plan.slot, N, K);
      const TensorD x = randn_d({N, C}, 5), gates = randn_d({N, (int64_t)K}, 6, 0.3);
      Var x1 = leaf_of(x), gt1 = leaf_of(gates), x2 = leaf_of(x), gt2 = leaf_of(gates);
      Var y1 = ops::moe_combine(ops::tanh(ops::moe_gather(x1, dsp)), gt1, dsp);
      Var ys = ops::tanh(ops::gather_rows(x2, plan.token));
      Var g = ops::gather_rows(ops::reshape(gt2, {N * K, 1}), plan.slot);
      Var y2 = ops::scatter_add_rows(ops::mul(ys, g), plan.token, N);
      backward(ops::add(loss_of(y1, x1, 40), ops::sum_all(ops::mul(gt1, gt1))));
      backward(ops::add(loss_of(y2, x2, 40), ops::sum_all(ops::mul(gt2, gt2))));
      CHECK(same_bits(y1.value(), y2.value()));
      CHECK(same_bits(x1.grad(), x2.grad()));
      CHECK(same_bits(gt1.grad(), gt2.grad()));
    }
  }
}

TEST_CASE("results do not depend on the thread count (1-4 threads, reductions far past 320, odd sizes)") {
  // Every parallel op with a reduction: the shared-weight matmul (forward K =
  // 1000, dA over 600, dB over 1100 rows; each GEMM cut into several tiles), the batched matmul (per-batch GEMMs),
  // softmax and its backward, attention forward and backward, the MoE grouped
  // matmul (dW reduces over each expert's rows: 413 for the last one) and the
  // scatter-add of the combine. Bitwise, for 1, 2, 3 and 4 threads.
  ThreadsGuard restore(omp_get_max_threads());
  TensorD a(Shape{1100, 1000}), b(Shape{1000, 600}), s(Shape{517, 301}), ba(Shape{3, 97, 333}), bb(Shape{3, 333, 45});
  TensorD q(Shape{2, 3, 70, 33}), k(Shape{2, 3, 70, 33}), v(Shape{2, 3, 70, 33}), x(Shape{700, 96}),
      w(Shape{3, 96, 500});
  int seed = 1;
  for (TensorD* t : {&a, &b, &s, &ba, &bb, &q, &k, &v, &x, &w}) normal()(*t, seed++);
  const std::vector<int64_t> offsets = {0, 286, 287, 700};
  std::vector<int32_t> rows(700);
  for (int32_t i = 0; i < 700; ++i) rows[i] = (i * 37) % 350;  // every output row hit twice
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    auto leaf = [](const TensorD& t) { return Var(t.cast<float>(), true); };
    std::vector<Var> in = {leaf(a), leaf(b), leaf(s), leaf(ba), leaf(bb), leaf(q), leaf(k), leaf(v), leaf(x), leaf(w)};
    std::vector<Var> out = {ops::matmul(in[0], in[1]), ops::softmax(in[2]), ops::matmul(in[3], in[4]),
                            ops::attention(in[5], in[6], in[7], true)};
    Var h = ops::grouped_matmul(in[8], in[9], offsets);
    out.push_back(ops::scatter_add_rows(h, rows, 350));
    Var loss = ops::sum_all(ops::mul(out[0], out[0]));
    for (size_t i = 1; i < out.size(); ++i) loss = ops::add(loss, ops::sum_all(ops::mul(out[i], out[i])));
    backward(loss);
    std::vector<std::vector<float>> r;
    for (auto& o : out) r.push_back(o.value().to_vector());
    for (auto& l : in) r.push_back(l.grad().to_vector());
    return r;
  };
  auto one = run(1);
  for (int threads : {2, 3, 4}) {
    auto other = run(threads);
    for (size_t i = 0; i < one.size(); ++i)
      CHECK_MESSAGE(one[i] == other[i], "output " << i << " differs bitwise between 1 and " << threads << " threads");
  }
}

// ---- clear shape errors ------------------------------------------------------------------------------
TEST_CASE("ops: shape errors name the op and the shapes") {
  auto v = [](Shape s) { return Var(Tensor(std::move(s))); };
  std::string m;
  m = error_of([&] { ops::matmul(v({4, 8}), v({7, 3})); });
  CHECK_MESSAGE(contains(m, "matmul: (4,8) x (7,3): inner dimensions differ"), m);
  m = error_of([&] { ops::matmul(v({2, 4, 8}), v({3, 8, 3})); });
  CHECK_MESSAGE(contains(m, "batch dimensions differ"), m);
  m = error_of([&] { ops::matmul(v({8}), v({8, 3})); });
  CHECK_MESSAGE(contains(m, "matmul"), m);
  m = error_of([&] { ops::add(v({3, 5}), v({4, 5})); });
  CHECK_MESSAGE(contains(m, "add: (3,5) and (4,5) do not broadcast"), m);
  m = error_of([&] { ops::div(v({2, 3}), v({3, 2})); });
  CHECK_MESSAGE(contains(m, "div: (2,3) and (3,2) do not broadcast"), m);
  m = error_of([&] { ops::sum(v({3, 5}), 2); });
  CHECK_MESSAGE(contains(m, "sum: axis 2 out of range"), m);
  m = error_of([&] { ops::layernorm(v({3, 5}), v({4}), v({5})); });
  CHECK_MESSAGE(contains(m, "layernorm"), m);
  m = error_of([&] { ops::rmsnorm(v({3, 5}), v({6})); });
  CHECK_MESSAGE(contains(m, "rmsnorm"), m);
  m = error_of([&] { ops::embedding(v({4, 3}), {0, 4}, {2}); });
  CHECK_MESSAGE(contains(m, "embedding: id 4"), m);
  m = error_of([&] { ops::embedding(v({4, 3}), {0, 1, 2}, {2}); });
  CHECK_MESSAGE(contains(m, "embedding"), m);
  m = error_of([&] { ops::reshape(v({3, 5}), {4, -1}); });
  CHECK_MESSAGE(contains(m, "reshape"), m);
  m = error_of([&] { ops::transpose(v({3, 5}), 0, 2); });
  CHECK_MESSAGE(contains(m, "transpose: axis 2 out of range"), m);
  m = error_of([&] { ops::slice(v({3, 5}), 1, 2, 6); });
  CHECK_MESSAGE(contains(m, "slice: [2, 6) out of range"), m);
  m = error_of([&] { ops::concat<float>({v({3, 5}), v({4, 4})}, 0); });
  CHECK_MESSAGE(contains(m, "concat"), m);
  m = error_of([&] { ops::attention(v({1, 2, 3, 4}), v({1, 2, 3, 4}), v({1, 2, 4, 4}), true); });
  CHECK_MESSAGE(contains(m, "attention"), m);
  m = error_of([&] { ops::cross_entropy(v({2, 3}), {0, 3}); });
  CHECK_MESSAGE(contains(m, "cross_entropy: target 3 at row 1"), m);
  m = error_of([&] { ops::cross_entropy(v({2, 3}), {0}); });
  CHECK_MESSAGE(contains(m, "cross_entropy"), m);
  m = error_of([&] { ops::dropout(v({2, 3}), 1.0, 0, 0, 0); });
  CHECK_MESSAGE(contains(m, "dropout: p must be in [0, 1)"), m);
  m = error_of([&] { ops::topk(v({2, 3}), 4); });
  CHECK_MESSAGE(contains(m, "topk: k = 4"), m);
  m = error_of([&] { ops::take_cols(v({2, 3}), std::vector<int32_t>{0, 3}, 1); });
  CHECK_MESSAGE(contains(m, "take_cols: index 3"), m);
  m = error_of([&] { ops::gather_rows(v({2, 3}), {2}); });
  CHECK_MESSAGE(contains(m, "gather_rows: row 2"), m);
  m = error_of([&] { ops::scatter_add_rows(v({2, 3}), {0, 5}, 4); });
  CHECK_MESSAGE(contains(m, "scatter_add_rows: row 5"), m);
  m = error_of([&] { ops::grouped_matmul(v({5, 3}), v({2, 3, 4}), {0, 2, 4}); });
  CHECK_MESSAGE(contains(m, "grouped_matmul: offsets"), m);
  m = error_of([&] { ops::grouped_matmul(v({5, 3}), v({2, 4, 4}), {0, 2, 5}); });
  CHECK_MESSAGE(contains(m, "grouped_matmul"), m);
  m = error_of([&] { ops::fill_tril_expdiag(v({2, 6}), 4); });
  CHECK_MESSAGE(contains(m, "fill_tril_expdiag: v must be (N, 10)"), m);
  m = error_of([&] { ops::tril_matvec(v({2, 3, 3}), v({2, 4})); });
  CHECK_MESSAGE(contains(m, "tril_matvec"), m);
  m = error_of([&] { ops::sum_log_diag(v({2, 3, 4})); });
  CHECK_MESSAGE(contains(m, "sum_log_diag"), m);
  m = error_of([&] { ops::straight_through(v({2, 3}), v({3, 2})); });
  CHECK_MESSAGE(contains(m, "straight_through"), m);
  m = error_of([&] { ops::topk_gates(v({2, 3}), 0); });
  CHECK_MESSAGE(contains(m, "topk_gates: k = 0"), m);
  m = error_of([&] { ops::kl_mf(v({2, 3}), v({2, 4}), 1.0); });
  CHECK_MESSAGE(contains(m, "kl_mf: d (2,3) and lv (2,4)"), m);
  m = error_of([&] { ops::kl_fc(v({2, 3}), v({2, 3, 2}), 1.0); });
  CHECK_MESSAGE(contains(m, "kl_fc: d (2,3) and L (2,3,2)"), m);
  m = error_of([&] { ops::moe_dispatch({0, 1}, {1, 5}, 2, 2); });
  CHECK_MESSAGE(contains(m, "moe_dispatch: row 1 has token 1 and slot 5"), m);
  const ops::MoEDispatch dsp = ops::moe_dispatch({0, 1}, {1, 2}, 2, 2);  // N = 2, K = 2, M = 2
  m = error_of([&] { ops::moe_gather(v({3, 4}), dsp); });
  CHECK_MESSAGE(contains(m, "moe_gather: x must be (N, C) with N = 2"), m);
  m = error_of([&] { ops::moe_combine(v({2, 4}), v({2, 1}), dsp); });
  CHECK_MESSAGE(contains(m, "moe_combine: ys (M, C) and gates (N, K)"), m);
}

// ---- (c) raw kernels with guard zones --------------------------------------------------------------------
namespace {

// A buffer with sentinel-filled guard zones on both sides of n elements. The
// guard width is odd so the interior is not 64-byte aligned either (the
// kernels must not assume it).
template <class T>
struct Guarded {
  static constexpr int64_t kGuard = 19;
  std::vector<T> buf;
  int64_t n;
  static T sentinel() {  // a NaN with a recognisable payload, compared bitwise
    T s;
    if constexpr (sizeof(T) == 4) {
      uint32_t bits = 0x7FA5A5A5u;
      std::memcpy(&s, &bits, 4);
    } else {
      uint64_t bits = 0x7FF5A5A5A5A5A5A5ull;
      std::memcpy(&s, &bits, 8);
    }
    return s;
  }
  Guarded(int64_t n_, double fill) : buf((size_t)(n_ + 2 * kGuard)), n(n_) {
    T s = sentinel();
    for (auto& b : buf) std::memcpy(&b, &s, sizeof(T));
    for (int64_t i = 0; i < n; ++i) data()[i] = (T)fill;
  }
  // interior copied from a tensor
  explicit Guarded(const TensorD& t) : Guarded(t.numel(), 0.0) {
    for (int64_t i = 0; i < n; ++i) data()[i] = (T)t[i];
  }
  T* data() { return buf.data() + kGuard; }
  bool intact() const {
    T s = sentinel();
    for (int64_t i = 0; i < kGuard; ++i)
      if (std::memcmp(&buf[i], &s, sizeof(T)) || std::memcmp(&buf[kGuard + n + i], &s, sizeof(T))) return false;
    return true;
  }
  TensorD tensor(Shape shape) const {
    TensorD t(std::move(shape));
    for (int64_t i = 0; i < n; ++i) t[i] = (double)buf[kGuard + i];
    return t;
  }
};

TensorD rnd(Shape s, uint64_t seed, double scale = 1.0) {
  TensorD t(std::move(s));
  normal(scale)(t, seed);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = (double)(float)t[i];
  return t;
}

// Reference vector-Jacobian product dy ⋅ ∂f/∂x by the 4-point stencil (double).
TensorD ref_vjp(const std::function<TensorD(const TensorD&)>& f, TensorD x, const TensorD& dy) {
  TensorD g(x.shape());
  const double h = 1e-4;
  for (int64_t j = 0; j < x.numel(); ++j) {
    double x0 = x[j];
    auto at = [&](double d) {
      x[j] = x0 + d;
      return f(x);
    };
    TensorD p1 = at(h), m1 = at(-h), p2 = at(2 * h), m2 = at(-2 * h);
    x[j] = x0;
    double s = 0;
    for (int64_t o = 0; o < dy.numel(); ++o) s += dy[o] * (8.0 * (p1[o] - m1[o]) - (p2[o] - m2[o]));
    g[j] = s / (12.0 * h);
  }
  return g;
}

const double kNaN = std::nan("");

template <class T>
double kernel_tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-9;  // float rounding; double: limited by the stencil
}

}  // namespace

TEST_CASE_TEMPLATE("kernels::gemm / gemm_single: guard zones, all transposes, accumulate, tiled shapes", T, float,
                   double) {
  struct Size {
    int64_t M, N, K;
  };
  // The last three are cut into several tiles (rows only; rows and columns,
  // with partial edge tiles; a long reduction); the check below says so.
  // (40, 20, 600) and (300, 8, 300) are narrower than the packed kernel's
  // register block (its transposed orientation, or BLIS where installed).
  for (Size s : {Size{5, 7, 3}, Size{13, 1, 17}, Size{1, 1, 1}, Size{33, 65, 17}, Size{64, 48, 80}, Size{4, 3, 0},
                 Size{0, 3, 4}, Size{40, 20, 600}, Size{300, 8, 300}, Size{600, 300, 70}, Size{520, 1100, 40},
                 Size{530, 61, 1000}}) {
    const kernels::GemmTiling g = kernels::gemm_tiling(s.M, s.N, s.K);
    if (s.M >= 520) CHECK_MESSAGE(g.tm * g.tn > 1, "M=" << s.M << " N=" << s.N << " K=" << s.K << " is one tile");
    for (int single = 0; single < 2; ++single)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
          for (int acc = 0; acc < 2; ++acc) {
            INFO((single ? "gemm_single" : "gemm") << " M=" << s.M << " N=" << s.N << " K=" << s.K
                                                   << " transA=" << ta << " transB=" << tb << " acc=" << acc);
            TensorD a = rnd({s.M * s.K}, 11), b = rnd({s.K * s.N}, 12), c0 = rnd({s.M * s.N}, 13);
            Guarded<T> ga(a), gb(b), gc(s.M * s.N, kNaN);
            if (acc) gc = Guarded<T>(c0);
            if (single) kernels::gemm_single<T>(gc.data(), ga.data(), gb.data(), s.M, s.N, s.K, ta, tb, acc);
            else kernels::gemm<T>(gc.data(), ga.data(), gb.data(), s.M, s.N, s.K, ta, tb, acc);
            TensorD want = acc ? c0.clone() : TensorD({s.M * s.N});
            ref::gemm(want.data(), a.data(), b.data(), s.M, s.N, s.K, ta, tb, acc);
            CHECK(gc.intact());
            CHECK(ga.intact());
            CHECK(gb.intact());
            // Float rounding grows like sqrt(K) relative to the O(sqrt(K)) sum: scale the tolerance.
            const double tol = kernel_tol<T>() * std::max(1.0, std::sqrt((double)s.K / 80.0));
            CHECK(max_rel_err(gc.tensor({s.M * s.N}), want, 1.0) <= tol);
          }
  }
}

#ifdef VMOER_PACKED_GEMM
// The packed fp32 kernel's claims (kernels/cpu/gemm_packed.h): each element
// of C is summed the same way wherever it sits, so (1) a block of C computed
// on its own equals the same block of the whole product bit for bit, and (2)
// the transposed orientation it takes for narrow products gives the bits of
// the direct one. Sizes straddle the register block, kMC and kKC.
TEST_CASE("packed fp32 GEMM: a tile's bits do not depend on where it is cut or on the orientation") {
  using namespace kernels::packed;
  const int64_t M = 2 * kMC + 7, N = 3 * kNR + 5, K = 2 * kKC + 9;
  TensorD ad = rnd({M * K}, 41), bd = rnd({K * N}, 42);
  std::vector<float> A(ad.data(), ad.data() + M * K), B(bd.data(), bd.data() + K * N);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      INFO("transA=" << ta << " transB=" << tb);
      // op(A)(i,k), op(B)(k,j) as strides; A stored (M,K) or (K,M), B (K,N) or (N,K).
      const int64_t rsa = ta ? 1 : K, csa = ta ? M : 1, rsb = tb ? 1 : N, csb = tb ? K : 1;
      std::vector<float> whole(M * N, kNaN), part(M * N, kNaN);
      gemm_tile(whole.data(), N, 1, A.data(), rsa, csa, B.data(), rsb, csb, M, N, K, false);
      // (1) the same product as four blocks cut off the register grid
      const int64_t mi = kMR + 5, nj = kNR + 3;
      for (int64_t i0 : {int64_t(0), mi})
        for (int64_t j0 : {int64_t(0), nj}) {
          const int64_t m = i0 ? M - mi : mi, n = j0 ? N - nj : nj;
          gemm_tile(part.data() + i0 * N + j0, N, 1, A.data() + i0 * rsa, rsa, csa, B.data() + j0 * csb, rsb, csb, m,
                    n, K, false);
        }
      CHECK(std::memcmp(whole.data(), part.data(), sizeof(float) * whole.size()) == 0);
      // (2) C[:, 0:w] with w < kNR goes through the transposed orientation;
      // the wide product's first w columns have the same bits.
      const int64_t w = kNR / 2 + 1;
      std::vector<float> narrow(M * w, kNaN);
      gemm_tile(narrow.data(), w, 1, A.data(), rsa, csa, B.data(), rsb, csb, M, w, K, false);
      bool same = true;
      for (int64_t i = 0; i < M; ++i) same = same && std::memcmp(&narrow[i * w], &whole[i * N], sizeof(float) * w) == 0;
      CHECK(same);
      // and accumulating adds the product to C in one rounding per kKC block
      std::vector<float> acc(M * N, 0.f);
      gemm_tile(acc.data(), N, 1, A.data(), rsa, csa, B.data(), rsb, csb, M, N, K, true);
      CHECK(std::memcmp(acc.data(), whole.data(), sizeof(float) * whole.size()) == 0);  // 0 + x = x
    }
}
#endif

TEST_CASE_TEMPLATE("kernels: softmax / log_softmax fwd+bwd with guard zones", T, float, double) {
  const int64_t rows = 7, C = 13;
  TensorD x = rnd({rows, C}, 21, 2.0), dy = rnd({rows, C}, 22), dx0 = rnd({rows, C}, 23);
  for (bool logsm : {false, true}) {
    INFO((logsm ? "log_softmax" : "softmax"));
    auto f = [logsm](const TensorD& t) { return logsm ? ref::log_softmax(t) : ref::softmax(t); };
    Guarded<T> gx(x), gy(rows * C, kNaN), gdy(dy), gdx(dx0);
    if (logsm) kernels::log_softmax_fwd<T>(gx.data(), gy.data(), rows, C);
    else kernels::softmax_fwd<T>(gx.data(), gy.data(), rows, C);
    CHECK(gx.intact());
    CHECK(gy.intact());
    CHECK(max_rel_err(gy.tensor({rows, C}), f(x), 1.0) <= kernel_tol<T>());
    if (logsm) kernels::log_softmax_bwd<T>(gy.data(), gdy.data(), gdx.data(), rows, C);
    else kernels::softmax_bwd<T>(gy.data(), gdy.data(), gdx.data(), rows, C);
    CHECK(gdx.intact());
    CHECK(gdy.intact());
    TensorD want = ref::add(dx0, ref_vjp(f, x, dy));  // dx accumulates
    CHECK(max_rel_err(gdx.tensor({rows, C}), want, 1.0) <= kernel_tol<T>());
  }
}

TEST_CASE_TEMPLATE("kernels: layernorm fwd+bwd with guard zones", T, float, double) {
  const int64_t rows = 5, C = 17;
  const double eps = 1e-5;
  TensorD x = rnd({rows, C}, 31, 1.5), gamma = rnd({C}, 32), beta = rnd({C}, 33), dy = rnd({rows, C}, 34);
  TensorD dx0 = rnd({rows, C}, 35), dg0 = rnd({C}, 36), db0 = rnd({C}, 37);
  Guarded<T> gx(x), gg(gamma), gb(beta), gy(rows * C, kNaN), gmean(rows, kNaN), grstd(rows, kNaN);
  kernels::layernorm_fwd<T>(gx.data(), gg.data(), gb.data(), gy.data(), gmean.data(), grstd.data(), rows, C, eps);
  for (auto* g : {&gx, &gg, &gb, &gy, &gmean, &grstd}) CHECK(g->intact());
  CHECK(max_rel_err(gy.tensor({rows, C}), ref::layernorm(x, gamma, beta, eps), 1.0) <= kernel_tol<T>());
  TensorD mu = ref::mean(x, -1), rstd({rows});
  TensorD xc = ref::sub(x, ref::mean(x, -1, true));
  TensorD var = ref::mean(ref::mul(xc, xc), -1);
  for (int64_t r = 0; r < rows; ++r) rstd[r] = 1.0 / std::sqrt(var[r] + eps);
  CHECK(max_rel_err(gmean.tensor({rows}), mu, 1.0) <= kernel_tol<T>());
  CHECK(max_rel_err(grstd.tensor({rows}), rstd, 1.0) <= kernel_tol<T>());

  Guarded<T> gdy(dy), gdx(dx0), gdg(dg0), gdb(db0);
  kernels::layernorm_bwd<T>(gx.data(), gg.data(), gmean.data(), grstd.data(), gdy.data(), gdx.data(), gdg.data(),
                            gdb.data(), rows, C);
  for (auto* g : {&gdy, &gdx, &gdg, &gdb, &gmean, &grstd}) CHECK(g->intact());
  auto wx = ref_vjp([&](const TensorD& t) { return ref::layernorm(t, gamma, beta, eps); }, x, dy);
  auto wg = ref_vjp([&](const TensorD& t) { return ref::layernorm(x, t, beta, eps); }, gamma, dy);
  auto wb = ref_vjp([&](const TensorD& t) { return ref::layernorm(x, gamma, t, eps); }, beta, dy);
  CHECK(max_rel_err(gdx.tensor({rows, C}), ref::add(dx0, wx), 1.0) <= kernel_tol<T>());
  CHECK(max_rel_err(gdg.tensor({C}), ref::add(dg0, wg), 1.0) <= kernel_tol<T>());
  CHECK(max_rel_err(gdb.tensor({C}), ref::add(db0, wb), 1.0) <= kernel_tol<T>());
  // nullptr outputs are skipped
  Guarded<T> gdx2(dx0);
  kernels::layernorm_bwd<T>(gx.data(), gg.data(), gmean.data(), grstd.data(), gdy.data(), gdx2.data(), nullptr,
                            nullptr, rows, C);
  CHECK(max_rel_err(gdx2.tensor({rows, C}), ref::add(dx0, wx), 1.0) <= kernel_tol<T>());
}

TEST_CASE_TEMPLATE("kernels: rmsnorm fwd+bwd with guard zones", T, float, double) {
  const int64_t rows = 6, C = 13;
  const double eps = 1e-6;
  TensorD x = rnd({rows, C}, 41), gamma = rnd({C}, 42), dy = rnd({rows, C}, 43), dx0 = rnd({rows, C}, 44),
          dg0 = rnd({C}, 45);
  Guarded<T> gx(x), gg(gamma), gy(rows * C, kNaN), grstd(rows, kNaN);
  kernels::rmsnorm_fwd<T>(gx.data(), gg.data(), gy.data(), grstd.data(), rows, C, eps);
  for (auto* g : {&gx, &gg, &gy, &grstd}) CHECK(g->intact());
  CHECK(max_rel_err(gy.tensor({rows, C}), ref::rmsnorm(x, gamma, eps), 1.0) <= kernel_tol<T>());
  Guarded<T> gdy(dy), gdx(dx0), gdg(dg0);
  kernels::rmsnorm_bwd<T>(gx.data(), gg.data(), grstd.data(), gdy.data(), gdx.data(), gdg.data(), rows, C);
  for (auto* g : {&gdy, &gdx, &gdg, &grstd}) CHECK(g->intact());
  auto wx = ref_vjp([&](const TensorD& t) { return ref::rmsnorm(t, gamma, eps); }, x, dy);
  auto wg = ref_vjp([&](const TensorD& t) { return ref::rmsnorm(x, t, eps); }, gamma, dy);
  CHECK(max_rel_err(gdx.tensor({rows, C}), ref::add(dx0, wx), 1.0) <= kernel_tol<T>());
  CHECK(max_rel_err(gdg.tensor({C}), ref::add(dg0, wg), 1.0) <= kernel_tol<T>());
}

TEST_CASE_TEMPLATE("kernels: cross_entropy fwd+bwd with guard zones and ignore_index", T, float, double) {
  const int64_t rows = 9, C = 7;
  TensorD logits = rnd({rows, C}, 51, 2.0), dl0 = rnd({rows, C}, 52);
  std::vector<int32_t> tg = {0, 6, -100, 3, 3, -100, 1, 2, 5};
  Guarded<T> gl(logits), gp(rows * C, kNaN), gdl(dl0);
  int64_t count = -1;
  double total = kernels::cross_entropy_sum<T>(gl.data(), tg.data(), gp.data(), rows, C, -100, &count);
  CHECK(gl.intact());
  CHECK(gp.intact());
  CHECK(count == 7);
  double want_total = ref::cross_entropy(logits, tg, -100)[0] * 7.0;
  CHECK(rel_err(total, want_total, 1.0) <= kernel_tol<T>());
  CHECK(max_rel_err(gp.tensor({rows, C}), ref::softmax(logits), 1.0) <= kernel_tol<T>());
  const double scale = 0.7;
  kernels::cross_entropy_bwd_scaled<T>(gp.data(), tg.data(), gdl.data(), rows, C, -100, (T)scale);
  CHECK(gdl.intact());
  TensorD one = TensorD::scalar(scale * 7.0);  // d(total)/dlogits = count · d(mean)/dlogits
  TensorD want = ref::add(dl0, ref_vjp([&](const TensorD& t) { return ref::cross_entropy(t, tg, -100); }, logits, one));
  CHECK(max_rel_err(gdl.tensor({rows, C}), want, 1.0) <= kernel_tol<T>());
  // the table's pair: the mean written as T(Σ / count); the output gradient read from memory
  std::vector<T> probs((size_t)(rows * C));
  T loss = T(-1);
  kernels::cross_entropy_fwd<T>(gl.data(), tg.data(), probs.data(), rows, C, -100, 7, &loss);
  CHECK(loss == T(total / 7.0));
  CHECK_THROWS_AS(kernels::cross_entropy_fwd<T>(gl.data(), tg.data(), probs.data(), rows, C, -100, 6, &loss),
                  std::invalid_argument);  // a count that disagrees with the targets
  std::vector<T> d1 = gdl.tensor({rows, C}).template cast<T>().to_vector(), d2 = d1;
  const T gout = T(scale * 7.0);
  kernels::cross_entropy_bwd<T>(probs.data(), tg.data(), d1.data(), rows, C, -100, &gout, 7);
  kernels::cross_entropy_bwd_scaled<T>(probs.data(), tg.data(), d2.data(), rows, C, -100, T(gout / (T)7));
  CHECK(d1 == d2);
  const std::vector<int32_t> none(rows, -100);
  kernels::cross_entropy_fwd<T>(gl.data(), none.data(), probs.data(), rows, C, -100, 0, &loss);
  CHECK(loss == T(0));
}

TEST_CASE_TEMPLATE("kernels: attention fwd+bwd with guard zones", T, float, double) {
  const int64_t B = 2, H = 2, Tn = 6, D = 5, BH = B * H;
  TensorD q = rnd({B, H, Tn, D}, 61), k = rnd({B, H, Tn, D}, 62), v = rnd({B, H, Tn, D}, 63),
          dout = rnd({B, H, Tn, D}, 64);
  TensorD dq0 = rnd({B, H, Tn, D}, 65), dk0 = rnd({B, H, Tn, D}, 66), dv0 = rnd({B, H, Tn, D}, 67);
  for (bool causal : {false, true}) {
    INFO("causal=" << causal);
    Guarded<T> gq(q), gk(k), gv(v), gP(BH * Tn * Tn, kNaN), gout(BH * Tn * D, kNaN);
    kernels::attention_fwd<T>(gq.data(), gk.data(), gv.data(), gP.data(), gout.data(), BH, Tn, D, causal);
    for (auto* g : {&gq, &gk, &gv, &gP, &gout}) CHECK(g->intact());
    CHECK(max_rel_err(gout.tensor({B, H, Tn, D}), ref::attention(q, k, v, causal), 1.0) <= kernel_tol<T>());
    // P = softmax of the explicitly masked scores (0 above the diagonal when causal)
    TensorD S = ref::mul_scalar(ref::matmul(q, ref::transpose(k, -1, -2)), 1.0 / std::sqrt((double)D));
    if (causal)
      for (int64_t i = 0; i < S.numel(); ++i)
        if ((i % Tn) > (i / Tn) % Tn) S[i] = -INFINITY;
    CHECK(max_rel_err(gP.tensor({B, H, Tn, Tn}), ref::softmax(S), 1.0) <= kernel_tol<T>());

    Guarded<T> gdo(dout), gdq(dq0), gdk(dk0), gdv(dv0);
    kernels::attention_bwd<T>(gq.data(), gk.data(), gv.data(), gP.data(), gdo.data(), gdq.data(), gdk.data(),
                              gdv.data(), BH, Tn, D, causal);
    for (auto* g : {&gdo, &gdq, &gdk, &gdv, &gP}) CHECK(g->intact());
    auto wq = ref_vjp([&](const TensorD& t) { return ref::attention(t, k, v, causal); }, q, dout);
    auto wk = ref_vjp([&](const TensorD& t) { return ref::attention(q, t, v, causal); }, k, dout);
    auto wv = ref_vjp([&](const TensorD& t) { return ref::attention(q, k, t, causal); }, v, dout);
    CHECK(max_rel_err(gdq.tensor({B, H, Tn, D}), ref::add(dq0, wq), 1.0) <= kernel_tol<T>());
    CHECK(max_rel_err(gdk.tensor({B, H, Tn, D}), ref::add(dk0, wk), 1.0) <= kernel_tol<T>());
    CHECK(max_rel_err(gdv.tensor({B, H, Tn, D}), ref::add(dv0, wv), 1.0) <= kernel_tol<T>());
  }
}

TEST_CASE("kernels::adamw_step: guard zones, matches the double reference over steps") {
  const int64_t n = 37;
  TensorD p = rnd({n}, 71), m = TensorD({n}), v = TensorD({n});
  Guarded<float> gp(p), gm(m), gv(v);
  for (int64_t step = 1; step <= 5; ++step) {
    TensorD g = rnd({n}, 80 + (uint64_t)step);
    Guarded<float> gg(g);
    kernels::adamw_step(gp.data(), gg.data(), gm.data(), gv.data(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step);
    ref::adamw_step(p.data(), g.data(), m.data(), v.data(), n, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
    for (auto* b : {&gp, &gm, &gv, &gg}) CHECK(b->intact());
  }
  CHECK(max_rel_err(gp.tensor({n}), p, 1.0) <= 1e-5);
  CHECK(max_rel_err(gm.tensor({n}), m, 1.0) <= 1e-5);
  CHECK(max_rel_err(gv.tensor({n}), v, 1.0) <= 1e-5);
}
