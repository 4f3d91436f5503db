// experiments/trainer.h — training and evaluation pipelines behind
// `vmoer train` and `vmoer eval`.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "experiments/checkpoint_io.h"
#include "experiments/mc_eval.h"
#include "experiments/run_config.h"

namespace vm::exp {

int run_train(RunConfig cfg);
// Fill cfg.router.bayes_layers from cfg.bayes_spec ("2,3"); "auto:N" is resolved in run_train.
void parse_bayes_spec(RunConfig& cfg);
int run_eval(RunConfig cfg);

}  // namespace vm::exp
