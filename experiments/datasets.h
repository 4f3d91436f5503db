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

struct McTaskData {
  McSet train, val, test;
};
McTaskData load_mc_task(const RunConfig& cfg);
// Near- and far-OOD sets with `cfg.ood_size` prompts each, labels −1.
std::vector<McSet> load_ood_sets(const RunConfig& cfg);
// Vision track: Fashion-MNIST train (minus a seeded 5000-image validation
// split), test; OOD = OpenCV's handwritten digits ("far-digits").
struct ImgTaskData {
  ImgSet train, val, test;
};
ImgTaskData load_image_task(const RunConfig& cfg);
std::vector<ImgSet> load_image_ood_sets(const RunConfig& cfg);

// "near" or "far" for an OOD set name.
std::string ood_kind(const std::string& set_name);

}  // namespace vm::exp
