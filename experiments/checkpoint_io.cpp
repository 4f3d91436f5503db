// experiments/checkpoint_io.cpp — see checkpoint_io.h. Every field read back
// from a file is validated (fuzz/fuzz_checkpoint.cpp): a corrupt checkpoint is
// one error line naming the file and the key, never undefined behaviour.
#include "experiments/checkpoint_io.h"

#include <cmath>
#include <optional>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <regex>

#include "nn/checkpoint.h"

namespace vm::exp {
using nlohmann::json;

static const char* kFormat = "vmoer-checkpoint-1";

void save_checkpoint(const std::string& path, nn::Model& model, const nn::AdamW* opt, const TrainState& st) {
  nn::SafeTensors f;
  f.metadata["format"] = kFormat;
  f.metadata["model"] = json(model.config()).dump();
  f.metadata["router"] = json(model.router_config()).dump();
  json ts{{"stage", st.stage},
          {"step", st.step},
          {"best_val", st.best_val},
          {"bad_evals", st.bad_evals},
          {"seed", st.seed},
          {"split_seed", st.split_seed},
          {"optimizer_steps", opt ? opt->steps_done() : 0}};
  if (st.batch_shards != 1) ts["batch_shards"] = st.batch_shards;  // absent: 1 (and the bytes of earlier checkpoints)
  f.metadata["train_state"] = ts.dump();
  f.metadata["data"] = st.data.dump();
  if (!st.evaluation.empty()) f.metadata["evaluation"] = st.evaluation.dump();
  for (auto& [name, v] : model.params().all()) f.tensors.push_back({name, v.value()});
  if (opt) {
    auto& state = const_cast<nn::AdamW*>(opt)->state();
    for (auto& [name, mv] : state) {
      f.tensors.push_back({"__adam_m__." + name, mv.first});
      f.tensors.push_back({"__adam_v__." + name, mv.second});
    }
  }
  nn::save_safetensors(path, f);
}

// Numbers in the config objects fill int and double fields; nlohmann converts
// an out-of-range float to int with undefined behaviour, so every number must
// be finite and within +-(2^31 - 1) (found by fuzz/fuzz_checkpoint.cpp).
static void check_config_numbers(const json& j, const std::string& path, const std::string& key) {
  if (j.is_structured()) {
    for (const auto& v : j) check_config_numbers(v, path, key);
  } else if (j.is_number()) {
    double v = j.get<double>();
    if (!std::isfinite(v) || std::fabs(v) > 2147483647.0)
      fail(path + ": corrupt '" + key + "' metadata (number " + j.dump() + " out of range)");
  }
}

static json meta_json(const nn::SafeTensors& f, const std::string& path, const std::string& key) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) fail(path + ": not a vmoer checkpoint (no '" + key + "' metadata)");
  json j;
  try {
    j = json::parse(it->second);
  } catch (const std::exception& e) {
    fail(path + ": corrupt '" + key + "' metadata (" + e.what() + ")");
  }
  if (!j.is_object()) fail(path + ": corrupt '" + key + "' metadata (not a JSON object)");
  if (key == "model" || key == "router") check_config_numbers(j, path, key);
  if (key == "train_state") {
    // Counters must be non-negative integers (a float 1e30 into int64 is UB).
    for (const char* k : {"step", "bad_evals", "optimizer_steps", "seed", "split_seed", "batch_shards"}) {
      if (!j.contains(k)) continue;
      const json& v = j[k];
      bool ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
      if (ok && std::string(k) != "seed" && std::string(k) != "split_seed") ok = v.get<uint64_t>() <= (std::string(k) == "bad_evals" ? 2147483647ULL : 1ULL << 53);
      if (!ok) fail(path + ": corrupt 'train_state' metadata (" + k + " = " + v.dump() + " is not a valid count)");
    }
    if (j.contains("batch_shards") && (j["batch_shards"].get<uint64_t>() < 1 || j["batch_shards"].get<uint64_t>() > 1u << 20))
      fail(path + ": corrupt 'train_state' metadata (batch_shards = " + j["batch_shards"].dump() + ")");
    if (j.contains("best_val") && !j["best_val"].is_number())
      fail(path + ": corrupt 'train_state' metadata (best_val = " + j["best_val"].dump() + ")");
    if (j.contains("stage") && !j["stage"].is_string())
      fail(path + ": corrupt 'train_state' metadata (stage = " + j["stage"].dump() + ")");
  }
  return j;
}

