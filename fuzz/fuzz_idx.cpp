// fuzz/fuzz_idx.cpp — data::read_idx_gz on arbitrary bytes. zlib's gzread
// passes non-gzip input through unchanged, so raw IDX headers are fuzzed
// directly and gzip-wrapped inputs exercise the decompression path.
#include "core/tensor.h"
#include "data/vision.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("idx");
  fuzz::write_bytes(path, data, size);
  try {
    vm::data::IdxArray a = vm::data::read_idx_gz(path);
    uint64_t n = 1;
    for (auto d : a.dims) n *= d;
    if (n != a.data.size()) __builtin_trap();  // the reader's invariant
  } catch (const vm::Error&) {
  }
  return 0;
}
