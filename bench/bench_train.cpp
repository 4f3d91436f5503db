// bench/bench_train.cpp — one training step (forward + loss + backward +
// AdamW) and inference tokens/s of our model on the standard config:
// d = 256, 4 layers, 4 heads, 8 experts of hidden size 1024, top-2, sequence
// 256, batch 16, MoE in every layer, vocab 259. The same work as
// reference/bench_twin.py does for the PyTorch twin; scripts/bench_train.sh
// runs both and prints the comparison.
//
//   loss = cross_entropy + 0.01 lb + 0.001 z;  AdamW lr 3e-4, betas 0.9/0.95,
//   wd 0.1 (none on norms), global-norm clip 1.0.
//
// GFLOP/s uses the analytic FLOPs of experiments/flops.h (forward per token:
// attention + experts + routers + head) times 3 for forward + backward.
// Threads: OMP_NUM_THREADS (the script sets 2). Prints a JSON line with --json.
// --device cuda runs the model on the GPU (det routing, the kernels/cuda twins);
// each timed step ends with a synchronising read (the loss / the stream), and
// --peak should then be the GPU's FP32 (non-tensor-core) peak. On the CPU
// the peak is measured (bench/cpu_peak.h: fp32 FMA throughput of this build's
// widest vectors on as many threads) unless --peak gives one.
// Memory: the process's peak RSS (getrusage) after the training steps and
// after inference, and the caching allocator's bytes (live at the peak, idle
// in its free lists): the twin reports its peak RSS the same way.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/omp_policy.h"
#include "bench/cpu_peak.h"
#include "core/philox.h"
#include "experiments/flops.h"
#include "nn/optim.h"
#include "nn/transformer.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#include "kernels/cuda/gemm.h"
#endif

using namespace vm;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  choose_omp_wait_policy(argv);  // as vmoer runs: passive unless OMP_WAIT_POLICY/GOMP_SPINCOUNT is set
  nn::ModelConfig mc;
  mc.kind = "lm";
  mc.vocab = 259;
  mc.max_seq = 256;
  mc.d_model = 256;
  mc.n_layers = 4;
  mc.n_heads = 4;
  mc.n_experts = 8;
  mc.top_k = 2;
  mc.d_expert = 1024;
  int B = 16, T = 256, warmup = 1, steps = 5, infer_steps = 3;
  double peak = 0;  // GFLOP/s; 0: measured (CPU), required for --device cuda
  bool json = false;
  std::string device = "cpu";
  bool tf32 = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_train: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (a == "--json") json = true;
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--tf32") tf32 = true;
    else if (a == "--d-model") mc.d_model = next();
    else if (a == "--layers") mc.n_layers = next();
    else if (a == "--heads") mc.n_heads = next();
    else if (a == "--experts") mc.n_experts = next();
    else if (a == "--d-expert") mc.d_expert = next();
    else if (a == "--top-k") mc.top_k = next();
    else if (a == "--seq") mc.max_seq = T = next();
    else if (a == "--batch") B = next();
    else if (a == "--vocab") mc.vocab = next();
    else if (a == "--warmup") warmup = next();
    else if (a == "--steps") steps = std::max(1, next());
    else if (a == "--infer-steps") infer_steps = std::max(1, next());
    else if (a == "--peak") peak = std::max(1, next());
    else {
      std::fprintf(stderr,
                   "usage: bench_train [--json] [--device cpu|cuda] [--tf32] [--d-model N] [--layers N] [--heads N] [--experts N] [--d-expert N]\n"
                   "                   [--top-k N] [--seq N] [--batch N] [--vocab N] [--warmup N] [--steps N]\n"
                   "                   [--infer-steps N] [--peak GFLOPS]\n");
      return 2;
    }
  }
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "bench_train: --device must be cpu or cuda, got '%s'\n", device.c_str());
    return 2;
  }
  Device dev = device == "cuda" ? Device::CUDA : Device::CPU;
#ifdef VMOER_HAVE_CUDA
  if (dev == Device::CUDA && !kernels::cuda::cuda_device_available()) {
    std::printf("no CUDA device: bench_train --device cuda not run\n");
    return 0;
  }
  if (dev == Device::CUDA) kernels::cuda::set_allow_tf32(tf32);
#else
  if (dev == Device::CUDA) {
    std::printf("no CUDA device (this build has no CUDA backend): bench_train --device cuda not run\n");
    return 0;
  }
