// tests/test_cuda.cpp — parity of every CUDA kernel (kernels/cuda, and the
// dev-only ones of dev/cuda) with its CPU twin, forward and backward, at
// several sizes including odd shapes (1-element rows, C = 33, 1025, 4099, 50257, ...).
//
//  * CPU twins: the raw kernels of kernels/cpu (gemm, rowwise.h) where they
//    exist, otherwise the CPU ops themselves (autodiff/ops.h run forward and
//    backward on the tape, nn::plan_dispatch, nn::routers::gumbel_topk ...).
//  * Every device output lives in a buffer with guard zones on both sides
//    filled with a sentinel (a NaN with a recognisable payload for floats);
//    the guards must be bit-for-bit untouched afterwards, and the interior
//    starts as that NaN, so an element a kernel forgets to write fails the
//    comparison. Outputs that accumulate (dx += ...) start from random values.
//  * Errors are "relative with a floor": |got − want| / max(|want|, floor);
//    each case states its tolerance and why. "exact" means bit-identical.
//  * Float tolerances cover (a) a different summation order (a tree per row
//    instead of a left-to-right loop) and (b) CUDA's expf/logf/tanhf/sinf
//    being within 1–2 ulp of glibc's. Double tolerances are ~1e-12.
//
// Without a GPU (or without the CUDA backend) every case prints one line
// "no CUDA device: <case> skipped" and returns — never a silent pass. The
// coverage case (every kernel of the tables in kernels/*.h is wired for both
// devices and exercised: by an op, and for the row-wise and GEMM kernels by
// a parity case here too) and the "no device" behaviour of the runtime are
// checked everywhere.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <tuple>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The first capture of every match of `pattern` in `text`, in order.
std::vector<std::string> captures(const std::string& text, const char* pattern) {
  std::vector<std::string> out;
  std::regex re(pattern);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1].str());
  return out;
}
// The kernels a table header (kernels/<family>.h, kernels/table.h) lists:
// the names of its K(return type, name, (parameters)) entries.
std::vector<std::string> kernels_in_table(const std::string& text) {
  return captures(text, R"(\bK\(\s*\w+\s*,\s*([A-Za-z_]\w*)\s*,)");
}

// The table kernels that also have a kernel-level CUDA parity case in this
// file (odd sizes, guard zones, launch variants) on top of the op table's
// CUDA column. The coverage case checks that the row-wise and GEMM kernels are
// all here.
const std::vector<std::string> kCudaParityCases = {
    "gemm",          "gemm_strided_batched", "grouped_gemm",    "grouped_gemm_bwd", "softmax_fwd",
    "softmax_bwd",   "log_softmax_fwd",      "log_softmax_bwd", "layernorm_fwd",    "layernorm_bwd",
    "rmsnorm_fwd",   "rmsnorm_bwd",          "cross_entropy_fwd", "cross_entropy_bwd", "attention_fwd",
    "attention_bwd"};

const char* const kTables[] = {"elementwise", "gemm", "layout", "moe", "nn", "rowwise"};

}  // namespace

// A table declares its kernels for both devices, and each device's source
// instantiates the whole table, so a kernel without a twin does not compile.
// What is left to check: every family is wired that way, and every table
// kernel is exercised on both devices — called by an op (the op table's CUDA
// column then compares it with its CPU twin on a GPU) or, for the row-wise
// and GEMM kernels, by a parity case of its own here as well.
TEST_CASE("cuda coverage: every kernel in the tables has both twins and is exercised on both devices") {
  const std::string root = VMOER_SOURCE_DIR;
  std::string ops_text;
  for (const char* f : {"ops_basic.cpp", "ops_nn.cpp", "ops_moe.cpp"}) ops_text += read_text(root + "/autodiff/" + f);
  REQUIRE(!ops_text.empty());
  // the kernels an op calls: the names in VM_RUN(device, name, ...)
  const std::vector<std::string> calls = captures(ops_text, R"(VM_RUN\(\s*[^,]+,\s*([A-Za-z_]\w*)\s*,)");
  const std::set<std::string> called(calls.begin(), calls.end());
  CHECK(called.count("gemm"));  // the parser sees the calls
  CHECK(called.count("tril_matvec_fwd"));
  size_t total = 0;
  for (const std::string family : kTables) {
    INFO("kernels/" << family << ".h");
    std::string table = read_text(root + "/kernels/" + family + ".h");
    REQUIRE_MESSAGE(!table.empty(), "cannot read kernels/" << family << ".h");
    std::string upper = family;
    for (auto& ch : upper) ch = (char)std::toupper((unsigned char)ch);
    const std::string macro = "VM_" + upper + "_KERNELS";
    CHECK(table.find("VM_DECLARE_KERNELS(" + macro + ")") != std::string::npos);
    CHECK(read_text(root + "/kernels/cpu/" + family + ".cpp").find("VM_INSTANTIATE_KERNELS(" + macro + ")") !=
          std::string::npos);
    CHECK(read_text(root + "/kernels/cuda/" + family + ".cu").find("VM_INSTANTIATE_KERNELS(" + macro + ")") !=
          std::string::npos);
    auto names = kernels_in_table(table);
    CHECK(!names.empty());
    total += names.size();
    for (const auto& k : names) {
      CHECK_MESSAGE(called.count(k), "kernel " << k << " (kernels/" << family << ".h) is called by no op in autodiff/");
      if (family == "rowwise" || family == "gemm")
        CHECK_MESSAGE(std::find(kCudaParityCases.begin(), kCudaParityCases.end(), k) != kCudaParityCases.end(),
                      k << " has no CUDA parity case in tests/test_cuda.cpp");
    }
  }
  CHECK(total >= 40);  // the parser sees the tables
}

#ifndef VMOER_HAVE_CUDA

TEST_CASE("cuda: backend not built") {
  MESSAGE("no CUDA device: CUDA backend not built (VMOER_HAVE_CUDA undefined); every CUDA parity case skipped");
}

#else  // VMOER_HAVE_CUDA

#include "autodiff/ops.h"
#include "dev/cuda/error_bounds.h"
#include "dev/cuda/kernels.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rowwise.h"
#include "core/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/nn.h"
#include "kernels/cuda/rowwise.h"
#include "kernels/cuda/sort.h"
#include "kernels/optim.h"
#include "nn/moe.h"
#include "nn/router.h"
#include "nn/routers/common.h"
#include "nn/routers/selection.h"

using namespace vm;
namespace cu = vm::kernels::cuda;
namespace cpu = vm::kernels;

namespace {

bool no_device(const char* name) {
  if (cu::cuda_device_available()) return false;
  MESSAGE("no CUDA device: " << std::string(name) << " skipped");
  return true;
}

// A test case whose body runs only with a device; otherwise one MESSAGE line.
#define VM_CAT2(a, b) a##b
#define VM_CAT(a, b) VM_CAT2(a, b)
#define CUDA_CASE(name)                           \
  static void VM_CAT(cuda_case_, __LINE__)();     \
  TEST_CASE(name) {                               \
    if (no_device(name)) return;                  \
    VM_CAT(cuda_case_, __LINE__)();               \
  }                                               \
  static void VM_CAT(cuda_case_, __LINE__)()

// ---- host data --------------------------------------------------------------------------
template <class T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  PhiloxStream s{seed, 0xC0DAULL, 0};
  std::vector<T> v(n);
  for (auto& x : v) x = (T)(mean + scale * (double)s.normal());
  return v;
}
template <class T>
std::vector<T> randu(size_t n, uint64_t seed, double lo, double hi) {
  PhiloxStream s{seed, 0xC0DBULL, 0};
  std::vector<T> v(n);
  for (auto& x : v) x = (T)(lo + (hi - lo) * (double)s.uniform());
  return v;
}
template <class T>
std::vector<T> away_from_zero(size_t n, uint64_t seed) {
  auto v = randu<T>(n, seed, 0.2, 2.0);
  PhiloxStream s{seed, 0xC0DCULL, 0};
  for (auto& x : v) x = s.uniform() < 0.5f ? -x : x;
  return v;
}
// Rows of distinct values (a shuffled grid plus jitter): no ties for top-K.
template <class T>
std::vector<T> separated(int64_t rows, int64_t E, uint64_t seed, double gap = 0.05) {
  PhiloxStream s{seed, 0xC0DDULL, 0};
  std::vector<T> v((size_t)(rows * E));
  std::vector<int64_t> perm((size_t)E);
  for (int64_t r = 0; r < rows; ++r) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = E - 1; i > 0; --i) std::swap(perm[i], perm[(int64_t)(s.uniform() * (float)(i + 1)) % (i + 1)]);
    for (int64_t e = 0; e < E; ++e) v[r * E + e] = (T)(gap * ((double)perm[e] - 0.5 * (double)E) + 0.2 * gap * s.uniform());
  }
  return v;
}

template <class T>
TensorT<T> tensor(const std::vector<T>& v, Shape s) {
  return TensorT<T>::from(v, std::move(s));
}
template <class T>
VarT<T> leaf(const std::vector<T>& v, Shape s, bool grad = true) {
  return VarT<T>(tensor(v, std::move(s)), grad);
}
template <class T>
std::vector<T> grad_of(const VarT<T>& v) {
  return v.grad().defined() ? v.grad().to_vector() : std::vector<T>((size_t)v.numel(), T(0));
}
template <class T>
std::vector<T> plus(std::vector<T> a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// ---- guarded device buffers ------------------------------------------------------------------
template <class T>
T sentinel() {
  T t{};
  if constexpr (std::is_same_v<T, float>) {
    uint32_t b = 0x7FA5A5A5u;  // a quiet NaN with a payload
    std::memcpy(&t, &b, sizeof t);
  } else if constexpr (std::is_same_v<T, double>) {
    uint64_t b = 0x7FF4A5A5A5A5A5A5ull;
    std::memcpy(&t, &b, sizeof t);
  } else if constexpr (std::is_same_v<T, int32_t>) {
    t = (int32_t)0x7EADBEEF;
  } else if constexpr (std::is_same_v<T, int64_t>) {
    t = (int64_t)0x7EADBEEFDEADBEEFll;
  } else {
    t = (T)0xA5;
  }
  return t;
}

// n elements with `guard` sentinel elements on each side. The default guard
// is odd, so the interior is not 16-byte aligned (the unaligned paths run);
// pass 16 for an aligned interior.
template <class T>
class Guarded {
 public:
  explicit Guarded(size_t n, int64_t guard = 19) : n_(n), g_(guard), buf_(n + 2 * (size_t)guard) {
    std::vector<T> h(n + 2 * (size_t)guard, sentinel<T>());
    buf_.upload(h);
  }
  explicit Guarded(const std::vector<T>& v, int64_t guard = 19) : Guarded(v.size(), guard) {
    if (!v.empty()) cu::copy_h2d(data(), v.data(), v.size() * sizeof(T));
  }
  T* data() { return buf_.data() + g_; }
  size_t size() const { return n_; }
  std::vector<T> get() const {
    std::vector<T> h(n_);
    if (n_) cu::copy_d2h(h.data(), buf_.data() + g_, n_ * sizeof(T));
    return h;
  }
  bool guards_ok() const {
    auto h = buf_.to_host();
    const T s = sentinel<T>();
    for (int64_t i = 0; i < g_; ++i)
      if (std::memcmp(&h[(size_t)i], &s, sizeof(T)) || std::memcmp(&h[(size_t)(g_ + (int64_t)n_ + i)], &s, sizeof(T)))
        return false;
    return true;
  }

 private:
  size_t n_;
  int64_t g_;
  cu::DeviceBuffer<T> buf_;
};
#define CHECK_GUARDS(b) CHECK_MESSAGE((b).guards_ok(), "guard zone of " #b " overwritten")

// ---- comparisons --------------------------------------------------------------------------------
double rel_err(double got, double want, double floor) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want) ? 0.0 : INFINITY;
  if (got == want) return 0.0;
  return std::abs(got - want) / std::max(std::abs(want), floor);
}

