// bench/bench_gemm.cpp — GEMM at the model's real shapes (tokens 4096,
// d_model 256, d_ff 1024, the router's 8 experts) and the transposed products
// of their backward, at 1 and 2 threads: raw Eigen on Eigen-owned matrices vs
// kernels::gemm (Eigen maps over our buffers) vs ops::matmul (the autodiff op,
// output allocation included), against two ceilings measured here: the
// fp32 FMA peak of this build's widest vectors (bench/cpu_peak.h) and a large
// square Eigen GEMM. The target: our products at >= 80% of the FMA peak.
//
//   bench_gemm [--reps N] [--threads 1,2] [--tokens 4096]
// Target: ops::matmul within 10% of raw Eigen (ratio column >= 0.90).
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/omp_policy.h"
#include "bench/cpu_peak.h"
#include "kernels/cpu/gemm.h"

using namespace vm;
using MatR = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

int g_reps = 0;  // 0: adaptive

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Median seconds of fn over reps after a warm-up; adaptive reps aim at ~0.4 s.
double time_median(const std::function<void()>& fn) {
  fn();
  double t0 = now();
  fn();
  double one = std::max(now() - t0, 1e-6);
  int reps = g_reps > 0 ? g_reps : std::clamp((int)(0.4 / one), 5, 200);
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    double s = now();
    fn();
    ts.push_back(now() - s);
  }
  std::nth_element(ts.begin(), ts.begin() + ts.size() / 2, ts.end());
  return ts[ts.size() / 2];
}

// Medians of several variants timed in interleaved rounds (one rep of each
// per round, order rotated), so that load from other processes hits every
// variant alike and the ratios stay meaningful on a shared machine.
std::vector<double> time_interleaved(const std::vector<std::function<void()>>& fns) {
  double one = 0;
  for (auto& f : fns) {
    f();  // warm-up
    double t0 = now();
    f();
    one += std::max(now() - t0, 1e-6);
  }
  int reps = g_reps > 0 ? g_reps : std::clamp((int)(1.2 / one), 7, 200);
  std::vector<std::vector<double>> ts(fns.size());
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < fns.size(); ++i) {
      size_t k = (i + (size_t)r) % fns.size();
      double s = now();
      fns[k]();
      ts[k].push_back(now() - s);
    }
  std::vector<double> med;
  for (auto& t : ts) {
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    med.push_back(t[t.size() / 2]);
  }
  return med;
}

struct Shape3 {
  const char* what;
  int64_t M, N, K;
  bool ta, tb;
};

}  // namespace

