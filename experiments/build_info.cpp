#include "experiments/build_info.h"

#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/dist.h"
#include "core/omp_policy.h"

#include "vmoer_version.h"  // generated: VMOER_GIT_COMMIT, VMOER_GIT_DIRTY

namespace vm::exp {

const BuildInfo& build_info() {
  static const BuildInfo b = [] {
    BuildInfo i;
    i.commit = VMOER_GIT_COMMIT;
    i.dirty = VMOER_GIT_DIRTY != 0;
    i.build_type = VMOER_BUILD_TYPE[0] ? VMOER_BUILD_TYPE : "unspecified";
    i.arch = VMOER_ARCH;
#ifdef VMOER_HAVE_CUDA
    i.cuda = true;
#endif
#if defined(__clang__)
    i.compiler = "clang++ " __clang_version__;
#elif defined(__GNUC__)
    i.compiler = "g++ " __VERSION__;
#endif
    return i;
  }();
  return b;
}

std::string version_line() {
  const BuildInfo& b = build_info();
  std::string c = b.commit.size() > 12 ? b.commit.substr(0, 12) : b.commit;
  return "vmoer " + c + (b.dirty ? " (uncommitted changes)" : "") + ", " + b.build_type + ", " +
         (b.arch.empty() ? std::string("default arch") : "-march=" + b.arch) + ", CUDA " + (b.cuda ? "on" : "off") +
         ", MPI " + (vm::dist::built_with_mpi() ? "on" : "off") + ", " + b.compiler;
}

nlohmann::json build_json() {
  const BuildInfo& b = build_info();
  return {{"commit", b.commit}, {"dirty", b.dirty},   {"build_type", b.build_type},
          {"arch", b.arch},     {"cuda", b.cuda},     {"compiler", b.compiler},
          {"mpi", vm::dist::built_with_mpi()}};
}

nlohmann::json machine_json() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model;
  std::set<std::string> isa;
  int cpus = 0;
  static const std::set<std::string> kSimd{"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512vnni"};
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    std::string val = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key == "processor") ++cpus;
    if (key == "model name" && model.empty()) model = val;
    if (key == "flags" && isa.empty()) {
      std::istringstream fs(val);
      for (std::string f; fs >> f;)
        if (kSimd.count(f)) isa.insert(f);
    }
  }
  return {{"cpu", model}, {"isa", std::vector<std::string>(isa.begin(), isa.end())}, {"logical_cpus", cpus}};
}

namespace {
std::string& command_store() {
  static std::string c;
  return c;
}
}  // namespace

void set_command_line(int argc, const char* const* argv) {
  std::string c;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    bool plain = !a.empty() && a.find_first_of(" \t\n'\"\\$`*?;&|<>()[]{}") == std::string::npos;
    if (!plain) {
      std::string q = "'";
      for (char ch : a) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
      a = q + "'";
    }
    c += (i ? " " : "") + a;
  }
  command_store() = c;
}

const std::string& command_line() { return command_store(); }

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::json provenance(int threads, const std::string& started) {
  std::error_code ec;
  auto cwd = std::filesystem::current_path(ec);
  nlohmann::json p{{"command", command_line()}, {"cwd", ec ? std::string() : cwd.string()}, {"build", build_json()},
                   {"machine", machine_json()}, {"threads", threads},        {"started", started}};
  p["omp_wait_policy"] = vm::omp_wait_policy();  // how idle threads wait (core/omp_policy.h): speed only
  if (vm::dist::active()) p["ranks"] = vm::dist::describe();  // a multi-process run (docs/SCALE.md)
  return p;
}

}  // namespace vm::exp