template <class A, class B>
void expect_close(const std::string& what, const std::vector<A>& got, const std::vector<B>& want, double tol,
                  double floor) {
  REQUIRE_MESSAGE(got.size() == want.size(), what << ": size " << got.size() << " vs " << want.size());
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double e = rel_err((double)got[i], (double)want[i], floor);
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  INFO(what << ": max error " << worst << " (tol " << tol << ", floor " << floor << ")"
            << (got.empty() ? std::string() : " at [" + std::to_string(at) + "] got " + std::to_string((double)got[at]) +
                                                   " want " + std::to_string((double)want[at])));
  CHECK(worst <= tol);
}
template <class A, class B>
void expect_exact(const std::string& what, const std::vector<A>& got, const std::vector<B>& want) {
  REQUIRE_MESSAGE(got.size() == want.size(), what << ": size " << got.size() << " vs " << want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == (A)want[i]) && !(std::isnan((double)got[i]) && std::isnan((double)want[i]))) {
      if (!bad) first = i;
      ++bad;
    }
  INFO(what << ": " << bad << " of " << got.size() << " differ"
            << (bad ? ", first at [" + std::to_string(first) + "] got " + std::to_string((double)got[first]) +
                          " want " + std::to_string((double)want[first])
                    : std::string()));
  CHECK(bad == 0);
}
// got against a long-double reference, element by element: |got − ref| <=
// kCompareSlack × bound (the first-order rounding-error bounds of
// dev/cuda/error_bounds.h, derived from each kernel's formula, which the CPU
// kernels and host replays of the GPU's arithmetic meet at factor 1:
// tests/test_error_bounds.cpp); reports the worst ratio error / bound.
template <class A>
void expect_within(const std::string& what, const std::vector<A>& got, const std::vector<long double>& ref,
                   const std::vector<double>& bound) {
  REQUIRE_MESSAGE(got.size() == ref.size(), what << ": size " << got.size() << " vs " << ref.size());
  REQUIRE(bound.size() == ref.size());
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const long double e = std::fabs((long double)got[i] - ref[i]);
    double r = e == 0 ? 0.0 : (double)(e / (long double)bound[i]);  // NaN or e > 0 with bound 0: fails
    if (!(r <= worst)) {
      worst = r;
      at = i;
    }
  }
  INFO(what << ": worst |error| / bound " << worst
            << (got.empty() ? std::string()
                            : " at [" + std::to_string(at) + "] got " + std::to_string((double)got[at]) + " ref " +
                                  std::to_string((double)ref[at]) + " bound " + std::to_string(bound[at])));
  CHECK(worst <= dev::kCompareSlack);
}

template <class T>
double max_abs(const std::vector<T>& v) {
  double m = 0;
  for (auto x : v) m = std::max(m, std::abs((double)x));
  return m;
}

// Indices chosen by the GPU must be a valid top-K of the CPU's values up to
// `tol` (near-ties may resolve differently when values differ in the last
// ulp); returns the number of rows that differ from the CPU's choice.
template <class T>
int64_t check_topk_consistent(const std::string& what, const std::vector<T>& cpu_vals, const std::vector<int32_t>& gpu_idx,
                              const std::vector<int32_t>& cpu_idx, int64_t N, int E, int K, double tol) {
  int64_t differ = 0;
  for (int64_t n = 0; n < N; ++n) {
    bool same = true;
    for (int j = 0; j < K; ++j) {
      int32_t g = gpu_idx[n * K + j], c = cpu_idx[n * K + j];
      same = same && g == c;
      REQUIRE_MESSAGE((g >= 0 && g < E), what << ": row " << n << " index " << g << " out of range");
      double vg = (double)cpu_vals[n * E + g], vc = (double)cpu_vals[n * E + c];
      CHECK_MESSAGE(std::abs(vg - vc) <= tol * std::max(1.0, std::abs(vc)),
                    what << ": row " << n << " rank " << j << ": gpu picked " << g << " (" << vg << "), cpu " << c
                         << " (" << vc << ")");
    }
    differ += !same;
  }
  return differ;
}

template <class T>
const char* tname() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// ---- CPU twins of the element-wise kernels: the ops themselves --------------------------------------
template <class T>
VarT<T> cpu_unary(cu::Unary op, const VarT<T>& x, double a) {
  switch (op) {
    case cu::Unary::Exp: return ops::exp(x);
    case cu::Unary::Log: return ops::log(x);
    case cu::Unary::Sqrt: return ops::sqrt(x);
    case cu::Unary::Softplus: return ops::softplus(x);
    case cu::Unary::Sigmoid: return ops::sigmoid(x);
    case cu::Unary::Relu: return ops::relu(x);
    case cu::Unary::Gelu: return ops::gelu(x);
    case cu::Unary::Silu: return ops::silu(x);
    case cu::Unary::Tanh: return ops::tanh(x);
    case cu::Unary::AddScalar: return ops::add_scalar(x, a);
    case cu::Unary::MulScalar: return ops::mul_scalar(x, a);
    default: return ops::pow_scalar(x, a);
  }
}
template <class T>
VarT<T> cpu_binary(cu::Binary op, const VarT<T>& a, const VarT<T>& b) {
  switch (op) {
    case cu::Binary::Add: return ops::add(a, b);
    case cu::Binary::Sub: return ops::sub(a, b);
    case cu::Binary::Mul: return ops::mul(a, b);
    default: return ops::div(a, b);
  }
}

// nn::topk_renormalised is float-only; for double the same two ops.
template <class T>
std::pair<std::vector<int32_t>, VarT<T>> cpu_topk_renormalised(const VarT<T>& probs, int K) {
  if constexpr (std::is_same_v<T, float>) {
    auto r = nn::topk_renormalised(probs, K);
    return {r.experts, r.gates};
  } else {
    auto tk = ops::topk(probs, K);
    return {tk.indices, ops::div(tk.values, ops::sum(tk.values, 1, true))};
  }
}

}  // namespace

// ======================================================================================================
// runtime
// ======================================================================================================

// The shared-memory check of every launch that opts in past 48 KB
// (core/cuda/device.h): plain arithmetic, so it is checked without a GPU.
TEST_CASE("cuda shared memory check: static + dynamic against the limit, one clear error naming both") {
  CHECK_NOTHROW(cu::check_shared_memory("k", 1024, 48 * 1024, 49 * 1024));  // exactly the limit
  CHECK_NOTHROW(cu::check_shared_memory("k", 0, 0, 0));
  bool threw = false;
  try {
    cu::check_shared_memory("cuda vr_route_fwd (E = 2048, double)", 128, 49152, 49152);  // the static part tips it
  } catch (const vm::Error& e) {
    threw = true;
    CHECK(std::string(e.what()) ==
          "cuda vr_route_fwd (E = 2048, double): needs 128 bytes of static + 49152 bytes of dynamic shared memory "
          "per block; the device allows at most 49152");
  }
  CHECK(threw);
}

// The group size the row-wise tests derive their error bounds from
// (kernels/cuda/rowwise.h): host arithmetic, checked without a GPU.
TEST_CASE("cuda row_group_threads: one warp per row up to C = 1024, else the block; explicit launches as given") {
  CHECK(cu::row_group_threads(1, {}) == 32);
  CHECK(cu::row_group_threads(1024, {}) == 32);
  CHECK(cu::row_group_threads(1025, {}) == 512);
  CHECK(cu::row_group_threads(8191, {}) == 512);
  CHECK(cu::row_group_threads(50257, {}) == 1024);
  CHECK(cu::row_group_threads(50257, cu::Launch{1, 256}) == 32);
  CHECK(cu::row_group_threads(5, cu::Launch{2, 128}) == 128);
  CHECK_THROWS_AS(cu::row_group_threads(5, cu::Launch{2, 100}), vm::Error);
}

TEST_CASE("cuda runtime: device discovery never throws; without a device the API says so") {
  bool avail = false;
  CHECK_NOTHROW(avail = cu::cuda_device_available());
  std::string name;
  CHECK_NOTHROW(name = cu::cuda_device_name());
  CHECK(!name.empty());
  if (!avail) {
    MESSAGE("no CUDA device: cuda runtime checks beyond discovery skipped (" << name << ")");
    CHECK(name == "no CUDA device");
    CHECK(cu::cuda_device_count() == 0);
    CHECK_THROWS_AS(cu::DeviceBuffer<float>(16), vm::Error);  // a clear error, not an abort
    return;
  }
  MESSAGE("CUDA device: " << name);
  CHECK(cu::cuda_device_count() >= 1);
}

CUDA_CASE("cuda runtime: buffers, copies, pool, error reporting") {
  std::vector<float> h = randn<float>(1001, 1);
  cu::DeviceBuffer<float> a(h);
  CHECK(a.size() == 1001);
  CHECK(a.to_host() == h);
  cu::DeviceBuffer<float> b(std::move(a));
  CHECK(a.data() == nullptr);
  CHECK(b.to_host() == h);
  cu::DeviceBuffer<float> c(1001);
  cu::copy_d2d(c.data(), b.data(), b.bytes());
  CHECK(c.to_host() == h);
  c.zero();
  CHECK(c.to_host() == std::vector<float>(1001, 0.f));
  cu::DeviceBuffer<float> empty(0);
  CHECK(empty.to_host().empty());
  auto st = cu::pool_stats();
  CHECK(st.reserved >= st.used);
  // CUDA_CHECK: vm::Error naming file:line, the call and the CUDA error
  std::string msg;
  try {
    cu::copy_h2d(nullptr, h.data(), 64);
  } catch (const vm::Error& e) {
    msg = e.what();
  }
  INFO(msg);
  CHECK(msg.find("device.cu:") != std::string::npos);
  CHECK(msg.find("cudaError") != std::string::npos);
  // the stream still works afterwards (the error was not sticky)
  CHECK(b.to_host() == h);
}

// ======================================================================================================
// GEMM (tolerance: float 2e-5 with floor sqrt(K) — the natural size of a
// K-term dot product of N(0,1) inputs; the sums run in a different order;
// double 1e-12; TF32 only a sanity bound 2e-2)
// ======================================================================================================
template <class T>
static void gemm_case() {
  struct S {
    int64_t M, N, K;
  };
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (S s : {S{1, 1, 1}, S{3, 5, 7}, S{64, 33, 17}, S{128, 256, 64}, S{7, 9, 0}, S{1, 300, 513}}) {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int acc = 0; acc < 2; ++acc) {
          CAPTURE(s.M);
          CAPTURE(s.N);
          CAPTURE(s.K);
          CAPTURE(ta);
          CAPTURE(tb);
          CAPTURE(acc);
          auto A = randn<T>((size_t)(s.M * s.K), 11), B = randn<T>((size_t)(s.K * s.N), 12);
          auto C0 = randn<T>((size_t)(s.M * s.N), 13);
          std::vector<T> want = C0;
          cpu::gemm(want.data(), A.data(), B.data(), s.M, s.N, s.K, ta, tb, acc);
          Guarded<T> dA(A), dB(B), dC = acc ? Guarded<T>(C0) : Guarded<T>((size_t)(s.M * s.N));
          cu::gemm(dC.data(), dA.data(), dB.data(), s.M, s.N, s.K, ta, tb, acc);
          expect_close(std::string("gemm ") + tname<T>(), dC.get(), want, tol, std::max(1.0, std::sqrt((double)s.K)));
          CHECK_GUARDS(dC);
        }
  }
  // strided batched, B shared (stride 0) and per batch
  for (int shared = 0; shared < 2; ++shared) {
    const int64_t batch = 5, M = 17, N = 9, K = 33;
    auto A = randn<T>((size_t)(batch * M * K), 21), B = randn<T>((size_t)((shared ? 1 : batch) * K * N), 22);
    std::vector<T> want((size_t)(batch * M * N));
    for (int64_t i = 0; i < batch; ++i)
      cpu::gemm(want.data() + i * M * N, A.data() + i * M * K, B.data() + (shared ? 0 : i * K * N), M, N, K, false,
                false, false);
    Guarded<T> dA(A), dB(B), dC((size_t)(batch * M * N));
    cu::gemm_strided_batched(dC.data(), dA.data(), dB.data(), batch, M, N, K, false, false, false, M * K,
                             shared ? 0 : K * N, M * N);
    expect_close(std::string("gemm_strided_batched ") + tname<T>(), dC.get(), want, tol, std::sqrt((double)K));
    CHECK_GUARDS(dC);
  }
  // grouped (MoE experts): uneven groups, an empty one
  {
    const int64_t C = 24, F = 40;
    std::vector<int64_t> off = {0, 7, 7, 30, 31};
    const int64_t M = off.back(), E = 4;
    auto x = randn<T>((size_t)(M * C), 31), w = randn<T>((size_t)(E * C * F), 32), g = randn<T>((size_t)(M * F), 33);
    std::vector<T> want((size_t)(M * F));
    for (int64_t e = 0; e < E; ++e)
      if (off[e + 1] > off[e])
        cpu::gemm(want.data() + off[e] * F, x.data() + off[e] * C, w.data() + e * C * F, off[e + 1] - off[e], F, C,
                  false, false, false);
    auto dx0 = randn<T>((size_t)(M * C), 34), dw0 = randn<T>((size_t)(E * C * F), 35);
    std::vector<T> wdx = dx0, wdw = dw0;
    for (int64_t e = 0; e < E; ++e) {
      int64_t r0 = off[e], m = off[e + 1] - r0;
      if (!m) continue;
      cpu::gemm(wdx.data() + r0 * C, g.data() + r0 * F, w.data() + e * C * F, m, C, F, false, true, true);
      cpu::gemm(wdw.data() + e * C * F, x.data() + r0 * C, g.data() + r0 * F, C, F, m, true, false, true);
    }
    Guarded<T> dx(x), dw(w), dg(g), dout((size_t)(M * F)), ddx(dx0), ddw(dw0);
    const uint64_t calls_before = cu::grouped_gemm_stats().calls;
    cu::grouped_gemm(dout.data(), dx.data(), dw.data(), off, C, F);
    cu::grouped_gemm_bwd(dx.data(), dw.data(), dg.data(), ddx.data(), ddw.data(), off, C, F);
    CHECK(cu::grouped_gemm_stats().calls >= calls_before + 2);  // one grouped cuBLAS call each (3 groups)
    CHECK(cu::grouped_gemm_stats().fallbacks == 0);              // ... which this cuBLAS accepted
    expect_close("grouped_gemm", dout.get(), want, tol, std::sqrt((double)C));
    expect_close("grouped_gemm_bwd dx", ddx.get(), wdx, tol, std::sqrt((double)F));
    expect_close("grouped_gemm_bwd dw", ddw.get(), wdw, tol, std::sqrt((double)M));
    CHECK_GUARDS(dout);
    CHECK_GUARDS(ddx);
    CHECK_GUARDS(ddw);
  }
}

