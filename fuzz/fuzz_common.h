// fuzz/fuzz_common.h — helpers shared by the libFuzzer targets.
// The readers under test take file paths, so each input is written to a
// per-process scratch file first (tmpfs when available).
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace fuzz {

inline std::string scratch_path(const char* tag) {
  const char* dir = std::getenv("VMOER_FUZZ_TMP");
  std::string d = dir && *dir ? dir : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  return d + "/vmoer_fuzz_" + tag + "_" + std::to_string(::getpid());
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

}  // namespace fuzz
