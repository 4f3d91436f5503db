#include "experiments/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "core/philox.h"
#include "data/tokenizer.h"
#include "experiments/datasets.h"
#include "experiments/evaluation.h"
#include "nn/checkpoint.h"

namespace vm::exp {
namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<int32_t>& answer_tokens() {
  static const std::vector<int32_t> t{'A', 'B', 'C', 'D'};
  return t;
}

McBatch make_mc_batch(const McSet& set, const std::vector<int64_t>& idx, int max_seq) {
  McBatch b;
  b.B = (int)idx.size();
  std::vector<std::vector<int32_t>> toks;
  for (int64_t i : idx) {
    std::vector<int32_t> t{data::kBos};
    auto enc = data::encode(set.prompts[(size_t)i]);
    t.insert(t.end(), enc.begin(), enc.end());
    // keep the end of the prompt (options and "Answer:") if it is too long
    if ((int)t.size() > max_seq) t.erase(t.begin() + 1, t.begin() + 1 + ((int)t.size() - max_seq));
    b.T = std::max(b.T, (int)t.size());
    toks.push_back(std::move(t));
    b.labels.push_back(set.labels[(size_t)i]);
  }
  b.ids.assign((size_t)b.B * b.T, data::kPad);
  b.mask.assign((size_t)b.B * b.T, 0);
  for (int r = 0; r < b.B; ++r) {
    for (size_t t = 0; t < toks[r].size(); ++t) {
      b.ids[(size_t)r * b.T + t] = toks[r][t];
      b.mask[(size_t)r * b.T + t] = 1;
    }
    b.last.push_back(r * b.T + (int)toks[r].size() - 1);
  }
  return b;
}

// ---- checkpoints -------------------------------------------------------------------
static const char* kFormat = "vmoer-checkpoint-1";

void save_checkpoint(const std::string& path, nn::Model& model, const nn::AdamW* opt, const TrainState& st) {
  nn::SafeTensors f;
  f.metadata["format"] = kFormat;
  f.metadata["model"] = json(model.config()).dump();
  f.metadata["router"] = json(model.router_config()).dump();
  f.metadata["train_state"] = json{{"stage", st.stage},
                                   {"step", st.step},
                                   {"best_val", st.best_val},
                                   {"bad_evals", st.bad_evals},
                                   {"seed", st.seed},
                                   {"split_seed", st.split_seed},
                                   {"optimizer_steps", opt ? opt->steps_done() : 0}}
                                  .dump();
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
    for (const char* k : {"step", "bad_evals", "optimizer_steps", "seed", "split_seed"}) {
      if (!j.contains(k)) continue;
      const json& v = j[k];
      bool ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
      if (ok && std::string(k) != "seed" && std::string(k) != "split_seed") ok = v.get<uint64_t>() <= (std::string(k) == "bad_evals" ? 2147483647ULL : 1ULL << 53);
      if (!ok) fail(path + ": corrupt 'train_state' metadata (" + k + " = " + v.dump() + " is not a valid count)");
    }
    if (j.contains("best_val") && !j["best_val"].is_number())
      fail(path + ": corrupt 'train_state' metadata (best_val = " + j["best_val"].dump() + ")");
    if (j.contains("stage") && !j["stage"].is_string())
      fail(path + ": corrupt 'train_state' metadata (stage = " + j["stage"].dump() + ")");
  }
  return j;
}

void read_checkpoint_configs(const std::string& path, nn::ModelConfig& mc, nn::RouterConfig& rc) {
  nn::SafeTensors f = nn::load_safetensors(path);
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kFormat)
    fail(path + ": unsupported checkpoint format '" + (fmt == f.metadata.end() ? "" : fmt->second) + "' (want " +
         kFormat + ")");
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
  return st;
}

TrainState read_checkpoint_state(const std::string& path) {
  return train_state_of(nn::load_safetensors(path), path);
}

void inherit_split_seed(RunConfig& cfg, const std::string& ckpt) {
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
}

TrainState load_checkpoint(const std::string& path, nn::Model& model, nn::AdamW* opt,
                           const std::string& allow_missing) {
  nn::SafeTensors f = nn::load_safetensors(path);
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kFormat)
    fail(path + ": unsupported checkpoint format '" + (fmt == f.metadata.end() ? "" : fmt->second) + "' (want " +
         kFormat + ")");
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
  for (auto& [name, t] : f.tensors) {
    if (name.rfind("__adam_", 0) == 0) continue;
    if (!model.params().has(name))
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

// ---- signals: SIGINT/SIGTERM finish the step, save, and exit ------------------------
static std::atomic<int> g_signal{0};
static void on_signal(int s) { g_signal = s; }

// ---- helpers -----------------------------------------------------------------------
static bool finite(double x) { return std::isfinite(x); }

// "'layers.2.moe.w_router' (layer 2)": a parameter name and the block it lives in.
static std::string tensor_and_layer(const std::string& name) {
  static const std::regex layer_re("(^|\\.)layers\\.([0-9]+)\\.");
  std::smatch m;
  std::string where = std::regex_search(name, m, layer_re) ? " (layer " + m[2].str() + ")" : " (not in a layer)";
  return "'" + name + "'" + where;
}

// Device tensors are checked on a host copy (one transfer per parameter).
static std::string first_nonfinite_grad(nn::ParamStore& ps) {
  for (auto& [name, v] : ps.all()) {
    if (!v.grad().defined()) continue;
    const Tensor g = v.grad().to(Device::CPU);
    for (int64_t i = 0; i < g.numel(); ++i)
      if (!std::isfinite(g[i])) return name;
  }
  return "";
}

static std::string first_nonfinite_param(nn::ParamStore& ps) {
  for (auto& [name, v] : ps.all()) {
    const Tensor t = v.value().to(Device::CPU);
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(t[i])) return name;
  }
  return "";
}

