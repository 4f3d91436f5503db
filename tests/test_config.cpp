// tests/test_config.cpp — the field tables (core/fields.h, one per config
// struct), the enum string tables (core/named.h) and the router registry
// (nn/routers/registry.cpp). Every test iterates over the tables, so a new
// row or router is covered without editing this file:
//   - every field has a flag (or is marked derived, saying why) and a unique
//     JSON key; the checkpoint keys are those existing checkpoints have;
//   - every field round-trips through JSON, and every flag sets its field;
//   - changing any field of a stage's config changes its cache key, except
//     the fields that cannot change a stage (listed here, with why);
//   - the registry has a row per router, and a field a router does not list
//     as read leaves its routing bit for bit unchanged.
#include <doctest/doctest.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "experiments/cli_fields.h"
#include "experiments/run_config.h"
#include "nn/transformer.h"

using namespace vm;
using nlohmann::json;

namespace {

// A different valid value of the same type.
template <class T>
void perturb(T& v) {
  if constexpr (is_named<T>::value) {
    using E = decltype(v.value());
    v = (E)(((size_t)v.value() + 1) % enum_count<E>());
  } else if constexpr (std::is_same_v<T, bool>) {
    v = !v;
  } else if constexpr (std::is_integral_v<T>) {
    v = (T)(v + 3);
  } else if constexpr (std::is_floating_point_v<T>) {
    v = v * 1.5 + 0.25;
  } else if constexpr (std::is_same_v<T, std::string>) {
    v += "x";
  } else {
    static_assert(is_vector<T>::value);
    typename T::value_type x{};
    perturb(x);
    v.push_back(x);
  }
}

// v as the argument of its flag.
template <class T>
std::string as_text(const T& v) {
  if constexpr (is_named<T>::value) {
    return v.str();
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    char b[32];
    std::snprintf(b, sizeof b, "%.17g", v);
    return b;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else {
    std::string s;
    for (auto& x : v) {
      if (!s.empty()) s += ',';
      s += as_text(x);
    }
    return s;
  }
}

// Every leaf field of RunConfig (nested tables included): path -> row facts.
struct Leaf {
  std::string path, key, flag;
  unsigned use;
  Group group;
};
std::vector<Leaf> leaves() {
  std::vector<Leaf> out;
  exp::RunConfig c;
  for_each_field(c, [&](const auto& row, auto&, const std::string& path) {
    out.push_back({path, row.key, row.flag, row.use, row.group});
  });
  return out;
}

// Perturb the field at `path` of c.
void perturb_at(exp::RunConfig& c, const std::string& path) {
  int n = 0;
  for_each_field(c, [&](const auto&, auto& v, const std::string& p) {
    if (p == path) perturb(v), ++n;
  });
  REQUIRE(n == 1);
}

std::set<std::string> keys_of(const json& j) {
  std::set<std::string> k;
  for (auto& [key, v] : j.items()) k.insert(key);
  return k;
}

}  // namespace

TEST_CASE("config tables: every field has a flag (or says why not), and flags and keys are unique") {
  auto ls = leaves();
  // The tables cover every member (the static_asserts beside them count the
  // members); here: the rows say how each one is set.
  std::set<std::string> flags, paths, derived;
  for (auto& l : ls) {
    INFO(l.path);
    CHECK(paths.insert(l.path).second);
    CHECK(l.key == l.path.substr(l.path.rfind('.') + 1));
    if (l.use & Use::derived) {
      CHECK(l.flag.empty());
      derived.insert(l.path);
      continue;
    }
    REQUIRE(l.flag.rfind("--", 0) == 0);
    CHECK(flags.insert(l.flag).second);
    CHECK((l.use & (Use::train | Use::eval | Use::inspect | Use::repro)) != 0);  // a flag of some subcommand
  }
  // The fields without a flag of their own: fixed by the data, or set from another flag.
  CHECK(derived == std::set<std::string>{"model.vocab", "model.image_size", "model.n_classes", "router.bayes_layers",
                                         "optim.total_steps"});
  // Existing checkpoints store these keys ("model" and "router" metadata);
  // new ones must read them, so they may grow but never lose or rename one.
  std::set<std::string> model_keys{"kind",      "vocab", "max_seq",       "d_model",    "n_layers",        "n_heads",
                                   "norm",      "tied_head", "n_experts", "top_k",      "d_expert",        "act",
                                   "shared_expert", "moe_layers", "capacity_factor", "image_size", "patch", "n_classes"};
  std::set<std::string> router_keys{"name",        "jitter",    "temp",           "dropout",      "prior_scale",
                                    "samples",     "train_samples", "temp_mode",  "temp_posterior", "temp_penalty",
                                    "temp_prior_scale", "vtsr_sampler", "bayes_layers",
                                    // issue 16 §2 (they grow the set; older checkpoints read with the defaults)
                                    "logvar_init", "mean_init", "temp_penalty_norm"};
  CHECK(keys_of(json(nn::ModelConfig{})) == model_keys);
  CHECK(keys_of(json(nn::RouterConfig{})) == router_keys);
  // The values are names and numbers, as before the tables.
  json r = nn::RouterConfig{};
  CHECK(r["name"] == "det");
  CHECK(r["temp_mode"] == "shared");
  CHECK(json(nn::ModelConfig{})["kind"] == "lm");
}

TEST_CASE("config tables: every field round-trips through JSON") {
  for (auto& l : leaves()) {
    INFO(l.path);
    exp::RunConfig c;
    perturb_at(c, l.path);
    json j = fields_to_json<json>(c);
    exp::RunConfig d;
    fields_from_json(j, d);
    CHECK(d == c);
    CHECK(!(d == exp::RunConfig{}));
    // the nested configs through the checkpoint's path (nlohmann ADL)
    CHECK(json(c.model).get<nn::ModelConfig>() == c.model);
    CHECK(json(c.router).get<nn::RouterConfig>() == c.router);
  }
  // A missing key keeps its default (older checkpoints); a wrong type or an unknown name throws.
  exp::RunConfig d;
  d.beta = 7;
  fields_from_json(json::object(), d);
  CHECK(d == exp::RunConfig{});
  CHECK_THROWS_AS(json({{"n_layers", "four"}}).get<nn::ModelConfig>(), json::exception);
  CHECK_THROWS_WITH_AS(json({{"name", "bayes"}}).get<nn::RouterConfig>(),
                       "unknown router 'bayes' (det, noisy, sample-k, mc-dropout, mfvr, fcvr, vtsr)", Error);
}

TEST_CASE("config tables: every flag sets its field, on each subcommand that has it") {
  for (unsigned sub : {Use::train, Use::eval, Use::inspect, Use::repro}) {
    for (auto& l : leaves()) {
      if (!(l.use & sub) || l.flag.empty()) continue;
      INFO("subcommand bit " << sub << ", " << l.flag);
      exp::RunConfig want;
      perturb_at(want, l.path);
      std::string args = l.flag;
      bool is_flag = false;  // a plain on/off flag takes no argument
      for_each_field(want, [&](const auto& row, const auto& v, const std::string& p) {
        if (p != l.path) return;
        using T = std::remove_cvref_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) is_flag = !(row.use & Use::bool_arg);
        if (!is_flag) args += " " + as_text(v);
      });
      CLI::App app;
      exp::RunConfig c;
      cli::add_field_options(&app, c, sub);
      REQUIRE_NOTHROW(app.parse(args, false));
      CHECK(c == want);
      CHECK(cli::given_flags(&app, c, sub) == std::vector<std::string>{l.flag});
    }
  }
  // An unknown name: one line naming the flag.
  CLI::App app;
  exp::RunConfig c;
  cli::add_field_options(&app, c, Use::train);
  CHECK_THROWS_WITH_AS(app.parse("--router bayes", false),
                       "--router: unknown router 'bayes' (det, noisy, sample-k, mc-dropout, mfvr, fcvr, vtsr)", Error);
  CLI::App app2;
  cli::add_field_options(&app2, c, Use::train);
  CHECK_THROWS_WITH_AS(app2.parse("--kl-norm tokens", false),
                       "--kl-norm: must be token-mean, dataset or sequence-sum, got 'tokens'", Error);
}

