// experiments/eval.cpp — `vmoer eval`: ID accuracy/NLL/calibration, OOD
// detection with every uncertainty score, routing stability, expert load and
// FLOPs of one checkpoint. Prints one JSON object; writes it and CSVs to --out.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/dist.h"
#include "experiments/build_info.h"
#include "experiments/data_parallel.h"
#include "experiments/datasets.h"
#include "experiments/evaluation.h"
#include "experiments/flops.h"
#include "experiments/metrics.h"
#include "experiments/train_guards.h"
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
    // the predictive arm (--mi-samples): entropy of p̂ = mean over routing draws
    if (!ev.predictive.empty())
      s["predictive_entropy"].push_back(metrics::entropy(ev.predictive[i].data(), ev.predictive[i].size()));
    if (ev.length.size() == ev.probs.size()) s["length"].push_back(ev.length[i]);  // the model-free baseline (constant for images)
  }
  return s;
}

json ood_metrics_json(const McEval& id, const McEval& ood) {
  auto si = ood_scores(id), so = ood_scores(ood);
  json out = json::object();
  for (auto& [name, idv] : si) {
    const auto& odv = so[name];
    if (idv.empty() || odv.empty()) continue;
    bool constant = true;
    for (double v : idv) constant = constant && v == idv[0];
    for (double v : odv) constant = constant && v == idv[0];
    if (constant) continue;  // e.g. ILV of a non-Bayesian router: no information
    auto m = metrics::ood_metrics_from_sets(idv, odv);
    out[name] = {{"auroc", m.auroc},
                 {"aupr_in", m.aupr_in},
                 {"aupr_out", m.aupr_out},
                 {"fpr95_ood_recall", m.fpr95_ood_recall},  // ID flagged OOD at 95% OOD recall (ours)
                 {"fpr95_id_tpr", m.fpr95_id_tpr}};         // OOD accepted as ID at 95% ID kept (OpenOOD)
  }
  return out;
}