CUDA_CASE("cuda gemm: cuBLAS vs kernels::gemm, all transposes, accumulate, batched, grouped") {
  gemm_case<float>();
  gemm_case<double>();
  // TF32 is opt-in: a loose sanity bound, then back to IEEE float
  const int64_t M = 64, N = 64, K = 256;
  auto A = randn<float>(M * K, 41), B = randn<float>(K * N, 42);
  std::vector<float> want(M * N);
  cpu::gemm(want.data(), A.data(), B.data(), M, N, K, false, false, false);
  Guarded<float> dA(A), dB(B), dC(M * N);
  cu::set_allow_tf32(true);
  CHECK(cu::gemm_math() == cu::GemmMath::TF32);
  cu::gemm(dC.data(), dA.data(), dB.data(), M, N, K, false, false, false);
  cu::set_allow_tf32(false);
  CHECK(cu::gemm_math() == cu::GemmMath::Default);
  expect_close("gemm tf32 (sanity)", dC.get(), want, 2e-2, 16.0);
  cu::set_gemm_math(cu::GemmMath::Pedantic);
  cu::gemm(dC.data(), dA.data(), dB.data(), M, N, K, false, false, false);
  cu::set_gemm_math(cu::GemmMath::Default);
  expect_close("gemm pedantic", dC.get(), want, 2e-5, 16.0);
}

// ======================================================================================================
// element-wise (tolerance: float 1e-5 / floor 1e-3 — expf/powf within 2 ulp
// of glibc, compounded in silu; double 1e-12 / floor 1e-9). GELU instead
// against a long-double reference within the bound of its formula
// (dev/cuda/error_bounds.h): ½x(1 + t) cancels for x in [−5, −3], where
// the error is a few units of ½|x|, not of |y|, so no relative tolerance fits.
// ======================================================================================================
template <class T>
static void unary_case() {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12, floor = std::is_same_v<T, float> ? 1e-3 : 1e-9;
  for (int oi = 0; oi < cu::kUnaryCount; ++oi) {
    auto op = (cu::Unary)oi;
    const double alpha = op == cu::Unary::PowScalar ? 2.5 : op == cu::Unary::MulScalar ? -1.75 : 0.625;
    for (int64_t n : {1, 7, 1000, 4099, 65537}) {
      const std::string opname = cu::unary_name(op);
      CAPTURE(opname);
      CAPTURE(n);
      std::vector<T> x;
      if (op == cu::Unary::Log || op == cu::Unary::Sqrt || op == cu::Unary::PowScalar) x = randu<T>(n, 100 + oi, 0.5, 2.0);
      else if (op == cu::Unary::Relu) x = away_from_zero<T>(n, 100 + oi);
      else x = randn<T>(n, 100 + oi, 2.0);
      auto dy = randn<T>(n, 200 + oi), dx0 = randn<T>(n, 300 + oi);
      VarT<T> xv = leaf(x, {n});
      VarT<T> yv = cpu_unary(op, xv, alpha);
      backward(yv, tensor(dy, {n}));
      std::vector<T> want_y = yv.value().to_vector(), want_dx = plus(dx0, grad_of(xv));
      const bool gelu = op == cu::Unary::Gelu;
      std::vector<long double> ref_y, ref_dx;
      std::vector<double> bound_y, bound_dx;
      if (gelu) {
        for (int64_t i = 0; i < n; ++i) {
          ref_y.push_back(dev::gelu_ref(x[i]));
          bound_y.push_back(dev::gelu_fwd_bound<T>(x[i]));
          ref_dx.push_back((long double)dx0[i] + (long double)dy[i] * dev::gelu_grad_ref(x[i]));
          bound_dx.push_back(dev::gelu_bwd_bound<T>(x[i], dy[i], (double)ref_dx.back()));
        }
      }
      auto check_y = [&](const std::string& what, const std::vector<T>& got) {
        if (gelu) expect_within(what + tname<T>(), got, ref_y, bound_y);
        else expect_close(what + tname<T>(), got, want_y, tol, floor);
      };
      for (int version : {1, 2}) {
        CAPTURE(version);
        Guarded<T> dx_in(x, 16), y((size_t)n, 16), ddy(dy, 16), ddx(dx0, 16);
        cu::unary_fwd(op, dx_in.data(), y.data(), n, alpha, cu::Launch{version, version == 1 ? 128 : 256});
        cu::unary_bwd(op, dx_in.data(), y.data(), ddy.data(), ddx.data(), n, alpha);
        check_y("unary fwd ", y.get());
        if (gelu) expect_within(std::string("unary bwd ") + tname<T>(), ddx.get(), ref_dx, bound_dx);
        else expect_close(std::string("unary bwd ") + tname<T>(), ddx.get(), want_dx, 2 * tol, floor);
        CHECK_GUARDS(y);
        CHECK_GUARDS(ddx);
      }
      // unaligned interior: the vector path must fall back
      Guarded<T> ux(x), uy((size_t)n);
      cu::unary_fwd(op, ux.data(), uy.data(), n, alpha);
      check_y("unary fwd unaligned ", uy.get());
      CHECK_GUARDS(uy);
    }
  }
}

CUDA_CASE("cuda unary fwd/bwd vs the CPU ops (exp log sqrt softplus sigmoid relu gelu silu tanh, scalars)") {
  unary_case<float>();
  unary_case<double>();
}

// Binary ops. Forward: exact (IEEE + − × ÷ on both sides). Backward: sums
// over broadcast dims (chunked on the GPU, left to right on the CPU): float
// 5e-5 with floor sqrt(terms summed) (the CPU's own rounding error grows like
// u·n for a sequential sum of n zero-mean terms), double 1e-12.
template <class T>
static void binary_case() {
  const double tol = std::is_same_v<T, float> ? 5e-5 : 1e-12;
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{6, 7}, {6, 7}},   {{6, 7}, {7}},         {{6, 1}, {1, 7}},     {{2, 3, 4, 5}, {3, 1, 5}},
      {{}, {3, 4}},       {{513, 257}, {257}},   {{4096, 64}, {64}},   {{33, 1}, {33, 1000}},
      {{2, 1, 3, 1}, {1, 5, 1, 7}}};
  for (int oi = 0; oi < 4; ++oi) {
    auto op = (cu::Binary)oi;
    for (auto& [sa, sb] : shapes) {
      CAPTURE(oi);
      CAPTURE(shape_str(sa));
      CAPTURE(shape_str(sb));
      int64_t na = shape_numel(sa), nb = shape_numel(sb);
      auto a = randn<T>(na, 400 + oi);
      auto b = op == cu::Binary::Div ? randu<T>(nb, 500 + oi, 0.5, 2.0) : randn<T>(nb, 500 + oi);
      VarT<T> av = leaf(a, sa), bv = leaf(b, sb);
      VarT<T> out = cpu_binary(op, av, bv);
      auto g = randn<T>(out.numel(), 600 + oi);
      backward(out, tensor(g, out.shape()));
      auto da0 = randn<T>(na, 700 + oi), db0 = randn<T>(nb, 800 + oi);
      Guarded<T> ga(a), gb(b), gout((size_t)out.numel()), gg(g), gda(da0), gdb(db0);
      cu::binary_fwd(op, ga.data(), sa, gb.data(), sb, gout.data());
      cu::binary_bwd(op, ga.data(), sa, gb.data(), sb, gg.data(), gda.data(), gdb.data());
      expect_exact(std::string("binary fwd ") + tname<T>(), gout.get(), out.value().to_vector());
      const double nt = (double)out.numel();
      expect_close(std::string("binary bwd da ") + tname<T>(), gda.get(), plus(da0, grad_of(av)), tol,
                   std::max(1.0, std::sqrt(nt / (double)std::max<int64_t>(na, 1))));
      expect_close(std::string("binary bwd db ") + tname<T>(), gdb.get(), plus(db0, grad_of(bv)), tol,
                   std::max(1.0, std::sqrt(nt / (double)std::max<int64_t>(nb, 1))));
      CHECK_GUARDS(gout);
      CHECK_GUARDS(gda);
      CHECK_GUARDS(gdb);
    }
  }
}

CUDA_CASE("cuda binary add/sub/mul/div with broadcasting, fwd (exact) and bwd") {
  binary_case<float>();
  binary_case<double>();
}

// Reductions: sum over an axis vs ops::sum (float 5e-5 with floor sqrt(n):
// tree vs left-to-right order, and the CPU's sequential float sum carries an
// error ~u·n; double 1e-12); sum_all vs a long-double sum (the GPU's tree is
// more accurate than the CPU's loop over 10^6 floats): 1e-5 / floor sqrt(n).
// Backward of sum is a broadcast: exact.
template <class T>
static void reduce_case() {
  const double tol = std::is_same_v<T, float> ? 5e-5 : 1e-12;
  struct S {
    int64_t outer, n, inner;
  };
  for (S s : {S{1, 1, 1}, S{5, 7, 1}, S{3, 5000, 1}, S{4, 1000, 3}, S{1, 4097, 64}, S{7, 3, 129}, S{2, 0, 3}}) {
    CAPTURE(s.outer);
    CAPTURE(s.n);
    CAPTURE(s.inner);
    auto x = randn<T>((size_t)(s.outer * s.n * s.inner), 900);
    VarT<T> xv = leaf(x, {s.outer, s.n, s.inner});
    VarT<T> y = ops::sum(xv, 1);
    auto g = randn<T>((size_t)(s.outer * s.inner), 901);
    backward(y, tensor(g, y.shape()));
    auto dx0 = randn<T>(x.size(), 902), y0 = randn<T>(g.size(), 903);
    Guarded<T> gx(x), gy(g.size()), gy2(y0), gg(g), gdx(dx0);
    cu::sum_axis(gx.data(), gy.data(), s.outer, s.n, s.inner, false);
    cu::sum_axis(gx.data(), gy2.data(), s.outer, s.n, s.inner, true);
    cu::sum_axis_bwd(gg.data(), gdx.data(), s.outer, s.n, s.inner);
    const double fl = std::max(1.0, std::sqrt((double)s.n));
    expect_close(std::string("sum_axis ") + tname<T>(), gy.get(), y.value().to_vector(), tol, fl);
    expect_close(std::string("sum_axis accumulate ") + tname<T>(), gy2.get(), plus(y0, y.value().to_vector()), tol, fl);
    expect_exact(std::string("sum_axis_bwd ") + tname<T>(), gdx.get(), plus(dx0, grad_of(xv)));
    CHECK_GUARDS(gy);
    CHECK_GUARDS(gy2);
    CHECK_GUARDS(gdx);
  }
  for (int64_t n : {1, 255, 65536, 1000003}) {
    auto x = randn<T>((size_t)n, 910);
    long double exact = 0;
    for (T v : x) exact += (long double)v;
    Guarded<T> gx(x), out(1);
    cu::sum_all(gx.data(), out.data(), n);
    expect_close(std::string("sum_all ") + tname<T>(), out.get(), std::vector<double>{(double)exact},
                 std::is_same_v<T, float> ? 1e-5 : 1e-12, std::sqrt((double)n));
    CHECK_GUARDS(out);
  }
}

CUDA_CASE("cuda reductions: sum over an axis (fwd/bwd), sum_all") {
  reduce_case<float>();
  reduce_case<double>();
}

// ======================================================================================================
// row-wise kernels vs kernels/cpu/rowwise.h
// ======================================================================================================
namespace {
struct RC {
  int64_t rows, C;
};
const std::vector<RC> kRowShapes = {{1, 1}, {3, 5}, {7, 33}, {64, 1000}, {17, 1025}, {5, 4099}, {2, 50257}, {300, 64}};
const std::vector<cu::Launch> kRowLaunches = {{0, 0}, {1, 64}, {1, 256}, {2, 128}, {2, 512}, {2, 1024}};
}  // namespace