// Every reader checks the format first: a file that is not a vmoer checkpoint
// gets that one line, not a complaint about a missing piece of it.
static void check_format(const nn::SafeTensors& f, const std::string& path) {
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kFormat)
    fail(path + ": unsupported checkpoint format '" + (fmt == f.metadata.end() ? "" : fmt->second) + "' (want " +
         kFormat + ")");
}

void read_checkpoint_configs(const std::string& path, nn::ModelConfig& mc, nn::RouterConfig& rc) {
  nn::SafeTensors f = nn::load_safetensors(path);
  check_format(f, path);
  try {
    mc = meta_json(f, path, "model").get<nn::ModelConfig>();
    rc = meta_json(f, path, "router").get<nn::RouterConfig>();
  } catch (const json::exception& e) {
    fail(path + ": corrupt config metadata (" + e.what() + ")");
  } catch (const Error& e) {  // an unknown name (router, norm, ...)
    fail(path + ": corrupt config metadata (" + e.what() + ")");
  }
}

// The train_state metadata of a checkpoint (validated by meta_json).
static TrainState train_state_of(const nn::SafeTensors& f, const std::string& path) {
  json js = meta_json(f, path, "train_state");
  TrainState st;
  st.stage = js.value("stage", "");
  st.step = js.value("step", (int64_t)0);
  st.best_val = js.value("best_val", 1e300);
  st.bad_evals = js.value("bad_evals", 0);
  st.seed = js.value("seed", (uint64_t)0);
  st.split_seed = js.value("split_seed", (uint64_t)1);  // checkpoints before split_seed: the default, 1
  st.batch_shards = js.value("batch_shards", 1);         // written only when not 1
  if (f.metadata.count("data")) st.data = meta_json(f, path, "data");  // older checkpoints have none
  if (f.metadata.count("evaluation")) st.evaluation = meta_json(f, path, "evaluation");
  return st;
}

TrainState read_checkpoint_state(const std::string& path) {
  nn::SafeTensors f = nn::load_safetensors(path);
  check_format(f, path);
  return train_state_of(f, path);
}

json data_settings(const RunConfig& cfg) {
  json j = json::object();
  for_each_field(cfg, [&](const auto& row, const auto& v, const std::string&) {
    if (row.use & Use::inherit) j[row.key] = v;
  });
  return j;
}

void inherit_data_settings(RunConfig& cfg, const std::string& ckpt) {
  TrainState st = read_checkpoint_state(ckpt);
  std::optional<Stage> stage = find_enum<Stage>(st.stage);
  if (stage != Stage::finetune && stage != Stage::router) return;  // pretraining: another corpus
  if (!cfg.given("--split-seed")) {
    cfg.split_seed = st.split_seed;
  } else if (cfg.split_seed != st.split_seed) {
    std::fprintf(stderr,
                 "warning: %s was trained on the split of --split-seed %llu; --split-seed %llu gives other "
                 "val/test sets, which overlap its training data\n",
                 ckpt.c_str(), (unsigned long long)st.split_seed, (unsigned long long)cfg.split_seed);
  }
  for_each_field(cfg, [&](const auto& row, auto& v, const std::string&) {
    if (!(row.use & Use::inherit) || !st.data.contains(row.key)) return;
    using T = std::remove_cvref_t<decltype(v)>;
    T theirs;
    try {
      theirs = st.data[row.key].template get<T>();
    } catch (const std::exception& e) {
      fail(ckpt + ": corrupt 'data' metadata (" + row.key + ": " + e.what() + ")");
    }
    if (theirs == v) return;
    if (!cfg.given(row.flag)) {
      std::fprintf(stderr, "note: %s %s from the checkpoint (it was trained with it; give the flag to override)\n",
                   row.flag, st.data[row.key].dump().c_str());
      v = theirs;
    } else {
      std::fprintf(stderr, "warning: %s was trained with %s %s; %s %s builds other inputs\n", ckpt.c_str(), row.flag,
                   st.data[row.key].dump().c_str(), row.flag, json(v).dump().c_str());
    }
  });
}

