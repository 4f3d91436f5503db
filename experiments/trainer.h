// experiments/trainer.h — training and evaluation pipelines behind
// `vmoer train` and `vmoer eval`.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "experiments/checkpoint_io.h"
#include "experiments/mc_eval.h"
#include "experiments/run_config.h"

namespace vm::exp {

int run_train(RunConfig cfg);
// Fill cfg.router.bayes_layers from cfg.bayes_spec ("2,3"); "auto:N" and
// "auto-sensitive:N" are resolved in run_train and reproduce (resolve_auto_layers).
void parse_bayes_spec(RunConfig& cfg);
// --bayes-layers auto:N (the N least stable layers under input noise) or
// auto-sensitive:N (the N layers whose answer NLL changes most under a random
// top-K); nullopt for a list; a malformed N is one error naming the flag.
struct AutoLayers {
  enum Rank { unstable, sensitive } rank;
  int n;
};
std::optional<AutoLayers> auto_layers(const std::string& spec);
int run_eval(RunConfig cfg);
// The evaluation flags' own checks (--ece-bins, --mi-samples, --stability-draws,
// --gammas): one error naming the flag. Part of RunConfig::validate; eval calls it alone.
void validate_evaluation(const RunConfig& cfg);

}  // namespace vm::exp
