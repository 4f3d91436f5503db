// core/philox.h — Philox-4x32-10 (Salmon et al., SC'11), the counter-based
// generator cuRAND also offers. Header-only and __host__ __device__ so the CPU
// and the CUDA kernels draw bit-identical numbers for the same
// (seed, stream, offset).
//
// Layout (the same as cuRAND's curand_init(seed, subsequence, offset)):
//   key     = (seed low 32 bits, seed high 32 bits)
//   counter = (block low, block high, stream low, stream high)
// where block = offset / 4 and word = offset % 4 picks one of the 4 outputs.
// A consumer that needs n numbers takes offsets [offset, offset + n).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define VM_HD __host__ __device__ __forceinline__
#else
#define VM_HD inline
#endif

namespace vm {

struct Philox4 {
  uint32_t v[4];
};

VM_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  hi = (uint32_t)(p >> 32);
  lo = (uint32_t)p;
}

// One Philox-4x32 block with 10 rounds.
VM_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, ctr.v[0], hi0, lo0);
    philox_mulhilo(M1, ctr.v[2], hi1, lo1);
    Philox4 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ k0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ k1;
    next.v[3] = lo0;
    ctr = next;
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

// The 32-bit word at position `offset` of stream `stream` under `seed`.
VM_HD uint32_t philox_u32(uint64_t seed, uint64_t stream, uint64_t offset) {
  uint64_t block = offset >> 2;
  Philox4 c{{(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
  Philox4 r = philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
  return r.v[offset & 3];
}

// Uniform in the open interval (0, 1): the top 23 bits, centred in their cell.
// Every step is exact in float32 ((2^23 − 1) + 0.5 still fits the 24-bit
// significand), so u ∈ [2^-24, 1 − 2^-24]: never 0 or 1, and log(u),
// log(−log(u)) are always finite.
VM_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset) {
  return ((float)(philox_u32(seed, stream, offset) >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// Standard normal by Box-Muller. Normal number i uses the uniforms at offsets
// 2*(i/2) and 2*(i/2)+1; even i takes the cosine branch, odd i the sine branch,
// so pairs are consumed exactly once and any i can be drawn independently.
VM_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  uint64_t base = (i >> 1) << 1;
  float u1 = philox_uniform(seed, stream, base);
  float u2 = philox_uniform(seed, stream, base + 1);
  float r = sqrtf(-2.0f * logf(u1));
  float th = 6.28318530717958647692f * u2;
  return (i & 1) ? r * sinf(th) : r * cosf(th);
}

// n normals at indices [first, first + n), identical to philox_normal(seed,
// stream, first + j) but drawing each Philox block once (4 uniforms -> 4
// normals) instead of twice per normal.
inline void philox_normals(uint64_t seed, uint64_t stream, uint64_t first, uint64_t n, float* out) {
  uint64_t i = first, end = first + n;
  while (i < end) {
    uint64_t block = i >> 2;
    Philox4 c{{(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
    Philox4 r = philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    for (int pair = 0; pair < 2; ++pair) {
      uint64_t base = (block << 2) + 2 * (uint64_t)pair;  // normals base, base+1 share uniforms base, base+1
      if (base + 1 < i || base >= end) continue;
      float u1 = ((float)(r.v[2 * pair] >> 9) + 0.5f) * (1.0f / 8388608.0f);
      float u2 = ((float)(r.v[2 * pair + 1] >> 9) + 0.5f) * (1.0f / 8388608.0f);
      float rad = sqrtf(-2.0f * logf(u1));
      float th = 6.28318530717958647692f * u2;
      if (base >= i && base < end) out[base - first] = rad * cosf(th);
      if (base + 1 >= i && base + 1 < end) out[base + 1 - first] = rad * sinf(th);
    }
    i = (block + 1) << 2;
  }
}

// Standard Gumbel(0, 1): -log(-log(u)).
VM_HD float philox_gumbel(uint64_t seed, uint64_t stream, uint64_t offset) {
  float u = philox_uniform(seed, stream, offset);
  return -logf(-logf(u));
}

// A cursor over one stream: hands out consecutive offsets. Host-side
// convenience; its (seed, stream, offset) state is what checkpoints store.
struct PhiloxStream {
  uint64_t seed = 0, stream = 0, offset = 0;
  float uniform() { return philox_uniform(seed, stream, offset++); }
  float normal() {
    float z = philox_normal(seed, stream, offset);
    offset += 1;
    return z;
  }
  float gumbel() { return philox_gumbel(seed, stream, offset++); }
  // Reserve n offsets for a bulk consumer (a kernel) and return the first.
  uint64_t reserve(uint64_t n) {
    uint64_t o = offset;
    offset += n;
    return o;
  }
};

}  // namespace vm
