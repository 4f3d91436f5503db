// core/omp_policy.h — how idle OpenMP threads wait, chosen before the OpenMP
// runtime starts.
//
// GNU OpenMP's default lets a thread that has no work spin for a while
// before it sleeps. On an idle machine that saves a wake-up per parallel
// region; on shared cores the spinning threads take the time the working
// ones need (bench_train under a load of ~10 on 2 cores: 10.3-11.1 s per
// step spinning, 4.9-5.2 s passive; docs/PERF.md "Threads under
// contention"). vmoer therefore runs with OMP_WAIT_POLICY=passive unless the
// user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT set, e.g.
// OMP_WAIT_POLICY=active for a dedicated machine).
//
// libgomp reads its environment once, when it is loaded, before main(): so
// the program sets the variable and executes itself again (same pid,
// arguments and environment otherwise; VMOER_OMP_POLICY_SET marks the second
// start). If that exec fails, it carries on with the runtime's default.
// The policy decides only who waits how, never what is computed: results are
// bitwise the same under any policy.
#pragma once

namespace vm {

// Call first thing in main(). Returns normally (policy already chosen, or the
// exec failed); on success it does not return (the process image restarts).
void choose_omp_wait_policy(char** argv);

// The policy in force: "passive (vmoer's default)", "OMP_WAIT_POLICY=active", ...
const char* omp_wait_policy();

}  // namespace vm