// softmax / log_softmax, forward and backward, against long-double references
// within the rounding-error bounds of their formulas (dev/cuda/error_bounds.h):
// the exps (their arguments and results), the row sum over this launch's
// threads (depth ⌈C/G⌉ − 1 + log2 G, and the online max's rescalings counted
// on the data), the product and the += of the backward. Before, the
// reference was the CPU kernel, whose left-to-right float sum over C = 50257
// is itself off by ~7e-5, more than the tolerance allowed the GPU.
template <class T>
static void softmax_case() {
  for (auto s : kRowShapes) {
    for (bool log : {false, true}) {
      for (auto l : kRowLaunches) {
        if (log && (l.version || l.block)) continue;  // log-softmax: default launch only
        CAPTURE(s.rows);
        CAPTURE(s.C);
        CAPTURE(log);
        CAPTURE(l.version);
        CAPTURE(l.block);
        const size_t n = (size_t)(s.rows * s.C);
        auto x = randn<T>(n, 1000 + s.C, 3.0), dy = randn<T>(n, 1001 + s.C), dx0 = randn<T>(n, 1002 + s.C);
        std::vector<T> y(n), dxc = dx0;  // the CPU's y: the backward's input on both sides
        if (log) cpu::log_softmax_fwd(x.data(), y.data(), s.rows, s.C);
        else cpu::softmax_fwd(x.data(), y.data(), s.rows, s.C);
        const int G = cu::row_group_threads(s.C, log ? cu::Launch{} : l);
        std::vector<dev::RowSum> sums;
        for (int64_t r = 0; r < s.rows; ++r) sums.push_back(dev::gpu_row_sum(x.data() + r * s.C, s.C, G));
        std::vector<long double> ref_y, ref_dx;
        std::vector<double> bound_y, bound_dx;
        if (log) {
          dev::log_softmax_ref_and_bound(x.data(), s.rows, s.C, sums, ref_y, bound_y);
          dev::log_softmax_bwd_ref_and_bound(y.data(), dy.data(), dx0.data(), s.rows, s.C, G, ref_dx, bound_dx);
        } else {
          dev::softmax_ref_and_bound(x.data(), s.rows, s.C, sums, ref_y, bound_y);
          dev::softmax_bwd_ref_and_bound(y.data(), dy.data(), dx0.data(), s.rows, s.C, G, ref_dx, bound_dx);
        }
        Guarded<T> gx(x), gy(n), gyc(y), gdy(dy), gdx(dx0);
        if (log) {
          cu::log_softmax_fwd(gx.data(), gy.data(), s.rows, s.C);
          cu::log_softmax_bwd(gyc.data(), gdy.data(), gdx.data(), s.rows, s.C);  // bwd from the CPU's y: isolated
        } else {
          cu::softmax_fwd(gx.data(), gy.data(), s.rows, s.C, l);
          cu::softmax_bwd(gyc.data(), gdy.data(), gdx.data(), s.rows, s.C, l);
        }
        expect_within(std::string(log ? "log_softmax_fwd " : "softmax_fwd ") + tname<T>(), gy.get(), ref_y, bound_y);
        expect_within(std::string(log ? "log_softmax_bwd " : "softmax_bwd ") + tname<T>(), gdx.get(), ref_dx, bound_dx);
        CHECK_GUARDS(gy);
        CHECK_GUARDS(gdx);
      }
    }
  }
}

CUDA_CASE("cuda softmax / log_softmax fwd+bwd vs kernels::softmax_*, warp and block launches") {
  softmax_case<float>();
  softmax_case<double>();
}

// layernorm / rmsnorm. fwd (y, mean, rstd: O(1) values whose error comes
// from the row sums): float 1e-5 / floor 1; bwd dx 5e-5 / floor 1e-2;
// dgamma/dbeta (column sums over up to 1500 rows, in chunks on the GPU, left
// to right on the CPU) 5e-5 / floor sqrt(rows). double 1e-10.
template <class T>
static void norm_case() {
  const bool f = std::is_same_v<T, float>;
  const double tf = f ? 1e-5 : 1e-10, tb = f ? 5e-5 : 1e-10;
  const std::vector<RC> shapes = {{1, 1}, {3, 5}, {33, 64}, {64, 768}, {517, 1000}, {4, 4099}, {1500, 33}};
  for (auto s : shapes) {
    for (bool rms : {false, true}) {
      for (auto l : std::vector<cu::Launch>{{0, 0}, {1, 128}, {2, 256}}) {
        CAPTURE(s.rows);
        CAPTURE(s.C);
        CAPTURE(rms);
        CAPTURE(l.version);
        const size_t n = (size_t)(s.rows * s.C);
        const double eps = rms ? 1e-6 : 1e-5;
        auto x = randn<T>(n, 2000 + s.C, 2.0, 0.5), gamma = randn<T>(s.C, 2001, 0.5, 1.0), beta = randn<T>(s.C, 2002);
        auto dy = randn<T>(n, 2003), dx0 = randn<T>(n, 2004), dg0 = randn<T>(s.C, 2005), db0 = randn<T>(s.C, 2006);
        std::vector<T> y(n), mean(s.rows), rstd(s.rows), dx = dx0, dg = dg0, db = db0;
        if (rms) {
          cpu::rmsnorm_fwd(x.data(), gamma.data(), y.data(), rstd.data(), s.rows, s.C, eps);
          cpu::rmsnorm_bwd(x.data(), gamma.data(), rstd.data(), dy.data(), dx.data(), dg.data(), s.rows, s.C);
        } else {
          cpu::layernorm_fwd(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(), s.rows, s.C, eps);
          cpu::layernorm_bwd(x.data(), gamma.data(), mean.data(), rstd.data(), dy.data(), dx.data(), dg.data(),
                             db.data(), s.rows, s.C);
        }
        Guarded<T> gx(x), gga(gamma), gbe(beta), gy(n), gmean((size_t)s.rows), grstd((size_t)s.rows);
        Guarded<T> gmc(mean), grc(rstd), gdy(dy), gdx(dx0), gdg(dg0), gdb(db0);
        if (rms) {
          cu::rmsnorm_fwd(gx.data(), gga.data(), gy.data(), grstd.data(), s.rows, s.C, eps, l);
          cu::rmsnorm_bwd(gx.data(), gga.data(), grc.data(), gdy.data(), gdx.data(), gdg.data(), s.rows, s.C);
        } else {
          cu::layernorm_fwd(gx.data(), gga.data(), gbe.data(), gy.data(), gmean.data(), grstd.data(), s.rows, s.C, eps, l);
          cu::layernorm_bwd(gx.data(), gga.data(), gmc.data(), grc.data(), gdy.data(), gdx.data(), gdg.data(),
                            gdb.data(), s.rows, s.C);
        }
        const std::string nm = std::string(rms ? "rmsnorm " : "layernorm ") + tname<T>();
        const double fr = std::max(1.0, std::sqrt((double)s.rows));
        expect_close(nm + " y", gy.get(), y, tf, 1.0);
        expect_close(nm + " rstd", grstd.get(), rstd, tf, 1.0);
        if (!rms) expect_close(nm + " mean", gmean.get(), mean, tf, 1.0);
        expect_close(nm + " dx", gdx.get(), dx, tb, 1e-2);
        expect_close(nm + " dgamma", gdg.get(), dg, tb, fr);
        if (!rms) expect_close(nm + " dbeta", gdb.get(), db, tb, fr);
        CHECK_GUARDS(gy);
        CHECK_GUARDS(grstd);
        if (!rms) CHECK_GUARDS(gmean);
        CHECK_GUARDS(gdx);
        CHECK_GUARDS(gdg);
        CHECK_GUARDS(gdb);
      }
    }
    // null gradients: only the requested outputs are written
    {
      const size_t n = (size_t)(s.rows * s.C);
      auto x = randn<T>(n, 2100), gamma = randn<T>(s.C, 2101), dy = randn<T>(n, 2102);
      std::vector<T> mean(s.rows), rstd(s.rows), y(n), dg(s.C, T(0)), db(s.C, T(0)), beta(s.C, T(0));
      cpu::layernorm_fwd(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(), s.rows, s.C, 1e-5);
      cpu::layernorm_bwd(x.data(), gamma.data(), mean.data(), rstd.data(), dy.data(), (T*)nullptr, dg.data(), db.data(),
                         s.rows, s.C);
      Guarded<T> gx(x), gga(gamma), gm(mean), gr(rstd), gdy(dy), gdg(std::vector<T>(s.C, T(0))),
          gdb(std::vector<T>(s.C, T(0)));
      cu::layernorm_bwd(gx.data(), gga.data(), gm.data(), gr.data(), gdy.data(), (T*)nullptr, gdg.data(), gdb.data(),
                        s.rows, s.C);
      const double fr = std::max(1.0, std::sqrt((double)s.rows));
      expect_close("layernorm_bwd dx=null dgamma", gdg.get(), dg, tb, fr);
      expect_close("layernorm_bwd dx=null dbeta", gdb.get(), db, tb, fr);
      Guarded<T> gdx(std::vector<T>(n, T(0)));
      std::vector<T> dx(n, T(0));
      cpu::layernorm_bwd(x.data(), gamma.data(), mean.data(), rstd.data(), dy.data(), dx.data(), (T*)nullptr,
                         (T*)nullptr, s.rows, s.C);
      cu::layernorm_bwd(gx.data(), gga.data(), gm.data(), gr.data(), gdy.data(), gdx.data(), (T*)nullptr, (T*)nullptr,
                        s.rows, s.C);
      expect_close("layernorm_bwd params=null dx", gdx.get(), dx, tb, 1e-2);
      CHECK_GUARDS(gdx);
    }
  }
}

CUDA_CASE("cuda layernorm / rmsnorm fwd+bwd vs kernels::*norm_*, null gradients") {
  norm_case<float>();
  norm_case<double>();
}

// Cross-entropy. probs: float 2e-5 / floor 1e-6 (as softmax); the loss total (double
// accumulation on both sides, same max) 1e-9 relative; count exact; bwd
// (element-wise from the same probs; an FMA may differ) 1e-6 / floor 1e-6.
template <class T>
static void cross_entropy_case() {
  const bool f = std::is_same_v<T, float>;
  const double tp = f ? 2e-5 : 1e-11;
  const int32_t ignore = -100;
  for (auto s : std::vector<RC>{{1, 1}, {3, 5}, {64, 1000}, {17, 1025}, {2, 50257}, {333, 97}}) {
    for (int pattern = 0; pattern < 3; ++pattern) {  // none ignored, every 3rd ignored, all ignored
      CAPTURE(s.rows);
      CAPTURE(s.C);
      CAPTURE(pattern);
      const size_t n = (size_t)(s.rows * s.C);
      auto x = randn<T>(n, 3000 + s.C, 2.0);
      std::vector<int32_t> t((size_t)s.rows);
      for (int64_t r = 0; r < s.rows; ++r)
        t[r] = pattern == 2 || (pattern == 1 && r % 3 == 1) ? ignore : (int32_t)((r * 7919 + 13) % s.C);
      std::vector<T> probs(n);
      int64_t count = -1, gcount = -1;
      double total = cpu::cross_entropy_sum(x.data(), t.data(), probs.data(), s.rows, s.C, ignore, &count);
      auto dl0 = randn<T>(n, 3001);
      std::vector<T> dl = dl0;
      const T scale = T(0.37);
      cpu::cross_entropy_bwd_scaled(probs.data(), t.data(), dl.data(), s.rows, s.C, ignore, scale);
      Guarded<T> gx(x), gp(n), gpc(probs), gdl(dl0);
      Guarded<int32_t> gt(t);
      double gtotal = cu::cross_entropy_sum(gx.data(), gt.data(), gp.data(), s.rows, s.C, ignore, &gcount);
      cu::cross_entropy_bwd_scaled(gpc.data(), gt.data(), gdl.data(), s.rows, s.C, ignore, scale);
      CHECK(gcount == count);
      CHECK(rel_err(gtotal, total, 1e-6) <= 1e-9);
      expect_close(std::string("cross_entropy probs ") + tname<T>(), gp.get(), probs, tp, 1e-6);
      expect_close(std::string("cross_entropy bwd ") + tname<T>(), gdl.get(), dl, f ? 1e-6 : 1e-14, 1e-6);
      CHECK_GUARDS(gp);
      CHECK_GUARDS(gdl);
    }
  }
}

CUDA_CASE("cuda cross_entropy fwd+bwd vs kernels::cross_entropy_*, ignore_index") {
  cross_entropy_case<float>();
  cross_entropy_case<double>();
}

