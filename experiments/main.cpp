// experiments/main.cpp — the `vmoer` command. Each subsystem registers its own
// subcommand (see experiments/commands.h); this file only wires them up and
// maps errors to exit codes (commands.h): 2 for usage errors, 1 for failures
// while working.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "core/tensor.h"
#include "experiments/build_info.h"
#include "experiments/commands.h"

namespace {
// A usage error names the flag (or config file) it is about first.
int code_for(const std::string& msg) { return msg.rfind("--", 0) == 0 ? 2 : 1; }
}  // namespace

int main(int argc, char** argv) {
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
    if (!guess.empty()) std::fprintf(stderr, "vmoer: %s\n", guess.c_str());
    else if (argc <= 1 || dynamic_cast<const CLI::RequiredError*>(&e) && app.get_subcommands().empty())
      std::fprintf(stderr, "vmoer: a command is required: data, metrics, train, eval, reproduce or inspect (vmoer --help)\n");
    else
      std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 2;
  } catch (const vm::Error& e) {
    // A value that parses but is not one of the allowed names (an unknown
    // --router, --stage, ...): one line naming the flag, exit code 2.
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 2;
  }
  try {
    return vm::cli::run_selected(app);
  } catch (const vm::Error& e) {
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return code_for(e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 1;
  }
}
