// tests/test_gpu_host.cpp — the host-side pieces of the GPU path, checked on
// the CPU (where they run too, or where they are plain bookkeeping):
//   the pinned upload ring (core/cuda/staging.h) that lets copy_h2d return
//   without waiting; Indices (core/tensor.h), which leave a selection on its
//   device; items(), which reads several scalars in one transfer; the packed
//   sizes of a dispatch plan (nn/moe.h PlanSizes); the grouped GEMMs as
//   problem lists (kernels/gemm_groups.h), which the GPU runs in one cuBLAS
//   call and the CPU one by one; and the optimiser's table (nn/optim.h), one
//   launch on the GPU.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/cuda/staging.h"
#include "core/philox.h"

using namespace vm;
using vm::kernels::cuda::StagingRing;

TEST_CASE("staging ring: slices in order, aligned, never straddling the end; the first lap waits for nothing") {
  StagingRing<int> r(1024, 256);
  CHECK(r.fits(1));
  CHECK(r.fits(1024));
  CHECK_FALSE(r.fits(1025));
  CHECK_FALSE(r.fits(0));
  auto a = r.reserve(10);  // rounded up to 256
  CHECK(a.offset == 0);
  CHECK(a.end - a.begin == 256);
  CHECK(a.must_finish == 0);
  r.commit(a, 1);
  auto b = r.reserve(300);  // 512 bytes from 256
  CHECK(b.offset == 256);
  CHECK(b.end - b.begin == 512);
  CHECK(b.must_finish == 0);
  r.commit(b, 2);
  // 512 more do not fit before the end (768 + 512 > 1024): the next lap, from 0,
  // reusing the bytes of copy 1 and copy 2 (0..768)
  auto c = r.reserve(512);
  CHECK(c.offset == 0);
  CHECK(c.begin == 1024);
  CHECK(c.must_finish == 2);
  // reserve changes nothing; retiring the two oldest makes the slice free
  CHECK(r.in_flight() == 2);
  r.retire_oldest();
  r.retire_oldest();
  CHECK(r.reserve(512).must_finish == 0);
  r.commit(c, 3);
  CHECK(r.in_flight() == 1);
  CHECK(r.ticket(0) == 3);
}

TEST_CASE("staging ring: a slice after a wrap waits only for the copies whose bytes it reuses") {
  StagingRing<int> r(1024, 256);
  for (int i = 0; i < 4; ++i) r.commit(r.reserve(256), i);  // 0..1024: the whole first lap
  r.retire_oldest();                                          // copy 0 finished: [0, 256) is free
  auto s = r.reserve(256);                                     // [1024, 1280) = bytes 0..256
  CHECK(s.offset == 0);
  CHECK(s.must_finish == 0);
  r.commit(s, 4);
  auto t = r.reserve(512);  // bytes 256..768: copies 1 and 2, not 3
  CHECK(t.offset == 256);
  CHECK(t.must_finish == 2);
  CHECK(r.ticket(0) == 1);
  CHECK(r.ticket(1) == 2);
}

TEST_CASE("staging ring: a large slice at the end of a lap skips the tail and reuses the newest copies' bytes too") {
  // In flight: [512, 1024) from lap 1 and [1024, 1280) = bytes 0..256 of lap 2.
  // A 768-byte slice does not fit after 1280 (256 + 768 = 1024 fits exactly);
  // a 1024-byte one does not, starts lap 3 at 2048 and reuses every byte:
  // both copies must finish.
  StagingRing<int> r(1024, 256);
  r.commit(r.reserve(512), 0);  // [0, 512)
  r.commit(r.reserve(512), 1);  // [512, 1024)
  r.retire_oldest();
  r.commit(r.reserve(256), 2);  // [1024, 1280)
  auto fit = r.reserve(768);    // [1280, 2048): bytes 256..1024 -> copy 1 only
  CHECK(fit.offset == 256);
  CHECK(fit.must_finish == 1);
  auto all = r.reserve(1024);  // [2048, 3072)
  CHECK(all.offset == 0);
  CHECK(all.begin == 2048);
  CHECK(all.must_finish == 2);
}

TEST_CASE("staging ring: random uploads never overwrite bytes a copy in flight still reads (brute force)") {
  // A model of the buffer: which copy last wrote each byte. Before a slice is
  // written, every copy still in flight that owns one of its bytes must be
  // among the `must_finish` oldest; copies complete at random (oldest first,
  // as on one stream).
  const uint64_t cap = 4096, align = 64;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    StagingRing<int> r(cap, align);
    std::vector<int> owner(cap, -1);
    std::set<int> live;
    uint64_t ctr = 0;
    auto next = [&] { return vm::philox_u32(seed, 77, ctr++); };
    for (int t = 0; t < 400; ++t) {
      // sizes from 1 byte to the whole buffer, mostly small
      uint64_t n = 1 + next() % (next() % 4 == 0 ? cap : 300);
      while (r.in_flight() > 0 && next() % 3 == 0) {  // some copies finish
        live.erase(r.ticket(0));
        r.retire_oldest();
      }
      auto s = r.reserve(n);
      REQUIRE(s.offset % align == 0);
      REQUIRE(s.offset + n <= cap);
      REQUIRE(s.must_finish <= r.in_flight());
      std::set<int> waited;
      for (size_t i = 0; i < s.must_finish; ++i) waited.insert(r.ticket(i));
      for (uint64_t b = s.offset; b < s.offset + n; ++b)
        if (owner[b] >= 0 && live.count(owner[b])) REQUIRE(waited.count(owner[b]) == 1);
      // and it waits for no copy newer than one it needs (a prefix of the queue, no more)
      if (s.must_finish > 0) {
        bool needed_last = false;
        int last = r.ticket(s.must_finish - 1);
        for (uint64_t b = s.offset; b < s.offset + ((s.end - s.begin)); ++b)
          needed_last = needed_last || owner[b % cap] == last;
        CHECK(needed_last);
      }
      for (size_t i = 0; i < s.must_finish; ++i) {
        live.erase(r.ticket(0));
        r.retire_oldest();
      }
      for (uint64_t b = s.offset; b < s.offset + (s.end - s.begin); ++b) owner[b] = t;
      r.commit(s, t);
      live.insert(t);
    }
  }
}

TEST_CASE("staging ring: bad sizes and out-of-order commits are refused") {
  CHECK_THROWS(StagingRing<int>(1000, 256));  // not a multiple of the alignment
  CHECK_THROWS(StagingRing<int>(1024, 100));  // alignment not a power of two
  StagingRing<int> r(1024, 256);
  CHECK_THROWS(r.reserve(2048));
  CHECK_THROWS(r.retire_oldest());
  auto a = r.reserve(100);
  r.commit(a, 0);
  CHECK_THROWS(r.commit(a, 1));  // the same slice twice
}