// Attention. P: float 1e-5 / floor 1e-6; out, dq, dk, dv (cuBLAS sums over T
// and D) 5e-5 / floor 1. double 1e-11.
template <class T>
static void attention_case() {
  const bool f = std::is_same_v<T, float>;
  const double tP = f ? 1e-5 : 1e-11, tO = f ? 5e-5 : 1e-11;
  struct S {
    int64_t BH, Tn, D;
  };
  for (S s : {S{1, 1, 1}, S{2, 5, 3}, S{3, 17, 8}, S{4, 64, 32}, S{2, 130, 16}, S{1, 1100, 8}}) {
    for (bool causal : {false, true}) {
      CAPTURE(s.BH);
      CAPTURE(s.Tn);
      CAPTURE(s.D);
      CAPTURE(causal);
      const size_t nq = (size_t)(s.BH * s.Tn * s.D), nP = (size_t)(s.BH * s.Tn * s.Tn);
      auto q = randn<T>(nq, 4000), k = randn<T>(nq, 4001), v = randn<T>(nq, 4002), dO = randn<T>(nq, 4003);
      auto dq0 = randn<T>(nq, 4004), dk0 = randn<T>(nq, 4005), dv0 = randn<T>(nq, 4006);
      std::vector<T> P(nP), out(nq), dq = dq0, dk = dk0, dv = dv0;
      cpu::attention_fwd(q.data(), k.data(), v.data(), P.data(), out.data(), s.BH, s.Tn, s.D, causal);
      cpu::attention_bwd(q.data(), k.data(), v.data(), P.data(), dO.data(), dq.data(), dk.data(), dv.data(), s.BH, s.Tn,
                         s.D, causal);
      Guarded<T> gq(q), gk(k), gv(v), gP(nP), gout(nq), gPc(P), gdO(dO), gdq(dq0), gdk(dk0), gdv(dv0);
      cu::attention_fwd(gq.data(), gk.data(), gv.data(), gP.data(), gout.data(), s.BH, s.Tn, s.D, causal);
      cu::attention_bwd(gq.data(), gk.data(), gv.data(), gPc.data(), gdO.data(), gdq.data(), gdk.data(), gdv.data(),
                        s.BH, s.Tn, s.D, causal);
      const std::string nm = std::string("attention ") + tname<T>();
      expect_close(nm + " P", gP.get(), P, tP, 1e-6);
      expect_close(nm + " out", gout.get(), out, tO, 1.0);
      expect_close(nm + " dq", gdq.get(), dq, tO, 1.0);
      expect_close(nm + " dk", gdk.get(), dk, tO, 1.0);
      expect_close(nm + " dv", gdv.get(), dv, tO, 1.0);
      CHECK_GUARDS(gP);
      CHECK_GUARDS(gout);
      CHECK_GUARDS(gdq);
      CHECK_GUARDS(gdk);
      CHECK_GUARDS(gdv);
      // only dv requested
      Guarded<T> gdv2(dv0);
      cu::attention_bwd(gq.data(), gk.data(), gv.data(), gPc.data(), gdO.data(), (T*)nullptr, (T*)nullptr, gdv2.data(),
                        s.BH, s.Tn, s.D, causal);
      expect_close(nm + " dv only", gdv2.get(), dv, tO, 1.0);
    }
  }
}

CUDA_CASE("cuda attention fwd+bwd vs kernels::attention_* (causal and full)") {
  attention_case<float>();
  attention_case<double>();
}

// AdamW: the same float formula element by element; only FMA contraction can
// differ: 1e-6 / floor 1e-6.
CUDA_CASE("cuda adamw_step vs kernels::adamw_step") {
  for (int64_t n : {1, 1001, 65537}) {
    for (int64_t step : {1, 10, 1000}) {
      CAPTURE(n);
      CAPTURE(step);
      auto p = randn<float>(n, 5000), g = randn<float>(n, 5001), m = randn<float>(n, 5002, 0.1);
      auto v = randu<float>(n, 5003, 0.0, 0.1);
      Guarded<float> gp(p), gg(g), gm(m), gv(v);
      cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, step);
      cu::adamw_step(gp.data(), gg.data(), gm.data(), gv.data(), n, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, step);
      expect_close("adamw param", gp.get(), p, 1e-6, 1e-6);
      expect_close("adamw m", gm.get(), m, 1e-6, 1e-6);
      expect_close("adamw v", gv.get(), v, 1e-6, 1e-6);
      CHECK_GUARDS(gp);
      CHECK_GUARDS(gm);
      CHECK_GUARDS(gv);
    }
  }
}

// The optimiser's multi-tensor kernels (kernels/optim.h): one launch for
// every parameter. The clipped gradient is one float product, written back:
// exact. The update is adamw_step's formula (1e-6 / floor 1e-6, as above);
// Σ g² in double against a long-double sum: 1e-12 relative.
CUDA_CASE("cuda adamw_multi and sum_squares vs the CPU, several tensors in one launch") {
  const std::vector<int64_t> sizes{1, 1001, 0, 65537, 300001, 7};
  for (float scale : {1.0f, 0.37f}) {
    CAPTURE(scale);
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<std::unique_ptr<Guarded<float>>> gp, gg, gm, gv;
    std::vector<cpu::AdamWTensor> host, dev;
    std::vector<cu::GradSpan> spans;
    long double ss = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const size_t n = (size_t)sizes[i];
      p.push_back(randn<float>(n, 6000 + i));
      g.push_back(randn<float>(n, 6100 + i, 3.0));
      m.push_back(randn<float>(n, 6200 + i, 0.1));
      v.push_back(randu<float>(n, 6300 + i, 0.0, 0.1));
      for (float x : g.back()) ss += (long double)x * x;
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      gp.push_back(std::make_unique<Guarded<float>>(p[i]));
      gg.push_back(std::make_unique<Guarded<float>>(g[i]));
      gm.push_back(std::make_unique<Guarded<float>>(m[i]));
      gv.push_back(std::make_unique<Guarded<float>>(v[i]));
      const float wd = i % 2 ? 0.0f : 0.1f;
      host.push_back({p[i].data(), g[i].data(), m[i].data(), v[i].data(), sizes[i], wd});
      dev.push_back({gp[i]->data(), gg[i]->data(), gm[i]->data(), gv[i]->data(), sizes[i], wd});
      spans.push_back({gg[i]->data(), sizes[i]});
    }
    const double sq = cu::sum_squares(spans);  // before the update scales the gradients
    CHECK(std::abs(sq - (double)ss) <= 1e-12 * (double)ss);
    const cpu::AdamWHyper h{3e-4f, 0.9f, 0.95f, 1e-8f, 7, scale};
    cpu::adamw_multi(host, h);
    cu::adamw_multi(dev, h);
    for (size_t i = 0; i < sizes.size(); ++i) {
      CAPTURE(i);
      expect_exact("adamw_multi grad (clipped in place)", gg[i]->get(), g[i]);
      expect_close("adamw_multi param", gp[i]->get(), p[i], 1e-6, 1e-6);
      expect_close("adamw_multi m", gm[i]->get(), m[i], 1e-6, 1e-6);
      expect_close("adamw_multi v", gv[i]->get(), v[i], 1e-6, 1e-6);
      CHECK_GUARDS(*gp[i]);
      CHECK_GUARDS(*gg[i]);
      CHECK_GUARDS(*gm[i]);
      CHECK_GUARDS(*gv[i]);
    }
  }
  CHECK(cu::sum_squares({}) == 0.0);
}

// The table's cross-entropy pair, which the op runs: the loss left on the
// GPU as T(Σ / count) (count from the host targets; 0 when count = 0), the
// output gradient read there. Against the CPU's pair: the same per-row terms
// summed in another order (1e-6 relative; 1e-12 in double); the backward with
// the same scale (1e-5 / floor 1e-6, as the probabilities; double 1e-12).
template <class T>
static void cross_entropy_device_case() {
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-12;
  for (int64_t C : {1, 33, 1025}) {
    for (bool all_ignored : {false, true}) {
      const int64_t rows = 37;
      CAPTURE(C);
      CAPTURE(all_ignored);
      auto x = randn<T>((size_t)(rows * C), 7100, 2.0);
      std::vector<int32_t> tg((size_t)rows);
      int64_t count = 0;
      for (int64_t r = 0; r < rows; ++r) {
        tg[r] = all_ignored || r % 5 == 3 ? -100 : (int32_t)(philox_u32(7, 1, (uint64_t)r) % (uint32_t)C);
        count += tg[r] != -100;
      }
      std::vector<T> probs((size_t)(rows * C));
      T want = T(-1);
      cpu::cross_entropy_fwd(x.data(), tg.data(), probs.data(), rows, C, -100, count, &want);
      Guarded<T> gx(x), gprobs((size_t)(rows * C)), gloss((size_t)1);
      Guarded<int32_t> gtg(tg);
      cu::cross_entropy_fwd(gx.data(), gtg.data(), gprobs.data(), rows, C, -100, count, gloss.data());
      expect_close("cross_entropy_fwd loss (on the GPU)", gloss.get(), std::vector<T>{want}, tol, 1e-6);
      expect_close("cross_entropy_fwd probs", gprobs.get(), probs, std::is_same_v<T, float> ? 1e-5 : 1e-12, 1e-6);
      CHECK_GUARDS(gloss);
      if (count == 0) continue;
      const T gout = T(0.75);
      auto d0 = randn<T>((size_t)(rows * C), 7200);
      std::vector<T> want_d = d0;
      cpu::cross_entropy_bwd(probs.data(), tg.data(), want_d.data(), rows, C, -100, &gout, count);
      Guarded<T> gd(d0), ggout(std::vector<T>{gout});
      cu::cross_entropy_bwd(gprobs.data(), gtg.data(), gd.data(), rows, C, -100, ggout.data(), count);
      expect_close("cross_entropy_bwd (output gradient on the GPU)", gd.get(), want_d,
                   std::is_same_v<T, float> ? 1e-5 : 1e-12, 1e-6);
      CHECK_GUARDS(gd);
    }
  }
  // no rows: the loss is written as 0
  Guarded<T> gloss((size_t)1);
  cu::cross_entropy_fwd<T>(nullptr, nullptr, nullptr, 0, 5, -100, 0, gloss.data());
  expect_exact("cross_entropy_fwd with no rows", gloss.get(), std::vector<T>{T(0)});
}
CUDA_CASE("cuda cross-entropy, the op's pair: the loss and the output gradient stay on the GPU, vs the CPU's pair") {
  cross_entropy_device_case<float>();
  cross_entropy_device_case<double>();
}

// Uploads through the pinned staging ring (core/cuda/staging.h): copy_h2d
// returns before the copy is made, so the host source is overwritten at once
// here; every upload must still arrive intact, across several laps of the
// ring (slices reused once their copies finished), and one upload larger than
// the ring goes the waiting way. Counted: the staged ones did not wait.
CUDA_CASE("cuda staged uploads: many uploads across laps of the ring arrive intact; the host buffer is free at once") {
  cu::synchronize();
  cu::reset_sync_counts();
  const size_t lap = cu::kStagingBytes;
  std::vector<size_t> sizes;
  size_t total = 0;
  for (uint64_t i = 0; total < 3 * lap; ++i) {
    const size_t n = 1 + philox_u32(3, 9, i) % (i % 7 == 0 ? lap / 2 : 4096);  // bytes, mostly small
    sizes.push_back(n);
    total += n;
  }
  std::vector<cu::DeviceBuffer<uint8_t>> bufs;
  std::vector<uint8_t> src;
  for (size_t i = 0; i < sizes.size(); ++i) {
    src.assign(sizes[i], 0);
    for (size_t b = 0; b < sizes[i]; ++b) src[b] = (uint8_t)(philox_u32(4, i, b / 4) >> (8 * (b % 4)));
    bufs.emplace_back(sizes[i]);
    cu::copy_h2d(bufs.back().data(), src.data(), sizes[i]);
    std::fill(src.begin(), src.end(), 0xEE);  // the source is free as soon as copy_h2d returns
  }
  const cu::SyncCounts after = cu::sync_counts();
  CHECK(after.staged == sizes.size());
  CHECK(after.h2d == 0);
  MESSAGE("staged uploads: " << after.staged << " (" << (total >> 20) << " MiB, " << total / lap
                             << " laps); waits for a busy slice: " << after.waits);
  size_t bad = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::vector<uint8_t> got = bufs[i].to_host();
    for (size_t b = 0; b < sizes[i]; ++b) bad += got[b] != (uint8_t)(philox_u32(4, i, b / 4) >> (8 * (b % 4)));
  }
  CHECK(bad == 0);
  // larger than the ring: copied the waiting way, and intact too
  std::vector<uint8_t> big(lap + 4096);
  for (size_t b = 0; b < big.size(); ++b) big[b] = (uint8_t)(b * 131 + 7);
  cu::DeviceBuffer<uint8_t> dbig(big.size());
  cu::reset_sync_counts();
  cu::copy_h2d(dbig.data(), big.data(), big.size());
  CHECK(cu::sync_counts().h2d == 1);
  CHECK(cu::sync_counts().staged == 0);
  CHECK(dbig.to_host() == big);
}

// Router jitter drawn on the GPU (nn/noise.h): the host loop's expression
// 1 + j(2u − 1) on bit-identical uniforms; FMA contraction may differ in the
// last place: 2 ulp of 1 (2.4e-7).
CUDA_CASE("cuda philox_jitter vs the host loop of the MoE layer") {
  const int64_t n = 5003;
  const float j = 0.01f;
  std::vector<float> want((size_t)n);
  for (int64_t i = 0; i < n; ++i) want[i] = 1.0f + j * (2.0f * philox_uniform(17, 23, (uint64_t)i) - 1.0f);
  Guarded<float> got((size_t)n);
  cu::philox_jitter(got.data(), n, j, 17, 23);
  expect_close("philox_jitter", got.get(), want, 2.4e-7, 1.0);
  CHECK_GUARDS(got);
}

