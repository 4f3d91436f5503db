// experiments/commands.h — subcommand registry. Each subsystem defines a
// register_*_command(CLI::App&) that adds its subcommand and stores a runner;
// run_selected() calls the runner of the subcommand that was parsed. Runners
// return the process exit code and may throw vm::Error (printed as one line).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace vm::cli {

using Runner = std::function<int()>;
// Called by each register_* function: ties a subcommand to its runner.
void add_runner(CLI::App* sub, Runner run);

void register_data_command(CLI::App& app);     // experiments/data_cli.cpp
void register_metrics_command(CLI::App& app);  // experiments/metrics_cli.cpp
void register_train_command(CLI::App& app);    // experiments/train_cli.cpp
void register_eval_command(CLI::App& app);     // experiments/flags.cpp
void register_reproduce_command(CLI::App& app);  // experiments/reproduce.cpp
void register_inspect_command(CLI::App& app);    // experiments/inspect.cpp

void register_all(CLI::App& app);
int run_selected(CLI::App& app);

}  // namespace vm::cli
