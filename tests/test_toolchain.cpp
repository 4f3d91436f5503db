// tests/test_toolchain.cpp — guards against compiler bugs the build flags must
// work around (see CMakeLists.txt).
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

namespace {
__attribute__((noinline)) std::vector<int64_t> make_two(int n) {
  std::vector<int64_t> v(4, 0);
  v[0] = n;
  v[1] = n;
  return v;
}
}  // namespace

TEST_CASE("toolchain: GCC 12 AVX-512 SLP miscompile of a vector initialiser is worked around") {
  // With g++ 12.2 -O3 -march=native (AVX-512) and the SLP vectoriser on, `want`
  // is built as {8, 8, 8, 8}. The build adds -fno-tree-slp-vectorize.
  const int N = 8;
  auto got = make_two(N);
  std::vector<int64_t> want = {N, N, 0, 0};
  CHECK(want[2] == 0);
  CHECK(want[3] == 0);
  CHECK(got == want);
}