void inherit_eval_protocol(RunConfig& cfg, const std::string& ckpt) {
  const json ev = read_checkpoint_state(ckpt).evaluation;
  if (ev.empty()) return;
  std::string said;
  for_each_field(cfg, [&](const auto& row, auto& v, const std::string&) {
    if (!ev.contains(row.key) || cfg.given(row.flag)) return;
    using T = std::remove_cvref_t<decltype(v)>;
    T theirs;
    try {
      theirs = ev[row.key].template get<T>();
    } catch (const std::exception& e) {
      fail(ckpt + ": corrupt 'evaluation' metadata (" + row.key + ": " + e.what() + ")");
    }
    cfg.given_flags.push_back(row.flag);  // as if given: e.g. --ood-size is then not capped
    if (theirs == v) return;
    v = theirs;
    said += std::string(said.empty() ? "" : ", ") + row.flag + " " + ev[row.key].dump();
  });
  if (!said.empty())
    std::fprintf(stderr, "note: %s from the checkpoint (the evaluation of the `vmoer reproduce` run that trained it; "
                 "give a flag to override)\n", said.c_str());
}

TrainState load_checkpoint(const std::string& path, nn::Model& model, nn::AdamW* opt,
                           const std::string& allow_missing, const std::string& allow_unused) {
  nn::SafeTensors f = nn::load_safetensors(path);
  check_format(f, path);
  std::regex missing_ok(allow_missing.empty() ? "$^" : allow_missing);
  for (auto& [name, v] : model.params().all()) {
    const Tensor* t = f.find(name);
    if (!t) {
      if (std::regex_search(name, missing_ok)) continue;
      fail(path + ": checkpoint lacks parameter '" + name + "' (does its config match the requested model?)");
    }
    if (t->shape() != v.shape())
      fail(path + ": parameter '" + name + "' has shape " + shape_str(t->shape()) + " but the model expects " +
           shape_str(v.shape()) + " (config mismatch)");
    VM_CHECK(!v.value().is_cuda(), "load_checkpoint: load " + path + " before moving the model to the GPU");
    std::copy(t->data(), t->data() + t->numel(), v.value().data());
  }
  std::regex unused_ok(allow_unused.empty() ? "$^" : allow_unused);
  for (auto& [name, t] : f.tensors) {
    if (name.rfind("__adam_", 0) == 0) continue;
    if (!model.params().has(name) && !std::regex_search(name, unused_ok))
      fail(path + ": checkpoint has parameter '" + name + "' that the requested model lacks (config mismatch)");
  }
  TrainState st = train_state_of(f, path);
  if (opt) {
    opt->set_steps_done(meta_json(f, path, "train_state").value("optimizer_steps", (int64_t)0));
    opt->state().clear();
    for (auto& [name, t] : f.tensors) {
      if (name.rfind("__adam_m__.", 0) != 0) continue;
      std::string pn = name.substr(11);
      const Tensor* v = f.find("__adam_v__." + pn);
      if (!v || v->shape() != t.shape()) fail(path + ": optimizer state for '" + pn + "' is incomplete");
      opt->state()[pn] = {t.clone(), v->clone()};
    }
  }
  return st;
}

}  // namespace vm::exp
