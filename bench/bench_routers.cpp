// bench/bench_routers.cpp — cost of Bayesian routing at evaluation: analytic
// FLOPs per token and measured wall time of a forward pass for each router at
// S samples, against `det`, in the same run (issue: "FLOPs and wall-time
// overhead of each router at S = 35 against det").
//
// usage: bench_routers [--d 128] [--d-expert 256] [--layers 4] [--experts 8] [--samples 35] [--reps 5]
//                      [--batch 16] [--seq 128] [--routers det,mfvr,...] [--device cpu|cuda]
//   The routers' forwards are interleaved (rep r times every router once, in
//   turn), so a change of machine load between routers hits them alike; the
//   table gives each router's median. --routers: a subset (det is always run,
//   as the reference). The standard configuration of docs/PERF.md:
//   --d 256 --d-expert 1024 --seq 256.
//   --device cuda: the same forwards on the GPU (each timed pass ends with a
//   stream synchronisation); mfvr/fcvr then run the fused S-sample kernel.
//   --d-expert defaults to 2·d; the FLOPs overhead depends on d_expert/d and
//   on the share of Bayesian layers, hardly on d itself.
//   Last line: the bulk normal generator (core/philox.h philox_normals), ns
//   per normal on one thread, for blocks of S·E normals (one token's ε).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/philox.h"
#include "experiments/flops.h"
#include "nn/transformer.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif

using namespace vm;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  int d = 128, d_expert = 0, layers = 4, experts = 8, samples = 35, reps = 5, B = 16, T = 128;
  std::string device = "cpu", routers;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--device") {
      device = argv[i + 1];
      continue;
    }
    if (a == "--routers") {
      routers = argv[i + 1];
      continue;
    }
    int v = std::atoi(argv[i + 1]);
    if (a == "--d") d = v;
    else if (a == "--d-expert") d_expert = v;
    else if (a == "--layers") layers = v;
    else if (a == "--experts") experts = v;
    else if (a == "--samples") samples = v;
    else if (a == "--reps") reps = v;
    else if (a == "--batch") B = v;
    else if (a == "--seq") T = v;
    else { std::fprintf(stderr, "bench_routers: unknown flag %s\n", a.c_str()); return 2; }
  }
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "bench_routers: --device must be cpu or cuda, got '%s'\n", device.c_str());
    return 2;
  }
  const Device dev = device == "cuda" ? Device::CUDA : Device::CPU;
#ifdef VMOER_HAVE_CUDA
  if (dev == Device::CUDA && !kernels::cuda::cuda_device_available()) {
    std::printf("no CUDA device: bench_routers --device cuda not run\n");
    return 0;
  }
#else
  if (dev == Device::CUDA) {
    std::printf("no CUDA device (this build has no CUDA backend): bench_routers --device cuda not run\n");
    return 0;
  }
#endif
  std::vector<std::string> wanted;
  {
    std::stringstream ss(routers);
    for (std::string w; std::getline(ss, w, ',');)
      if (!w.empty()) wanted.push_back(w);
  }
  nn::ModelConfig mc;
  mc.d_model = d;
  mc.n_layers = layers;
  mc.n_heads = 4;
  mc.n_experts = experts;
  mc.top_k = 2;
  mc.d_expert = d_expert > 0 ? d_expert : 2 * d;
  mc.max_seq = T;
  std::vector<int32_t> ids((size_t)B * T);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = (int32_t)(philox_u32(7, 0, i) % 256);
  std::vector<uint8_t> mask(ids.size(), 1);
  std::vector<int32_t> last;
  for (int b = 0; b < B; ++b) last.push_back(b * T + T - 1);
  std::printf("bench_routers: d=%d d_expert=%d layers=%d E=%d K=2 B=%d T=%d S=%d threads=%d device=%s; Bayesian layers {1, 2}; "
              "routers interleaved, median of %d\n",
              d, mc.d_expert, layers, experts, B, T, samples, omp_get_max_threads(), device.c_str(), reps);
  struct Entry {
    std::string name;
    std::unique_ptr<nn::Model> model;
    double flops = 0;
    std::vector<double> ms;
  };
  std::vector<Entry> es;
  for (size_t k = 0; k < enum_count<nn::RouterKind>(); ++k) {
    nn::RouterConfig rc;
    rc.name = (nn::RouterKind)k;
    if (rc.name != nn::RouterKind::det && !nn::router_info(rc.name).bayesian) continue;  // noisy routes as det here
    std::string name = rc.name.str();
    if (rc.name != nn::RouterKind::det && !wanted.empty() &&
        std::find(wanted.begin(), wanted.end(), name) == wanted.end())
      continue;
    rc.samples = samples;
    rc.bayes_layers = {1, 2};
    Entry e{name, std::make_unique<nn::Model>(mc, rc, 1), 0.0, {}};
    e.model->to(dev);
    e.flops = exp::flops_json(*e.model, T)["per_token"].get<double>();
    es.push_back(std::move(e));
  }
  NoGradGuard ng;
  nn::ForwardOptions fo;
  fo.samples = samples;
  for (int r = 0; r < reps + 1; ++r)
    for (Entry& e : es) {
      auto t0 = std::chrono::steady_clock::now();
      auto res = e.model->forward_lm(ids, B, T, mask, last, fo);
#ifdef VMOER_HAVE_CUDA
      if (dev == Device::CUDA) kernels::cuda::synchronize();
#endif
      double el = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) e.ms.push_back(el);  // the first round is warm-up
    }
  std::printf("%-11s %12s %10s %12s %10s\n", "router", "FLOPs/token", "vs det", "forward ms", "vs det");
  const double det_ms = median(es[0].ms), det_flops = es[0].flops;
  for (Entry& e : es) {
    const double m = median(e.ms);
    std::printf("%-11s %12.0f %+9.2f%% %12.2f %+9.2f%%\n", e.name.c_str(), e.flops, 100 * (e.flops / det_flops - 1), m,
                100 * (m / det_ms - 1));
  }
  // The normal generator alone: one token's S·E normals per call, one thread.
  {
    const int64_t blk = (int64_t)samples * experts, calls = std::max<int64_t>(1, (1 << 21) / blk);
    std::vector<float> z((size_t)blk);
    std::vector<double> ns;
    for (int r = 0; r < 5; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t c = 0; c < calls; ++c) philox_normals(3, 4, (uint64_t)(c * blk), (uint64_t)blk, z.data());
      ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
                   (double)(calls * blk));
    }
    std::printf("normals: %.2f ns/normal (philox_normals, blocks of S·E = %lld, one thread, median of 5)\n", median(ns),
                (long long)blk);
  }
  return 0;
}
