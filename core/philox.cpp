// core/philox.cpp — the bulk normal generator: philox_normals(seed, stream,
// first, n, out) equals philox_normal(seed, stream, first + j) bit for bit
// (tests/test_core.cpp checks odd starts and lengths against the scalar
// definition; a pinned-bits test checks every instruction set gives the same).
//
// Whole Philox blocks are drawn W = 16 at a time: lane l of a group computes
// block b + l (10 rounds of 32×32→64 multiplies, vpmuludq) and its two
// Box–Muller pairs (philox_box_muller: integer steps, exact conversions, IEEE
// multiplies, fmaf and sqrtf), so the compiler vectorises the lane loop with
// whatever the build targets (AVX-512: 16 lanes, AVX2: 2×8) and the lanes do
// exactly the float operations of the scalar definition. This file is compiled
// with -fno-math-errno (sqrtf vectorises; the argument is never negative) and
// -ffp-contract=off (nothing to fuse anyway: core/philox.h).
#include "core/philox.h"

#include <algorithm>

namespace vm {

namespace {
constexpr int W = 16;  // blocks per group: 64 normals

// Full blocks [b0, b0 + nb), nb ≤ W: out[4·l + j] = normal 4·(b0 + l) + j.
void normal_blocks(uint64_t seed, uint64_t stream, uint64_t b0, int nb, float* out) {
  alignas(64) float z[4][W];
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const uint32_t s0 = (uint32_t)stream, s1 = (uint32_t)(stream >> 32);
#pragma omp simd
  for (int l = 0; l < W; ++l) {  // all W lanes (a fixed trip count vectorises best), nb stored
    const uint64_t b = b0 + (uint64_t)l;
    const Philox4 r = philox4x32_10(Philox4{{(uint32_t)b, (uint32_t)(b >> 32), s0, s1}}, k0, k1);
    philox_box_muller(r.v[0], r.v[1], z[0][l], z[1][l]);
    philox_box_muller(r.v[2], r.v[3], z[2][l], z[3][l]);
  }
  for (int l = 0; l < nb; ++l)
    for (int j = 0; j < 4; ++j) out[4 * l + j] = z[j][l];
}
}  // namespace

void philox_normals(uint64_t seed, uint64_t stream, uint64_t first, uint64_t n, float* out) {
  const uint64_t end = first + n;
  uint64_t i = first;
  // head: up to the first block boundary; tail: after the last whole block
  const uint64_t full0 = std::min(end, (first + 3) & ~(uint64_t)3), full1 = std::max(full0, end & ~(uint64_t)3);
  for (; i < full0; ++i) out[i - first] = philox_normal(seed, stream, i);
  for (; i < full1; i += 4 * W) {
    const int nb = (int)std::min<uint64_t>(W, (full1 - i) / 4);
    normal_blocks(seed, stream, i / 4, nb, out + (i - first));
  }
  for (i = full1; i < end; ++i) out[i - first] = philox_normal(seed, stream, i);
}

}  // namespace vm
