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

// Pieces of the training objective, exposed for the tests (docs/vmoer.md,
// "Training signal for the routers"):
// The rows of an MC batch whose logits the task loss reads and their targets:
// answer = the last prompt token -> the answer letter (B rows); all = every
// real token -> the next prompt byte, the letter at the last one.
struct McTargets {
  std::vector<int32_t> positions, targets;
};
McTargets mc_targets(const McBatch& mb, RouterLoss which);
// KL / n of the objective for --kl-norm (n: real tokens per layer, batches per
// epoch, or n_seq sequences). n_real_total > 0: the real tokens of the whole
// micro-batch res is a shard of (data parallelism), else res's own.
Var kl_term(const RunConfig& cfg, const nn::ForwardResult& res, int64_t n_seq, int64_t batches_per_epoch,
            double n_real_total = 0);
// --epochs: optimizer steps in one epoch of n_train examples.
int64_t steps_per_epoch(int64_t n_train, int batch, int grad_accum);
// Examples the stage of cfg trains on (after --train-size, --router-data; 0 for pretraining).
int64_t stage_train_size(const RunConfig& cfg);

}  // namespace vm::exp
