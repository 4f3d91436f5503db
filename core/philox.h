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
#include <cstring>

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

// ---- fixed-operation float maths for Box–Muller ------------------------------------------
// The normals must come out bit-identical from the scalar path, the AVX2 and
// AVX-512 loops (core/philox.cpp) and the CUDA kernels. Library logf/sinf/cosf
// differ between them (glibc, libmvec, CUDA), so the normals use the two
// functions below instead: integer steps, int→float conversions that are
// exact, IEEE multiplications and explicit fmaf, and sqrtf (correctly
// rounded everywhere; nvcc without --use_fast_math). No product feeds an add
// other than through fmaf, so FMA contraction (GCC's -ffp-contract=fast, nvcc's
// --fmad) has nothing to fuse and every compiler evaluates the same operations.

VM_HD uint32_t philox_f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
#endif
}
VM_HD float philox_bits_f32(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, 4);
  return x;
#endif
}

// The uniform of a Philox word: ((w >> 9) + ½) · 2^-23 ∈ [2^-24, 1 − 2^-24],
// exact (the value philox_uniform returns).
VM_HD float philox_unit(uint32_t w) { return fmaf((float)(int32_t)(w >> 9), 0x1p-23f, 0x1p-24f); }

// ln u for a normal float u > 0 (here u ∈ [2^-24, 1)), within ~2 ulp.
//   u = 2^e · m,  m ∈ [√½, √2)  (integer split of the bits around √½ = 0x3F3504F3)
//   f = m − 1 (exact),  ln m = f − f²/2 + f³ P(f)  (Cephes logf's minimax P, degree 8)
//   ln u = e·ln 2 + ln m  (ln 2 in two parts: e·ln2_hi is exact for |e| < 2^11)
VM_HD float philox_log(float u) {
  const int32_t t = (int32_t)(philox_f32_bits(u) - 0x3F3504F3u);
  const float e = (float)(t >> 23);  // arithmetic shift: the exponent of u relative to √½
  const float f = philox_bits_f32(((uint32_t)t & 0x7FFFFFu) + 0x3F3504F3u) - 1.0f;
  float p = 7.0376836292e-2f;
  p = fmaf(p, f, -1.1514610310e-1f);
  p = fmaf(p, f, 1.1676998740e-1f);
  p = fmaf(p, f, -1.2420140846e-1f);
  p = fmaf(p, f, 1.4249322787e-1f);
  p = fmaf(p, f, -1.6668057665e-1f);
  p = fmaf(p, f, 2.0000714765e-1f);
  p = fmaf(p, f, -2.4999993993e-1f);
  p = fmaf(p, f, 3.3333331174e-1f);
  const float z = f * f;
  const float lnm = fmaf(z * f, p, fmaf(-0.5f, z, f));  // f − f²/2 + f³ P(f)
  return fmaf(e, 0.693359375f, fmaf(e, -2.12194440e-4f, lnm));
}

// (cos θ, sin θ) of θ = 2π·u, u = ((k + ½) · 2^-23) the uniform of the 23-bit
// integer k, within ~2 ulp. The reduction is exact because it works in turns:
//   q = round(4u) = (k + 2^20) >> 21 ∈ {0..4},  t = u − q/4 ∈ [−1/8, 1/8] (exact)
//   x = 2π·t ∈ [−π/4, π/4],  sin x, cos x by Cephes sinf/cosf's minimax polynomials
//   θ = q·π/2 + x:  (cos θ, sin θ) = (c, s), (−s, c), (−c, −s), (s, −c) for q mod 4 = 0, 1, 2, 3
VM_HD void philox_sincos_turns(uint32_t k, float& cos_th, float& sin_th) {
  const uint32_t q = (k + 0x100000u) >> 21;
  const float t = fmaf((float)((int32_t)k - (int32_t)(q << 21)), 0x1p-23f, 0x1p-24f);
  const float x = t * 6.28318530717958647692f;
  const float z = x * x;
  const float sp = fmaf(fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f);
  const float s = fmaf(sp, z * x, x);  // x − x³/6 + …
  const float cp = fmaf(fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f), z, 4.166664568298827e-2f);
  const float c = fmaf(cp, z * z, fmaf(-0.5f, z, 1.0f));  // 1 − x²/2 + …
  const uint32_t qm = q & 3u;
  const float a = (qm & 1u) ? s : c, b = (qm & 1u) ? c : s;
  cos_th = (qm == 1u || qm == 2u) ? -a : a;
  sin_th = (qm >= 2u) ? -b : b;
}

// Box–Muller on two Philox words (w1, w2): u1, u2 their uniforms,
//   r = √(−2 ln u1),  θ = 2π u2,  (z0, z1) = (r cos θ, r sin θ).
VM_HD void philox_box_muller(uint32_t w1, uint32_t w2, float& z0, float& z1) {
  const float r = sqrtf(-2.0f * philox_log(philox_unit(w1)));
  float c, s;
  philox_sincos_turns(w2 >> 9, c, s);
  z0 = r * c;
  z1 = r * s;
}

// Standard normal number i of (seed, stream): THE definition every other path
// (the bulk philox_normals, the CUDA kernels, the twin's numpy port) agrees with
// bit for bit. Block b = i/4 of Philox gives 4 words; words (0, 1) make the
// normals 4b, 4b+1 and words (2, 3) the normals 4b+2, 4b+3 by Box–Muller: even i
// takes the cosine, odd i the sine of the pair, so any i can be drawn
// independently. (Changed in issue 20 from logf/sinf/cosf of the C library to
// the fixed-operation philox_log/philox_sincos_turns; the uniforms, the pairs
// and the offsets are those of before, the values differ in the last bits.)
VM_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  const uint64_t block = i >> 2;
  Philox4 c{{(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
  const Philox4 r = philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
  const int pair = (int)((i >> 1) & 1);
  float z0, z1;
  philox_box_muller(r.v[2 * pair], r.v[2 * pair + 1], z0, z1);
  return (i & 1) ? z1 : z0;
}

// The first counter of sample s of row g when each row draws S samples of
// `cols` normals: one row's S·cols normals are one contiguous block,
//   normal c of sample s of row g at counter (g·S + s)·cols + c.
// The variational routers' ε (nn/routers/common.h sample_normals, the CPU
// evaluation loop, the CUDA kernels) use this layout; a data-parallel shard
// passes its global rows g and draws what one process draws for them.
VM_HD uint64_t philox_sample_counter(int64_t g, int S, int s, int64_t cols) {
  return (uint64_t)((g * (int64_t)S + s) * cols);
}

// n normals at indices [first, first + n): out[j] = philox_normal(seed, stream,
// first + j) bit for bit, whole Philox blocks drawn 16 at a time in vector
// lanes (core/philox.cpp; AVX2 or AVX-512 as the build targets, the same bits).
void philox_normals(uint64_t seed, uint64_t stream, uint64_t first, uint64_t n, float* out);

// n uniforms at offsets [first, first + n): out[j] = philox_uniform(seed,
// stream, first + j) bit for bit (exact in float32 on every path), whole Philox
// blocks drawn 16 at a time in vector lanes (core/philox.cpp). Dropout masks.
void philox_uniforms(uint64_t seed, uint64_t stream, uint64_t first, uint64_t n, float* out);

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
