// kernels/cpu/gemm.cpp — the deterministic tiled GEMM (see gemm.h for the
// promise). Each tile is one single-threaded product. In fp32 (the model's
// products) that is our packed kernel (kernels/cpu/gemm_packed.h; any AVX2 +
// FMA build) unless the product is narrower than its register block (the
// router's (T,C)·(C,E)) and BLIS is there; otherwise, and in fp64, one of:
//   * BLIS (VMOER_HAVE_BLIS; Debian's serial libblis): bli_?gemm on the
//     tile, strides passed as they are (no copies). Its block sizes are
//     constants of the sub-configuration it selects from the CPU at start-up
//     (zen3 on the project's Zen 3 and Zen 4 machines alike), never read
//     from the caches; the serial library runs on the calling thread.
//   * otherwise Eigen's single-threaded GEBP driver
//     (internal::general_matrix_matrix_product, the routine behind
//     `c += a * b`) with a blocking we fix, so Eigen's OpenMP path and its
//     cache-size detection never decide how a sum is formed.
// Why BLIS: docs/PERF.md "GEMM engine" (Eigen reached ~65-70% of the FMA
// peak on the model's shapes, BLIS 81-92% on most of them). Why the packed
// kernel over BLIS in fp32: docs/PERF.md "Packed GEMM".
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_packed.h"
#include "kernels/gemm_groups.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cstring>
#include <type_traits>
#ifdef VMOER_HAVE_BLIS
#include <blis.h>
#endif

