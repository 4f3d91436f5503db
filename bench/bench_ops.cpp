// bench/bench_ops.cpp — micro-benchmarks of every op, driven by the same table
// as the gradient and parity tests (tests/op_cases.cpp), each case at its
// bench shape where one is given. Times forward (no graph) and forward +
// backward (median of adaptive reps after warm-up) in float32 and prints
// GFLOP/s where the case states its work, else GB/s of inputs + output.
//
//   bench_ops [substring ...] [--reps N] [--threads N] [--small] [--device cpu|cuda]
//   --small: the test shapes instead of the bench shapes
//   --device cuda: the same cases on device tensors (the kernels/cuda twins);
//   each timed call ends with a stream synchronisation.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "tests/op_cases.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif

using namespace vm;
using namespace vm::testing;

namespace {

int g_reps = 0;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double time_median(const std::function<void()>& fn) {
  fn();  // warm-up (allocator, caches, OpenMP pool)
  double t0 = now();
  fn();
  double one = std::max(now() - t0, 1e-7);
  int reps = g_reps > 0 ? g_reps : std::clamp((int)(0.25 / one), 3, 500);
  std::vector<double> ts;
  ts.reserve(reps);
  for (int r = 0; r < reps; ++r) {
    double s = now();
    fn();
    ts.push_back(now() - s);
  }
  std::nth_element(ts.begin(), ts.begin() + ts.size() / 2, ts.end());
  return ts[ts.size() / 2];
}

std::string shapes_of(const std::vector<TensorD>& xs) {
  std::string s;
  for (size_t i = 0; i < xs.size(); ++i) s += (i ? "," : "") + shape_str(xs[i].shape());
  return s;
}

std::string rate(double work, double seconds, bool flops) {
  char b[32];
  std::snprintf(b, sizeof b, "%8.1f %s", work / seconds * 1e-9, flops ? "GFLOP/s" : "GB/s   ");
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> filters;
  bool small = false;
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) g_reps = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) omp_set_num_threads(std::atoi(argv[++i]));
    else if (a == "--small") small = true;
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "-h" || a == "--help") {
      std::printf("usage: bench_ops [substring ...] [--reps N] [--threads N] [--small] [--device cpu|cuda]\n");
      return 0;
    } else filters.push_back(a);
  }
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "bench_ops: --device must be cpu or cuda, got '%s'\n", device.c_str());
    return 2;
  }
  const Device dev = device == "cuda" ? Device::CUDA : Device::CPU;
  auto sync = [dev] {
#ifdef VMOER_HAVE_CUDA
    if (dev == Device::CUDA) kernels::cuda::synchronize();
#endif
  };
  if (dev == Device::CUDA) {
#ifdef VMOER_HAVE_CUDA
    if (!kernels::cuda::cuda_device_available()) {
      std::printf("no CUDA device: bench_ops --device cuda not run\n");
      return 0;
    }
#else
    std::printf("no CUDA device (this build has no CUDA backend): bench_ops --device cuda not run\n");
    return 0;
#endif
  }
  std::printf("bench_ops: %zu cases in the op table, float32, %d thread(s), %s shapes, device %s\n",
              op_cases().size(), omp_get_max_threads(), small ? "test" : "bench", device.c_str());
  std::printf("%-38s %-34s %10s %-16s %10s %-16s\n", "case", "inputs", "fwd ms", "fwd rate", "f+b ms", "f+b rate");
  int run = 0;
  for (const auto& c : op_cases()) {
    if (!c.bench) continue;
    if (!filters.empty() &&
        std::none_of(filters.begin(), filters.end(), [&](const std::string& f) { return c.name.find(f) != std::string::npos; }))
      continue;
    auto xs = make_inputs(c, !small);
    std::vector<Var> consts, params;
    for (size_t i = 0; i < xs.size(); ++i) {
      consts.emplace_back(xs[i].cast<float>().to(dev), false);
      params.emplace_back(xs[i].cast<float>().to(dev), c.inputs[i].grad);
    }
    Tensor seed;
    double bytes = 0;
    {
      NoGradGuard ng;
      Var y = c.build_f(consts);
      seed = Tensor::full(y.shape(), 1.0f).to(dev);
      for (auto& x : xs) bytes += 4.0 * (double)x.numel();
      bytes += 4.0 * (double)y.numel();
    }
    std::vector<Shape> shapes;
    for (auto& x : xs) shapes.push_back(x.shape());
    double flops = c.flops ? c.flops(shapes) : 0.0;
    bool by_flops = flops > 0;

    double tf = time_median([&] {
      NoGradGuard ng;
      Var y = c.build_f(consts);
      sync();
    });
    double tb = 0;
    if (c.backward_bench) {
      tb = time_median([&] {
        for (auto& p : params) p.zero_grad();
        Var y = c.build_f(params);
        if (y.requires_grad()) backward(y, seed);
        sync();
      });
    }
    // forward+backward work: matmul-like ops do 3x their forward FLOPs; bytes roughly 3x too
    std::string fb_ms = "-", fb_rate = "";
    if (tb > 0) {
      char b[32];
      std::snprintf(b, sizeof b, "%10.3f", tb * 1e3);
      fb_ms = b;
      fb_rate = rate(3.0 * (by_flops ? flops : bytes), tb, by_flops);
    }
    std::printf("%-38s %-34s %10.3f %-16s %10s %-16s\n", c.name.c_str(), shapes_of(xs).c_str(), tf * 1e3,
                rate(by_flops ? flops : bytes, tf, by_flops).c_str(), fb_ms.c_str(), fb_rate.c_str());
    std::fflush(stdout);
    ++run;
  }
  std::printf("%d cases run\n", run);
  return 0;
}