// Every OOD score of every example, ID and each OOD set (set, kind, index,
// score columns): what the AUROCs are computed from, for checks such as
// "does this score only track prompt length?".
static std::string scores_csv_rows(const std::string& set, const std::string& kind, const McEval& ev,
                                   std::vector<std::string>& cols) {
  auto sc = ood_scores(ev);
  if (cols.empty())
    for (auto& [name, v] : sc) cols.push_back(name);
  std::string s;
  char buf[64];
  for (size_t i = 0; i < ev.probs.size(); ++i) {
    s += set + "," + kind + "," + std::to_string(i);
    for (auto& c : cols) {
      auto it = sc.find(c);
      std::snprintf(buf, sizeof buf, ",%.9g", it == sc.end() || it->second.size() <= i ? NAN : it->second[i]);
      s += buf;
    }
    s += "\n";
  }
  return s;
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
// σ = γ · mean embedding norm, per layer and averaged (method notes §3), under
// three definitions (docs/vmoer.md "Measuring without artefacts"):
//   shared:       the noisy pass draws the same router random numbers as the
//                 clean pass (same seed, set and batch index): the effect of
//                 the input noise alone, inflated for a router whose own
//                 noise decides the selection (sample-k, vtsr);
//   independent:  the noisy pass draws fresh router numbers (draw key
//                 "stability/<d>"), Jaccard averaged over d = 1..D
//                 (--stability-draws D): the routing as used, run twice;
//   distribution: top-K of the routing distribution itself (p̄ for mfvr,
//                 fcvr and mc-dropout, softmax(l/T) for sample-k and vtsr,
//                 softmax(l) for det) in the clean and the shared noisy pass.
// For det all three coincide; for mfvr/fcvr/mc-dropout shared = distribution.
EvalFn mc_evaluator(nn::Model& model, const McSet& set, const RunConfig& cfg) {
  RunConfig c = cfg;
  c.mi_samples = 0;  // the stability passes need the routing, not the predictive arm
  return {[&model, &set, c](double noise, RoutingTrace* tr, const std::string& draw) {
            return evaluate_mc(model, set, c, noise, tr, draw);
          },
          model.mean_embedding_norm()};
}
EvalFn image_evaluator(nn::Model& model, const ImgSet& set, const RunConfig& cfg) {
  std::vector<int64_t> first;
  for (int64_t i = 0; i < std::min<int64_t>(256, (int64_t)set.size()); ++i) first.push_back(i);
  RunConfig c = cfg;
  c.mi_samples = 0;
  return {[&model, &set, c](double noise, RoutingTrace* tr, const std::string& draw) {
            return evaluate_images(model, set, c, noise, tr, draw);
          },
          model.mean_patch_embedding_norm(image_batch(set, first))};
}

static std::vector<double> per_layer_jaccard(const std::vector<std::vector<int32_t>>& a,
                                             const std::vector<std::vector<int32_t>>& b, int K) {
  std::vector<double> out;
  for (size_t l = 0; l < a.size(); ++l)
    out.push_back(metrics::mean_jaccard(std::vector<int>(a[l].begin(), a[l].end()),
                                        std::vector<int>(b[l].begin(), b[l].end()), (size_t)K));
  return out;
}

std::vector<LayerStability> layer_stability3(nn::Model& model, const EvalFn& eval, double gamma, int draws,
                                             const RoutingTrace* clean_in) {
  RoutingTrace clean_own, noisy;
  if (!clean_in) eval.run(0.0, &clean_own, "");
  const RoutingTrace& clean = clean_in ? *clean_in : clean_own;
  eval.run(gamma * eval.embed_norm, &noisy, "");
  int K = model.config().top_k;
  auto shared = per_layer_jaccard(clean.experts, noisy.experts, K);
  auto dist = per_layer_jaccard(clean.dist_experts, noisy.dist_experts, K);
  std::vector<double> indep(shared.size(), 0.0);
  for (int d = 1; d <= draws; ++d) {
    RoutingTrace fresh;
    eval.run(gamma * eval.embed_norm, &fresh, "stability/" + std::to_string(d));
    auto j = per_layer_jaccard(clean.experts, fresh.experts, K);
    for (size_t l = 0; l < j.size(); ++l) indep[l] += j[l] / draws;
  }
  std::vector<LayerStability> out;
  for (size_t l = 0; l < shared.size(); ++l)
    out.push_back({clean.layers[l], shared[l], draws > 0 ? indep[l] : NAN, dist[l]});
  return out;
}

std::vector<std::pair<int, double>> layer_stability(nn::Model& model, const EvalFn& eval, double gamma) {
  std::vector<std::pair<int, double>> out;
  for (auto& ls : layer_stability3(model, eval, gamma, 0, nullptr)) out.push_back({ls.layer, ls.shared});
  return out;
}

static json jaccards(double shared, double indep, double dist) {
  json j{{"shared", shared}, {"distribution", dist}};
  j["independent"] = std::isnan(indep) ? json(nullptr) : json(indep);
  return j;
}

json stability_sweep(nn::Model& model, const EvalFn& eval, const std::vector<double>& gammas, int draws) {
  double base = eval.embed_norm;
  RoutingTrace clean;  // one clean pass serves every γ
  eval.run(0.0, &clean, "");
  json rows = json::array();
  for (double g : gammas) {
    auto ls = layer_stability3(model, eval, g, draws, &clean);
    json per_layer = json::array();
    double ts = 0, ti = 0, td = 0;
    for (auto& l : ls) {
      per_layer.push_back({{"layer", l.layer}, {"jaccard", jaccards(l.shared, l.independent, l.distribution)}});
      ts += l.shared;
      ti += l.independent;
      td += l.distribution;
    }
    double n = (double)ls.size();
    rows.push_back({{"gamma", g},
                    {"sigma", g * base},
                    {"draws", draws},
                    {"jaccard", ls.empty() ? jaccards(1, 1, 1) : jaccards(ts / n, ti / n, td / n)},
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

// ---- routing sensitivity (--sensitivity, --bayes-layers auto-sensitive:N) ------------------
// Copy every parameter of `src` that `dst` has under the same name (host copy).
static void copy_shared_params(nn::Model& src, nn::Model& dst) {
  for (auto& [name, v] : dst.params().all()) {
    const Var* s = src.params().find(name);
    if (!s) fail("routing sensitivity: parameter '" + name + "' missing in the evaluated model");
    v.value() = s->value().to(Device::CPU).clone();
  }
}

std::vector<std::pair<int, double>> routing_sensitivity(nn::Model& trained, const std::function<McEval(nn::Model&)>& eval,
                                                        uint64_t seed) {
  const nn::ModelConfig& mc = trained.config();
  Device dev = trained.device();
  nn::Model det(mc, nn::RouterConfig{}, seed);
  copy_shared_params(trained, det);
  if (dev == Device::CUDA) det.to(dev);
  double base = eval(det).nll;
  std::vector<std::pair<int, double>> out;
  for (int l : det.moe_layer_ids()) {
    // Layer l routes with sample-k at T = 1e9: l/T is ~0, so softmax(l/T) is
    // uniform, Gumbel-top-K draws a uniformly random K-subset, and the gates
    // (softmax over the chosen l/T) are 1/K each. Every other layer: det.
    nn::RouterConfig rnd;
    rnd.name = nn::RouterKind::sample_k;
    rnd.temp = 1e9;
    rnd.bayes_layers = {l};
    nn::Model m(mc, rnd, seed);
    copy_shared_params(trained, m);
    if (dev == Device::CUDA) m.to(dev);
    out.push_back({l, eval(m).nll - base});
  }
  return out;
}

std::vector<int> sensitive_layers(const std::vector<std::pair<int, double>>& sens, int n) {
  if (n < 1 || n > (int)sens.size())
    fail("--bayes-layers auto-sensitive:" + std::to_string(n) + ": the model has " + std::to_string(sens.size()) +
         " MoE layers");
  auto s = sens;
  std::stable_sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.second > b.second; });
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(s[(size_t)i].first);
  std::sort(out.begin(), out.end());
  return out;
}

json sensitivity_json(const std::vector<std::pair<int, double>>& sens) {
  json a = json::array();
  for (auto& [l, d] : sens) a.push_back({{"layer", l}, {"delta_nll", d}});
  return a;
}

std::vector<int> resolve_auto_layers(nn::Model& probe, const AutoLayers& a,
                                     const std::function<EvalFn(nn::Model&)>& make_eval, double gamma, uint64_t seed) {
  if (a.rank == AutoLayers::unstable) return susceptible_layers(probe, make_eval(probe), a.n, gamma);
  auto sens = routing_sensitivity(
      probe, [&](nn::Model& m) { return make_eval(m).run(0.0, nullptr, ""); }, seed);
  return sensitive_layers(sens, a.n);
}

// ---- what the router heads learned ---------------------------------------------------------
json head_movement(nn::Model& model, uint64_t init_seed) {
  // The parameters of the stage-2 heads are drawn from Philox streams keyed by
  // (seed, parameter name) (nn/params.h), so the same config and seed rebuild
  // them exactly as they were before stage 2's first step.
  nn::Model init(model.config(), model.router_config(), init_seed);
  json out = json::array();
  for (int l : model.bayes_layer_ids()) {
    std::string prefix = "layers." + std::to_string(l) + ".moe.router.";
    json heads = json::array();
    for (auto& [name, v] : model.params().all()) {
      if (name.rfind(prefix, 0) != 0) continue;
      const Var* w0 = init.params().find(name);
      if (!w0) continue;
      Tensor w = v.value().to(Device::CPU), i0 = w0->value().to(Device::CPU);
      double d2 = 0, n2 = 0;  // sequential double sums: thread-count independent
      for (int64_t k = 0; k < w.numel(); ++k) {
        double d = (double)w.data()[k] - (double)i0.data()[k];
        d2 += d * d;
        n2 += (double)i0.data()[k] * i0.data()[k];
      }
      heads.push_back({{"param", name.substr(prefix.size())}, {"norm_init", std::sqrt(n2)},
                       {"norm_moved", std::sqrt(d2)}});
    }
    if (!heads.empty()) out.push_back({{"layer", l}, {"heads", heads}});
  }
  return out;
}

json temperature_stats(const RoutingTrace& tr) {
  json out = json::array();
  for (size_t l = 0; l < tr.temperature.size(); ++l) {
    const auto& t = tr.temperature[l];
    if (t.empty()) continue;
    double m = 0, v = 0;
    for (float x : t) m += x;
    m /= (double)t.size();
    for (float x : t) v += ((double)x - m) * ((double)x - m);
    double sd = t.size() > 1 ? std::sqrt(v / (double)(t.size() - 1)) : 0.0;
    out.push_back({{"layer", tr.layers[l]}, {"mean", m}, {"std", sd}, {"tokens", t.size()}});
  }
  return out;
}

// ---- the predictive arm ---------------------------------------------------------------------
json predictive_json(const McEval& ev, int bins) {
  if (ev.predictive.empty()) return nullptr;
  McEval p;
  p.probs = ev.predictive;
  p.labels = ev.labels;
  json j = id_metrics(p, bins);
  j["samples"] = ev.predictive_samples;
  double mi = 0;
  for (double x : ev.mutual_info) mi += x;
  j["mean_mutual_info"] = ev.mutual_info.empty() ? 0.0 : mi / (double)ev.mutual_info.size();
  return j;
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
  // the predictive arm is scaled the same way: softmax(log p̂ / T)
  for (auto& p : o.predictive) {
    double z = 0;
    for (auto& q : p) z += (q = std::pow(std::max(q, 1e-300), 1.0 / T));
    for (auto& q : p) q /= z;
  }
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
  // A router without heads (sample-k, mc-dropout, ...) on a stage-2
  // checkpoint: the checkpoint's heads (parameters under ".router.") go unused.
  const bool heads_unused = cfg.given("--router") && want.name != rc.name && nn::router_info(rc.name).heads;
  if (heads_unused)
    std::fprintf(stderr, "note: --router %s on a %s checkpoint: its %s heads are not used\n", want.name.str().c_str(),
                 rc.name.str().c_str(), rc.name.str().c_str());
  copy_fields(rc, want, [&](const auto& row, const std::string&) { return overrides(row); });
  if (cfg.given("--bayes-layers")) rc.bayes_layers = want.bayes_layers;  // parsed from RunConfig::bayes_spec
  bool any = false;
  for_each_field(cfg, [&](const auto& row, const auto&, const std::string&) { any = any || overrides(row); });
  if (any) rc.validate(mc.n_layers, mc.n_experts, mc.top_k);
  auto model = std::make_unique<nn::Model>(mc, rc, cfg.seed);
  load_checkpoint(cfg.init, *model, nullptr, "", heads_unused ? "\\.router\\." : "");
  if (cfg.device == Device::CUDA) model->to(Device::CUDA);
  return model;
}

int run_eval(RunConfig cfg) {
  const std::string started = utc_now();
  require_device(cfg.device, cfg.allow_tf32);
  omp_set_num_threads(cfg.threads);
  dist::set_timeout(cfg.dist_timeout);
  if (!fs::exists(cfg.init)) fail("--ckpt: no such file '" + cfg.init + "'");
  inherit_eval_protocol(cfg, cfg.init);  // before the model: --seed keys its router draws
  auto model = load_model_for_eval(cfg);
  // --expert-parallel P: this rank keeps its group member's E/P experts of
  // every MoE layer; every pass sends the routed rows to their experts' owners
  // and back (mc_eval.cpp), with the bits of one process.
  const int E = model->config().n_experts;
  dp::resolve_expert_parallel(cfg.expert_parallel, E);
  dp::shard_expert_weights(model->params(), E, dist::ep_size(), dist::ep_rank());
  inherit_data_settings(cfg, cfg.init);
  bool vit = model->config().kind == nn::ModelKind::vit;
  // A cap on the ID prompts caps the OOD sets too (they would cost most of the run).
  if (cfg.max_eval_examples > 0 && !cfg.given("--ood-size")) cfg.ood_size = std::min(cfg.ood_size, cfg.max_eval_examples);
  McTaskData task;
  ImgTaskData itask;
  if (vit) itask = load_image_task(cfg);
  else task = load_mc_task(cfg);
  McSet& set = cfg.split == Split::val ? task.val : task.test;
  ImgSet& iset = cfg.split == Split::val ? itask.val : itask.test;
  // --out is checked (created, writable) before any pass runs, and once it
  // is, an eval.json of an earlier run is removed: an interrupted eval must
  // not leave new predictions next to an old summary. Both files are written
  // atomically at the end, eval.json last.
  // (Several ranks: each evaluates its share of every pass, mc_eval.cpp; rank 0 writes.)
  dist::on_root("setup", [&] {
    prepare_out_dir(cfg.out);
    fs::remove(cfg.out + "/eval.json");
  });
  // What this eval will cost, before it starts.
  const bool stoch = nn::router_info(model->router_config().name).bayesian && !model->bayes_layer_ids().empty();
  std::fprintf(stderr,
               "eval: %zu %s prompts%s; router %s%s%s%s%s\n", vit ? iset.size() : set.size(), cfg.split.str().c_str(),
               cfg.ood ? (", OOD sets of up to " + std::to_string(cfg.ood_size) + " each").c_str() : ", no OOD sets",
               model->router_config().name.str().c_str(),
               stoch ? (" (S = " + std::to_string(model->router_config().samples) + ")").c_str() : "",
               stoch && cfg.mi_samples > 0 ? (", +" + std::to_string(cfg.mi_samples) + " routing draws per set").c_str() : "",
               cfg.stability ? (", stability at " + std::to_string(cfg.gammas.size()) + " gammas x (2 + " +
                                std::to_string(cfg.stability_draws) + ") passes").c_str()
                             : "",
               cfg.sensitivity ? ", sensitivity: one pass per MoE layer + 1" : "");
  if (dist::ep_size() > 1)
    std::fprintf(stderr, "eval: experts sharded over %d ranks per group (%d of %d per MoE layer on this rank)\n",
                 dist::ep_size(), E / dist::ep_size(), E);
  EvalFn evaluator = vit ? image_evaluator(*model, iset, cfg) : mc_evaluator(*model, set, cfg);
  RoutingTrace trace;
  // the main pass, with the predictive arm when --mi-samples > 0 (the evaluator's passes skip it)
  McEval ev = vit ? evaluate_images(*model, iset, cfg, 0.0, &trace) : evaluate_mc(*model, set, cfg, 0.0, &trace);
  json out;
  out["checkpoint"] = cfg.init;
  out["router"] = model->router_config().name;
  out["samples"] = model->router_config().samples;
  out["bayes_layers"] = model->bayes_layer_ids();
  out["split"] = cfg.split;
  out["seed"] = cfg.seed;
  out["split_seed"] = cfg.split_seed;
  out["id"] = id_metrics(ev, cfg.ece_bins);
  if (json pj = predictive_json(ev, cfg.ece_bins); !pj.is_null()) out["predictive"] = pj;
  out["expert_load"] = expert_load(*model, trace);
  if (json ts = temperature_stats(trace); !ts.empty()) out["temperature"] = ts;
  if (nn::router_info(model->router_config().name).heads)
    out["head_movement"] = head_movement(*model, read_checkpoint_state(cfg.init).seed);
  out["flops"] = flops_json(*model, vit ? model->config().seq_len_vit() : 128);
  out["ood_convention"] =
      "OOD is the positive class; a higher score means more OOD (msp is the negated max probability); "
      "fpr95_ood_recall: ID flagged OOD at 95% OOD recall (ours); fpr95_id_tpr: OOD accepted as ID at 95% ID kept "
      "(OpenOOD's FPR@95)";
  std::vector<std::string> score_cols;
  std::string scores = scores_csv_rows(cfg.split.str(), "id", ev, score_cols);
  if (cfg.ood) {
    json o = json::object();
    if (vit) {
      for (auto& os : load_image_ood_sets(cfg)) {
        McEval oe = evaluate_images(*model, os, cfg);
        o[os.name] = {{"kind", ood_kind(os.name)}, {"n", os.size()}, {"scores", ood_metrics_json(ev, oe)}};
        scores += scores_csv_rows(os.name, ood_kind(os.name), oe, score_cols);
      }
    } else {
      for (auto& os : load_ood_sets(cfg)) {
        McEval oe = evaluate_mc(*model, os, cfg);
        o[os.name] = {{"kind", ood_kind(os.name)}, {"n", os.size()}, {"scores", ood_metrics_json(ev, oe)}};
        scores += scores_csv_rows(os.name, ood_kind(os.name), oe, score_cols);
      }
    }
    out["ood"] = o;
  }
  if (cfg.stability) out["stability"] = stability_sweep(*model, evaluator, cfg.gammas, cfg.stability_draws);
  if (cfg.sensitivity) {
    auto sens = routing_sensitivity(
        *model,
        [&](nn::Model& m) { return vit ? image_evaluator(m, iset, cfg).run(0.0, nullptr, "") : mc_evaluator(m, set, cfg).run(0.0, nullptr, ""); },
        cfg.seed);
    out["sensitivity"] = {{"gates", "uniform 1/K on a uniformly random K-subset at one layer; det elsewhere"},
                          {"baseline", "det routing on every MoE layer"},
                          {"per_layer", sensitivity_json(sens)}};
  }
  // Where this came from (experiments/build_info.h): the resolved config,
  // the command, commit, CPU, times. Paths are as given, relative to "cwd".
  json prov = provenance(cfg.threads, started);
  prov["config"] = fields_to_json<json>(cfg);
  prov["paths_relative_to"] = "cwd";
  prov["finished"] = utc_now();
  if (dist::ep_size() > 1)  // rank 0's expert-parallel exchanges over the whole eval (docs/SCALE.md §8)
    prov["expert_parallel"] = {{"ranks_per_group", dist::ep_size()}, {"bytes_sent_rank0", dist::ep_bytes_sent()}};
  out["provenance"] = prov;
  write_probs_csv(cfg.out + "/probs_" + cfg.split.str() + ".csv", ev);
  {
    std::string header = "set,kind,index";
    for (auto& c : score_cols) header += "," + c;
    nn::atomic_write(cfg.out + "/scores.csv", header + "\n" + scores);
  }
  nn::atomic_write(cfg.out + "/config.json", prov.dump(2) + "\n");  // as train's: every output folder has one
  nn::atomic_write(cfg.out + "/eval.json", out.dump(2) + "\n");
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace vm::exp
