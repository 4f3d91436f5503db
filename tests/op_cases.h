// tests/op_cases.h — ONE table of op cases that drives the finite-difference
// gradient checks and the float32-vs-reference parity checks
// (tests/test_ops.cpp) and the op micro-benchmarks (bench/bench_ops.cpp), in
// the manner of ggml's tests/test-backend-ops.cpp.
//
// A case lists its inputs (shape, value generator, whether it gets a
// gradient), a builder written once as a generic lambda (instantiated for
// VarT<float> and VarT<double>), an optional plain reference from
// kernels/cpu/reference.h and its tolerances. Integer arguments (ids, targets,
// indices) are inputs too, generated as non-negative integers stored in the
// tensor (never differentiated); the builder reduces them modulo the dimension
// they index, so every case also runs at its (larger) bench shape unchanged.
//
// Adding an op = one entry in op_cases() (tests/op_cases.cpp):
//   t.add("exp", "3x5").in({3, 5}).op([](const auto& x) { return ops::exp(x[0]); })
//    .ref([](const auto& x) { return ref::exp(x[0]); });
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "kernels/cpu/reference.h"

namespace vm::testing {

// Fills a tensor of a given shape with test values, deterministically from a seed.
using Gen = std::function<void(TensorD& t, uint64_t seed)>;
Gen normal(double scale = 1.0, double mean = 0.0);
Gen uniform(double lo, double hi);
Gen positive(double lo = 0.5, double hi = 2.0);           // for log, sqrt, pow, divisors
Gen away_from_zero(double margin = 0.2, double hi = 2.0);  // |x| in [margin, hi], random sign (relu kink)
// each last-axis row: distinct values >= gap apart, shuffled (topk); the
// smallest of a row at `lowest` (default: rows centred on a random shift)
Gen separated(double gap = 0.3, double lowest = std::nan(""));
Gen diag_positive(double lo = 0.5, double hi = 1.5);  // (N, E, E): normal, diagonal in [lo, hi] (log L_ee)
// Integer ids in [0, 2^20) stored as doubles: every odd position repeats the id
// before it (repeated ids); with ignore_every = m > 0 every m-th position is -1
// (mapped to ignore_index by cross-entropy cases); all_ignored: every id is -1.
Gen ids(int ignore_every = 0, bool all_ignored = false);

// An id input converted for an op: id % n (negative ids -> `negative`).
template <class T>
std::vector<int32_t> ids_of(const TensorT<T>& t_any_device, int64_t n, int32_t negative = -1) {
  const TensorT<T> t = t_any_device.to(Device::CPU);  // the CUDA column moves id inputs to the GPU too
  std::vector<int32_t> out((size_t)t.numel());
  for (int64_t i = 0; i < t.numel(); ++i)
    out[i] = t[i] < 0 ? negative : (int32_t)((int64_t)t[i] % n);
  return out;
}
template <class T>
std::vector<int32_t> ids_of(const VarT<T>& v, int64_t n, int32_t negative = -1) {
  return ids_of(v.value(), n, negative);
}
// Group boundaries for grouped_matmul: uneven groups, expert 1 empty when E >= 3.
std::vector<int64_t> group_offsets(int64_t M, int64_t E);

struct Input {
  Shape shape;
  Gen gen;
  bool grad = true;   // differentiable input (checked by finite differences); id inputs: false
  Shape bench_shape;  // shape in bench_ops (empty: same as shape)
};

template <class T>
using Builder = std::function<VarT<T>(const std::vector<VarT<T>>&)>;
using RefFn = std::function<TensorD(const std::vector<TensorD>&)>;
// For estimators whose backward is *defined* rather than derived
// (straight-through, constant): the expected gradient of every input, given
// the inputs and the output gradient w. Replaces finite differences.
using DefinedGradFn = std::function<std::vector<TensorD>(const std::vector<TensorD>& x, const TensorD& w)>;
// Work of one forward for bench_ops, from the input shapes; 0 = report bytes only.
using FlopsFn = std::function<double(const std::vector<Shape>&)>;

struct OpCase {
  std::string op;    // the op's name in autodiff/ops.h (coverage test)
  std::string name;  // "op/variant", unique
  std::vector<Input> inputs;
  Builder<float> build_f;
  Builder<double> build_d;
  RefFn reference;           // forward reference (empty: none, parity skipped)
  DefinedGradFn defined_grad;  // empty: the true derivative, checked by finite differences
  FlopsFn flops;

  // Tolerances. Errors are "relative with a floor": |got - want| / max(|want|, floor).
  double grad_tol = 1e-6;      // analytic vs finite-difference gradient, double
  double grad_floor = 1e-3;    // floor of the gradient error denominator
  double fd_step = 1e-4;       // h of the 4-point central stencil (error O(h^4) + O(eps/h))
  double f32_tol = 1e-5;       // float32 forward vs double reference (floor 1)
  double f64_tol = 1e-12;      // float64 forward vs double reference (floor 1)
  double f32_grad_tol = 1e-4;  // float32 gradient vs float64 gradient (floor 1)
  std::string note;            // why a tolerance is looser than the default
  bool bench = true;           // run in bench_ops
  bool backward_bench = true;  // time forward+backward in bench_ops

  bool has_grad_inputs() const {
    for (auto& in : inputs)
      if (in.grad) return true;
    return false;
  }
};

const std::vector<OpCase>& op_cases();

// Deterministic input values of a case (rounded to float precision, so the
// float path, the double path and the reference all see identical inputs).
std::vector<TensorD> make_inputs(const OpCase& c, bool bench_shapes, uint64_t seed = 1);
// Stable 64-bit hash of a string (seeds per case).
uint64_t hash_name(const std::string& s);

// Names of every op declared in autodiff/ops.h, parsed from the header text.
std::vector<std::string> ops_declared_in_header(const std::string& header_text);

}  // namespace vm::testing
