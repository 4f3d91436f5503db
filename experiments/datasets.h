// experiments/datasets.h — the bridge from data/ (parsers, task builders) to
// the pipelines: token streams for pretraining, MC sets for fine-tuning and
// evaluation, OOD sets.
#pragma once
#include <vector>

#include "experiments/run_config.h"
#include "experiments/trainer.h"

namespace vm::exp {

struct LmData {
  std::vector<int32_t> train, val;  // token streams (Brown, bytes + BOS)
};
LmData load_lm_data(const RunConfig& cfg);

// The ID train split divided for the two training stages (RunConfig::train_size,
// router_data, heldout_size): indices into the split, each list ascending.
//   perm      = permutation of [0, n) seeded by --split-seed (its own stream)
//   finetune  = perm[0, N)             N = --train-size (0: n − H)
//   heldout   = perm[n − H, n)         --router-data heldout (H = --heldout-size, 0: n/5); else H = 0, empty
// N + H <= n, so the two never overlap; with --train-size the fine-tuning set
// does not depend on --router-data. With the defaults (train_size 0,
// router_data train) finetune = 0..n−1 in split order, today's set. Both
// stages read the same fields, so fine-tuning never sees the held-out prompts
// when reproduce (or the user) gives them to both.
struct TrainSplit {
  std::vector<size_t> finetune, heldout;
};
TrainSplit split_train(size_t n, const RunConfig& cfg);

struct McTaskData {
  McSet train, val, test;
  McSet heldout;  // stage 2's prompts under --router-data heldout (empty otherwise)
};
McTaskData load_mc_task(const RunConfig& cfg);
// Near- and far-OOD sets with `cfg.ood_size` prompts each, labels −1.
std::vector<McSet> load_ood_sets(const RunConfig& cfg);
// Vision track: Fashion-MNIST train (minus a seeded 5000-image validation
// split), test; OOD = OpenCV's handwritten digits ("far-digits").
struct ImgTaskData {
  ImgSet train, val, test;
  ImgSet heldout;  // as McTaskData::heldout
};
ImgTaskData load_image_task(const RunConfig& cfg);
std::vector<ImgSet> load_image_ood_sets(const RunConfig& cfg);

// "near" or "far" for an OOD set name.
std::string ood_kind(const std::string& set_name);

}  // namespace vm::exp
