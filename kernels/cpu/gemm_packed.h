// kernels/cpu/gemm_packed.h — our own packed fp32 GEMM for one tile, on the
// calling thread (the Goto/BLIS scheme, written out):
//
//   C (m,n) [+]= op(A) (m,K) · op(B) (K,n),  every operand given by its row
//   and column strides: op(A)(i,k) = A[i·rsa + k·csa], op(B)(k,j) = B[k·rsb +
//   j·csb], C(i,j) = C[i·rsc + j·csc].
//
//   for pc in K, kKC at a time:              the reduction, in fixed blocks
//     for jc in n, kNC at a time:            pack op(B)[pc.., jc..] into
//       Bp: kNR-wide micro-panels, (kc, kNR) each, zero-padded   (L2 / L3)
//       for ir in m, kMR rows at a time:     pack op(A)[ir.., pc..] into
//         Ap: one (kc, kMR) micro-panel                           (L1)
//         for jr in nc, kNR columns at a time:
//           micro-kernel: a kMR x kNR block of C in registers,
//             acc(r, j) = Σ_{k in block} Ap(k, r) · Bp(k, j)   (one FMA chain)
//             C(r, j) = acc (first block, not accumulating) or C(r, j) + acc
//
// Each element of C is therefore ((C₀ +) block₀ + block₁ + …), each block one
// FMA chain over its kKC terms in k order: the bits depend on K and kKC only,
// never on where the element sits in a tile, on the tiling, on the thread
// count or on the orientation below (fma(a, b, c) = fma(b, a, c)). kKC and the
// register block are constants of the instruction set the binary is built for
// (AVX-512: 12 x 32 in 24 zmm accumulators; AVX2 + FMA: 6 x 16 in 12 ymm), as
// every other kernel's bits already are (kernels/cpu/gemm.h).
//
// Orientation: a product narrower than one register block in n (the router's
// (T,C)·(C,E) with E = 8) is computed as Cᵀ = op(B)ᵀ op(A)ᵀ, so that the wide
// side fills the vector lanes; same bits (above).
//
// Why our own: docs/PERF.md "Packed GEMM" (measured against the serial BLIS on
// the model's tile shapes with dev/cpu/gemm_tiles.cpp).
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#define VMOER_PACKED_GEMM 1

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace vm::kernels::packed {

#if defined(__AVX512F__)
using V = __m512;
constexpr int kW = 16;   // fp32 lanes per vector
constexpr int kMR = 12;  // rows of C per micro-kernel (broadcasts of op(A))
constexpr int kNR = 32;  // columns of C per micro-kernel (2 vectors)
inline V vzero() { return _mm512_setzero_ps(); }
inline V vload(const float* p) { return _mm512_load_ps(p); }
inline V vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm512_store_ps(p, v); }
inline void vstoreu(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V vbcast(const float* p) { return _mm512_set1_ps(*p); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
#else
using V = __m256;
constexpr int kW = 8;
constexpr int kMR = 6;
constexpr int kNR = 16;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vload(const float* p) { return _mm256_load_ps(p); }
inline V vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm256_store_ps(p, v); }
inline void vstoreu(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V vbcast(const float* p) { return _mm256_broadcast_ss(p); }
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
#endif
constexpr int kNV = kNR / kW;    // vectors per row of the register block
constexpr int64_t kKC = 256;     // reduction block: the only block size that changes bits
constexpr int64_t kNC = 1024;    // columns of op(B) packed at once (kKC·kNC·4 B = 1 MiB)
constexpr int64_t kMC = 16 * kMR;  // rows of op(A) packed at once

// Thread-local, 64-byte aligned packing buffers, grown on demand and kept.
struct Buffers {
  float* a = nullptr;
  float* b = nullptr;
  int64_t b_cap = 0;
  Buffers() {
    a = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kMC * kKC));
    if (!a) throw std::bad_alloc();
  }
  ~Buffers() {
    std::free(a);
    std::free(b);
  }
  float* bp(int64_t n) {
    if (n > b_cap) {
      std::free(b);
      b = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * (size_t)n));
      if (!b) throw std::bad_alloc();
      b_cap = n;
    }
    return b;
  }
};
inline Buffers& buffers() {
  thread_local Buffers buf;
  return buf;
}