// Where a non-finite loss comes from: a parameter, else the first MoE layer
// whose router probabilities are non-finite, else the forward pass at large.
static std::string locate_nonfinite(nn::ParamStore& ps, const nn::ForwardResult& res) {
  std::string p = first_nonfinite_param(ps);
  if (!p.empty()) return "parameter " + tensor_and_layer(p) + " holds a non-finite value";
  for (auto& a : res.moe) {
    const Tensor pr = a.route.probs.value().to(Device::CPU);
    for (int64_t i = 0; i < pr.numel(); ++i)
      if (!std::isfinite(pr[i]))
        return "router probabilities of layer " + std::to_string(a.layer) + " are non-finite (parameters are finite)";
  }
  return "parameters and router probabilities are finite (the overflow is in the forward pass)";
}

// Test hook, documented in docs/RELIABILITY.md (not a user feature):
//   VMOER_TEST_INJECT_NAN=STEP[:param|:grad][:NAME]
// poisons element 0 of parameter NAME (default: the first trainable router
// weight, else the first trainable parameter) with NaN at the start of step
// STEP (param), or its gradient after the backward pass of step STEP (grad).
struct NanInjection {
  int64_t step = -1;
  bool grad = false;
  std::string param;
};
static NanInjection nan_injection(nn::ParamStore& ps) {
  NanInjection inj;
  const char* env = std::getenv("VMOER_TEST_INJECT_NAN");
  if (!env || !*env) return inj;
  std::string s = env;
  std::vector<std::string> parts;
  for (size_t i = 0, j; i <= s.size(); i = j + 1) {
    j = s.find(':', i);
    if (j == std::string::npos) j = s.size();
    parts.push_back(s.substr(i, j - i));
  }
  try {
    size_t pos = 0;
    inj.step = std::stoll(parts[0], &pos);
    if (pos != parts[0].size() || inj.step < 1) throw std::invalid_argument(s);
  } catch (const std::exception&) {
    fail("VMOER_TEST_INJECT_NAN: '" + s + "' is not STEP[:param|:grad][:NAME] with STEP >= 1");
  }
  if (parts.size() > 1) {
    if (parts[1] != "param" && parts[1] != "grad")
      fail("VMOER_TEST_INJECT_NAN: '" + parts[1] + "' is not param or grad");
    inj.grad = parts[1] == "grad";
  }
  if (parts.size() > 2) {
    inj.param = parts[2];
    if (!ps.has(inj.param)) fail("VMOER_TEST_INJECT_NAN: the model has no parameter '" + inj.param + "'");
  } else {
    for (auto& [name, v] : ps.all())
      if (v.requires_grad() && inj.param.empty()) inj.param = name;
    for (auto& [name, v] : ps.all())
      if (v.requires_grad() && name.find("w_router") != std::string::npos) {
        inj.param = name;
        break;
      }
  }
  std::fprintf(stderr, "VMOER_TEST_INJECT_NAN: NaN into the %s of '%s' at step %lld\n", inj.grad ? "gradient" : "value",
               inj.param.c_str(), (long long)inj.step);
  return inj;
}

