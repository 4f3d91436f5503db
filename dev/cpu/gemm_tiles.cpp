// dev/cpu/gemm_tiles.cpp — the GEMM engines side by side on the model's
// products, one thread: every tile of kernels::gemm_tiling(M, N, K) computed
// by (a) the serial BLIS as kernels/cpu/gemm.cpp called it before and (b)
// our packed kernel (kernels/cpu/gemm_packed.h), interleaved, medians; and
// the largest difference between the two results (they sum in different
// orders, so they agree to rounding, not bit for bit). Not part of the build:
//
//   g++ -O3 -march=native -fno-tree-slp-vectorize -fno-trapping-math -fopenmp -std=c++20 \
//       -DVMOER_HAVE_BLIS=1 -I. -I/usr/include/eigen3 \
//       -I/usr/include/x86_64-linux-gnu/blis-serial dev/cpu/gemm_tiles.cpp kernels/cpu/gemm.cpp \
//       /usr/lib/x86_64-linux-gnu/blis-serial/libblis.so -o /tmp/gemm_tiles
//   /tmp/gemm_tiles [reps]          (add -march=x86-64-v3 for the AVX2 kernel)
#include <blis.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench/cpu_peak.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_packed.h"

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Shape {
  const char* name;
  int64_t M, N, K;
  bool ta, tb;
};

// Every tile of C = op(A) op(B) by one engine, serially.
void run(int engine, float* C, const float* A, const float* B, const Shape& s) {
  const auto g = vm::kernels::gemm_tiling(s.M, s.N, s.K);
  for (int64_t t = 0; t < g.tm * g.tn; ++t) {
    const int64_t i0 = (t / g.tn) * g.mb, j0 = (t % g.tn) * g.nb;
    const int64_t m = std::min(g.mb, s.M - i0), n = std::min(g.nb, s.N - j0);
    float* c = C + i0 * s.N + j0;
    const float* a = s.ta ? A + i0 : A + i0 * s.K;
    const int64_t lda = s.ta ? s.M : s.K;
    const float* b = s.tb ? B + j0 * s.K : B + j0;
    const int64_t ldb = s.tb ? s.K : s.N;
    const inc_t rsa = s.ta ? 1 : lda, csa = s.ta ? lda : 1, rsb = s.tb ? 1 : ldb, csb = s.tb ? ldb : 1;
    if (engine == 0) {
      float one = 1, zero = 0;
      bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, s.K, &one, const_cast<float*>(a), rsa, csa,
                const_cast<float*>(b), rsb, csb, &zero, c, s.N, 1);
    } else {
      vm::kernels::packed::gemm_tile(c, s.N, 1, a, rsa, csa, b, rsb, csb, m, n, s.K, false);
    }
  }
}
}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  const int64_t T = 4096, C = 256, F = 1024, E = 8;
  const Shape shapes[] = {
      {"fwd  x·W_up       (T,C)·(C,F) ", T, F, C, false, false}, {"fwd  h·W_down     (T,F)·(F,C) ", T, C, F, false, false},
      {"fwd  router       (T,C)·(C,E) ", T, E, C, false, false}, {"bwd  dX=G·W_upᵀ   (T,F)·(C,F)ᵀ", T, C, F, false, true},
      {"bwd  dW_up=Xᵀ·G   (T,C)ᵀ·(T,F)", C, F, T, true, false},  {"bwd  dH=G·W_downᵀ (T,C)·(F,C)ᵀ", T, F, C, false, true},
      {"bwd  dW_down=Hᵀ·G (T,F)ᵀ·(T,C)", F, C, T, true, false},
  };
  omp_set_num_threads(1);
  const double peak = vm::bench::fma_peak_gflops(1);
  std::printf("cpu: %s | packed kernel %dx%d, kc %lld | FMA peak 1 thread %.1f GFLOP/s\n",
              vm::bench::cpu_line().c_str(), vm::kernels::packed::kMR,
              vm::kernels::packed::kNR, (long long)vm::kernels::packed::kKC, peak);
  std::printf("%-34s %9s %9s %7s %7s %7s %10s\n", "product", "BLIS", "packed", "pk/BLIS", "BLIS/pk", "pk/FMA",
              "max|d|/|C|");
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (const Shape& s : shapes) {
    std::vector<float> A(s.M * s.K), B(s.K * s.N), C0(s.M * s.N), C1(s.M * s.N);
    for (auto& x : A) x = nd(rng);
    for (auto& x : B) x = nd(rng);
    std::vector<double> t[2];
    for (int r = 0; r < reps + 1; ++r)
      for (int e0 = 0; e0 < 2; ++e0) {
        const int e = (r + e0) % 2;
        const double t0 = now();
        run(e, e ? C1.data() : C0.data(), A.data(), B.data(), s);
        if (r) t[e].push_back(now() - t0);
      }
    double md = 0, mc = 0;
    for (size_t i = 0; i < C0.size(); ++i) md = std::max(md, (double)std::fabs(C0[i] - C1[i])), mc = std::max(mc, (double)std::fabs(C0[i]));
    const double fl = 2.0 * s.M * s.N * s.K * 1e-9;
    for (auto& v : t) std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    const double gb = fl / t[0][t[0].size() / 2], gp = fl / t[1][t[1].size() / 2];
    std::printf("%-34s %9.1f %9.1f %7.2f %7s %7.2f %10.2e\n", s.name, gb, gp, gp / gb, "", gp / peak, md / mc);
  }
}