// dst[0:P] = src[0:P] in vector moves (explicit: the project builds with
// GCC's basic-block vectoriser off, which would otherwise do this).
template <int P>
inline void copy_lanes(float* __restrict dst, const float* __restrict src) {
  int q = 0;
#pragma GCC unroll 4
  for (; q + kW <= P; q += kW) vstoreu(dst + q, vloadu(src + q));
  if constexpr (P % kW >= 8 && kW > 8) {
    _mm256_storeu_ps(dst + q, _mm256_loadu_ps(src + q));
    q += 8;
  }
  if constexpr (P % 8 >= 4) {
    _mm_storeu_ps(dst + q, _mm_loadu_ps(src + q));
    q += 4;
  }
  for (; q < P; ++q) dst[q] = src[q];
}

// 8 x 8 transpose: dst[k·P + l] = src[l·ls + k] for k, l < 8 (AVX).
template <int P>
inline void transpose8(float* __restrict dst, const float* __restrict src, int64_t ls) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * ls), r1 = _mm256_loadu_ps(src + 1 * ls);
  __m256 r2 = _mm256_loadu_ps(src + 2 * ls), r3 = _mm256_loadu_ps(src + 3 * ls);
  __m256 r4 = _mm256_loadu_ps(src + 4 * ls), r5 = _mm256_loadu_ps(src + 5 * ls);
  __m256 r6 = _mm256_loadu_ps(src + 6 * ls), r7 = _mm256_loadu_ps(src + 7 * ls);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  r0 = _mm256_shuffle_ps(t0, t2, 0x44), r1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  r2 = _mm256_shuffle_ps(t1, t3, 0x44), r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm256_shuffle_ps(t4, t6, 0x44), r5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  r6 = _mm256_shuffle_ps(t5, t7, 0x44), r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * P, _mm256_permute2f128_ps(r0, r4, 0x20));
  _mm256_storeu_ps(dst + 1 * P, _mm256_permute2f128_ps(r1, r5, 0x20));
  _mm256_storeu_ps(dst + 2 * P, _mm256_permute2f128_ps(r2, r6, 0x20));
  _mm256_storeu_ps(dst + 3 * P, _mm256_permute2f128_ps(r3, r7, 0x20));
  _mm256_storeu_ps(dst + 4 * P, _mm256_permute2f128_ps(r0, r4, 0x31));
  _mm256_storeu_ps(dst + 5 * P, _mm256_permute2f128_ps(r1, r5, 0x31));
  _mm256_storeu_ps(dst + 6 * P, _mm256_permute2f128_ps(r2, r6, 0x31));
  _mm256_storeu_ps(dst + 7 * P, _mm256_permute2f128_ps(r3, r7, 0x31));
}

// One micro-panel of lanes that are not contiguous (ls != 1; pack_block
// copies contiguous ones row by row): dst(k, l) = src[l·ls + k·ks] for l < w,
// 0 for w <= l < P; dst is (kc, P) row-major. With ks = 1 (each lane
// contiguous in k, the usual case) 8 x 8 register transposes. Only data
// moves here: the packing never changes a value.
template <int P>
inline void pack_panel(float* __restrict dst, const float* __restrict src, int64_t ls, int64_t ks, int64_t kc,
                       int64_t w) {
  if (w < P)
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t l = w; l < P; ++l) dst[k * P + l] = 0.f;
  int64_t l = 0;
  if (ks == 1) {
    const int64_t k8 = kc / 8 * 8;
    for (; l + 8 <= w; l += 8) {
      for (int64_t k = 0; k < k8; k += 8) transpose8<P>(dst + k * P + l, src + l * ls + k, ls);
      for (int64_t k = k8; k < kc; ++k)
        for (int64_t q = l; q < l + 8; ++q) dst[k * P + q] = src[q * ls + k];
    }
  }
  for (; l < w; ++l) {
    const float* s = src + l * ls;
    for (int64_t k = 0; k < kc; ++k) dst[k * P + l] = s[k * ks];
  }
}