// Free space for the checkpoints, claimed up front (posix_fallocate of a
// probe file the size of last + best) so that a full disk or a file-size
// limit stops the run before any training, not at its first checkpoint.
static void reserve_checkpoint_space(const std::string& out, nn::ParamStore& ps) {
  int64_t all = ps.count(), trainable = ps.count(true);
  // last = parameters + AdamW m and v of the trainable ones; best = parameters; + headers.
  int64_t bytes = 4 * (all + 2 * trainable) + 4 * all + (int64_t)ps.all().size() * 400 + (1 << 16);
  std::string probe = out + "/.space_probe." + std::to_string(::getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("--out: cannot create files in '" + out + "' (" + std::strerror(errno) + ")");
  int rc = ::posix_fallocate(fd, 0, (off_t)bytes);
  ::close(fd);
  ::unlink(probe.c_str());
  if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
    fail("--out: cannot reserve " + std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB for checkpoints in '" +
         out + "' (" + std::strerror(rc) + "); free some space or choose another --out");
}

static void progress_bar(int64_t step, int64_t total, double loss, double tps, double eta_s) {
  int width = 30, filled = total ? (int)(width * step / total) : width;
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  std::fprintf(stderr, "\r[%s] step %lld/%lld  loss %.4f  %.0f tok/s  ETA %02d:%02d   ", bar.c_str(),
               (long long)step, (long long)total, loss, tps, (int)(eta_s / 60), (int)eta_s % 60);
  std::fflush(stderr);
}

// Permutation of [0, n) for epoch `epoch`: Fisher–Yates driven by Philox.
static std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p((size_t)n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  PhiloxStream rs{seed, nn::name_hash("epoch/" + std::to_string(epoch)), 0};
  for (int64_t i = n - 1; i > 0; --i) {
    // Two draws in a fixed order (high word first): `f(o++) << 32 | f(o++)` in
    // one expression is unsequenced (undefined behaviour; the order could differ
    // between compilers).
    uint64_t hi = philox_u32(rs.seed, rs.stream, rs.offset++);
    uint64_t lo = philox_u32(rs.seed, rs.stream, rs.offset++);
    uint64_t r = hi << 32 | lo;
    std::swap(p[i], p[(int64_t)(r % (uint64_t)(i + 1))]);
  }
  return p;
}

// Indices of the examples of global batch number `k` (batches walk through
// successive epochs, each with its own permutation).
static std::vector<int64_t> batch_indices(int64_t n, int B, int64_t k, uint64_t seed) {
  std::vector<int64_t> idx;
  int64_t start = k * B;
  int64_t epoch = -1;
  std::vector<int64_t> order;
  for (int64_t j = start; j < start + B; ++j) {
    int64_t e = j / n;
    if (e != epoch) {
      order = epoch_order(n, seed, e);
      epoch = e;
    }
    idx.push_back(order[(size_t)(j % n)]);
  }
  return idx;
}

// LM batch: B windows of T+1 tokens at Philox-chosen offsets.
static void lm_batch(const std::vector<int32_t>& stream, int B, int T, uint64_t seed, uint64_t key,
                     std::vector<int32_t>& ids, std::vector<int32_t>& targets) {
  VM_CHECK((int64_t)stream.size() > T + 1, "pretraining text has only " + std::to_string(stream.size()) +
                                               " tokens for a context of " + std::to_string(T));
  ids.resize((size_t)B * T);
  targets.resize((size_t)B * T);
  uint64_t range = stream.size() - (size_t)T - 1;
  for (int b = 0; b < B; ++b) {
    uint64_t r = ((uint64_t)philox_u32(seed, key, 2 * b) << 32) | philox_u32(seed, key, 2 * b + 1);
    uint64_t o = r % range;
    for (int t = 0; t < T; ++t) {
      ids[(size_t)b * T + t] = stream[o + t];
      targets[(size_t)b * T + t] = stream[o + t + 1];
    }
  }
}

static double entropy(const double* p, int k) {
  double h = 0;
  for (int i = 0; i < k; ++i)
    if (p[i] > 0) h -= p[i] * std::log(p[i]);
  return h;
}

void host_diagnostics(nn::ForwardResult& res) {
  res.logits.value() = res.logits.value().to(Device::CPU);
  for (auto& a : res.moe)
    for (Var* v : {&a.route.probs, &a.route.gates})
      if (v->defined()) v->value() = v->value().to(Device::CPU);
}

// Append one example: its class distribution and the router diagnostics at `row`.
static void append_example(McEval& ev, std::vector<double> p, int32_t label, const nn::ForwardResult& res, int64_t row,
                           int E, const std::vector<int>& bayes) {
  ev.entropy.push_back(entropy(p.data(), (int)p.size()));
  ev.probs.push_back(std::move(p));
  ev.labels.push_back(label);
  double ilv = 0, ge = 0, temp = 0;
  int nb = 0;
  for (auto& a : res.moe) {
    const Tensor& pr = a.route.probs.value();  // on the host (host_diagnostics)
    ge += entropy(std::vector<double>(pr.data() + row * E, pr.data() + (row + 1) * E).data(), E);
    if (std::find(bayes.begin(), bayes.end(), a.layer) != bayes.end()) {
      if (!a.route.ilv.empty()) ilv += a.route.ilv[row];
      if (!a.route.temperature.empty()) temp += a.route.temperature[row];
      ++nb;
    }
  }
  ev.gate_entropy.push_back(res.moe.empty() ? 0 : ge / (double)res.moe.size());
  ev.ilv.push_back(nb ? ilv / nb : 0);
  ev.temperature.push_back(nb ? temp / nb : 0);
}

static void append_trace(RoutingTrace* trace, const nn::ForwardResult& res, const std::vector<uint8_t>& mask, int K) {
  if (!trace) return;
  if (trace->layers.empty())
    for (auto& a : res.moe) trace->layers.push_back(a.layer);
  trace->experts.resize(res.moe.size());
  for (size_t l = 0; l < res.moe.size(); ++l)
    for (int64_t row = 0; row < (int64_t)mask.size(); ++row)
      if (mask[row])
        for (int j = 0; j < K; ++j) trace->experts[l].push_back(res.moe[l].route.experts[row * K + j]);
}

// Accuracy and NLL over the labelled examples.
static void finish_eval(McEval& ev) {
  int64_t labelled = 0, correct = 0;
  double nll = 0;
  for (size_t i = 0; i < ev.probs.size(); ++i) {
    if (ev.labels[i] < 0) continue;
    ++labelled;
    const auto& p = ev.probs[i];
    int am = (int)(std::max_element(p.begin(), p.end()) - p.begin());
    correct += am == ev.labels[i];
    nll -= std::log(std::max(p[(size_t)ev.labels[i]], 1e-12));
  }
  ev.nll = labelled ? nll / labelled : 0;
  ev.accuracy = labelled ? (double)correct / labelled : 0;
}

static nn::ForwardOptions eval_options(nn::Model& model, const RunConfig& cfg, uint64_t batch_index, double noise,
                                       int samples = 0, uint64_t seed_shift = 0) {
  nn::ForwardOptions fo;
  fo.training = false;
  fo.seed = cfg.seed + seed_shift;
  fo.step = batch_index;
  fo.samples = samples > 0 ? samples : model.router_config().samples;
  fo.embed_noise = noise;
  fo.noise_seed = cfg.seed + 7919;
  return fo;
}

// Mutual information between the prediction and the router's randomness,
// I = H(mean_m p_m) − mean_m H(p_m), from M passes that each route every
// token with a single fresh router sample (--mi-samples M).
static void add_mutual_information(McEval& ev, const std::vector<McEval>& passes) {
  ev.mutual_info.assign(ev.probs.size(), 0.0);
  if (passes.empty()) return;
  for (size_t i = 0; i < ev.probs.size(); ++i) {
    size_t C = passes[0].probs[i].size();
    std::vector<double> mean(C, 0.0);
    double mean_h = 0;
    for (auto& p : passes) {
      for (size_t c = 0; c < C; ++c) mean[c] += p.probs[i][c] / (double)passes.size();
      mean_h += p.entropy[i] / (double)passes.size();
    }
    ev.mutual_info[i] = std::max(0.0, entropy(mean.data(), (int)C) - mean_h);
  }
}

static bool stochastic_router(nn::Model& model) {
  return model.router_config().name != nn::RouterKind::det && !model.bayes_layer_ids().empty();
}

static McEval mc_pass(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise, RoutingTrace* trace,
                      int samples, uint64_t seed_shift);

McEval evaluate_mc(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise,
                   RoutingTrace* trace) {
  McEval ev = mc_pass(model, set, cfg, embed_noise, trace, 0, 0);
  std::vector<McEval> passes;
  if (cfg.mi_samples > 0 && stochastic_router(model))
    for (int m = 0; m < cfg.mi_samples; ++m) passes.push_back(mc_pass(model, set, cfg, embed_noise, nullptr, 1, 1000003ull * (m + 1)));
  add_mutual_information(ev, passes);
  return ev;
}

static McEval mc_pass(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise, RoutingTrace* trace,
                      int samples, uint64_t seed_shift) {
  NoGradGuard ng;
  McEval ev;
  const auto& letters = answer_tokens();
  int64_t n = (int64_t)set.size();
  int E = model.config().n_experts, K = model.config().top_k;
  auto bayes = model.bayes_layer_ids();
  int B = std::max(1, cfg.batch);
  for (int64_t s = 0; s < n; s += B) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + B); ++i) idx.push_back(i);
    McBatch mb = make_mc_batch(set, idx, model.config().max_seq);
    auto res = model.forward_lm(mb.ids, mb.B, mb.T, mb.mask, mb.last,
                                eval_options(model, cfg, s / B, embed_noise, samples, seed_shift));
    host_diagnostics(res);
    const Tensor& lg = res.logits.value();  // (B, V)
    int64_t V = lg.size(1);
    for (int r = 0; r < mb.B; ++r) {
      // answer distribution: softmax over the four letter logits
      double mx = -1e300;
      for (int32_t t : letters) mx = std::max(mx, (double)lg[r * V + t]);
      std::vector<double> p(4);
      double z = 0;
      for (int j = 0; j < 4; ++j) z += (p[j] = std::exp((double)lg[r * V + letters[j]] - mx));
      for (auto& q : p) q /= z;
      append_example(ev, std::move(p), mb.labels[r], res, mb.last[r], E, bayes);  // diagnostics at the final token
    }
    append_trace(trace, res, mb.mask, K);
  }
  finish_eval(ev);
  return ev;
}