int main(int argc, char** argv) {
  choose_omp_wait_policy(argv);  // as vmoer runs: passive unless OMP_WAIT_POLICY/GOMP_SPINCOUNT is set
  std::vector<int> threads = {1, 2};
  int64_t T = 4096, C = 256, F = 1024, E = 8;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) g_reps = std::atoi(argv[++i]);
    else if (a == "--tokens" && i + 1 < argc) T = std::atoll(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) {
      threads.clear();
      std::string s = argv[++i];
      for (size_t p = 0; p < s.size();) {
        size_t q = s.find(',', p);
        threads.push_back(std::atoi(s.substr(p, q - p).c_str()));
        p = q == std::string::npos ? s.size() : q + 1;
      }
    } else {
      std::printf("usage: bench_gemm [--reps N] [--threads 1,2] [--tokens 4096]\n");
      return 2;
    }
  }

  // C(M,N) = op(A) op(B); A stored (M,K) or (K,M) when ta, B stored (K,N) or (N,K) when tb.
  const std::vector<Shape3> shapes = {
      {"fwd  x·W_up      (T,C)·(C,F)", T, F, C, false, false},
      {"fwd  h·W_down    (T,F)·(F,C)", T, C, F, false, false},
      {"fwd  router      (T,C)·(C,E)", T, E, C, false, false},
      {"bwd  dX = G·W_upᵀ (T,F)·(C,F)ᵀ", T, C, F, false, true},
      {"bwd  dW_up = Xᵀ·G (T,C)ᵀ·(T,F)", C, F, T, true, false},
      {"bwd  dH = G·W_downᵀ (T,C)·(F,C)ᵀ", T, F, C, false, true},
      {"bwd  dW_down = Hᵀ·G (T,F)ᵀ·(T,C)", F, C, T, true, false},
  };

  std::printf("bench_gemm: float32, medians of interleaved reps after warm-up; Eigen %d.%d.%d, OpenMP max threads %d\n",
              EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, omp_get_max_threads());
  std::printf("cpu: %s\nomp wait policy: %s\n", bench::cpu_line().c_str(), omp_wait_policy());
  std::vector<double> fma(threads.size());
  for (size_t ti = 0; ti < threads.size(); ++ti) {
    fma[ti] = bench::fma_peak_gflops(threads[ti]);
    std::printf("measured fp32 FMA peak at %d thread(s): %7.1f GFLOP/s (%.1f per thread)\n", threads[ti], fma[ti],
                fma[ti] / threads[ti]);
  }

  // ---- a large square Eigen GEMM: what a good GEMM reaches here ----------------------------
  std::vector<double> peak(threads.size());
  {
    const int64_t n = 2048;
    MatR a = MatR::Random(n, n), b = MatR::Random(n, n), c(n, n);
    for (size_t ti = 0; ti < threads.size(); ++ti) {
      omp_set_num_threads(threads[ti]);
      double t = time_median([&] { c.noalias() = a * b; });
      peak[ti] = 2.0 * n * n * n / t * 1e-9;
      std::printf("Eigen %ldx%ld·%ldx%ld at %d thread(s): %7.1f GFLOP/s (%.0f%% of the FMA peak)\n", (long)n, (long)n,
                  (long)n, (long)n, threads[ti], peak[ti], 100 * peak[ti] / fma[ti]);
    }
  }

  std::printf("\n%-36s %3s %10s %10s %10s %8s %8s %8s %8s\n", "product", "thr", "Eigen", "gemm", "ops", "gemm/E",
              "ops/E", "E/sq", "gemm/FMA");
  std::printf("%-36s %3s %10s %10s %10s %8s %8s %8s %8s\n", "", "", "GFLOP/s", "GFLOP/s", "GFLOP/s", "", "", "", "");
  double worst_ratio = 1e9;
  for (const auto& s : shapes) {
    const int64_t ar = s.ta ? s.K : s.M, ac = s.ta ? s.M : s.K;
    const int64_t br = s.tb ? s.N : s.K, bc = s.tb ? s.K : s.N;
    MatR A = MatR::Random(ar, ac), B = MatR::Random(br, bc), Cm = MatR::Zero(s.M, s.N);
    Tensor tA({ar, ac}), tB({br, bc}), tC({s.M, s.N});
    std::memcpy(tA.data(), A.data(), sizeof(float) * A.size());
    std::memcpy(tB.data(), B.data(), sizeof(float) * B.size());
    const double flops = 2.0 * (double)s.M * (double)s.N * (double)s.K;
    for (size_t ti = 0; ti < threads.size(); ++ti) {
      omp_set_num_threads(threads[ti]);
      Var va(tA), vb(tB);
      std::vector<std::function<void()>> fns = {
          [&] {
            if (!s.ta && !s.tb) Cm.noalias() = A * B;
            else if (!s.ta && s.tb) Cm.noalias() = A * B.transpose();
            else if (s.ta && !s.tb) Cm.noalias() = A.transpose() * B;
            else Cm.noalias() = A.transpose() * B.transpose();
          },
          [&] { kernels::gemm(tC.data(), tA.data(), tB.data(), s.M, s.N, s.K, s.ta, s.tb, false); }};
      // ops::matmul only exists for the untransposed product (the transposed
      // ones run inside its backward, measured below).
      if (!s.ta && !s.tb)
        fns.push_back([&] {
          NoGradGuard ng;
          Var y = ops::matmul(va, vb);
        });
      auto med = time_interleaved(fns);
      double te = med[0], tg = med[1], to = med.size() > 2 ? med[2] : 0;
      double ge = flops / te * 1e-9, gg = flops / tg * 1e-9, go = to > 0 ? flops / to * 1e-9 : 0;
      if (to > 0) worst_ratio = std::min(worst_ratio, go / ge);
      char ops_col[16] = "         -", ratio_col[16] = "       -";
      if (to > 0) {
        std::snprintf(ops_col, sizeof ops_col, "%10.1f", go);
        std::snprintf(ratio_col, sizeof ratio_col, "%8.2f", go / ge);
      }
      std::printf("%-36s %3d %10.1f %10.1f %s %8.2f %s %8.2f %8.2f\n", s.what, threads[ti], ge, gg, ops_col, gg / ge,
                  ratio_col, ge / peak[ti], gg / fma[ti]);
    }
  }

  // ---- ops::matmul forward + backward (3 GEMMs) vs the same 3 GEMMs in raw Eigen ---------------------
  std::printf("\n%-36s %3s %10s %10s %8s\n", "matmul fwd+bwd (3 GEMMs)", "thr", "Eigen", "ops", "ops/E");
  for (auto [M, K, N, what] : std::vector<std::tuple<int64_t, int64_t, int64_t, const char*>>{
           {T, C, F, "(T,C)·(C,F) fwd+dX+dW"}, {T, F, C, "(T,F)·(F,C) fwd+dX+dW"}}) {
    MatR X = MatR::Random(M, K), W = MatR::Random(K, N), Y(M, N), G = MatR::Random(M, N), dX(M, K), dW(K, N);
    Tensor tX({M, K}), tW({K, N}), tG({M, N});
    std::memcpy(tX.data(), X.data(), sizeof(float) * X.size());
    std::memcpy(tW.data(), W.data(), sizeof(float) * W.size());
    std::memcpy(tG.data(), G.data(), sizeof(float) * G.size());
    const double flops = 3 * 2.0 * (double)M * (double)N * (double)K;
    for (int th : threads) {
      omp_set_num_threads(th);
      Var vx(tX, true), vw(tW, true);
      auto med = time_interleaved({[&] {
                                     Y.noalias() = X * W;
                                     dX.noalias() = G * W.transpose();
                                     dW.noalias() = X.transpose() * G;
                                   },
                                   [&] {
                                     vx.zero_grad();
                                     vw.zero_grad();
                                     Var y = ops::matmul(vx, vw);
                                     backward(y, tG);
                                   }});
      double te = med[0], to = med[1];
      double ge = flops / te * 1e-9, go = flops / to * 1e-9;
      worst_ratio = std::min(worst_ratio, go / ge);
      std::printf("%-36s %3d %10.1f %10.1f %8.2f\n", what, th, ge, go, go / ge);
    }
  }
  std::printf("\nworst ops/Eigen ratio: %.2f (target >= 0.90)\n", worst_ratio);
  return 0;
}