namespace vm::kernels {

namespace {

using Eigen::Index;
namespace ei = Eigen::internal;

// The cache sizes the blocking assumes, pinned for every machine (the smallest
// of the project's CPUs: Zen 3 has 32 KiB L1d and 512 KiB L2 per core). Eigen
// would read the detected sizes instead, so the bits would follow the cache.
constexpr Index kL1 = 32 * 1024;
constexpr Index kL2 = 512 * 1024;
constexpr Index kActualL2 = 1572864;  // Eigen's fixed "1.5 MB" second-level budget

// A level-3 blocking with the block sizes we chose; the packing buffers are
// left null, so Eigen's driver allocates them for the duration of the call.
template <class T>
struct FixedBlocking : ei::level3_blocking<T, T> {
  FixedBlocking(Index kc, Index mc, Index nc) {
    this->m_kc = kc;
    this->m_mc = mc;
    this->m_nc = nc;
  }
};

// Eigen 3.4's single-threaded blocking heuristic
// (GeneralBlockPanelKernel.h, evaluateProductBlockingSizesHeuristic) with the
// pinned cache sizes above. Problem in Eigen's column-major terms: m rows of
// the result (the mr direction), n columns, depth k. Only kc changes the
// arithmetic (the reduction is summed kc terms at a time); mc and nc only
// change the speed.
template <class T>
void blocking_sizes(Index& k, Index& m, Index& n) {
  using Traits = ei::gebp_traits<T, T>;
  Index l1 = kL1;
#ifdef EIGEN_VECTORIZE_AVX512
  l1 *= 4;  // as Eigen does under AVX-512 (its "-20% without it" note)
#endif
  if (std::max(k, std::max(m, n)) < 48) return;
  constexpr Index k_peeling = 8;
  constexpr Index k_div = Traits::mr * sizeof(T) + Traits::nr * sizeof(T);
  constexpr Index k_sub = Traits::mr * Traits::nr * sizeof(T);
  const Index max_kc = std::max<Index>(((l1 - k_sub) / k_div) & ~(k_peeling - 1), 1);
  const Index old_k = k;
  if (k > max_kc)
    k = (k % max_kc) == 0 ? max_kc : max_kc - k_peeling * ((max_kc - 1 - (k % max_kc)) / (k_peeling * (k / max_kc + 1)));
  Index max_nc;
  const Index lhs_bytes = m * k * (Index)sizeof(T);
  const Index remaining_l1 = l1 - k_sub - lhs_bytes;
  if (remaining_l1 >= Index(Traits::nr * sizeof(T)) * k) max_nc = remaining_l1 / (k * (Index)sizeof(T));
  else max_nc = (3 * kActualL2) / (2 * 2 * max_kc * (Index)sizeof(T));
  Index nc = std::min<Index>(kActualL2 / (2 * k * (Index)sizeof(T)), max_nc) & ~(Index(Traits::nr) - 1);
  if (nc < Traits::nr) nc = Traits::nr;
  if (n > nc) {
    n = (n % nc) == 0 ? nc : (nc - Traits::nr * ((nc - (n % nc)) / (Traits::nr * (n / nc + 1))));
  } else if (old_k == k) {
    const Index problem_size = k * n * (Index)sizeof(T);
    Index actual_lm = kActualL2, max_mc = m;
    if (problem_size <= 1024) {
      actual_lm = l1;
    } else if (problem_size <= 32768) {
      actual_lm = kL2;
      max_mc = std::min<Index>(576, max_mc);
    }
    Index mc = std::min<Index>(actual_lm / (3 * k * (Index)sizeof(T)), max_mc);
    if (mc > Traits::mr) mc -= mc % Traits::mr;
    else if (mc == 0) return;
    m = (m % mc) == 0 ? mc : (mc - Traits::mr * ((mc - (m % mc)) / (Traits::mr * (m / mc + 1))));
  }
}

// One tile: C[0:m, 0:n] (+)= op(A) op(B) on the calling thread, C row-major
// with row stride ldc; A, B point at the tile's first row / column. TA, TB as
// stored: A is (m,K) row-major (lda = K) or, transposed, (K, ·) row-major
// read as column-major (lda = its row length); likewise B.
template <class T, bool TA, bool TB>
void tile_product(T* C, Index ldc, const T* A, Index lda, const T* B, Index ldb, Index m, Index n, Index K) {
  // Eigen's row-major-destination driver transposes the problem: in its
  // column-major view the result has n rows (the mr direction) and m columns.
  Index kc = K, mc = n, nc = m;
  blocking_sizes<T>(kc, mc, nc);
  FixedBlocking<T> blocking(kc, mc, nc);
  ei::general_matrix_matrix_product<Index, T, TA ? Eigen::ColMajor : Eigen::RowMajor, false, T,
                                    TB ? Eigen::ColMajor : Eigen::RowMajor, false, Eigen::RowMajor,
                                    1>::run(m, n, K, A, lda, B, ldb, C, 1, ldc, T(1), blocking, nullptr);
}

#ifdef VMOER_HAVE_BLIS
// One tile by BLIS: C[0:m, 0:n] = op(A) op(B) (beta 0: C is not read) or
// += (beta 1), with every operand described by its row and column strides:
//   op(A)(i, k) = A[i·lda + k]      (row-major (m,K))         or, ta,
//               = A[k·lda + i]      (stored (K,·), read down a column);
//   op(B)(k, j) = B[k·ldb + j]      or, tb, B[j·ldb + k];  C(i, j) = C[i·ldc + j].
template <class T>
void blis_product(T* C, Index ldc, const T* A, Index lda, const T* B, Index ldb, Index m, Index n, Index K, bool ta,
                  bool tb, bool accumulate) {
  const inc_t rsa = ta ? 1 : lda, csa = ta ? lda : 1;
  const inc_t rsb = tb ? 1 : ldb, csb = tb ? ldb : 1;
  T one = T(1), beta = accumulate ? T(1) : T(0);
  if constexpr (std::is_same_v<T, float>)
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, K, &one, const_cast<T*>(A), rsa, csa, const_cast<T*>(B), rsb,
              csb, &beta, C, ldc, 1);
  else
    bli_dgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, K, &one, const_cast<T*>(A), rsa, csa, const_cast<T*>(B), rsb,
              csb, &beta, C, ldc, 1);
}
#endif

template <class T>
void product(T* C, Index ldc, const T* A, Index lda, const T* B, Index ldb, Index m, Index n, Index K, bool ta,
             bool tb) {
  if (!ta && !tb) tile_product<T, false, false>(C, ldc, A, lda, B, ldb, m, n, K);
  else if (ta && !tb) tile_product<T, true, false>(C, ldc, A, lda, B, ldb, m, n, K);
  else if (!ta && tb) tile_product<T, false, true>(C, ldc, A, lda, B, ldb, m, n, K);
  else tile_product<T, true, true>(C, ldc, A, lda, B, ldb, m, n, K);
}

