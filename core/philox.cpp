// core/philox.cpp — the bulk generators: philox_normals(seed, stream,
// first, n, out) equals philox_normal(seed, stream, first + j) bit for bit
// (tests/test_core.cpp checks odd starts and lengths against the scalar
// definition; a pinned-bits test checks every instruction set gives the same),
// and philox_uniforms, the same for philox_uniform (dropout masks).
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
// Full blocks [b0, b0 + nb), nb ≤ W: out[4·l + j] = the uniform of word j of block b0 + l.
void uniform_blocks(uint64_t seed, uint64_t stream, uint64_t b0, int nb, float* out) {
  alignas(64) float u[4][W];
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const uint32_t s0 = (uint32_t)stream, s1 = (uint32_t)(stream >> 32);
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    const uint64_t b = b0 + (uint64_t)l;
    const Philox4 r = philox4x32_10(Philox4{{(uint32_t)b, (uint32_t)(b >> 32), s0, s1}}, k0, k1);
    for (int j = 0; j < 4; ++j) u[j][l] = philox_unit(r.v[j]);
  }
  for (int l = 0; l < nb; ++l)
    for (int j = 0; j < 4; ++j) out[4 * l + j] = u[j][l];
}

// Scalar head up to the first block boundary, groups of W whole blocks, scalar tail.
template <class Blocks, class One>
void fill_by_blocks(uint64_t first, uint64_t n, float* out, Blocks blocks, One one) {
  const uint64_t end = first + n;
  const uint64_t full0 = std::min(end, (first + 3) & ~(uint64_t)3), full1 = std::max(full0, end & ~(uint64_t)3);
  for (uint64_t i = first; i < full0; ++i) out[i - first] = one(i);
  for (uint64_t i = full0; i < full1; i += 4 * W) blocks(i / 4, (int)std::min<uint64_t>(W, (full1 - i) / 4), out + (i - first));
  for (uint64_t i = full1; i < end; ++i) out[i - first] = one(i);
}
}  // namespace

void philox_uniforms(uint64_t seed, uint64_t stream, uint64_t first, uint64_t n, float* out) {
  fill_by_blocks(
      first, n, out, [&](uint64_t b0, int nb, float* o) { uniform_blocks(seed, stream, b0, nb, o); },
      [&](uint64_t i) { return philox_uniform(seed, stream, i); });
}

void philox_normals(uint64_t seed, uint64_t stream, uint64_t first, uint64_t n, float* out) {
  fill_by_blocks(
      first, n, out, [&](uint64_t b0, int nb, float* o) { normal_blocks(seed, stream, b0, nb, o); },
      [&](uint64_t i) { return philox_normal(seed, stream, i); });
}

}  // namespace vm