// ======================================================================================================
// embedding, dropout, Philox
// ======================================================================================================
// Embedding: fwd exact (a copy); bwd exact too: each table row adds its
// positions in increasing order, the CPU's order (pure adds, from zero).
// The atomic variant: 1e-5 / floor 1 (order varies).
template <class T>
static void embedding_case() {
  struct S {
    int64_t V, C, n;
  };
  for (S s : {S{1, 1, 1}, S{5, 3, 7}, S{1000, 64, 777}, S{50257, 32, 2048}, S{300, 1, 5000}}) {
    CAPTURE(s.V);
    CAPTURE(s.C);
    CAPTURE(s.n);
    std::vector<int32_t> ids((size_t)s.n);
    for (int64_t i = 0; i < s.n; ++i) ids[i] = (int32_t)((philox_u32(7, 1, (uint64_t)(i - (i & 1))) >> 8) % s.V);  // pairs repeat
    auto table = randn<T>((size_t)(s.V * s.C), 6000);
    VarT<T> tv = leaf(table, {s.V, s.C});
    VarT<T> out = ops::embedding(tv, ids, {s.n});
    auto dout = randn<T>((size_t)(s.n * s.C), 6001);
    backward(out, tensor(dout, out.shape()));
    Guarded<T> gt(table), gout((size_t)(s.n * s.C)), gd(dout), gdt(std::vector<T>((size_t)(s.V * s.C), T(0))),
        gda(std::vector<T>((size_t)(s.V * s.C), T(0)));
    Guarded<int32_t> gids(ids);
    cu::embedding_fwd(gt.data(), gids.data(), gout.data(), s.n, s.C);
    cu::embedding_bwd(gd.data(), gids.data(), gdt.data(), s.n, s.V, s.C);
    cu::embedding_bwd_atomic(gd.data(), gids.data(), gda.data(), s.n, s.V, s.C);
    expect_exact(std::string("embedding fwd ") + tname<T>(), gout.get(), out.value().to_vector());
    expect_exact(std::string("embedding bwd (deterministic) ") + tname<T>(), gdt.get(), grad_of(tv));
    expect_close(std::string("embedding bwd (atomic) ") + tname<T>(), gda.get(), grad_of(tv), 1e-5, 1.0);
    CHECK_GUARDS(gout);
    CHECK_GUARDS(gdt);
    CHECK_GUARDS(gda);
  }
}

CUDA_CASE("cuda embedding fwd / deterministic scatter-add bwd vs ops::embedding") {
  embedding_case<float>();
  embedding_case<double>();
}

// Dropout: Philox uniforms are integer arithmetic + one exact scaling, so the
// mask and y are bit-identical to the CPU; dx (from zero) exact as well.
template <class T>
static void dropout_case() {
  for (int64_t n : {1, 5, 4099}) {
    for (double p : {0.0, 0.1, 0.5, 0.9}) {
      for (uint64_t offset : {0ull, 1ull, 3ull, 1000001ull}) {
        for (int version : {1, 2}) {
          CAPTURE(n);
          CAPTURE(p);
          CAPTURE(offset);
          CAPTURE(version);
          auto x = randn<T>(n, 7000);
          VarT<T> xv = leaf(x, {n});
          VarT<T> y = ops::dropout(xv, p, 1234, 77, offset);
          auto dy = randn<T>(n, 7001);
          backward(y, tensor(dy, {n}));
          Guarded<T> gx(x), gy((size_t)n), gm((size_t)n), gdy(dy), gdx(std::vector<T>((size_t)n, T(0)));
          cu::dropout_fwd(gx.data(), gy.data(), gm.data(), n, p, 1234, 77, offset, version);
          cu::dropout_bwd(gdy.data(), gm.data(), gdx.data(), n);
          expect_exact(std::string("dropout y ") + tname<T>(), gy.get(), y.value().to_vector());
          expect_exact(std::string("dropout dx ") + tname<T>(), gdx.get(), grad_of(xv));
          CHECK_GUARDS(gy);
          CHECK_GUARDS(gm);
          CHECK_GUARDS(gdx);
        }
      }
    }
  }
}

CUDA_CASE("cuda dropout fwd/bwd: Philox masks identical to ops::dropout") {
  dropout_case<float>();
  dropout_case<double>();
}

// Philox fills: uniforms exact; normals exact too (core/philox.h's fixed-operation
// Box–Muller: fmaf, IEEE multiplies, sqrtf, no library functions) and within the
// bound of their formula; Gumbels through CUDA's logf, against long-double
// references from the same uniforms within the bounds of their formulas
// (dev/cuda/error_bounds.h): a Gumbel −log(−log u) is off by a few units
// absolute where −log u ≈ 1 and g ≈ 0 (a relative tolerance with a 1e-3 floor
// failed there); a normal by ~8 units relative.
CUDA_CASE("cuda philox_fill: uniforms and normals bit-identical, normals and gumbels within their rounding bounds") {
  const int64_t n = 10007;
  for (uint64_t offset : {0ull, 5ull}) {
    std::vector<float> u(n);
    std::vector<long double> zr(n), gr(n);
    std::vector<double> zb(n), gb(n);
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t o = offset + (uint64_t)i, base = (o >> 1) << 1;
      u[i] = philox_uniform(99, 3, o);
      zr[i] = dev::normal_ref(philox_uniform(99, 3, base), philox_uniform(99, 3, base + 1), o & 1);
      zb[i] = dev::normal_bound((double)zr[i]);
      gr[i] = dev::gumbel_ref(u[i]);
      gb[i] = dev::gumbel_bound((double)gr[i]);
    }
    Guarded<float> gu((size_t)n), gz((size_t)n), gg((size_t)n);
    cu::philox_fill(cu::PhiloxDist::Uniform, gu.data(), n, 99, 3, offset);
    cu::philox_fill(cu::PhiloxDist::Normal, gz.data(), n, 99, 3, offset);
    cu::philox_fill(cu::PhiloxDist::Gumbel, gg.data(), n, 99, 3, offset);
    expect_exact("philox uniform", gu.get(), u);
    std::vector<float> zc((size_t)n);
    philox_normals(99, 3, offset, (uint64_t)n, zc.data());  // the CPU's bulk path
    expect_exact("philox normal", gz.get(), zc);
    expect_within("philox normal", gz.get(), zr, zb);
    expect_within("philox gumbel", gg.get(), gr, gb);
    CHECK_GUARDS(gu);
    CHECK_GUARDS(gz);
    CHECK_GUARDS(gg);
  }
}

// The variational routers' ε on the GPU (nn/noise.h device_sample_normals) in the
// CPU's layout (nn/routers/common.h sample_normals: one token's S·E normals one
// block), bit for bit, for a whole batch and for a shard of rows.
CUDA_CASE("cuda philox_sample_normals: the CPU's sample_normals bit for bit (whole batch and a shard)") {
  for (auto [S, N, E, row0] : {std::tuple<int, int64_t, int64_t, int64_t>{1, 9, 8, 0}, {35, 37, 7, 0}, {3, 5, 9, 11}}) {
    CAPTURE(S);
    CAPTURE(N);
    CAPTURE(E);
    CAPTURE(row0);
    const Tensor want = nn::routers::sample_normals(S, N, E, 77, 5, row0);
    Guarded<float> g((size_t)(S * N * E));
    cu::philox_sample_normals(g.data(), S, N, E, 77, 5, row0);
    expect_exact("philox_sample_normals", g.get(), want.to_vector());
    CHECK_GUARDS(g);
  }
}

// ======================================================================================================
// MoE: sort, router top-K, dispatch, gather/combine, Cholesky pieces, fused S-sample loop, KL, selection
// ======================================================================================================
CUDA_CASE("cuda stable_group_by_key: stable counting sort, excluded keys, 1-3 radix passes") {
  for (int32_t nkeys : {1, 8, 255, 256, 1000, 50257, 70000}) {
    for (int64_t n : {0, 1, 255, 256, 257, 5000, 100000}) {
      CAPTURE(nkeys);
      CAPTURE(n);
      std::vector<int32_t> keys((size_t)n);
      for (int64_t i = 0; i < n; ++i) {
        uint32_t r = philox_u32(5, (uint64_t)nkeys, (uint64_t)i);
        keys[i] = r % 17 == 0 ? -1 : r % 19 == 0 ? nkeys : (int32_t)(r % (uint32_t)nkeys);
      }
      // CPU: stable counting sort
      std::vector<int32_t> off((size_t)nkeys + 1, 0), perm;
      for (auto k : keys)
        if (k >= 0 && k < nkeys) ++off[(size_t)k + 1];
      for (int32_t k = 0; k < nkeys; ++k) off[(size_t)k + 1] += off[(size_t)k];
      std::vector<int32_t> fill(off.begin(), off.end() - 1);
      perm.assign((size_t)n, -1);
      int32_t tail = off[(size_t)nkeys];
      for (int64_t i = 0; i < n; ++i) {
        int32_t k = keys[i];
        if (k >= 0 && k < nkeys) perm[(size_t)fill[(size_t)k]++] = (int32_t)i;
        else perm[(size_t)tail++] = (int32_t)i;
      }
      Guarded<int32_t> gk(keys), gp((size_t)n), go((size_t)nkeys + 1);
      cu::stable_group_by_key(gk.data(), n, nkeys, gp.data(), go.data());
      expect_exact("offsets", go.get(), off);
      expect_exact("perm", gp.get(), perm);
      CHECK_GUARDS(gp);
      CHECK_GUARDS(go);
    }
  }
}

// topk_gates: indices exact (separated probabilities); gates 1e-5; bwd
// 2e-5 / floor 1e-3.
template <class T>
static void topk_gates_case() {
  const double tp = std::is_same_v<T, float> ? 5e-6 : 1e-12;
  struct S {
    int64_t N;
    int E, K;
  };
  for (S s : {S{1, 1, 1}, S{7, 8, 2}, S{100, 64, 8}, S{33, 257, 4}, S{5, 2048, 16}}) {
    CAPTURE(s.N);
    CAPTURE(s.E);
    CAPTURE(s.K);
    auto logits = separated<T>(s.N, s.E, 8000 + s.E);
    VarT<T> probs = ops::softmax(leaf(logits, {s.N, (int64_t)s.E}));
    VarT<T> pl = leaf(probs.value().to_vector(), {s.N, (int64_t)s.E});
    auto [tk_experts, tk_gates] = cpu_topk_renormalised(pl, s.K);
    auto dg = randn<T>((size_t)(s.N * s.K), 8001);
    backward(tk_gates, tensor(dg, tk_gates.shape()));
    Guarded<T> gpc(probs.value().to_vector()), gg((size_t)(s.N * s.K)), gdg(dg),
        gdp(std::vector<T>((size_t)(s.N * s.E), T(0)));
    Guarded<int32_t> ge((size_t)(s.N * s.K));
    cu::topk_gates(gpc.data(), ge.data(), gg.data(), s.N, s.E, s.K);
    expect_exact("topk_gates experts", ge.get(), tk_experts);
    expect_close("topk_gates gates", gg.get(), tk_gates.value().to_vector(), 2 * tp, 1e-6);
    cu::topk_gates_bwd(gpc.data(), ge.data(), gdg.data(), gdp.data(), s.N, s.E, s.K);
    expect_close("topk_gates_bwd", gdp.get(), grad_of(pl), 4 * tp, 1e-3);
    CHECK_GUARDS(ge);
    CHECK_GUARDS(gg);
    CHECK_GUARDS(gdp);
  }
  // ties: equal values -> lower indices first, as ops::topk
  const int E = 12, K = 5;
  std::vector<T> flat((size_t)E, T(0.25));
  flat[7] = T(1);
  auto want = ops::topk(leaf(flat, {1, (int64_t)E}, false), K).indices;
  Guarded<T> gf(flat), gg3((size_t)K);
  Guarded<int32_t> ge3((size_t)K);
  cu::topk_gates(gf.data(), ge3.data(), gg3.data(), 1, E, K);
  expect_exact("topk_gates ties", ge3.get(), want.host());
}

CUDA_CASE("cuda topk_gates (top-K + renormalised gates, fwd/bwd) vs nn::topk_renormalised") {
  topk_gates_case<float>();
  topk_gates_case<double>();
}