Tensor image_batch(const ImgSet& set, const std::vector<int64_t>& idx) {
  const data::ImageSet& src = *set.src;
  int64_t P = (int64_t)src.h * src.w;
  Tensor x({(int64_t)idx.size(), P});
  for (size_t i = 0; i < idx.size(); ++i) {
    const float* im = src.image(set.idx[(size_t)idx[i]]);
    std::copy(im, im + P, x.data() + (int64_t)i * P);
  }
  return x;
}

static McEval image_pass(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise,
                         RoutingTrace* trace, int samples, uint64_t seed_shift);

McEval evaluate_images(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise,
                       RoutingTrace* trace) {
  McEval ev = image_pass(model, set, cfg, embed_noise, trace, 0, 0);
  std::vector<McEval> passes;
  if (cfg.mi_samples > 0 && stochastic_router(model))
    for (int m = 0; m < cfg.mi_samples; ++m)
      passes.push_back(image_pass(model, set, cfg, embed_noise, nullptr, 1, 1000003ull * (m + 1)));
  add_mutual_information(ev, passes);
  return ev;
}

static McEval image_pass(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise,
                         RoutingTrace* trace, int samples, uint64_t seed_shift) {
  NoGradGuard ng;
  McEval ev;
  int64_t n = (int64_t)set.size();
  int E = model.config().n_experts, K = model.config().top_k, C = model.config().n_classes;
  int T = model.config().seq_len_vit();
  auto bayes = model.bayes_layer_ids();
  int B = std::max(1, cfg.batch);
  for (int64_t s = 0; s < n; s += B) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + B); ++i) idx.push_back(i);
    auto res = model.forward_vit(image_batch(set, idx), eval_options(model, cfg, s / B, embed_noise, samples, seed_shift));
    host_diagnostics(res);
    const Tensor& lg = res.logits.value();  // (B, classes)
    for (size_t r = 0; r < idx.size(); ++r) {
      double mx = -1e300;
      for (int c = 0; c < C; ++c) mx = std::max(mx, (double)lg[(int64_t)r * C + c]);
      std::vector<double> p((size_t)C);
      double z = 0;
      for (int c = 0; c < C; ++c) z += (p[c] = std::exp((double)lg[(int64_t)r * C + c] - mx));
      for (auto& q : p) q /= z;
      append_example(ev, std::move(p), set.labels[(size_t)idx[r]], res, (int64_t)r * T, E, bayes);  // class token
    }
    append_trace(trace, res, std::vector<uint8_t>(idx.size() * (size_t)T, 1), K);
  }
  finish_eval(ev);
  return ev;
}