// A block of w lanes as ceil(w/P) micro-panels, panel q at dst + q·P·kc. With
// the lanes contiguous (ls = 1) the source is read row by row (k outer): one
// sequential stream instead of a stream per panel, which matters when ks is
// a multiple of 4 KiB (rows that alias in L1).
template <int P>
inline void pack_block(float* __restrict dst, const float* __restrict src, int64_t ls, int64_t ks, int64_t kc,
                       int64_t w) {
  if (ls != 1) {
    for (int64_t l = 0; l < w; l += P) pack_panel<P>(dst + l * kc, src + l * ls, ls, ks, kc, std::min<int64_t>(P, w - l));
    return;
  }
  const int64_t full = w / P * P;
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = src + k * ks;
    for (int64_t l = 0; l < full; l += P) copy_lanes<P>(dst + l * kc + k * P, s + l);
    if (full < w) {
      float* d = dst + full * kc + k * P;
      for (int64_t q = 0; q < P; ++q) d[q] = full + q < w ? s[full + q] : 0.f;
    }
  }
}

// The register block: acc (kMR, kNR) = Ap (kc, kMR)ᵀ · Bp (kc, kNR), then
// stored to C(0:mr, 0:nr) (= acc, or C + acc when `add`).
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t rsc,
                         int64_t csc, bool add, int64_t mr, int64_t nr) {
  if (add && csc == 1)  // C is read after the loop: start fetching it now
    for (int r = 0; r < kMR; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(c + r * rsc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + r * rsc + kNR - 1), _MM_HINT_T0);
    }
  V acc[kMR][kNV];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = vzero();
  for (int64_t k = 0; k < kc; ++k) {
    V bv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) bv[v] = vload(b + v * kW);
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const V ar = vbcast(a + r);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] = vfma(ar, bv[v], acc[r][v]);
    }
    a += kMR;
    b += kNR;
  }
  if (csc == 1 && mr == kMR && nr == kNR) {
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) {
        float* p = c + r * rsc + v * kW;
        vstoreu(p, add ? vadd(vloadu(p), acc[r][v]) : acc[r][v]);
      }
    return;
  }
  // Edge or transposed block: through a buffer; C + acc is the same IEEE add.
  alignas(64) float t[kMR * kNR];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) vstore(t + r * kNR + v * kW, acc[r][v]);
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; ++j) {
      float& dst = c[r * rsc + j * csc];
      dst = add ? dst + t[r * kNR + j] : t[r * kNR + j];
    }
}

// Narrower than a register block: gemm_tile computes it transposed; the
// product's gemm.cpp hands such tiles to BLIS where it is installed.
inline bool narrow(int64_t m, int64_t n) { return n < kNR && m > n; }

// C (m,n) [+]= op(A) op(B) with the strides above; m, n, K > 0.
inline void gemm_tile(float* C, int64_t rsc, int64_t csc, const float* A, int64_t rsa, int64_t csa, const float* B,
                      int64_t rsb, int64_t csb, int64_t m, int64_t n, int64_t K, bool accumulate) {
  if (narrow(m, n)) {  // Cᵀ (n,m) = op(B)ᵀ op(A)ᵀ
    std::swap(m, n);
    std::swap(rsc, csc);
    std::swap(A, B);
    const int64_t ra = rsa, ca = csa;
    rsa = csb, csa = rsb;  // op(B)ᵀ(j,k) = B[k·rsb + j·csb]
    rsb = ca, csb = ra;    // op(A)ᵀ(k,i) = A[i·rsa + k·csa]
  }
  Buffers& buf = buffers();
  float* ap = buf.a;
  const int64_t ncb = std::min(n, kNC);
  float* bp = buf.bp(kKC * ((ncb + kNR - 1) / kNR) * kNR);
  for (int64_t pc = 0; pc < K; pc += kKC) {
    const int64_t kc = std::min(kKC, K - pc);
    const bool add = accumulate || pc > 0;
    for (int64_t jc = 0; jc < n; jc += kNC) {
      const int64_t nc = std::min(kNC, n - jc);
      pack_block<kNR>(bp, B + pc * rsb + jc * csb, csb, rsb, kc, nc);
      for (int64_t ic = 0; ic < m; ic += kMC) {
        const int64_t mc = std::min(kMC, m - ic);
        pack_block<kMR>(ap, A + ic * rsa + pc * csa, rsa, csa, kc, mc);
        for (int64_t ir = 0; ir < mc; ir += kMR)
          for (int64_t jr = 0; jr < nc; jr += kNR)
            micro_kernel(kc, ap + ir * kc, bp + jr * kc, C + (ic + ir) * rsc + (jc + jr) * csc, rsc, csc, add,
                         std::min<int64_t>(kMR, mc - ir), std::min<int64_t>(kNR, nc - jr));
      }
    }
  }
}

}  // namespace vm::kernels::packed

#endif  // AVX2 + FMA
