#include "experiments/datasets.h"

#include <algorithm>

#include "data/io.h"
#include "data/lm.h"
#include "data/shuffle.h"
#include "data/tasks.h"
#include "data/vision.h"
#include "nn/params.h"

namespace vm::exp {

static std::string cache(const RunConfig& cfg) {
  return cfg.data_dir.empty() ? data::default_cache_dir() : cfg.data_dir;
}

LmData load_lm_data(const RunConfig& cfg) {
  data::LmCorpus c = data::load_brown_lm(cache(cfg), cfg.split_seed);
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
// The examples xs[idx[i]], the first max_n of them (0 = all).
static McSet to_set(const std::string& name, const std::vector<data::McExample>& xs, const std::vector<size_t>& idx,
                    int max_n) {
  std::vector<data::McExample> sub;
  for (size_t i : idx) sub.push_back(xs[i]);
  return to_set(name, sub, max_n);
}

TrainSplit split_train(size_t n, const RunConfig& cfg) {
  TrainSplit t;
  if (cfg.train_size < 0) fail("--train-size: must be >= 0, got " + std::to_string(cfg.train_size));
  if (cfg.heldout_size < 0) fail("--heldout-size: must be >= 0, got " + std::to_string(cfg.heldout_size));
  const bool heldout = cfg.router_data == RouterData::heldout;
  if (cfg.train_size == 0 && !heldout) {  // today's set: the whole split in its order
    for (size_t i = 0; i < n; ++i) t.finetune.push_back(i);
    return t;
  }
  PhiloxStream rng{cfg.split_seed, nn::name_hash("train-split/finetune-heldout"), 0};
  std::vector<size_t> perm = data::permutation(n, rng);
  size_t h = !heldout ? 0 : cfg.heldout_size > 0 ? (size_t)cfg.heldout_size : n / 5;
  if (heldout && (h == 0 || h >= n))
    fail("--heldout-size: " + std::to_string(h) + " held-out prompts out of a train split of " + std::to_string(n) +
         " (need 1 .. " + std::to_string(n > 0 ? n - 1 : 0) + ")");
  size_t rest = n - h;
  if ((size_t)cfg.train_size > rest)
    fail("--train-size " + std::to_string(cfg.train_size) + " exceeds the " + std::to_string(rest) +
         " prompts of the train split" + (heldout ? " left after the held-out part" : ""));
  size_t m = cfg.train_size > 0 ? (size_t)cfg.train_size : rest;
  // fine-tuning from the front of the permutation, the held-out part from its
  // back: with --train-size the fine-tuning set is the same with or without it
  t.finetune.assign(perm.begin(), perm.begin() + (ptrdiff_t)m);
  t.heldout.assign(perm.end() - (ptrdiff_t)h, perm.end());
  std::sort(t.heldout.begin(), t.heldout.end());
  std::sort(t.finetune.begin(), t.finetune.end());
  return t;
}

McTaskData load_mc_task(const RunConfig& cfg) {
  data::McTaskOptions o;
  o.seed = cfg.split_seed;
  o.max_gloss_bytes = (size_t)cfg.gloss_max_bytes;
  data::McTask t = data::load_mc_task(cfg.task.str(), cache(cfg), o);
  McTaskData d;
  TrainSplit ts = split_train(t.train.size(), cfg);
  d.train = to_set("train", t.train, ts.finetune, cfg.max_train_examples);
  d.heldout = to_set("heldout", t.train, ts.heldout, cfg.max_train_examples);
  d.val = to_set("val", t.val, cfg.max_eval_examples);
  d.test = to_set("test", t.test, cfg.max_eval_examples);
  return d;
}

std::vector<McSet> load_ood_sets(const RunConfig& cfg) {
  data::OodOptions o;
  o.seed = cfg.split_seed;
  o.size = (size_t)cfg.ood_size;
  o.max_gloss_bytes = (size_t)cfg.gloss_max_bytes;
  std::vector<McSet> out;
  for (auto& [name, xs] : data::load_ood_sets(cache(cfg), o)) out.push_back(to_set(name, xs, 0));
  return out;
}

ImgTaskData load_image_task(const RunConfig& cfg) {
  auto train = std::make_shared<const data::ImageSet>(data::load_fashion_mnist(cache(cfg), true));
  auto test = std::make_shared<const data::ImageSet>(data::load_fashion_mnist(cache(cfg), false));
  PhiloxStream rng{cfg.split_seed, nn::name_hash("fashion-mnist/val-split"), 0};
  std::vector<size_t> perm = data::permutation((size_t)train->n, rng);
  size_t n_val = std::min<size_t>(5000, (size_t)train->n / 10);
  ImgTaskData d;
  d.train.name = "train";
  d.val.name = "val";
  d.test.name = "test";
  d.train.src = d.val.src = train;
  d.test.src = test;
  ImgSet all_train;
  for (size_t i = 0; i < perm.size(); ++i) {
    ImgSet& s = i < n_val ? d.val : all_train;
    s.idx.push_back((int32_t)perm[i]);
    s.labels.push_back(train->labels[perm[i]]);
  }
  TrainSplit ts = split_train(all_train.size(), cfg);  // --train-size, --router-data heldout
  d.heldout.name = "heldout";
  d.heldout.src = train;
  for (size_t i : ts.finetune) {
    d.train.idx.push_back(all_train.idx[i]);
    d.train.labels.push_back(all_train.labels[i]);
  }
  for (size_t i : ts.heldout) {
    d.heldout.idx.push_back(all_train.idx[i]);
    d.heldout.labels.push_back(all_train.labels[i]);
  }
  std::sort(d.val.idx.begin(), d.val.idx.end());
  d.val.labels.clear();
  for (int32_t i : d.val.idx) d.val.labels.push_back(train->labels[(size_t)i]);
  int n_test = cfg.max_eval_examples > 0 ? std::min(cfg.max_eval_examples, test->n) : test->n;
  for (int i = 0; i < n_test; ++i) {
    d.test.idx.push_back(i);
    d.test.labels.push_back(test->labels[(size_t)i]);
  }
  if (cfg.max_eval_examples > 0 && (int)d.val.idx.size() > cfg.max_eval_examples) {
    d.val.idx.resize((size_t)cfg.max_eval_examples);
    d.val.labels.resize((size_t)cfg.max_eval_examples);
  }
  for (ImgSet* s : {&d.train, &d.heldout})
    if (cfg.max_train_examples > 0 && (int)s->idx.size() > cfg.max_train_examples) {
      s->idx.resize((size_t)cfg.max_train_examples);
      s->labels.resize((size_t)cfg.max_train_examples);
    }
  return d;
}

std::vector<ImgSet> load_image_ood_sets(const RunConfig& cfg) {
  auto digits = std::make_shared<const data::ImageSet>(data::load_digits(cache(cfg)));
  PhiloxStream rng{cfg.split_seed, nn::name_hash("digits/ood-subsample"), 0};
  std::vector<size_t> perm = data::permutation((size_t)digits->n, rng);
  ImgSet s;
  s.name = "far-digits";
  s.src = digits;
  size_t n = cfg.ood_size > 0 ? std::min<size_t>((size_t)cfg.ood_size, perm.size()) : perm.size();
  for (size_t i = 0; i < n; ++i) {
    s.idx.push_back((int32_t)perm[i]);
    s.labels.push_back(-1);
  }
  return {s};
}

std::string ood_kind(const std::string& set_name) { return set_name.rfind("near", 0) == 0 ? "near" : "far"; }

}  // namespace vm::exp