// NaN inputs (a diverging router): the warp top-K ranks NaN as −inf (kernels/moe.h,
// topk_key), as the CPU does, so the experts are the CPU's exactly and distinct;
// gates too (same sums in the same order; NaN where a NaN was chosen). The
// Gumbel top-K picks every finite logit before a NaN or −inf one.
CUDA_CASE("cuda warp top-K with NaN inputs (topk_gates, gumbel_topk): NaN ranks as -inf, experts distinct") {
  for (int E : {8, 33, 64, 2048}) {
    const int64_t N = 40;
    for (int K : {1, 2, std::min(16, E)}) {
      CAPTURE(E);
      CAPTURE(K);
      auto p = separated<float>(N, E, 600 + E);  // distinct finite values
      for (size_t i = 0; i < p.size(); ++i) {
        float u = philox_uniform(8, 9, i);
        if (u < 0.25f) p[i] = NAN;
        else if (u < 0.3f) p[i] = -INFINITY;
      }
      for (int e = 0; e < E; ++e) p[(size_t)e] = NAN;  // row 0: all NaN
      std::vector<int32_t> want((size_t)(N * K));
      std::vector<float> want_g((size_t)(N * K));
      cpu::topk_gates(p.data(), want.data(), want_g.data(), N, E, K);
      Guarded<float> gp(p), gg((size_t)(N * K));
      Guarded<int32_t> ge((size_t)(N * K)), go((size_t)(N * K));
      cu::topk_gates(gp.data(), ge.data(), gg.data(), N, E, K);
      expect_exact("topk_gates experts with NaN", ge.get(), want);
      expect_exact("topk_gates gates with NaN", gg.get(), want_g);
      cu::gumbel_topk(gp.data(), N, E, K, 7, 99, go.data());
      auto got = ge.get(), gum = go.get();
      for (int64_t n = 0; n < N; ++n) {
        std::set<int32_t> a(got.begin() + n * K, got.begin() + (n + 1) * K), b(gum.begin() + n * K, gum.begin() + (n + 1) * K);
        CHECK_MESSAGE(a.size() == (size_t)K, "topk_gates row " << n << " picked an expert twice");
        CHECK_MESSAGE(b.size() == (size_t)K, "gumbel_topk row " << n << " picked an expert twice");
        int finite = 0;
        for (int e = 0; e < E; ++e) finite += std::isfinite(p[(size_t)(n * E + e)]);
        for (int j = 0; j < std::min(K, finite); ++j)
          CHECK_MESSAGE(std::isfinite(p[(size_t)(n * E + gum[(size_t)(n * K + j)])]), "gumbel_topk row " << n << " rank " << j);
      }
      CHECK_GUARDS(ge);
      CHECK_GUARDS(gg);
      CHECK_GUARDS(go);
    }
  }
}

// Dispatch plan: exact (integers). Gather/combine fwd: exact (rounded
// products added in the CPU's order); gather bwd exact; combine bwd dys
// 1e-6 / floor 1e-6, dgates (a dot product over C) 1e-5 / floor sqrt(C).
CUDA_CASE("cuda MoE dispatch plan, gather and combine (fwd/bwd) vs nn::plan_dispatch and the ops") {
  struct S {
    int64_t N;
    int K, E;
    double cf;
    int64_t C;
  };
  for (S s : {S{1, 1, 1, 0.0, 1}, S{37, 2, 8, 1.0, 33}, S{300, 2, 8, 1.25, 64}, S{300, 4, 64, 0.0, 256},
              S{2000, 8, 64, 0.5, 48}, S{513, 2, 300, 1.0, 16}}) {
    for (int masked = 0; masked < 2; ++masked) {
      CAPTURE(s.N);
      CAPTURE(s.K);
      CAPTURE(s.E);
      CAPTURE(s.cf);
      CAPTURE(masked);
      const int64_t NK = s.N * s.K;
      std::vector<int32_t> experts((size_t)NK);
      std::vector<uint8_t> mask((size_t)s.N, 1);
      for (int64_t n = 0; n < s.N; ++n) {
        // K distinct experts per token, skewed towards the low ids so that capacity bites
        uint64_t attempt = 0;
        for (int j = 0; j < s.K; ++j) {
          int32_t e;
          bool dup;
          do {
            uint32_t r = philox_u32(9, (uint64_t)n, attempt++);
            e = (int32_t)((r & 1) ? (r >> 1) % (uint32_t)std::max(1, s.E / 4) : (r >> 1) % (uint32_t)s.E);
            dup = false;
            for (int i = 0; i < j; ++i) dup = dup || experts[n * s.K + i] == e;
          } while (dup);
          experts[n * s.K + j] = e;
        }
        if (masked && n % 7 == 3) mask[n] = 0;
      }
      nn::DispatchPlan plan = nn::plan_dispatch(experts, s.N, s.K, s.E, mask, s.cf);
      const int64_t M = plan.offsets.back();
      Guarded<int32_t> gex(experts), gtok((size_t)NK), gslot((size_t)NK), gpos((size_t)NK);
      Guarded<uint8_t> gmask(mask);
      Guarded<int64_t> goff((size_t)s.E + 1), gcnt((size_t)s.E), gwant((size_t)s.E), gdrop(1);
      cu::moe_dispatch_plan(gex.data(), masked ? gmask.data() : nullptr, s.N, s.K, s.E, s.cf, gtok.data(),
                            gslot.data(), gpos.data(), goff.data(), gcnt.data(), gwant.data(), gdrop.data());
      expect_exact("dispatch offsets", goff.get(), plan.offsets);
      expect_exact("dispatch counts", gcnt.get(), plan.counts);
      expect_exact("dispatch wanted", gwant.get(), plan.wanted);
      expect_exact("dispatch dropped", gdrop.get(), std::vector<int64_t>{plan.dropped});
      auto tok = gtok.get(), slot = gslot.get(), pos = gpos.get();
      expect_exact("dispatch token", std::vector<int32_t>(tok.begin(), tok.begin() + M), plan.token);
      expect_exact("dispatch slot", std::vector<int32_t>(slot.begin(), slot.begin() + M), plan.slot);
      std::vector<int32_t> want_pos((size_t)NK, -1);
      for (int64_t m = 0; m < M; ++m) want_pos[(size_t)plan.slot[m]] = (int32_t)m;
      expect_exact("dispatch pos_of_slot", pos, want_pos);
      CHECK_GUARDS(gtok);
      CHECK_GUARDS(gpos);
      CHECK_GUARDS(goff);
      CHECK_GUARDS(gdrop);

      // gather / combine against the ops of MoELayer::forward
      auto x = randn<float>((size_t)(s.N * s.C), 9000), ys = randn<float>((size_t)(M * s.C), 9001);
      auto gates = randu<float>((size_t)NK, 9002, 0.05, 1.0);
      VarT<float> xv = leaf(x, {s.N, s.C}), ysv = leaf(ys, {M, s.C}), gv = leaf(gates, {s.N, (int64_t)s.K});
      VarT<float> xs = ops::gather_rows(xv, plan.token);
      VarT<float> g = ops::gather_rows(ops::reshape(gv, {NK, 1}), plan.slot);
      VarT<float> out = ops::scatter_add_rows(ops::mul(ysv, g), plan.token, s.N);
      auto dxs = randn<float>((size_t)(M * s.C), 9003), dout = randn<float>((size_t)(s.N * s.C), 9004);
      if (M > 0) backward(xs, tensor(dxs, xs.shape()));
      backward(out, tensor(dout, out.shape()));
      Guarded<float> gx(x), gxs((size_t)(M * s.C)), gys(ys), ggates(gates), gout((size_t)(s.N * s.C)),
          gdxs(dxs), gdout(dout), gdx(std::vector<float>((size_t)(s.N * s.C), 0.f)),
          gdys(std::vector<float>((size_t)(M * s.C), 0.f)), gdg(std::vector<float>((size_t)NK, 0.f));
      cu::moe_gather(gx.data(), gtok.data(), gxs.data(), M, s.C);
      cu::moe_gather_bwd(gdxs.data(), gpos.data(), gdx.data(), s.N, s.K, s.C);
      cu::moe_combine(gys.data(), ggates.data(), gpos.data(), gout.data(), s.N, s.K, s.C);
      cu::moe_combine_bwd(gys.data(), ggates.data(), gtok.data(), gslot.data(), gdout.data(), gdys.data(), gdg.data(), M,
                          s.C);
      expect_exact("moe_gather", gxs.get(), xs.value().to_vector());
      expect_exact("moe_gather_bwd", gdx.get(), grad_of(xv));
      expect_exact("moe_combine", gout.get(), out.value().to_vector());
      expect_close("moe_combine_bwd dys", gdys.get(), grad_of(ysv), 1e-6, 1e-6);
      expect_close("moe_combine_bwd dgates", gdg.get(), grad_of(gv), 1e-5, std::max(1.0, std::sqrt((double)s.C)));
      CHECK_GUARDS(gxs);
      CHECK_GUARDS(gdx);
      CHECK_GUARDS(gout);
      CHECK_GUARDS(gdys);
      CHECK_GUARDS(gdg);
    }
  }
}

// Cholesky pieces. fill_tril fwd: float 1e-6 / floor 1e-3 (expf); bwd same;
// tril_matvec fwd/bwd (sums over E): 1e-5 / floor 1. double 1e-12.
template <class T>
static void tril_case() {
  const bool f = std::is_same_v<T, float>;
  const double t1 = f ? 1e-6 : 1e-13, t2 = f ? 1e-5 : 1e-12;
  for (int64_t N : {1, 5, 37}) {
    for (int E : {1, 2, 8, 33, 64}) {
      CAPTURE(N);
      CAPTURE(E);
      const int64_t P = (int64_t)E * (E + 1) / 2, EE = (int64_t)E * E;
      auto v = randn<T>((size_t)(N * P), 10000, 0.5);
      VarT<T> vv = leaf(v, {N, P});
      VarT<T> L = ops::fill_tril_expdiag(vv, E);
      auto dL = randn<T>((size_t)(N * EE), 10001);
      backward(L, tensor(dL, L.shape()));
      auto dv0 = randn<T>((size_t)(N * P), 10002);
      Guarded<T> gv(v), gL((size_t)(N * EE)), gdL(dL), gdv(dv0);
      cu::fill_tril_expdiag_fwd(gv.data(), gL.data(), N, E);
      cu::fill_tril_expdiag_bwd(gL.data(), gdL.data(), gdv.data(), N, E);
      expect_close(std::string("fill_tril_expdiag fwd ") + tname<T>(), gL.get(), L.value().to_vector(), t1, 1e-3);
      expect_close(std::string("fill_tril_expdiag bwd ") + tname<T>(), gdv.get(), plus(dv0, grad_of(vv)), t1, 1e-3);
      CHECK_GUARDS(gL);
      CHECK_GUARDS(gdv);

      auto Lh = L.value().to_vector();
      auto eps = randn<T>((size_t)(N * E), 10003);
      VarT<T> Lv = leaf(Lh, {N, (int64_t)E, (int64_t)E}), ev = leaf(eps, {N, (int64_t)E});
      VarT<T> out = ops::tril_matvec(Lv, ev);
      auto g = randn<T>((size_t)(N * E), 10004);
      backward(out, tensor(g, out.shape()));
      auto dL0 = randn<T>((size_t)(N * EE), 10005), de0 = randn<T>((size_t)(N * E), 10006);
      Guarded<T> gLc(Lh), ge(eps), gout((size_t)(N * E)), gg(g), gdL2(dL0), gde(de0);
      cu::tril_matvec_fwd(gLc.data(), ge.data(), gout.data(), N, E);
      cu::tril_matvec_bwd(gLc.data(), ge.data(), gg.data(), gdL2.data(), gde.data(), N, E);
      expect_close(std::string("tril_matvec fwd ") + tname<T>(), gout.get(), out.value().to_vector(), t2, 1.0);
      expect_close(std::string("tril_matvec bwd dL ") + tname<T>(), gdL2.get(), plus(dL0, grad_of(Lv)), t2, 1.0);
      expect_close(std::string("tril_matvec bwd deps ") + tname<T>(), gde.get(), plus(de0, grad_of(ev)), t2, 1.0);
      CHECK_GUARDS(gout);
      CHECK_GUARDS(gdL2);
      CHECK_GUARDS(gde);
    }
  }
}

CUDA_CASE("cuda fill_tril_expdiag / tril_matvec fwd+bwd vs the ops") {
  tril_case<float>();
  tril_case<double>();
}