#endif
  nn::RouterConfig rc;
  nn::Model model(mc, rc, 1);
  model.to(dev);
  nn::AdamWConfig oc;
  oc.lr = 3e-4;
  oc.total_steps = 1000;
  nn::AdamW opt(oc);

  int64_t N = (int64_t)B * T;
  std::vector<int32_t> ids(N), targets(N);
  for (int64_t i = 0; i < N; ++i) {
    ids[i] = (int32_t)(philox_u32(1, 2, (uint64_t)i) % (uint32_t)mc.vocab);
    targets[i] = (int32_t)(philox_u32(1, 3, (uint64_t)i) % (uint32_t)mc.vocab);
  }
  std::vector<uint8_t> mask(N, 1);

  size_t live_after_fwd = 0;  // allocator bytes live when the forward is done: what backward keeps
  auto train_step = [&](uint64_t step) {
    model.params().zero_grad();
    nn::ForwardOptions fo;
    fo.training = true;
    fo.step = step;
    auto res = model.forward_lm(ids, B, T, mask, {}, fo);
    Var loss = ops::add(ops::add(ops::cross_entropy(res.logits, targets), ops::mul_scalar(res.lb_loss, 0.01)),
                        ops::mul_scalar(res.z_loss, 0.001));
    live_after_fwd = std::max(live_after_fwd, pool_stats().live);
    backward(loss);
    opt.step(model.params());
    return (double)loss.item();
  };

  std::vector<double> times;
  double last_loss = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    double t0 = now_s();
    last_loss = train_step((uint64_t)s);
    if (s >= warmup) times.push_back(now_s() - t0);
  }
  const double rss_train = bench::peak_rss_mib();
  const PoolStats pool_train = pool_stats();
  std::vector<double> itimes;
  {
    NoGradGuard ng;
    nn::ForwardOptions fo;
    for (int s = 0; s < infer_steps + 1; ++s) {
      double t0 = now_s();
      auto res = model.forward_lm(ids, B, T, mask, {}, fo);
#ifdef VMOER_HAVE_CUDA
      if (dev == Device::CUDA) kernels::cuda::synchronize();
#endif
      if (s > 0) itimes.push_back(now_s() - t0);  // first one is warm-up
    }
  }
  double tr = median(times), inf = median(itimes);
  exp::ModelFlops f = exp::model_flops(mc, rc, {}, T);
  double step_gflop = 3.0 * f.total() * (double)N / 1e9;
  double gflops = step_gflop / tr;
  double infer_gflops = f.total() * (double)N / 1e9 / inf;
  int threads = omp_get_max_threads();
  const double rss_all = bench::peak_rss_mib();
  std::string peak_src = "given (--peak)";
  if (peak <= 0 && dev == Device::CPU) {
    peak = bench::fma_peak_gflops(threads);
    peak_src = "measured fp32 FMA peak, " + std::to_string(threads) + " thread(s), " + bench::build_vector_isa();
  } else if (peak <= 0) {
    peak = 0;
    peak_src = "unknown (pass --peak for a GPU)";
  }
  const std::string cpu = bench::cpu_line();
  auto pct = [&](double g) { return peak > 0 ? 100 * g / peak : 0.0; };
  if (json) {
    std::printf(
        "{\"impl\":\"ours\",\"device\":\"%s\",\"threads\":%d,\"tokens_per_step\":%lld,\"train_ms\":%.3f,\"train_tokens_per_s\":%.1f,"
        "\"infer_ms\":%.3f,\"infer_tokens_per_s\":%.1f,\"fwd_flops_per_token\":%.0f,\"step_gflop\":%.3f,"
        "\"train_gflops\":%.2f,\"infer_gflops\":%.2f,\"peak_gflops\":%.1f,\"peak_source\":\"%s\",\"cpu\":\"%s\",\"omp_wait_policy\":\"%s\","
        "\"peak_rss_mib_train\":%.1f,\"peak_rss_mib\":%.1f,\"pool_live_after_forward_mib\":%.1f,\"pool_peak_live_mib\":%.1f,\"pool_cached_mib_after_train\":%.1f,"
        "\"params\":%lld,\"loss\":%.4f,\"train_ms_all\":[",
        device.c_str(), threads, (long long)N, tr * 1e3, (double)N / tr, inf * 1e3, (double)N / inf, f.total(), step_gflop, gflops,
        infer_gflops, peak, peak_src.c_str(), cpu.c_str(), omp_wait_policy(), rss_train, rss_all, live_after_fwd / 1048576.0, pool_train.peak_live / 1048576.0,
        pool_train.cached / 1048576.0, (long long)model.params().count(), last_loss);
    for (size_t i = 0; i < times.size(); ++i) std::printf("%s%.3f", i ? "," : "", times[i] * 1e3);
    std::printf("]}\n");
  } else {
    std::printf("config: d=%d L=%d H=%d E=%d F=%d K=%d T=%d B=%d vocab=%d, %lld params, %d threads, device %s\n",
                mc.d_model, mc.n_layers, mc.n_heads, mc.n_experts, mc.d_expert, mc.top_k, T, B, mc.vocab,
                (long long)model.params().count(), threads, device.c_str());
    std::printf("train step : %9.1f ms  (median of %d, warm-up %d)  %9.0f tokens/s\n", tr * 1e3, steps, warmup,
                (double)N / tr);
    std::printf("inference  : %9.1f ms  (median of %d)             %9.0f tokens/s\n", inf * 1e3, infer_steps,
                (double)N / inf);
    std::printf("analytic   : %.2f MFLOP/token forward, %.1f GFLOP/step (3x forward)\n", f.total() / 1e6, step_gflop);
    std::printf("cpu        : %s\n", cpu.c_str());
    std::printf("omp wait   : %s\n", omp_wait_policy());
    std::printf("throughput : train %.1f GFLOP/s, inference %.1f GFLOP/s  (%.0f%% / %.0f%% of %.0f GFLOP/s: %s)\n",
                gflops, infer_gflops, pct(gflops), pct(infer_gflops), peak, peak_src.c_str());
    std::printf("memory     : peak RSS %.0f MiB after training, %.0f MiB after inference; allocator: %.0f MiB live after the "
                "forward (kept for backward, parameters and optimizer state included), %.0f MiB live at most, %.0f MiB idle after training\n",
                rss_train, rss_all, live_after_fwd / 1048576.0, pool_train.peak_live / 1048576.0, pool_train.cached / 1048576.0);
  }
  return 0;
}
