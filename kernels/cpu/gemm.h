// kernels/cpu/gemm.h — matrix products over our row-major buffers.
// C (M,N) = op(A) op(B) [+ C], op = identity or transpose.
//
// Determinism by construction (docs/RELIABILITY.md §1). The result does not
// depend on the thread count, the machine's cache sizes or which thread ran
// what:
//   * the output is cut into tiles by gemm_tiling(M, N, K), a pure function of
//     the shape (never of the thread count or the caches);
//   * each tile is one single-threaded product over the whole K. In fp32 our
//     packed kernel (kernels/cpu/gemm_packed.h, AVX2 + FMA builds): each
//     element is summed in blocks of a fixed kKC in k order, whatever the
//     tile; the register block and kKC are constants of the build's
//     instruction set. Products narrower than its register block, fp64, and
//     builds without AVX2: the serial BLIS (VMOER_HAVE_BLIS; block sizes are
//     constants of the sub-configuration it picks from the CPU at start-up),
//     or else Eigen's GEBP with a blocking (kc, mc, nc) fixed by
//     blocking_sizes(), a pure function of the tile's shape and the scalar
//     type (Eigen's own heuristic would read the detected cache sizes, and
//     its multi-threaded path caps kc at 320);
//   * threads only decide *who* computes a tile, never how it is summed.
// So a run is bitwise identical for any --threads on one binary, and the
// remaining differences across machines come from the instruction set the
// binary was built for (VMOER_NATIVE) and libm, not from the caches.
//
// gemm()        the tiles run on the OpenMP pool (sequentially when called from
//               inside a parallel region: OpenMP does not nest);
// gemm_single() the same arithmetic as one tile, on the calling thread: for
//               the small per-head / per-batch products that callers already
//               run inside their own `omp parallel for`;
// gemm_strided_batched() one gemm_single per batch entry, entries spread over
//               the pool; grouped_gemm() one gemm() per group, one after another.
// (gemm, gemm_strided_batched, grouped_gemm(_bwd): the table in kernels/gemm.h.)
#pragma once
#include <cstdint>

#include "kernels/gemm.h"

namespace vm::kernels {

template <class T>
void gemm_single(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
                 bool accumulate);

// The tiling gemm() uses: tiles of mb rows x nb columns (the last ones may be
// smaller), tm x tn of them. Exposed for tests and benchmarks.
struct GemmTiling {
  int64_t mb, nb, tm, tn;
};
GemmTiling gemm_tiling(int64_t M, int64_t N, int64_t K);

}  // namespace vm::kernels