// The fused S-sample loop vs the CPU graph of nn/routers/variational_logits.cpp
// (same Philox noise tensor). pbar: 1e-5 / floor 1e-6 (the normals differ by
// an ulp, softmax by tree order); experts: a valid top-K of the CPU's pbar up
// to 1e-5 (near-ties may flip), at most 2% of rows differing; gates 2e-5;
// gradients: 1e-4 with a floor of 1e-3 · max|grad|.
CUDA_CASE("cuda fused mfvr/fcvr S-sample loop (fwd/bwd) vs the CPU router graph") {
  struct S {
    int64_t N;
    int E, S, K;
  };
  for (bool fc : {false, true}) {
    for (S s : {S{1, 8, 1, 1}, S{17, 8, 4, 2}, S{100, 33, 35, 4}, S{64, 64, 8, 8}}) {
      CAPTURE(fc);
      CAPTURE(s.N);
      CAPTURE(s.E);
      CAPTURE(s.S);
      CAPTURE(s.K);
      const uint64_t seed = 42, stream = 0xABCDEFULL;
      const int64_t N = s.N, E = s.E;
      auto mean = randn<float>((size_t)(N * E), 11000, 1.5);
      std::vector<float> scale;
      if (fc) {
        scale.assign((size_t)(N * E * E), 0.f);
        auto r = randn<float>((size_t)(N * E * E), 11001, 0.3);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = 0; i < E; ++i)
            for (int64_t j = 0; j <= i; ++j)
              scale[(size_t)((n * E + i) * E + j)] = i == j ? 0.5f + std::abs(r[(size_t)((n * E + i) * E + j)]) : r[(size_t)((n * E + i) * E + j)];
      } else {
        scale = randu<float>((size_t)(N * E), 11002, 0.1, 1.5);
      }
      // CPU graph
      VarT<float> mv = leaf(mean, {N, E});
      VarT<float> sv = fc ? leaf(scale, {N, E, E}) : leaf(scale, {N, E});
      Tensor eps = nn::routers::sample_normals(s.S, N, E, seed, stream, 0);  // the kernel's layout: (n·S + s)·E + e
      Var noise;
      if (fc) {
        Var Ls = s.S == 1 ? sv : ops::concat(std::vector<Var>((size_t)s.S, sv), 0);
        noise = ops::tril_matvec(Ls, ops::constant(eps));
      } else {
        noise = ops::mul(nn::routers::tile_rows(sv, s.S), ops::constant(eps));
      }
      Var lstar = ops::add(nn::routers::tile_rows(mv, s.S), noise);
      Var pbar = nn::routers::mean_over_samples(ops::softmax(lstar), s.S, N);
      auto tk = nn::topk_renormalised(pbar, s.K);
      auto w = randn<float>((size_t)(N * E), 11003);
      backward(pbar, tensor(w, pbar.shape()));
      // GPU
      Guarded<float> gm(mean), gs(scale), gp((size_t)(N * E)), gg((size_t)(N * s.K)), gw(w),
          gdm(std::vector<float>((size_t)(N * E), 0.f)), gds(std::vector<float>(scale.size(), 0.f));
      Guarded<int32_t> ge((size_t)(N * s.K));
      cu::vr_route_fwd(gm.data(), gs.data(), N, s.E, s.S, fc, seed, stream, s.K, gp.data(), ge.data(), gg.data());
      cu::vr_route_bwd(gm.data(), gs.data(), N, s.E, s.S, fc, seed, stream, gw.data(), gdm.data(), gds.data());
      auto want_p = pbar.value().to_vector();
      expect_close("vr pbar", gp.get(), want_p, 1e-5, 1e-6);
      auto gexp = ge.get();
      int64_t differ = check_topk_consistent("vr experts", want_p, gexp, tk.experts, N, s.E, s.K, 1e-5);
      CHECK(differ <= std::max<int64_t>(1, N / 50));
      if (differ == 0) expect_close("vr gates", gg.get(), tk.gates.value().to_vector(), 2e-5, 1e-6);
      auto want_dm = grad_of(mv), want_ds = grad_of(sv);
      expect_close("vr dmean", gdm.get(), want_dm, 1e-4, 1e-3 * std::max(1e-30, max_abs(want_dm)));
      expect_close(fc ? "vr dL" : "vr dsigma", gds.get(), want_ds, 1e-4, 1e-3 * std::max(1e-30, max_abs(want_ds)));
      CHECK_GUARDS(gp);
      CHECK_GUARDS(ge);
      CHECK_GUARDS(gg);
      CHECK_GUARDS(gdm);
      CHECK_GUARDS(gds);
    }
  }
}

// Past 48 KB of shared memory per block (3·E floats of dynamic memory, plus
// the kernel's static top-K values) vr_route_fwd opts in to more, up to the
// device's limit: E = 5000 without a top-K (60,000 bytes) runs and matches the
// CPU graph; E = 30,000 (360,000 bytes) fails with one clear vm::Error before
// launching. pbar: both sides' softmax sums over E terms (the CPU's left to
// right, depth E − 1; the GPU's over a warp, ⌈E/32⌉ + 4) plus the exps'
// arguments (|l − max| < 64 here): tolerance (E + ⌈E/32⌉ + 64)·u relative.
CUDA_CASE("cuda vr_route_fwd beyond 48 KB of shared memory: opts in and matches the CPU; past the device limit, a clear error") {
  const int64_t N = 3;
  const int E = 5000, S = 2;
  const uint64_t seed = 42, stream = 0xABCDEFULL;
  auto mean = randn<float>((size_t)(N * E), 11100, 1.5);
  auto scale = randu<float>((size_t)(N * E), 11101, 0.1, 1.5);
  VarT<float> mv = leaf(mean, {N, E}, false), sv = leaf(scale, {N, E}, false);
  Tensor eps = nn::routers::sample_normals(S, N, E, seed, stream, 0);  // the kernel's layout
  Var lstar = ops::add(nn::routers::tile_rows(mv, S), ops::mul(nn::routers::tile_rows(sv, S), ops::constant(eps)));
  Var pbar = nn::routers::mean_over_samples(ops::softmax(lstar), S, N);
  Guarded<float> gm(mean), gs(scale), gp((size_t)(N * E));
  cu::vr_route_fwd(gm.data(), gs.data(), N, E, S, false, seed, stream, 1, gp.data(), (int32_t*)nullptr, (float*)nullptr);
  const double tol = (double)(E + (E + 31) / 32 + 64) * std::ldexp(1.0, -24);
  expect_close("vr pbar E = 5000", gp.get(), pbar.value().to_vector(), tol, 1e-30);
  CHECK_GUARDS(gp);
  const int Ebig = 30000;
  Guarded<float> bm((size_t)Ebig), bs((size_t)Ebig), bp((size_t)Ebig);
  bool threw = false;
  try {
    cu::vr_route_fwd(bm.data(), bs.data(), 1, Ebig, 1, false, seed, stream, 1, bp.data(), (int32_t*)nullptr, (float*)nullptr);
  } catch (const vm::Error& e) {
    threw = true;
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("vr_route_fwd") != std::string::npos);
    CHECK(msg.find("shared memory") != std::string::npos);
    CHECK(msg.find("360000") != std::string::npos);
  }
  CHECK(threw);
  cu::synchronize();  // nothing was launched: the stream is still usable
}

// Closed-form KL per token vs the CPU graphs of
// variational_logits.cpp / vtsr.cpp. float 1e-5 / floor 1 (sums over E,
// expf/logf ulps); double 1e-12.
template <class T>
static void kl_case() {
  const bool f = std::is_same_v<T, float>;
  const double tol = f ? 1e-5 : 1e-12;
  const double s_prior = 0.8, s2 = s_prior * s_prior, logs2 = std::log(s2);
  for (int64_t N : {1, 7, 300}) {
    for (int E : {1, 8, 33, 64}) {
      CAPTURE(N);
      CAPTURE(E);
      auto dmu = randn<T>((size_t)(N * E), 12000, 0.5), lv = randn<T>((size_t)(N * E), 12001, 0.5);
      auto w = randn<T>((size_t)N, 12002);
      // MF (and lognormal: the same formula)
      VarT<T> dv = leaf(dmu, {N, (int64_t)E}), lvv = leaf(lv, {N, (int64_t)E});
      VarT<T> t = ops::add(ops::mul_scalar(ops::add(ops::exp(lvv), ops::square(dv)), 1.0 / s2), ops::neg(lvv));
      VarT<T> kl = ops::mul_scalar(ops::add_scalar(ops::sum(t, 1), (double)E * (logs2 - 1.0)), 0.5);
      backward(kl, tensor(w, kl.shape()));
      Guarded<T> gdmu(dmu), glv(lv), gkl((size_t)N), gw(w), gddmu(std::vector<T>((size_t)(N * E), T(0))),
          gdlv(std::vector<T>((size_t)(N * E), T(0)));
      cu::kl_mf_fwd(gdmu.data(), glv.data(), gkl.data(), N, E, s2);
      cu::kl_mf_bwd(gdmu.data(), glv.data(), gw.data(), gddmu.data(), gdlv.data(), N, E, s2);
      expect_close(std::string("kl_mf ") + tname<T>(), gkl.get(), kl.value().to_vector(), tol, 1.0);
      expect_close(std::string("kl_mf bwd dmu ") + tname<T>(), gddmu.get(), grad_of(dv), tol, 1.0);
      expect_close(std::string("kl_mf bwd logvar ") + tname<T>(), gdlv.get(), grad_of(lvv), tol, 1.0);
      CHECK_GUARDS(gkl);
      CHECK_GUARDS(gddmu);
      CHECK_GUARDS(gdlv);
      // FC
      std::vector<T> Lh((size_t)(N * E * E), T(0));
      auto r = randn<T>(Lh.size(), 12003, 0.3);
      for (int64_t n = 0; n < N; ++n)
        for (int i = 0; i < E; ++i)
          for (int j = 0; j <= i; ++j) {
            size_t at = (size_t)((n * E + i) * E + j);
            Lh[at] = i == j ? T(0.5) + std::abs(r[at]) : r[at];
          }
      VarT<T> dv2 = leaf(dmu, {N, (int64_t)E}), Lv = leaf(Lh, {N, (int64_t)E, (int64_t)E});
      VarT<T> trace = ops::sum(ops::reshape(ops::square(Lv), {N, (int64_t)E * E}), 1);
      VarT<T> t2 = ops::mul_scalar(ops::add(trace, ops::sum(ops::square(dv2), 1)), 1.0 / s2);
      t2 = ops::sub(t2, ops::mul_scalar(ops::sum_log_diag(Lv), 2.0));
      VarT<T> kl2 = ops::mul_scalar(ops::add_scalar(t2, (double)E * (logs2 - 1.0)), 0.5);
      backward(kl2, tensor(w, kl2.shape()));
      Guarded<T> gL(Lh), gkl2((size_t)N), gddmu2(std::vector<T>((size_t)(N * E), T(0))),
          gdL(std::vector<T>(Lh.size(), T(0)));
      cu::kl_fc_fwd(gdmu.data(), gL.data(), gkl2.data(), N, E, s2);
      cu::kl_fc_bwd(gdmu.data(), gL.data(), gw.data(), gddmu2.data(), gdL.data(), N, E, s2);
      expect_close(std::string("kl_fc ") + tname<T>(), gkl2.get(), kl2.value().to_vector(), tol, 1.0);
      expect_close(std::string("kl_fc bwd dmu ") + tname<T>(), gddmu2.get(), grad_of(dv2), tol, 1.0);
      expect_close(std::string("kl_fc bwd dL ") + tname<T>(), gdL.get(), grad_of(Lv), tol, 1.0);
      CHECK_GUARDS(gkl2);
      CHECK_GUARDS(gdL);
    }
  }
}

CUDA_CASE("cuda closed-form KL (MF/lognormal, FC) fwd+bwd") {
  kl_case<float>();
  kl_case<double>();
}

// Stochastic selection vs nn/routers/selection.cpp. Gumbel-top-K: the GPU's
// picks must be a valid top-K of the CPU's keys up to 2e-6 (Gumbels within a
// few ulp), at most 1% of rows differing. Sequential draw: exact (double
// weights; a flip needs u within an ulp of a CDF step).
CUDA_CASE("cuda gumbel_topk / sequential_sample vs the CPU selection") {
  struct S {
    int64_t N;
    int E, K;
  };
  for (S s : {S{1, 1, 1}, S{50, 8, 2}, S{1000, 64, 8}, S{7, 300, 16}}) {
    CAPTURE(s.N);
    CAPTURE(s.E);
    CAPTURE(s.K);
    const uint64_t seed = 7, stream = 1234567;
    auto z = randn<float>((size_t)(s.N * s.E), 13000, 2.0);
    std::vector<int32_t> want((size_t)(s.N * s.K)), want_seq((size_t)(s.N * s.K));
    nn::routers::gumbel_topk(z.data(), s.N, s.E, s.K, seed, stream, want.data());
    nn::routers::sequential_sample(z.data(), s.N, s.E, s.K, seed, stream, want_seq.data());
    std::vector<float> keys(z.size());
    for (int64_t i = 0; i < (int64_t)z.size(); ++i) keys[i] = z[i] + philox_gumbel(seed, stream, (uint64_t)i);
    Guarded<float> gz(z);
    Guarded<int32_t> go((size_t)(s.N * s.K)), gs((size_t)(s.N * s.K));
    cu::gumbel_topk(gz.data(), s.N, s.E, s.K, seed, stream, go.data());
    cu::sequential_sample(gz.data(), s.N, s.E, s.K, seed, stream, gs.data());
    int64_t differ = check_topk_consistent("gumbel_topk", keys, go.get(), want, s.N, s.E, s.K, 2e-6);
    CHECK(differ <= std::max<int64_t>(1, s.N / 100));
    expect_exact("sequential_sample", gs.get(), want_seq);
    CHECK_GUARDS(go);
    CHECK_GUARDS(gs);
  }
}

#endif  // VMOER_HAVE_CUDA
