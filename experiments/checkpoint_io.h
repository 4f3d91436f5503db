// experiments/checkpoint_io.h — a training checkpoint: the parameters, the
// AdamW moments (in last.safetensors) and the metadata that makes it
// self-describing (model and router config, train state: stage, step, seeds),
// in one safetensors file written atomically (nn/checkpoint.cpp).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "experiments/run_config.h"
#include "nn/optim.h"
#include "nn/transformer.h"

namespace vm::exp {

struct TrainState {
  std::string stage;
  int64_t step = 0;
  double best_val = 1e300;
  int bad_evals = 0;
  uint64_t seed = 0;
  uint64_t split_seed = 1;  // the data split it was trained on (RunConfig::split_seed)
  int batch_shards = 1;     // the shards its batches were computed in (RunConfig::batch_shards); --resume keeps it
  // The RunConfig fields marked Use::inherit (task, gloss cap, ...) it was
  // trained with: {"gloss_max_bytes": 100, ...}; empty in older checkpoints.
  nlohmann::json data = nlohmann::json::object();
  // The evaluation settings of the `vmoer reproduce` run that trained it
  // (RunConfig::eval_protocol); empty for `vmoer train` and older checkpoints.
  nlohmann::json evaluation = nlohmann::json::object();
};
// The Use::inherit fields of cfg, for TrainState::data.
nlohmann::json data_settings(const RunConfig& cfg);
void save_checkpoint(const std::string& path, nn::Model& model, const nn::AdamW* opt, const TrainState& st);
// Loads parameters into `model` (every tensor in the file must match a
// parameter by name and shape unless allow_missing lists a regex of model
// parameters the file may lack, e.g. new router heads in stage 2; and every
// tensor of the file must be a parameter unless allow_unused matches it, e.g.
// a stage-2 checkpoint's heads when eval overrides its router).
TrainState load_checkpoint(const std::string& path, nn::Model& model, nn::AdamW* opt,
                           const std::string& allow_missing = "", const std::string& allow_unused = "");
// The training state stored in a checkpoint (stage, step, seeds), without loading a model.
TrainState read_checkpoint_state(const std::string& path);
// A model fine-tuned (or router-trained) on one data split must be scored on
// that split's test set, and on prompts built as in its training: take the
// checkpoint's split seed and its Use::inherit settings (task, gloss cap)
// unless the flag was given (saying so on stderr when a value changes), and
// warn when a given value differs from the checkpoint's.
void inherit_data_settings(RunConfig& cfg, const std::string& ckpt);
// `vmoer eval` on a checkpoint of `vmoer reproduce`: the fields of its stored
// evaluation settings (test-set and OOD sizes, seed, γ grid, ...) that were
// not given take the run's values, each said on stderr; so an eval with no
// flags repeats the numbers of the run's table.
void inherit_eval_protocol(RunConfig& cfg, const std::string& ckpt);
// Read the model and router configs stored in a checkpoint.
void read_checkpoint_configs(const std::string& path, nn::ModelConfig& mc, nn::RouterConfig& rc);

}  // namespace vm::exp
