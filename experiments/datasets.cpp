#include "experiments/datasets.h"

#include "data/io.h"
#include "data/lm.h"
#include "data/tasks.h"

namespace vm::exp {

static std::string cache(const RunConfig& cfg) {
  return cfg.data_dir.empty() ? data::default_cache_dir() : cfg.data_dir;
}

LmData load_lm_data(const RunConfig& cfg) {
  data::LmCorpus c = data::load_brown_lm(cache(cfg), cfg.seed);
  return LmData{std::move(c.train), std::move(c.val)};
}

static McSet to_set(const std::string& name, const std::vector<data::McExample>& xs, int max_n) {
  McSet s;
  s.name = name;
  size_t n = max_n > 0 ? std::min(xs.size(), (size_t)max_n) : xs.size();
  for (size_t i = 0; i < n; ++i) {
    s.prompts.push_back(xs[i].prompt);
    s.labels.push_back(xs[i].label);
  }
  return s;
}

McTaskData load_mc_task(const RunConfig& cfg) {
  data::McTaskOptions o;
  o.seed = cfg.seed;
  o.max_gloss_bytes = (size_t)cfg.gloss_max_bytes;
  data::McTask t = data::load_mc_task(cfg.task, cache(cfg), o);
  McTaskData d;
  d.train = to_set("train", t.train, cfg.max_train_examples);
  d.val = to_set("val", t.val, cfg.max_eval_examples);
  d.test = to_set("test", t.test, cfg.max_eval_examples);
  return d;
}

std::vector<McSet> load_ood_sets(const RunConfig& cfg) {
  data::OodOptions o;
  o.seed = cfg.seed;
  o.size = (size_t)cfg.ood_size;
  o.max_gloss_bytes = (size_t)cfg.gloss_max_bytes;
  std::vector<McSet> out;
  for (auto& [name, xs] : data::load_ood_sets(cache(cfg), o)) out.push_back(to_set(name, xs, 0));
  return out;
}

std::string ood_kind(const std::string& set_name) { return set_name.rfind("near", 0) == 0 ? "near" : "far"; }

}  // namespace vm::exp