// Rows [i0, i0+m) x columns [j0, j0+n) of C (row stride N) = op(A) op(B) over
// the whole K, zeroed first unless accumulating.
template <class T>
void run_block(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool ta, bool tb, bool accumulate,
               int64_t i0, int64_t m, int64_t j0, int64_t n) {
  T* c = C + i0 * N + j0;
  // op(A) rows i0..: A (M,K) row-major, or stored (K,M): column-major (M,K) with stride M.
  const T* a = ta ? A + i0 : A + i0 * K;
  const Index lda = ta ? M : K;
  // op(B) columns j0..: B (K,N) row-major, or stored (N,K): column-major (K,N) with stride K.
  const T* b = tb ? B + j0 * K : B + j0;
  const Index ldb = tb ? K : N;
#ifdef VMOER_PACKED_GEMM
  if constexpr (std::is_same_v<T, float>) {
#ifdef VMOER_HAVE_BLIS
    if (!packed::narrow(m, n))  // BLIS keeps the narrow ones (docs/PERF.md "Packed GEMM")
#endif
    {
      packed::gemm_tile(c, N, 1, a, ta ? 1 : lda, ta ? lda : 1, b, tb ? 1 : ldb, tb ? ldb : 1, m, n, K, accumulate);
      return;
    }
  }
#endif
#ifdef VMOER_HAVE_BLIS
  blis_product<T>(c, N, a, lda, b, ldb, m, n, K, ta, tb, accumulate);  // beta 0 writes C: no zero fill
#else
  if (!accumulate)
    for (int64_t i = 0; i < m; ++i) std::memset(c + i * N, 0, sizeof(T) * (size_t)n);
  product<T>(c, N, a, lda, b, ldb, m, n, K, ta, tb);
#endif
}

constexpr int64_t round_up(int64_t x, int64_t q) { return (x + q - 1) / q * q; }

}  // namespace

GemmTiling gemm_tiling(int64_t M, int64_t N, int64_t K) {
  // How many tiles: enough to share among 2, 3, 4, 6 or 12 threads in equal
  // numbers, each of at least ~1M multiply-adds.
  const double work = (double)M * (double)N * (double)K;
  constexpr double kMinTileWork = double(1 << 20);
  int64_t want = 1;
  for (int64_t t : {2, 4, 6, 12})
    if (work >= (double)t * kMinTileWork) want = t;
  auto make = [&](int64_t tm, int64_t tn) {
    constexpr int64_t kAlign = 16;  // a whole number of SIMD packets (float AVX-512, double AVX2) per cut
    GemmTiling g{round_up((M + tm - 1) / tm, kAlign), round_up((N + tn - 1) / tn, kAlign), 1, 1};
    g.mb = std::min(g.mb, M);
    g.nb = std::min(g.nb, N);
    g.tm = (M + g.mb - 1) / g.mb;
    g.tn = (N + g.nb - 1) / g.nb;
    return g;
  };
  if (want == 1 || M == 0 || N == 0) return GemmTiling{M, N, 1, 1};
  // Every tile repacks its slices of op(A) and op(B), a cost of about
  // (1/rows + 1/cols) of the product: bench_gemm lost ~15% on the weight
  // gradients with 64-wide tiles, and is within a few percent of Eigen's own
  // multi-threaded product with tiles of 192 and more (docs/PERF.md).
  // 1. The most tiles (up to `want`) whose sides all stay >= 192 (or span the
  //    whole dimension), rows cut first (a row cut needs no alignment to
  //    Eigen's register block mr, which runs along the columns here).
  constexpr int64_t kWide = 192, kNarrow = 32;
  for (int64_t c : {12, 6, 4, 2}) {
    if (c > want) continue;
    for (int64_t tm = c; tm >= 1; --tm) {
      if (c % tm) continue;
      const int64_t tn = c / tm;
      if ((tm == 1 || M / tm >= kWide) && (tn == 1 || N / tn >= kWide)) return make(tm, tn);
    }
  }
  // 2. A narrow product (e.g. a 256 x 256 weight gradient over 4096 tokens):
  //    still min(want, 4) tiles so that two to four threads share it, cut the
  //    way that repacks least, sides >= 32.
  for (int64_t c : {4, 2}) {
    if (c > want) continue;
    int64_t best_tm = 0;
    double best = 1e300;
    for (int64_t tm = 1; tm <= c; ++tm) {
      if (c % tm) continue;
      const int64_t tn = c / tm;
      if (!((tm == 1 || M / tm >= kNarrow) && (tn == 1 || N / tn >= kNarrow))) continue;
      const double cost = (double)tm / (double)M + (double)tn / (double)N;
      if (cost < best) best = cost, best_tm = tm;
    }
    if (best_tm) return make(best_tm, c / best_tm);
  }
  return GemmTiling{M, N, 1, 1};
}