TEST_CASE("stage cache key: changing any field of a stage's config changes its key") {
  exp::RunConfig base;
  std::string k0 = exp::stage_key(base), t0 = exp::stage_key(exp::training_stage(base));
  CHECK(k0.size() == 12);
  std::set<std::string> runtime, eval_only;
  for (auto& l : leaves()) {
    INFO(l.path);
    exp::RunConfig c = base;
    perturb_at(c, l.path);
    // The key hashes every field but the Use::runtime ones.
    CHECK((exp::stage_key(c) != k0) == !(l.use & Use::runtime));
    // A training stage resets the evaluation-only fields first: they cannot change it.
    bool counts = !(l.use & Use::runtime) && l.group != Group::evaluation;
    CHECK((exp::stage_key(exp::training_stage(c)) != t0) == counts);
    if (l.use & Use::runtime) runtime.insert(l.path);
    if (l.group == Group::evaluation) eval_only.insert(l.path);
  }
  // What a stage's key leaves out, and why (experiments/run_config.h): the
  // output directory and whether to resume (both follow from the key itself;
  // a resumed stage equals an uninterrupted one), the progress bar, and the
  // thread count (bitwise-identical results for any count since b1c05d5),
  // the time cap (it changes nothing unless hit; a capped stage says so
  // and is continued when rerun without a cap), and the multi-process
  // settings (a bounded wait and a bucket size change no result).
  CHECK(runtime == std::set<std::string>{"out", "resume", "force", "threads", "progress", "time_limit_s",
                                         "dist_timeout", "bucket_mb"});
  // Read by evaluation only, so reset in training stages.
  CHECK(eval_only == std::set<std::string>{"ood_size", "split", "ece_bins", "gammas", "stability", "ood", "mi_samples",
                                          "stability_draws", "sensitivity"});
  // stage_inputs is the whole config less the runtime fields.
  json in = exp::stage_inputs(base);
  CHECK(!in.contains("threads"));
  CHECK(in["model"] == json(base.model));
  CHECK(in["router"] == json(base.router));
  CHECK(in["beta"] == base.beta);
  // A Use::key_if_set field is in the key only away from its default, so keys
  // made before it existed still match: --batch-shards 1 (one process's
  // computation) is not in it, --batch-shards 2 is.
  CHECK(!in.contains("batch_shards"));
  exp::RunConfig two = base;
  two.batch_shards = 2;
  CHECK(exp::stage_inputs(two)["batch_shards"] == 2);
  CHECK(exp::stage_key(two) != k0);
}

