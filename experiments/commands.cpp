#include "experiments/commands.h"

#include <map>

namespace vm::cli {

namespace {
std::map<CLI::App*, Runner>& runners() {
  static std::map<CLI::App*, Runner> r;
  return r;
}
}  // namespace

void add_runner(CLI::App* sub, Runner run) { runners()[sub] = std::move(run); }

void register_all(CLI::App& app) {
  // One line per subsystem; add yours here when its register_* exists.
  register_data_command(app);
  register_metrics_command(app);
  register_train_command(app);
  register_eval_command(app);
  register_reproduce_command(app);
  register_inspect_command(app);
}

int run_selected(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands()) {
    auto it = runners().find(sub);
    if (it != runners().end()) return it->second();
    // nested subcommands (e.g. `data fetch`)
    for (CLI::App* sub2 : sub->get_subcommands()) {
      auto it2 = runners().find(sub2);
      if (it2 != runners().end()) return it2->second();
    }
  }
  return 2;
}

}  // namespace vm::cli
