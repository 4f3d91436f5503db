// data/shuffle.h — seeded, portable randomness for data splits and sampling.
// Everything draws from vm::PhiloxStream (core/philox.h), so the same seed
// gives the same split on every platform and standard library (std::shuffle
// and std::uniform_int_distribution are implementation-defined).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "core/philox.h"

namespace vm::data {

// Streams of the data layer: one per purpose, so changing one use of the seed
// never shifts another.
enum DataStream : uint64_t {
  kStreamSplit = 0x5d17,     // train/val/test split of the MC tasks
  kStreamOptions = 0x5d18,   // wordnet-words option shuffles and distractors
  kStreamOod = 0x5d20,       // OOD subsampling (+ set index)
  kStreamLmSplit = 0x5d30,   // Brown document split
};

inline uint32_t next_u32(PhiloxStream& rng) { return philox_u32(rng.seed, rng.stream, rng.offset++); }

// Uniform integer in [0, n), unbiased (rejection of the top partial range).
// n must be in [1, 2^32].
inline uint64_t uniform_index(PhiloxStream& rng, uint64_t n) {
  if (n <= 1) return 0;
  const uint64_t range = 1ull << 32;
  const uint64_t limit = range - range % n;  // accept draws below a multiple of n
  for (;;) {
    uint64_t x = next_u32(rng);
    if (x < limit) return x % n;
  }
}

// Fisher-Yates shuffle in place.
template <class T>
void shuffle(std::vector<T>& v, PhiloxStream& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = (size_t)uniform_index(rng, i);
    std::swap(v[i - 1], v[j]);
  }
}

// 0..n-1 in a seeded random order.
inline std::vector<size_t> permutation(size_t n, PhiloxStream& rng) {
  std::vector<size_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = i;
  shuffle(p, rng);
  return p;
}

}  // namespace vm::data