TEST_CASE("enum names: parse and print every value; unknown names fail in one line") {
  auto check_all = [](auto tag) {
    using E = decltype(tag);
    for (size_t i = 0; i < enum_count<E>(); ++i) {
      Named<E> v((E)i);
      CHECK(Named<E>(v.str()) == (E)i);
      CHECK(json(v).get<Named<E>>() == (E)i);
    }
  };
  check_all(nn::RouterKind{});
  check_all(nn::ModelKind{});
  check_all(nn::Norm{});
  check_all(nn::Act{});
  check_all(nn::TempMode{});
  check_all(nn::TempPosterior{});
  check_all(nn::VtsrSampler{});
  check_all(exp::Stage{});
  check_all(exp::Task{});
  check_all(exp::KlNorm{});
  check_all(exp::Split{});
  check_all(Device{});
  CHECK_THROWS_WITH_AS(Named<exp::Stage>("nope"), "must be pretrain, finetune or router, got 'nope'", Error);
  CHECK(enum_choices<nn::Norm>() == "rms | layer");
  std::ostringstream os;
  os << Named<nn::TempMode>(nn::TempMode::per_expert);
  CHECK(os.str() == "per-expert");
}

TEST_CASE("router registry: a row per router; the fields a router does not read leave its routing unchanged") {
  // Compile-time: registry_complete() in nn/routers/registry.cpp. Here: the rows' facts.
  std::set<std::string> router_keys, read;
  for_each_row<nn::RouterConfig>([&](const auto& row) { router_keys.insert(row.key); });
  for (size_t i = 0; i < enum_count<nn::RouterKind>(); ++i) {
    auto k = (nn::RouterKind)i;
    const nn::RouterInfo& info = nn::router_info(k);
    INFO(enum_name(k));
    CHECK(info.kind == k);
    CHECK((!info.heads || info.bayesian));  // heads are trained in stage 2, on the Bayesian layers
    for (auto& key : router_keys)
      if (nn::router_reads(k, key)) read.insert(key);
    // every listed key is a RouterConfig field
    std::istringstream ps{std::string(info.params)};
    for (std::string key; ps >> key;) CHECK_MESSAGE(router_keys.count(key), key);
    auto f = nn::router_info(k).flops(nn::RouterDims{96, 8, 2, 35, 24, 24, 16}, nn::RouterConfig{});
    CHECK(f.heads >= 0);
    CHECK(f.sampling >= 0);
    if (!info.bayesian) CHECK(f.heads + f.sampling == 0);  // det and noisy route as det at evaluation
  }
  // Every router field is read by some router, except those every router shares.
  for (auto& key : router_keys)
    if (key != "name" && key != "bayes_layers" && key != "jitter") CHECK_MESSAGE(read.count(key), key);

  // Behaviour: a model with router k routes bit for bit the same (training and
  // evaluation, parameters initialised alike) when a field k does not read changes.
  nn::ModelConfig mc;
  mc.d_model = 16;
  mc.n_layers = 2;
  mc.n_heads = 2;
  mc.n_experts = 4;
  mc.top_k = 2;
  mc.d_expert = 16;
  mc.max_seq = 12;
  const int B = 2, T = 6;
  std::vector<int32_t> ids;
  for (int i = 0; i < B * T; ++i) ids.push_back(3 + 17 * i % 250);
  std::vector<uint8_t> mask(ids.size(), 1);
  mask.back() = 0;  // one padding token
  auto run = [&](const nn::RouterConfig& rc, bool training) {
    nn::Model m(mc, rc, 11);
    nn::ForwardOptions fo;
    fo.training = training;
    fo.seed = 5;
    fo.step = 3;
    fo.samples = training ? rc.train_samples : rc.samples;  // as the trainer and the evaluation set S
    auto res = m.forward_lm(ids, B, T, mask, {}, fo);
    std::vector<float> out(res.logits.value().data(), res.logits.value().data() + res.logits.value().numel());
    for (Var* v : {&res.kl, &res.penalty})
      if (v->defined()) out.push_back(v->item());
    for (auto& a : res.moe)
      for (int32_t e : a.route.experts) out.push_back((float)e);
    return out;
  };
  for (size_t i = 0; i < enum_count<nn::RouterKind>(); ++i) {
    nn::RouterConfig rc;
    rc.name = (nn::RouterKind)i;
    rc.samples = 3;
    for (bool training : {true, false}) {
      auto ref = run(rc, training);
      nn::RouterConfig probe = rc;
      for_each_field(probe, [&](const auto& row, auto& v, const std::string& key) {
        if (key == "name" || key == "bayes_layers" || key == "jitter" || nn::router_reads(rc.name, key)) return;
        std::string what = rc.name.str() + (training ? " training: " : " evaluation: ") + key;
        INFO(what);
        auto saved = v;
        perturb(v);
        CHECK(run(probe, training) == ref);
        v = saved;
      });
    }
  }
}
