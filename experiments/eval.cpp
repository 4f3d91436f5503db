// experiments/eval.cpp — `vmoer eval`: ID accuracy/NLL/calibration, OOD
// detection with every uncertainty score, routing stability, expert load and
// FLOPs of one checkpoint. Prints one JSON object; writes it and CSVs to --out.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "experiments/datasets.h"
#include "experiments/evaluation.h"
#include "experiments/flops.h"
#include "experiments/metrics.h"
#include "experiments/trainer.h"
#include "nn/checkpoint.h"

namespace vm::exp {
namespace fs = std::filesystem;
using nlohmann::json;

static metrics::Matrix to_matrix(const std::vector<std::vector<double>>& rows) {
  return metrics::Matrix::from_rows(rows);
}

static std::vector<int> to_int(const std::vector<int32_t>& v) { return std::vector<int>(v.begin(), v.end()); }

json id_metrics(const McEval& ev, int bins) {
  auto P = to_matrix(ev.probs);
  auto y = to_int(ev.labels);
  auto cal = metrics::calibration(P, y, bins);
  json rel = json::array();
  for (auto& b : cal.bins)
    rel.push_back({{"lo", b.lo}, {"hi", b.hi}, {"count", b.count}, {"confidence", b.mean_confidence},
                   {"accuracy", b.accuracy}});
  return json{{"n", ev.probs.size()},          {"accuracy", metrics::accuracy(P, y)},
              {"nll", metrics::nll(P, y)},     {"brier", metrics::brier(P, y)},
              {"ece", cal.ece},                {"mce", cal.mce},
              {"reliability", rel}};
}

// OOD scores of one evaluation, "higher = more OOD".
std::map<std::string, std::vector<double>> ood_scores(const McEval& ev) {
  std::map<std::string, std::vector<double>> s;
  for (size_t i = 0; i < ev.probs.size(); ++i) {
    double mp = *std::max_element(ev.probs[i].begin(), ev.probs[i].end());
    s["msp"].push_back(-mp);  // negated max-softmax probability
    s["entropy"].push_back(ev.entropy[i]);
    s["ilv"].push_back(ev.ilv[i]);
    s["gate_entropy"].push_back(ev.gate_entropy[i]);
    s["temperature"].push_back(ev.temperature[i]);
    s["mutual_info"].push_back(ev.mutual_info.empty() ? 0.0 : ev.mutual_info[i]);
  }
  return s;
}

json ood_metrics_json(const McEval& id, const McEval& ood) {
  auto si = ood_scores(id), so = ood_scores(ood);
  json out = json::object();
  for (auto& [name, idv] : si) {
    const auto& odv = so[name];
    bool constant = true;
    for (double v : idv) constant = constant && v == idv[0];
    for (double v : odv) constant = constant && v == idv[0];
    if (constant) continue;  // e.g. ILV of a non-Bayesian router: no information
    auto m = metrics::ood_metrics_from_sets(idv, odv);
    out[name] = {{"auroc", m.auroc}, {"aupr_in", m.aupr_in}, {"aupr_out", m.aupr_out}, {"fpr95", m.fpr95}};
  }
  return out;
}

static void write_probs_csv(const std::string& path, const McEval& ev) {
  std::string s = "label";
  for (size_t c = 0; c < (ev.probs.empty() ? 0 : ev.probs[0].size()); ++c) s += ",p" + std::to_string(c);
  s += "\n";
  char buf[128];
  for (size_t i = 0; i < ev.probs.size(); ++i) {
    s += std::to_string(ev.labels[i]);
    for (double p : ev.probs[i]) {
      std::snprintf(buf, sizeof buf, ",%.9g", p);
      s += buf;
    }
    s += "\n";
  }
  nn::atomic_write(path, s);
}

// Routing stability: Jaccard of top-K sets with and without embedding noise,
// σ = γ · mean embedding norm, per layer and averaged (method notes §3).
// Stochastic routers draw the same random numbers in the clean and the noisy
// pass (same seed and batch index), so the Jaccard measures the effect of
// the input noise alone.
EvalFn mc_evaluator(nn::Model& model, const McSet& set, const RunConfig& cfg) {
  return {[&model, &set, &cfg](double noise, RoutingTrace* tr) { return evaluate_mc(model, set, cfg, noise, tr); },
          model.mean_embedding_norm()};
}
EvalFn image_evaluator(nn::Model& model, const ImgSet& set, const RunConfig& cfg) {
  std::vector<int64_t> first;
  for (int64_t i = 0; i < std::min<int64_t>(256, (int64_t)set.size()); ++i) first.push_back(i);
  return {[&model, &set, &cfg](double noise, RoutingTrace* tr) { return evaluate_images(model, set, cfg, noise, tr); },
          model.mean_patch_embedding_norm(image_batch(set, first))};
}

std::vector<std::pair<int, double>> layer_stability(nn::Model& model, const EvalFn& eval, double gamma) {
  RoutingTrace clean, noisy;
  eval.run(0.0, &clean);
  eval.run(gamma * eval.embed_norm, &noisy);
  int K = model.config().top_k;
  std::vector<std::pair<int, double>> out;
  for (size_t l = 0; l < clean.experts.size(); ++l) {
    std::vector<int> a(clean.experts[l].begin(), clean.experts[l].end());
    std::vector<int> b(noisy.experts[l].begin(), noisy.experts[l].end());
    out.push_back({clean.layers[l], metrics::mean_jaccard(a, b, (size_t)K)});
  }
  return out;
}

json stability_sweep(nn::Model& model, const EvalFn& eval, const std::vector<double>& gammas) {
  double base = eval.embed_norm;
  json rows = json::array();
  for (double g : gammas) {
    auto ls = layer_stability(model, eval, g);
    json per_layer = json::array();
    double tot = 0;
    for (auto& [layer, j] : ls) {
      per_layer.push_back({{"layer", layer}, {"jaccard", j}});
      tot += j;
    }
    rows.push_back({{"gamma", g}, {"sigma", g * base}, {"jaccard", ls.empty() ? 1.0 : tot / (double)ls.size()},
                    {"per_layer", per_layer}});
  }
  return rows;
}

std::vector<int> susceptible_layers(nn::Model& model, const EvalFn& eval, int n, double gamma) {
  auto ls = layer_stability(model, eval, gamma);
  if (n < 1 || n > (int)ls.size())
    fail("--bayes-layers auto:" + std::to_string(n) + ": the model has " + std::to_string(ls.size()) + " MoE layers");
  std::stable_sort(ls.begin(), ls.end(), [](auto& a, auto& b) { return a.second < b.second; });
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(ls[(size_t)i].first);
  std::sort(out.begin(), out.end());
  return out;
}

McEval temperature_scaled(const McEval& ev, double T) {
  McEval o = ev;
  int64_t correct = 0, labelled = 0;
  double nll = 0;
  for (size_t i = 0; i < o.probs.size(); ++i) {
    auto& p = o.probs[i];
    double z = 0;
    for (auto& q : p) z += (q = std::pow(std::max(q, 1e-300), 1.0 / T));  // softmax(log p / T)
    // (mutual information is left as measured: it describes the router, not the calibration map)
    double h = 0;
    for (auto& q : p) {
      q /= z;
      if (q > 0) h -= q * std::log(q);
    }
    o.entropy[i] = h;
    if (o.labels[i] >= 0) {
      ++labelled;
      correct += (int)(std::max_element(p.begin(), p.end()) - p.begin()) == o.labels[i];
      nll -= std::log(std::max(p[(size_t)o.labels[i]], 1e-12));
    }
  }
  o.accuracy = labelled ? (double)correct / labelled : 0;
  o.nll = labelled ? nll / labelled : 0;
  return o;
}

json expert_load(nn::Model& model, const RoutingTrace& tr) {
  json out = json::array();
  int E = model.config().n_experts;
  for (size_t l = 0; l < tr.experts.size(); ++l) {
    std::vector<int> ix(tr.experts[l].begin(), tr.experts[l].end());
    auto counts = metrics::expert_counts(ix, E);
    auto ls = metrics::load_stats(counts);
    out.push_back({{"layer", tr.layers[l]}, {"cv", ls.cv}, {"dead", ls.dead}, {"counts", counts}});
  }
  return out;
}

std::unique_ptr<nn::Model> load_model_for_eval(const RunConfig& cfg) {
  nn::ModelConfig mc;
  nn::RouterConfig rc;
  read_checkpoint_configs(cfg.init, mc, rc);
  // Router flags given on the command line (Use::override in the field
  // tables) override the checkpoint's settings (e.g. a det checkpoint
  // evaluated with sample-k or mc-dropout). Routers with trained heads
  // (mfvr, fcvr, vtsr) need a stage-2 checkpoint of their own.
  auto overrides = [&](const auto& row) { return (row.use & Use::override) && cfg.given(row.flag); };
  const nn::RouterConfig& want = cfg.router;
  if (cfg.given("--router") && want.name != rc.name && nn::router_info(want.name).heads)
    fail("--router " + want.name.str() + ": its heads are trained in stage 2, and " + cfg.init + " has router " +
         rc.name.str() + " (vmoer train --stage router --router " + want.name.str() + " --init " + cfg.init + ")");
  copy_fields(rc, want, [&](const auto& row, const std::string&) { return overrides(row); });
  if (cfg.given("--bayes-layers")) rc.bayes_layers = want.bayes_layers;  // parsed from RunConfig::bayes_spec
  bool any = false;
  for_each_field(cfg, [&](const auto& row, const auto&, const std::string&) { any = any || overrides(row); });
  if (any) rc.validate(mc.n_layers, mc.n_experts, mc.top_k);
  auto model = std::make_unique<nn::Model>(mc, rc, cfg.seed);
  load_checkpoint(cfg.init, *model, nullptr);
  if (cfg.device == Device::CUDA) model->to(Device::CUDA);
  return model;
}

int run_eval(RunConfig cfg) {
  require_device(cfg.device, cfg.allow_tf32);
  omp_set_num_threads(cfg.threads);
  if (!fs::exists(cfg.init)) fail("--ckpt: no such file '" + cfg.init + "'");
  auto model = load_model_for_eval(cfg);
  inherit_data_settings(cfg, cfg.init);
  bool vit = model->config().kind == nn::ModelKind::vit;
  McTaskData task;
  ImgTaskData itask;
  if (vit) itask = load_image_task(cfg);
  else task = load_mc_task(cfg);
  McSet& set = cfg.split == Split::val ? task.val : task.test;
  ImgSet& iset = cfg.split == Split::val ? itask.val : itask.test;
  EvalFn evaluator = vit ? image_evaluator(*model, iset, cfg) : mc_evaluator(*model, set, cfg);
  RoutingTrace trace;
  McEval ev = evaluator.run(0.0, &trace);
  json out;
  out["checkpoint"] = cfg.init;
  out["router"] = model->router_config().name;
  out["samples"] = model->router_config().samples;
  out["bayes_layers"] = model->bayes_layer_ids();
  out["split"] = cfg.split;
  out["seed"] = cfg.seed;
  out["split_seed"] = cfg.split_seed;
  out["id"] = id_metrics(ev, cfg.ece_bins);
  out["expert_load"] = expert_load(*model, trace);
  out["flops"] = flops_json(*model, vit ? model->config().seq_len_vit() : 128);
  out["ood_convention"] = "OOD is the positive class; a higher score means more OOD (msp is the negated max probability)";
  fs::create_directories(cfg.out);
  write_probs_csv(cfg.out + "/probs_" + cfg.split.str() + ".csv", ev);
  if (cfg.ood) {
    json o = json::object();
    if (vit) {
      for (auto& os : load_image_ood_sets(cfg)) {
        McEval oe = evaluate_images(*model, os, cfg);
        o[os.name] = {{"kind", ood_kind(os.name)}, {"n", os.size()}, {"scores", ood_metrics_json(ev, oe)}};
      }
    } else {
      for (auto& os : load_ood_sets(cfg)) {
        McEval oe = evaluate_mc(*model, os, cfg);
        o[os.name] = {{"kind", ood_kind(os.name)}, {"n", os.size()}, {"scores", ood_metrics_json(ev, oe)}};
      }
    }
    out["ood"] = o;
  }
  if (cfg.stability) out["stability"] = stability_sweep(*model, evaluator, cfg.gammas);
  nn::atomic_write(cfg.out + "/eval.json", out.dump(2) + "\n");
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace vm::exp
