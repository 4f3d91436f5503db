#include "core/omp_policy.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace vm {

namespace {
std::string g_policy = "runtime default";
}

void choose_omp_wait_policy(char** argv) {
  if (const char* p = std::getenv("OMP_WAIT_POLICY")) {
    g_policy = std::getenv("VMOER_OMP_POLICY_SET") ? "passive (vmoer's default)" : std::string("OMP_WAIT_POLICY=") + p;
    return;
  }
  if (const char* s = std::getenv("GOMP_SPINCOUNT")) {
    g_policy = std::string("GOMP_SPINCOUNT=") + s;
    return;
  }
  if (std::getenv("VMOER_OMP_POLICY_SET")) return;  // a second start that lost the variable: do not loop
  setenv("OMP_WAIT_POLICY", "passive", 1);
  setenv("VMOER_OMP_POLICY_SET", "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc): carry on with the runtime's default, said by omp_wait_policy().
  unsetenv("OMP_WAIT_POLICY");
  g_policy = "runtime default (re-exec failed)";
}

const char* omp_wait_policy() { return g_policy.c_str(); }

}  // namespace vm
