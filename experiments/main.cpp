// experiments/main.cpp — the `vmoer` command. Each subsystem registers its own
// subcommand (see experiments/commands.h); this file only wires them up.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "core/tensor.h"
#include "experiments/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"vmoer: Bayesian routing for Mixture-of-Experts transformers"};
  app.require_subcommand(1);
  vm::cli::register_all(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Bad flags or values: one line, exit code 2.
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 2;
  } catch (const vm::Error& e) {
    // A value that parses but is not one of the allowed names (an unknown
    // --router, --stage, ...): one line, exit code 1, as the other value checks.
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 1;
  }
  try {
    return vm::cli::run_selected(app);
  } catch (const vm::Error& e) {
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vmoer: %s\n", e.what());
    return 1;
  }
}
