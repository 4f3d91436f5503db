// experiments/commands.h — subcommand registry. Each subsystem defines a
// register_*_command(CLI::App&) that adds its subcommand and stores a runner;
// run_selected() reads the subcommand's --config file (flags given on the
// command line win), checks the options that must be given, answers
// --dump-config, and calls the runner. Runners return the process exit code
// and may throw vm::Error (printed as one line).
//
// Exit codes (main.cpp): 0 success; 2 a usage error (an unknown command,
// flag or config key, a bad value, a missing required flag, or any error whose
// message starts with the flag it is about, "--..."; nothing has been computed
// or written); 1 a failure while working (a bad file, a diverged run, ...).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace vm::cli {

using Runner = std::function<int()>;
// Called by each register_* function: ties a subcommand to its runner and
// gives it --config FILE and --dump-config.
void add_runner(CLI::App* sub, Runner run);
// `flag` must be given, on the command line or as a key of --config.
void require_option(CLI::App* sub, const std::string& flag);

// Applies the TOML/INI file `path` to `sub`: a key is an option's long name
// without the dashes ("steps", "max-train-examples"; '_' is read as '-'), at
// the top level or under a section named after the subcommand ("[train]");
// sections of other subcommands are skipped, so one file can serve several.
// An option given on the command line keeps its value. An unknown key, an
// unknown section or a bad value: vm::Error "--config FILE: ..." (exit 2).
void apply_config_file(CLI::App* sub, const std::string& path);
// A complete config file for `sub`: every option with its help text, the
// ones given (command line or --config) as keys, the others commented out
// with their defaults. Read back with --config it gives the same run.
std::string dump_config(CLI::App* sub);

// The candidate closest to `word` by edit distance, if close enough to be a
// likely typo ("" otherwise).
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);
// "did you mean ..." for a parse error of argv: an unknown subcommand or an
// unknown flag of the subcommand named in argv; "" when there is no guess.
std::string suggest_for(const CLI::App& app, int argc, const char* const* argv);

void register_data_command(CLI::App& app);     // experiments/data_cli.cpp
void register_metrics_command(CLI::App& app);  // experiments/metrics_cli.cpp
void register_train_command(CLI::App& app);    // experiments/flags.cpp
void register_eval_command(CLI::App& app);     // experiments/flags.cpp
void register_reproduce_command(CLI::App& app);  // experiments/reproduce.cpp
void register_inspect_command(CLI::App& app);    // experiments/inspect.cpp

void register_all(CLI::App& app);
int run_selected(CLI::App& app);

}  // namespace vm::cli