// ---- training ------------------------------------------------------------------------
int run_train(RunConfig cfg) {
  cfg.validate();
  omp_set_num_threads(cfg.threads);
  {
    std::error_code ec;
    fs::create_directories(cfg.out, ec);
    if (ec || !fs::is_directory(cfg.out))
      fail("--out: cannot create directory '" + cfg.out + "' (" +
           (ec ? ec.message() : std::string("exists and is not a directory")) + ")");
  }
  {  // fail early, before any work, if --out is not writable
    std::string probe = cfg.out + "/.write_test";
    std::ofstream t(probe);
    if (!t) fail("--out: directory '" + cfg.out + "' is not writable (" + std::strerror(errno) + ")");
    t.close();
    fs::remove(probe);
  }
  std::string last_path = cfg.out + "/last.safetensors", best_path = cfg.out + "/best.safetensors";

  // Model: from --init (fine-tune / router stage) or fresh.
  nn::ModelConfig mc = cfg.model;
  nn::RouterConfig rc = cfg.router;
  if (cfg.resume) {
    if (!fs::exists(last_path)) fail("--resume: no checkpoint at " + last_path);
    read_checkpoint_configs(last_path, mc, rc);
    inherit_split_seed(cfg, last_path);
  } else if (!cfg.init.empty()) {
    if (cfg.stage == Stage::router) inherit_split_seed(cfg, cfg.init);
    nn::RouterConfig init_rc;
    read_checkpoint_configs(cfg.init, mc, init_rc);
    if (cfg.stage != Stage::router) rc = init_rc;
  }
  if (cfg.stage == Stage::pretrain || cfg.stage == Stage::finetune) {
    if (nn::router_info(rc.name).bayesian)
      fail("--router " + rc.name.str() + ": Bayesian routers are trained in stage 2 (--stage router)");
  }
  if (mc.kind == nn::ModelKind::vit && cfg.task != Task::fashion_mnist) cfg.task = Task::fashion_mnist;
  if (cfg.stage == Stage::router && !cfg.resume && cfg.bayes_spec.rfind("auto:", 0) == 0) {
    // --bayes-layers auto:N: rank the MoE layers of the fine-tuned (det) model
    // by routing stability under input noise; the N least stable get the router.
    int n = std::stoi(cfg.bayes_spec.substr(5));
    nn::RouterConfig det;
    nn::Model probe(mc, det, cfg.seed);
    load_checkpoint(cfg.init, probe, nullptr);
    if (cfg.device == Device::CUDA) probe.to(Device::CUDA);
    RunConfig pc = cfg;
    pc.max_eval_examples = 256;
    if (mc.kind == nn::ModelKind::vit) {
      ImgTaskData d = load_image_task(pc);
      rc.bayes_layers = susceptible_layers(probe, image_evaluator(probe, d.val, pc), n, cfg.auto_gamma);
    } else {
      McTaskData d = load_mc_task(pc);
      rc.bayes_layers = susceptible_layers(probe, mc_evaluator(probe, d.val, pc), n, cfg.auto_gamma);
    }
    std::string ls;
    for (int l : rc.bayes_layers) ls += (ls.empty() ? "" : ",") + std::to_string(l);
    std::fprintf(stderr, "--bayes-layers auto:%d -> %s (least stable at gamma %.3g)\n", n, ls.c_str(), cfg.auto_gamma);
  }
  nn::Model model(mc, rc, cfg.seed);
  nn::AdamWConfig oc = cfg.optim;
  oc.total_steps = cfg.steps;
  nn::AdamW opt(oc);
  TrainState st;
  st.stage = cfg.stage.str();
  st.seed = cfg.seed;
  st.split_seed = cfg.split_seed;
  if (cfg.resume) {
    st = load_checkpoint(last_path, model, &opt);
    std::fprintf(stderr, "resuming %s from step %lld\n", last_path.c_str(), (long long)st.step);
  } else if (!cfg.init.empty()) {
    // Stage 2 adds router heads the fine-tuned checkpoint does not have.
    load_checkpoint(cfg.init, model, nullptr, cfg.stage == Stage::router ? "\\.router\\." : "");
  }

  // --device cuda: parameters and optimizer state move to the GPU once the
  // checkpoints are loaded (load_checkpoint writes host tensors).
  if (cfg.device == Device::CUDA) {
    model.to(Device::CUDA);
    opt.to(Device::CUDA);
  }

  // Freezing: stage 2 trains only the router heads (W_r stays frozen).
  auto& ps = model.params();
  if (cfg.stage == Stage::router) {
    ps.set_trainable(".*", false);
    int n = ps.set_trainable("\\.router\\.", true);
    if (n == 0) fail("--stage router: router '" + rc.name.str() + "' has no trainable parameters on the chosen layers");
  }
  if (!cfg.train_only.empty()) {
    ps.set_trainable(".*", false);
    for (auto& p : cfg.train_only) ps.set_trainable(p, true);
  }
  for (auto& p : cfg.freeze) ps.set_trainable(p, false);
  if (ps.count(true) == 0) fail("no trainable parameters left after --freeze/--train-only");
  reserve_checkpoint_space(cfg.out, ps);
  NanInjection inject = nan_injection(ps);

  // Data
  bool vit = mc.kind == nn::ModelKind::vit;
  if (vit && cfg.stage == Stage::pretrain)
    fail("--stage pretrain: the vision model trains from scratch with --stage finetune (Fashion-MNIST)");
  bool lm = cfg.stage == Stage::pretrain;
  LmData lmd;
  McTaskData mcd;
  ImgTaskData imd;
  if (vit) imd = load_image_task(cfg);
  else if (lm) lmd = load_lm_data(cfg);
  else mcd = load_mc_task(cfg);
  int64_t n_train = vit ? (int64_t)imd.train.size() : lm ? 0 : (int64_t)mcd.train.size();
  int64_t batches_per_epoch = lm ? 1 : std::max<int64_t>(1, (n_train + cfg.batch - 1) / cfg.batch);

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::ofstream log(cfg.out + "/log.jsonl", cfg.resume ? std::ios::app : std::ios::trunc);
  {
    json meta{{"event", "start"}, {"stage", cfg.stage}, {"model", mc}, {"router", rc},
              {"params", ps.count()}, {"trainable", ps.count(true)}, {"seed", cfg.seed}, {"threads", cfg.threads}};
    log << meta.dump() << "\n";
  }
  std::fprintf(stderr, "%s: %lld parameters (%lld trainable), %d threads\n", cfg.stage.str().c_str(),
               (long long)ps.count(), (long long)ps.count(true), cfg.threads);

  auto t_start = std::chrono::steady_clock::now();
  double tokens_done = 0;
  int64_t start_step = st.step;
  auto evaluate = [&]() -> double {
    if (lm) {
      NoGradGuard ng;
      double tot = 0;
      for (int k = 0; k < cfg.eval_batches; ++k) {
        std::vector<int32_t> ids, tg;
        lm_batch(lmd.val, cfg.batch, cfg.seq, cfg.split_seed, nn::name_hash("val/" + std::to_string(k)), ids, tg);
        std::vector<uint8_t> mask(ids.size(), 1);
        nn::ForwardOptions fo;
        fo.seed = cfg.seed;
        auto res = model.forward_lm(ids, cfg.batch, cfg.seq, mask, {}, fo);
        tot += ops::cross_entropy(res.logits, tg).item();
      }
      return tot / cfg.eval_batches;
    }
    if (vit) return evaluate_images(model, imd.val, cfg).nll;
    return evaluate_mc(model, mcd.val, cfg).nll;
  };

  int exit_code = 0;
  int64_t saved_step = cfg.resume ? st.step : -1;  // step of the checkpoint in last_path (-1: none of this run)
  auto last_good = [&]() {
    if (saved_step < 0 || !fs::exists(last_path)) return std::string("none");
    return last_path + " (step " + std::to_string(saved_step) + ")";
  };
  // A checkpoint is written only from finite parameters; a failed write (disk
  // full, I/O error) leaves the previous file in place and names it.
  auto save_or_fail = [&](const std::string& path, const nn::AdamW* o) {
    std::string bad = first_nonfinite_param(ps);
    if (!bad.empty())
      fail("step " + std::to_string(st.step) + ": parameter " + tensor_and_layer(bad) +
           " is non-finite after the update; not saving " + path + "; last good checkpoint: " + last_good());
    try {
      save_checkpoint(path, model, o, st);
    } catch (const Error& e) {
      fail("step " + std::to_string(st.step) + ": cannot save checkpoint: " + e.what() +
           "; last good checkpoint: " + last_good());
    }
  };
  for (int64_t step = st.step + 1; step <= cfg.steps; ++step) {
    ps.zero_grad();
    if (step == inject.step && !inject.grad) {
      Tensor& pv = ps.get(inject.param).value();
      Tensor h = pv.to(Device::CPU).clone();
      h[0] = std::nanf("");
      pv = h.to(pv.device());
    }
    double loss_sum = 0, task_sum = 0, kl_sum = 0, lb_sum = 0, z_sum = 0, pen_sum = 0;
    double ntok = 0;
    std::vector<json> layer_stats;
    for (int micro = 0; micro < cfg.grad_accum; ++micro) {
      uint64_t key = (uint64_t)(step - 1) * cfg.grad_accum + micro;
      nn::ForwardOptions fo;
      fo.training = true;
      fo.seed = cfg.seed;
      fo.step = key;
      fo.samples = rc.train_samples;
      nn::ForwardResult res;
      Var task;
      if (vit) {
        std::vector<int64_t> idx = batch_indices(n_train, cfg.batch, (int64_t)key, cfg.seed);
        res = model.forward_vit(image_batch(imd.train, idx), fo);
        std::vector<int32_t> tg;
        for (int64_t i : idx) tg.push_back(imd.train.labels[(size_t)i]);
        task = ops::cross_entropy(res.logits, tg);
        ntok += (double)idx.size() * model.config().seq_len_vit();
      } else if (lm) {
        std::vector<int32_t> ids, tg;
        lm_batch(lmd.train, cfg.batch, cfg.seq, cfg.seed, nn::name_hash("train/" + std::to_string(key)), ids, tg);
        std::vector<uint8_t> mask(ids.size(), 1);
        res = model.forward_lm(ids, cfg.batch, cfg.seq, mask, {}, fo);
        task = ops::cross_entropy(res.logits, tg);
        ntok += (double)ids.size();
      } else {
        McBatch mb = make_mc_batch(mcd.train, batch_indices(n_train, cfg.batch, (int64_t)key, cfg.seed),
                                   model.config().max_seq);
        res = model.forward_lm(mb.ids, mb.B, mb.T, mb.mask, mb.last, fo);
        std::vector<int32_t> tg;
        for (int32_t l : mb.labels) tg.push_back(answer_tokens()[(size_t)l]);
        task = ops::cross_entropy(res.logits, tg);  // loss on the answer token only
        for (auto m : mb.mask) ntok += m;
      }
      // KL normalisation: token-mean divides the summed KL by the number of
      // real tokens routed per layer; dataset divides it by the number of
      // batches in an epoch (the minibatch ELBO of the whole training set).
      Var kl = res.kl;
      double n_real = res.moe.empty() ? 1.0 : (double)std::max<int64_t>(1, res.moe[0].n_real);
      Var kl_term = cfg.kl_norm == KlNorm::token_mean ? ops::mul_scalar(kl, 1.0 / n_real)
                                                : ops::mul_scalar(kl, 1.0 / (double)batches_per_epoch);
      Var loss = task;
      if (cfg.lb_coef > 0 && cfg.stage != Stage::router) loss = ops::add(loss, ops::mul_scalar(res.lb_loss, cfg.lb_coef));
      if (cfg.z_coef > 0 && cfg.stage != Stage::router) loss = ops::add(loss, ops::mul_scalar(res.z_loss, cfg.z_coef));
      loss = ops::add(loss, ops::mul_scalar(kl_term, cfg.beta));
      loss = ops::add(loss, res.penalty);
      Var scaled = ops::mul_scalar(loss, 1.0 / cfg.grad_accum);
      if (!finite(loss.item())) {
        fail("step " + std::to_string(step) + ": loss is " + std::to_string(loss.item()) + " (task " +
             std::to_string(task.item()) + ", KL " + std::to_string(kl.item()) + "): " + locate_nonfinite(ps, res) +
             "; stopped, last good checkpoint: " + last_good());
      }
      backward(scaled);
      if (step == inject.step && inject.grad && micro == cfg.grad_accum - 1) {
        Var& v = ps.get(inject.param);
        if (v.grad().defined()) {
          Tensor h = v.grad().to(Device::CPU).clone();
          h[0] = std::nanf("");
          v.grad() = h.to(v.grad().device());
        }
      }
      loss_sum += loss.item();
      task_sum += task.item();
      kl_sum += kl_term.item();
      lb_sum += res.lb_loss.item();
      z_sum += res.z_loss.item();
      pen_sum += res.penalty.item();
      if (micro == cfg.grad_accum - 1) {
        for (auto& a : res.moe) {
          std::vector<double> c(a.expert_counts.begin(), a.expert_counts.end());
          double mean = 0, var = 0;
          int dead = 0;
          for (double x : c) mean += x;
          mean /= (double)c.size();
          for (double x : c) var += (x - mean) * (x - mean), dead += x == 0;
          var /= (double)c.size();
          layer_stats.push_back(json{{"layer", a.layer}, {"cv", mean > 0 ? std::sqrt(var) / mean : 0.0},
                                     {"dead", dead}, {"dropped", a.dropped}});
        }
      }
    }
    std::string bad = first_nonfinite_grad(ps);
    if (!bad.empty()) {
      std::string bad_value = first_nonfinite_param(ps);  // the likely origin, if a value is already bad
      fail("step " + std::to_string(step) + ": non-finite gradient in parameter " + tensor_and_layer(bad) +
           (bad_value.empty() ? std::string() : " (parameter " + tensor_and_layer(bad_value) + " holds a non-finite value)") +
           "; stopped, last good checkpoint: " + last_good());
    }
    double gnorm = opt.step(ps);
    st.step = step;
    tokens_done += ntok;
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    double tps = tokens_done / std::max(el, 1e-9);
    double ga = cfg.grad_accum;
    json rec{{"step", step},         {"loss", loss_sum / ga}, {"task_loss", task_sum / ga},
             {"kl", kl_sum / ga},    {"elbo", -(task_sum + kl_sum) / ga},
             {"lb_loss", lb_sum / ga}, {"z_loss", z_sum / ga}, {"penalty", pen_sum / ga},
             {"lr", opt.last_lr()},  {"grad_norm", gnorm},    {"tokens_per_s", tps},
             {"layers", layer_stats}};
    bool do_eval = cfg.eval_every > 0 && (step % cfg.eval_every == 0 || step == cfg.steps);
    bool stop = false;
    if (do_eval) {
      double v = evaluate();
      rec["val_nll"] = v;
      if (v < st.best_val) {
        st.best_val = v;
        st.bad_evals = 0;
        save_or_fail(best_path, nullptr);
      } else if (++st.bad_evals >= cfg.patience && cfg.patience > 0) {
        stop = true;
        rec["early_stop"] = true;
      }
    }
    log << rec.dump() << "\n";
    log.flush();
    if (cfg.progress) {
      double eta = (double)(cfg.steps - step) * el / std::max<int64_t>(1, step - start_step);
      progress_bar(step, cfg.steps, loss_sum / ga, tps, eta);
    }
    bool timed_out = cfg.time_limit_s > 0 && el > cfg.time_limit_s;
    if (do_eval || stop || timed_out || step == cfg.steps || g_signal || step % 100 == 0) {
      save_or_fail(last_path, &opt);
      saved_step = step;
    }
    if (g_signal) {
      std::fprintf(stderr, "\nsignal %d: saved %s at step %lld\n", (int)g_signal, last_path.c_str(), (long long)step);
      exit_code = 128 + g_signal;
      break;
    }
    if (stop) {
      std::fprintf(stderr, "\nearly stop at step %lld (best val NLL %.4f)\n", (long long)step, st.best_val);
      break;
    }
    if (timed_out) {
      log << json{{"event", "time_limit"}, {"step", step}, {"seconds", el}}.dump() << "\n";
      log.flush();
      std::fprintf(stderr, "\ntime limit %.0f s reached at step %lld\n", cfg.time_limit_s, (long long)step);
      break;
    }
  }
  if (cfg.progress) std::fprintf(stderr, "\n");
  if (!fs::exists(best_path)) save_checkpoint(best_path, model, nullptr, st);
  std::string best = st.best_val < 1e299 ? std::to_string(st.best_val) : std::string("n/a (no evaluation ran)");
  std::fprintf(stderr, "%s done: step %lld, best val %s, checkpoints in %s\n", cfg.stage.str().c_str(),
               (long long)st.step, best.c_str(), cfg.out.c_str());
  return exit_code;
}

}  // namespace vm::exp
