// experiments/build_info.h — what this binary is and where it runs: the
// commit it was built from (cmake/version.cmake writes it at every build),
// the build type, CUDA on/off, the instruction-set target, and the CPU it
// runs on. `vmoer --version` prints version_line(); outputs carry
// build_json() and machine_json() for provenance.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace vm::exp {

struct BuildInfo {
  std::string commit;      // 40 hex digits, or "unknown" (no git at build time)
  bool dirty = false;      // the work tree had uncommitted changes to tracked files
  std::string build_type;  // CMAKE_BUILD_TYPE
  std::string arch;        // "native" (-march=native) or "x86-64-v3"
  bool cuda = false;       // built with the CUDA backend
  std::string compiler;    // e.g. "g++ 12.2.0"
};
const BuildInfo& build_info();

// "vmoer 1ab2813c4d5e (dirty), Release, -march=native, CUDA off, g++ 12.2.0"
std::string version_line();

// {"commit", "dirty", "build_type", "arch", "cuda", "compiler"}
nlohmann::json build_json();
// {"cpu": model name, "isa": ["avx2", "avx512f", ...] (the SIMD flags that
// change kernels), "logical_cpus": n} from /proc/cpuinfo (empty off Linux).
nlohmann::json machine_json();

// The command line as given (main.cpp records it), shell-quoted where needed.
void set_command_line(int argc, const char* const* argv);
const std::string& command_line();

// "2026-11-30T15:43:51Z"
std::string utc_now();

// The block every output folder's config.json (and results/eval JSON)
// carries: {"command", "cwd" (absolute), "build": build_json(),
// "machine": machine_json(), "threads", "started"}; the caller adds
// "config" (the resolved configuration) and, at the end, "finished".
nlohmann::json provenance(int threads, const std::string& started);

}  // namespace vm::exp
