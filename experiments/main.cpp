// experiments/main.cpp — the `vmoer` command. Each subsystem registers its own
// subcommand (see experiments/commands.h); this file only wires them up and
// maps errors to exit codes (commands.h): 2 for usage errors, 1 for failures
// while working.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "core/dist.h"
#include "core/omp_policy.h"
#include "core/tensor.h"
#include "experiments/build_info.h"
#include "experiments/commands.h"

namespace {
// A usage error names the flag (or config file) it is about first.
int code_for(const std::string& msg) { return msg.rfind("--", 0) == 0 ? 2 : 1; }
}  // namespace

// How a process ends after an error (several ranks: docs/SCALE.md "Faults").
//   one rank, or an error every rank agreed on (dist::CollectiveError): rank 0
//     prints it; every rank returns its code through MPI_Finalize;
//   a peer lost (dist::PeerLost): the lowest rank still answering prints it,
//     and the process ends at once (MPI_Finalize could wait for the dead rank);
//   any other error on one rank: rank 0 prints it and ends at once (the
//     launcher then stops the others, which stay silent); another rank prints
//     "rank R: ..." unless the launcher's signal comes within 2 s (rank 0 failed
//     too: the same error, already printed).
static int report(const std::string& msg, int code) {
  if (!vm::dist::active()) {
    std::fprintf(stderr, "vmoer: %s\n", msg.c_str());
    return code;
  }
  if (vm::dist::root()) {
    vm::dist::print_final_line("vmoer: " + msg);
    vm::dist::hard_exit(code);
  }
  vm::dist::rank_failed(msg, code);
}

static int run_main(int argc, char** argv) {
  vm::exp::set_command_line(argc, argv);
  CLI::App app{"vmoer: Bayesian routing for Mixture-of-Experts transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", vm::exp::version_line(), "print the commit, build type and CUDA on/off, and exit");
  vm::cli::register_all(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // Bad flags or values: one line (with a guess where the input looks like a
    // typo), exit code 2.
    std::string guess = vm::cli::suggest_for(app, argc, argv);
    if (!guess.empty()) return report(guess, 2);
    if (argc <= 1 || (dynamic_cast<const CLI::RequiredError*>(&e) && app.get_subcommands().empty()))
      return report("a command is required: data, metrics, train, eval, reproduce or inspect (vmoer --help)", 2);
    return report(e.what(), 2);
  } catch (const vm::Error& e) {
    // A value that parses but is not one of the allowed names (an unknown
    // --router, --stage, ...): one line naming the flag, exit code 2.
    return report(e.what(), 2);
  }
  try {
    return vm::cli::run_selected(app);
  } catch (const vm::dist::CollectiveError&) {
    throw;
  } catch (const vm::dist::PeerLost&) {
    throw;
  } catch (const vm::Error& e) {
    return report(e.what(), code_for(e.what()));
  } catch (const std::exception& e) {
    return report(e.what(), 1);
  }
}

int main(int argc, char** argv) {
  vm::choose_omp_wait_policy(argv);  // may restart the process with OMP_WAIT_POLICY=passive (core/omp_policy.h)
  vm::dist::init(&argc, &argv);
  int rc = [&]() -> int {
    try {
      return run_main(argc, argv);
    } catch (const vm::dist::CollectiveError& e) {
      if (vm::dist::root()) std::fprintf(stderr, "vmoer: %s\n", e.what());
      return e.code;
    } catch (const vm::dist::PeerLost& e) {
      if (vm::dist::prints_peer_lost(e)) vm::dist::print_final_line(std::string("vmoer: ") + e.what());
      vm::dist::hard_exit(1);
    }
  }();
  vm::dist::finalize();
  return rc;
}