// Empty, vector-shaped and tiny products: done here, true returned. Empty
// ones only zero C (unless accumulating); vector-shaped and tiny ones take
// Eigen's own single-threaded paths (GEMV; the coefficient-based product
// below its threshold of 20), as `c.noalias() += a * b` did before; neither
// is ever parallel in Eigen.
template <class T>
static bool small_path(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
                       bool accumulate) {
  if (M == 0 || N == 0) return true;
  if (K == 0) {
    if (!accumulate) std::memset(C, 0, sizeof(T) * (size_t)(M * N));
    return true;
  }
  if (!(M == 1 || N == 1 || M + N + K < 20)) return false;
  using MatR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<MatR> c(C, M, N);
  Eigen::Map<const MatR> a(A, transA ? K : M, transA ? M : K);
  Eigen::Map<const MatR> b(B, transB ? N : K, transB ? K : N);
  if (!accumulate) c.setZero();
  if (!transA && !transB) c.noalias() += a * b;
  else if (transA && !transB) c.noalias() += a.transpose() * b;
  else if (!transA && transB) c.noalias() += a * b.transpose();
  else c.noalias() += a.transpose() * b.transpose();
  return true;
}

template <class T>
void gemm_single(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
                 bool accumulate) {
  if (small_path(C, A, B, M, N, K, transA, transB, accumulate)) return;
  run_block(C, A, B, M, N, K, transA, transB, accumulate, 0, M, 0, N);
}

template <class T>
void gemm(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
          bool accumulate) {
  if (small_path(C, A, B, M, N, K, transA, transB, accumulate)) return;
  const GemmTiling g = gemm_tiling(M, N, K);
  const int64_t tiles = g.tm * g.tn;
  auto tile = [&](int64_t t) {
    const int64_t i0 = (t / g.tn) * g.mb, j0 = (t % g.tn) * g.nb;
    run_block(C, A, B, M, N, K, transA, transB, accumulate, i0, std::min(g.mb, M - i0), j0, std::min(g.nb, N - j0));
  };
  // Dynamic: a thread slowed by other load takes fewer tiles; which thread
  // computes a tile never changes its bits.
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1 && !omp_in_parallel())
  for (int64_t t = 0; t < tiles; ++t) tile(t);
}

template <class T>
void gemm_strided_batched(T* C, const T* A, const T* B, int64_t batch, int64_t M, int64_t N, int64_t K,
                          bool transA, bool transB, bool accumulate, int64_t strideA, int64_t strideB,
                          int64_t strideC) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < batch; ++i)  // one product per batch entry, each on one thread
    gemm_single(C + i * strideC, A + i * strideA, B + i * strideB, M, N, K, transA, transB, accumulate);
}

// One expert after another; each GEMM's tiles use the whole OpenMP pool.
template <class T>
void grouped_gemm(T* out, const T* x, const T* w, const std::vector<int64_t>& offsets, int64_t C, int64_t F) {
  // one product per non-empty group (kernels/gemm_groups.h), in group order
  for (const auto& p : grouped_gemm_problems(out, x, w, offsets, C, F))
    gemm(p.C, p.A, p.B, p.M, p.N, p.K, p.transA, p.transB, p.accumulate);
}

template <class T>
void grouped_gemm_bwd(const T* x, const T* w, const T* g, T* dx, T* dw, const std::vector<int64_t>& offsets,
                      int64_t C, int64_t F) {
  for (const auto& p : grouped_gemm_bwd_problems(x, w, g, dx, dw, offsets, C, F))
    gemm(p.C, p.A, p.B, p.M, p.N, p.K, p.transA, p.transB, p.accumulate);
}

VM_INSTANTIATE_KERNELS(VM_GEMM_KERNELS)
template void gemm_single<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, bool, bool, bool);
template void gemm_single<double>(double*, const double*, const double*, int64_t, int64_t, int64_t, bool, bool,
                                  bool);

}  // namespace vm::kernels
