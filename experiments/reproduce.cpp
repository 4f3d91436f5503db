// experiments/reproduce.cpp — `vmoer reproduce`: the paper's protocol at small
// scale on real data (method notes §2–4), in one command:
//   pretrain (Brown) -> stage-1 fine-tune (WordNet nouns) -> for each method
//   [det, det+TS, sample-k, mc-dropout, mfvr, fcvr, vtsr] stage 2 where it has
//   parameters -> evaluation on ID test, near- and far-OOD -> stability vs γ
//   -> FLOPs; over --seeds seeds (mean ± std). Stages whose inputs did not
//   change are reused from <out>/stages/.
#include <omp.h>

#include <chrono>
#include <ctime>
#include <functional>
#include <set>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "experiments/cli_fields.h"
#include "experiments/commands.h"
#include "experiments/datasets.h"
#include "experiments/evaluation.h"
#include "experiments/flops.h"
#include "experiments/metrics.h"
#include "experiments/trainer.h"
#include "nn/checkpoint.h"
#include "nn/params.h"

namespace vm::exp {
namespace fs = std::filesystem;
using nlohmann::json;

struct ReproConfig {
  bool quick = false;
  bool smoke = false;  // tiny end-to-end run for tests (seconds, meaningless numbers)
  int seeds = 3;
  uint64_t seed0 = 1;
  Named<Device> device = Device::CPU;
  bool allow_tf32 = false;
  // The first stage that each seed re-runs; the stages before it are trained
  // once, with the first seed, and shared (see the --reseed-from help).
  std::string reseed_from = "router";
  uint64_t split_seed = 1;  // data splits and OOD subsamples: the same for every seed
  std::string track = "text";
  std::string out;
  std::string data_dir;
  int threads = 2;
  std::vector<std::string> methods{"det", "det+ts", "sample-k", "mc-dropout", "mfvr", "fcvr", "vtsr"};
  std::string ablate;        // key=v1,v2,...
  // knobs (empty string / negative = preset default)
  double beta = -1, prior_scale = -1;
  int samples = -1, top_k = -1, experts = -1;
  std::string bayes_layers, temp_mode, kl_norm;
  std::vector<double> gammas;
};

// ---- presets --------------------------------------------------------------------------
static RunConfig preset(const ReproConfig& r) {
  RunConfig c;
  c.device = r.device;
  c.allow_tf32 = r.allow_tf32;
  c.data_dir = r.data_dir;
  c.threads = r.threads;
  c.progress = true;
  auto& m = c.model;
  m.kind = "lm";
  m.n_heads = 4;
  m.n_experts = 8;
  m.top_k = 2;
  m.max_seq = 192;
  c.gloss_max_bytes = 100;
  c.seq = 128;
  c.router.samples = 35;
  c.beta = 0.01;
  c.kl_norm = "token-mean";
  c.lb_coef = 0.01;
  c.z_coef = 1e-3;
  if (r.smoke) {
    c.progress = false;
    m.d_model = 32;
    m.n_layers = 2;
    m.n_heads = 2;
    m.n_experts = 4;
    m.d_expert = 48;
    m.max_seq = 160;
    c.router.samples = 4;
    c.gammas = {0.01};
    c.max_eval_examples = 24;
    c.ood_size = 12;
  } else if (r.quick) {
    m.d_model = 96;
    m.n_layers = 4;
    m.d_expert = 192;
    c.gammas = {0.005, 0.01, 0.05};
    c.max_eval_examples = 400;
    c.ood_size = 200;
  } else {
    m.d_model = 128;
    m.n_layers = 4;
    m.d_expert = 256;
    c.gammas = {0.001, 0.002, 0.005, 0.007, 0.01, 0.02, 0.05};
    c.max_eval_examples = 0;
    c.ood_size = 1000;
  }
  return c;
}

// The vision track's model: a ViT-MoE over 4×4 patches of 28×28 images.
static RunConfig vision_config(const RunConfig& text, const ReproConfig& r) {
  RunConfig c = text;
  c.task = "fashion-mnist";
  auto& m = c.model;
  m.kind = "vit";
  m.max_seq = 64;
  if (r.smoke) {
    m.d_model = 32;
    m.n_layers = 2;
  } else {
    m.d_model = r.quick ? 64 : 96;
    m.n_layers = 4;
    m.d_expert = r.quick ? 128 : 192;
  }
  return c;
}

struct StagePlan {
  int64_t steps;
  double time_limit;
  int batch;
  double lr;
  int eval_every;
  int patience;
};
// Step counts decide every stage, so a seed gives the same run on any machine.
// The time limit is only a safety cap (about 3x the expected time on 2 cores);
// a stage that hits it is reported, because its result then depends on speed.
static StagePlan plan_for(const std::string& stage, bool quick, bool smoke = false) {
  if (smoke) return stage == "router" ? StagePlan{3, 0, 8, 1e-3, 3, 0} : StagePlan{4, 0, 8, 1e-3, 0, 0};
  if (stage == "vision") return quick ? StagePlan{300, 450, 64, 2e-3, 100, 0} : StagePlan{4000, 7200, 64, 2e-3, 250, 0};
  if (stage == "pretrain") return quick ? StagePlan{900, 600, 16, 2e-3, 0, 0} : StagePlan{8000, 10800, 16, 2e-3, 500, 0};
  if (stage == "finetune") return quick ? StagePlan{500, 900, 32, 1e-3, 125, 0} : StagePlan{3000, 10800, 32, 1e-3, 250, 0};
  return quick ? StagePlan{150, 300, 32, 3e-3, 50, 2} : StagePlan{400, 3600, 32, 2e-3, 50, 4};
}

// Copy a stage plan into a run configuration (5% linear warm-up).
static void apply_plan(RunConfig& c, const StagePlan& p) {
  c.steps = p.steps;
  c.time_limit_s = p.time_limit;
  c.batch = p.batch;
  c.optim.lr = p.lr;
  c.optim.warmup = p.steps / 20;
  c.eval_every = p.eval_every;
  c.patience = p.patience;
}

// A stage directory is reused when its inputs.json (config + parent) matches.
static std::string stage_dir(const std::string& root, const std::string& name, const json& inputs) {
  uint64_t h = nn::name_hash(inputs.dump());
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return root + "/stages/" + name + "-" + std::string(buf).substr(0, 12);
}

static json run_json(const RunConfig& c) {
  json j{{"stage", c.stage},         {"model", c.model},       {"seed", c.seed},
              {"steps", c.steps},         {"batch", c.batch},       {"seq", c.seq},
              {"lr", c.optim.lr},         {"warmup", c.optim.warmup}, {"time_limit", c.time_limit_s},
              {"router", c.router.name},  {"bayes", c.bayes_spec},  {"beta", c.beta},
              {"kl_norm", c.kl_norm},     {"prior_scale", c.router.prior_scale},
              {"temp_mode", c.router.temp_mode}, {"train_samples", c.router.train_samples},
              {"gloss", c.gloss_max_bytes}, {"init", c.init},       {"patience", c.patience},
              {"eval_every", c.eval_every}};
  if (c.split_seed != 1) j["split_seed"] = c.split_seed;  // omitted at its default: older stage caches stay valid
  return j;
}

// Train one stage unless a finished copy with the same inputs exists. Returns the best checkpoint.
static std::string train_stage(RunConfig c, const std::string& root, const std::string& name) {
  json inputs = run_json(c);
  std::string dir = stage_dir(root, name, inputs);
  std::string done = dir + "/done.json";
  std::string best = dir + "/best.safetensors";
  if (fs::exists(done) && fs::exists(best)) {
    std::fprintf(stderr, "[reproduce] %s: reusing %s\n", name.c_str(), dir.c_str());
    return best;
  }
  fs::create_directories(dir);
  c.out = dir;
  // A stage that was stopped (Ctrl-C, time out, a killed session) left its
  // last checkpoint here: continue it. Resuming reproduces the uninterrupted
  // run (tests/test_reliability.cpp), so the cache stays a function of inputs.
  c.resume = fs::exists(dir + "/last.safetensors");
  std::fprintf(stderr, "[reproduce] %s %s %s\n", name.c_str(), c.resume ? "resuming in" : "->", dir.c_str());
  auto t0 = std::chrono::steady_clock::now();
  int rc = run_train(c);
  if (rc != 0) fail("reproduce: stage " + name + " stopped with exit code " + std::to_string(rc));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Did the stage run all its steps (or stop early on validation NLL), or hit the time cap?
  bool capped = false;
  {
    std::ifstream lf(dir + "/log.jsonl");
    std::string line;
    while (std::getline(lf, line))
      if (line.find("\"time_limit\"") != std::string::npos) capped = true;
  }
  if (capped)
    std::fprintf(stderr, "[reproduce] WARNING: stage %s hit its %.0f s time cap: its result depends on machine speed\n",
                 name.c_str(), c.time_limit_s);
  nn::atomic_write(done, json{{"inputs", inputs}, {"seconds", secs}, {"time_capped", capped}}.dump(2) + "\n");
  return best;
}

static double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / (double)v.size();
}
static double std_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  double m = mean_of(v), s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / (double)(v.size() - 1));
}

// The evaluation data of one track.
struct TrackData {
  bool vit = false;
  McTaskData text;
  std::vector<McSet> text_ood;
  ImgTaskData img;
  std::vector<ImgSet> img_ood;
  McSet text_sub;  // stability subsets
  ImgSet img_sub;
};

// One method on one seed: returns the metrics record.
static json run_method(const std::string& method, const RunConfig& base, const std::string& root,
                       const std::string& finetuned, const TrackData& td, const std::vector<int>& bayes,
                       std::map<std::string, std::string>& csvs) {
  RunConfig c = base;
  c.router.bayes_layers = bayes;
  std::string router = method == "det+ts" ? "det" : method;
  c.router.name = router;
  std::string ckpt = finetuned;
  bool trainable = nn::router_info(c.router.name).heads;
  if (trainable) {
    RunConfig s = c;
    s.stage = "router";
    s.init = finetuned;
    std::string bl;
    for (int l : bayes) bl += (bl.empty() ? "" : ",") + std::to_string(l);
    s.bayes_spec = bl;
    apply_plan(s, plan_for("router", base.steps < 0, base.steps == -2));
    s.optim.warmup = std::max<int64_t>(1, s.steps / 20);
    s.optim.weight_decay = 0.0;
    s.max_eval_examples = std::min(base.max_eval_examples > 0 ? base.max_eval_examples : 100000, 300);
    ckpt = train_stage(s, root, std::string(td.vit ? "vision-" : "") + "router-" + router + "-seed" + std::to_string(c.seed));
  }
  // Model for evaluation: the finetuned weights with the method's router on the chosen layers.
  nn::ModelConfig mc;
  nn::RouterConfig stored;
  read_checkpoint_configs(ckpt, mc, stored);
  nn::RouterConfig rc = c.router;
  nn::Model model(mc, rc, c.seed);
  load_checkpoint(ckpt, model, nullptr);
  if (c.device == Device::CUDA) model.to(Device::CUDA);
  auto t0 = std::chrono::steady_clock::now();
  McEval test = td.vit ? evaluate_images(model, td.img.test, c) : evaluate_mc(model, td.text.test, c);
  double eval_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double T = 1.0;
  if (method == "det+ts") {
    McEval val = td.vit ? evaluate_images(model, td.img.val, c) : evaluate_mc(model, td.text.val, c);
    metrics::Matrix logits = metrics::Matrix::from_rows(val.probs);
    for (auto& x : logits.data) x = std::log(std::max(x, 1e-300));
    T = metrics::fit_temperature(logits, std::vector<int>(val.labels.begin(), val.labels.end())).temperature;
    test = temperature_scaled(test, T);
  }
  json rec;
  rec["method"] = method;
  rec["seed"] = c.seed;
  rec["checkpoint"] = ckpt;
  rec["bayes_layers"] = nn::router_info(c.router.name).bayesian ? json(bayes) : json::array();
  rec["temperature_scaling"] = T;
  rec["id"] = id_metrics(test, c.ece_bins);
  rec["eval_seconds"] = eval_s;
  json o = json::object();
  std::map<std::string, std::vector<double>> by_kind;  // entropy AUROC per near/far
  std::vector<std::pair<std::string, size_t>> ood_names;
  for (auto& os : td.text_ood) ood_names.push_back({os.name, os.size()});
  for (auto& os : td.img_ood) ood_names.push_back({os.name, os.size()});
  for (size_t oi = 0; oi < ood_names.size(); ++oi) {
    struct {
      std::string name;
      size_t n;
      size_t size() const { return n; }
    } os{ood_names[oi].first, ood_names[oi].second};
    McEval oe = td.vit ? evaluate_images(model, td.img_ood[oi], c) : evaluate_mc(model, td.text_ood[oi], c);
    if (method == "det+ts") oe = temperature_scaled(oe, T);
    json m = ood_metrics_json(test, oe);
    o[os.name] = {{"kind", ood_kind(os.name)}, {"n", os.size()}, {"scores", m}};
    if (m.contains("entropy")) by_kind[ood_kind(os.name)].push_back(m["entropy"]["auroc"].get<double>());
    for (auto& [score, vals] : m.items())
      if (vals.contains("auroc"))
        by_kind[ood_kind(os.name) + ":" + score].push_back(vals["auroc"].get<double>());
    // ROC points of the entropy score for the figures
    auto si = ood_scores(test), so = ood_scores(oe);
    auto roc = metrics::roc_curve([&] {
      std::vector<double> v = si["entropy"];
      v.insert(v.end(), so["entropy"].begin(), so["entropy"].end());
      return v;
    }(), [&] {
      std::vector<int> y(si["entropy"].size(), 0);
      y.insert(y.end(), so["entropy"].size(), 1);
      return y;
    }());
    std::string& csv = csvs["roc.csv"];
    if (csv.empty()) csv = "method,seed,ood_set,fpr,tpr\n";
    for (size_t i = 0; i < roc.fpr.size(); ++i)
      csv += method + "," + std::to_string(c.seed) + "," + os.name + "," + std::to_string(roc.fpr[i]) + "," +
             std::to_string(roc.tpr[i]) + "\n";
  }
  rec["ood"] = o;
  json summary;
  for (auto& [k, v] : by_kind) summary[k] = mean_of(v);
  rec["auroc_mean"] = summary;
  // stability on a subset of the test split
  EvalFn ev = td.vit ? image_evaluator(model, td.img_sub, c) : mc_evaluator(model, td.text_sub, c);
  rec["stability"] = stability_sweep(model, ev, c.gammas);
  RoutingTrace tr;
  ev.run(0.0, &tr);
  rec["expert_load"] = expert_load(model, tr);
  rec["flops"] = flops_json(model, td.vit ? model.config().seq_len_vit() : 128);
  // reliability diagram rows
  std::string& rel = csvs["reliability.csv"];
  if (rel.empty()) rel = "method,seed,bin_lo,bin_hi,count,confidence,accuracy\n";
  for (auto& b : rec["id"]["reliability"])
    rel += method + "," + std::to_string(c.seed) + "," + std::to_string(b["lo"].get<double>()) + "," +
           std::to_string(b["hi"].get<double>()) + "," + std::to_string(b["count"].get<size_t>()) + "," +
           std::to_string(b["confidence"].get<double>()) + "," + std::to_string(b["accuracy"].get<double>()) + "\n";
  std::string& st = csvs["stability.csv"];
  if (st.empty()) st = "method,seed,gamma,layer,jaccard\n";
  for (auto& row : rec["stability"]) {
    st += method + "," + std::to_string(c.seed) + "," + std::to_string(row["gamma"].get<double>()) + ",mean," +
          std::to_string(row["jaccard"].get<double>()) + "\n";
    for (auto& pl : row["per_layer"])
      st += method + "," + std::to_string(c.seed) + "," + std::to_string(row["gamma"].get<double>()) + "," +
            std::to_string(pl["layer"].get<int>()) + "," + std::to_string(pl["jaccard"].get<double>()) + "\n";
  }
  std::string& ld = csvs["expert_load.csv"];
  if (ld.empty()) ld = "method,seed,layer,expert,count\n";
  for (auto& l : rec["expert_load"]) {
    int e = 0;
    for (auto& cnt : l["counts"])
      ld += method + "," + std::to_string(c.seed) + "," + std::to_string(l["layer"].get<int>()) + "," +
            std::to_string(e++) + "," + std::to_string(cnt.get<double>()) + "\n";
  }
  std::fprintf(stderr, "[reproduce] %-10s seed %llu: acc %.3f nll %.3f ece %.3f  AUROC near %.3f far %.3f\n",
               method.c_str(), (unsigned long long)c.seed, rec["id"]["accuracy"].get<double>(),
               rec["id"]["nll"].get<double>(), rec["id"]["ece"].get<double>(),
               summary.value("near", NAN), summary.value("far", NAN));
  return rec;
}

static double jaccard_at(const json& rec, double gamma) {
  for (auto& row : rec["stability"])
    if (std::abs(row["gamma"].get<double>() - gamma) < 1e-12) return row["jaccard"].get<double>();
  return NAN;
}

// table.md: rows = methods, the paper's columns, mean ± std over seeds.
static std::string make_table(const std::vector<json>& recs, const std::vector<std::string>& methods, int seeds,
                              const std::string& title, bool vision) {
  struct Col {
    std::string name;
    std::function<double(const json&)> get;
  };
  std::vector<Col> cols{
      {"ACC", [](const json& r) { return r["id"]["accuracy"].get<double>(); }},
      {"NLL", [](const json& r) { return r["id"]["nll"].get<double>(); }},
      {"ECE", [](const json& r) { return r["id"]["ece"].get<double>(); }},
      {"MCE", [](const json& r) { return r["id"]["mce"].get<double>(); }},
      {"AUROC near", [](const json& r) { return r["auroc_mean"].value("near", NAN); }},
      {"AUROC far", [](const json& r) { return r["auroc_mean"].value("far", NAN); }},
      {"Jaccard γ=0.01", [](const json& r) { return jaccard_at(r, 0.01); }},
      {"FLOPs overhead", [](const json& r) { return r["flops"]["overhead_vs_det"].get<double>(); }},
  };
  std::map<std::string, std::vector<std::vector<double>>> vals;  // method -> col -> seeds
  for (auto& r : recs) {
    auto& v = vals[r["method"].get<std::string>()];
    v.resize(cols.size());
    for (size_t i = 0; i < cols.size(); ++i) v[i].push_back(cols[i].get(r));
  }
  std::string s = "### " + title + "\n\n| method |";
  for (auto& c : cols) s += " " + c.name + " |";
  s += "\n|---|";
  for (size_t i = 0; i < cols.size(); ++i) s += "---|";
  s += "\n";
  char buf[96];
  for (auto& m : methods) {
    if (!vals.count(m)) continue;
    s += "| " + m + " |";
    for (size_t i = 0; i < cols.size(); ++i) {
      auto& v = vals[m][i];
      if (std::isnan(mean_of(v))) std::snprintf(buf, sizeof buf, " — |");
      else if (cols[i].name == "FLOPs overhead") std::snprintf(buf, sizeof buf, " %+.2f%% |", 100 * mean_of(v));
      else if (seeds > 1) std::snprintf(buf, sizeof buf, " %.3f ± %.3f |", mean_of(v), std_of(v));
      else std::snprintf(buf, sizeof buf, " %.3f |", mean_of(v));
      s += buf;
    }
    s += "\n";
  }
  // Headline claims next to ours, as relative changes against det.
  if (vals.count("det")) {
    s += "\nRelative change against `det` (paper's headline claims: routing stability +38%, ECE −94%, "
         "OOD AUROC +12%, FLOPs < 1%):\n\n| method | stability (Jaccard γ=0.01) | ECE | AUROC near | AUROC far | FLOPs |\n"
         "|---|---|---|---|---|---|\n";
    auto rel = [&](const std::string& m, size_t i) {
      double a = mean_of(vals[m][i]), b = mean_of(vals["det"][i]);
      char out[32];
      if (std::isnan(a) || std::isnan(b) || b == 0) return std::string("—");
      std::snprintf(out, sizeof out, "%+.1f%%", 100.0 * (a - b) / b);
      return std::string(out);
    };
    for (auto& m : methods) {
      if (m == "det" || !vals.count(m)) continue;
      std::snprintf(buf, sizeof buf, "| %s | %s | %s | %s | %s | %+.2f%% |\n", m.c_str(), rel(m, 6).c_str(),
                    rel(m, 2).c_str(), rel(m, 4).c_str(), rel(m, 5).c_str(), 100 * mean_of(vals[m][7]));
      s += buf;
    }
  }
  if (vision)
    s += "\nAUROC: predictive entropy of the 10-class distribution as the OOD score (OOD = positive class, higher "
         "score = more OOD); far set: OpenCV handwritten digits; no near set. Other scores (ILV, gate entropy, MSP) "
         "are in results.json.\n";
  else
    s += "\nAUROC: predictive entropy of the 4-way answer distribution as the OOD score (OOD = positive class, "
         "higher score = more OOD), averaged over the near sets (near-nouns, near-verbs) and far sets (far-devil, "
         "far-jargon). Other scores (ILV, gate entropy, MSP) are in results.json.\n";
  return s;
}

static int run_reproduce(ReproConfig r) {
  if (r.track != "text" && r.track != "vision" && r.track != "both")
    fail("--track: must be text, vision or both, got '" + r.track + "'");
  if (r.seeds < 1) fail("--seeds: must be >= 1");
  require_device(r.device, r.allow_tf32);
  if (r.reseed_from != "pretrain" && r.reseed_from != "finetune" && r.reseed_from != "router")
    fail("--reseed-from: must be pretrain, finetune or router, got '" + r.reseed_from + "'");
  omp_set_num_threads(r.threads);
  if (r.out.empty()) {
    auto t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d", std::localtime(&t));
    r.out = std::string("results/") + buf + (r.smoke ? "-smoke" : r.quick ? "-quick" : "-full");
  }
  fs::create_directories(r.out);
  RunConfig base = preset(r);
  base.split_seed = r.split_seed;
  base.given_flags.push_back("--split-seed");
  if (r.quick) base.steps = -1;  // markers used by run_method for the stage-2 plan
  if (r.smoke) base.steps = -2;
  if (r.beta >= 0) base.beta = r.beta;
  if (r.prior_scale > 0) base.router.prior_scale = r.prior_scale;
  if (r.samples > 0) base.router.samples = r.samples;
  if (r.top_k > 0) base.model.top_k = r.top_k;
  if (r.experts > 0) base.model.n_experts = r.experts;
  if (!r.temp_mode.empty()) base.router.temp_mode = r.temp_mode;
  if (!r.kl_norm.empty()) base.kl_norm = r.kl_norm;
  if (!r.gammas.empty()) base.gammas = r.gammas;
  std::string bayes_spec = r.bayes_layers.empty() ? std::string("auto:2") : r.bayes_layers;

  // Ablation: one knob, several values; each value is a full run of the methods.
  std::string ab_key;
  std::vector<std::string> ab_vals{""};
  if (!r.ablate.empty()) {
    size_t eq = r.ablate.find('=');
    if (eq == std::string::npos) fail("--ablate: expected key=v1,v2,... got '" + r.ablate + "'");
    ab_key = r.ablate.substr(0, eq);
    ab_vals.clear();
    std::string rest = r.ablate.substr(eq + 1);
    for (size_t i = 0; i <= rest.size();) {
      size_t j = rest.find(',', i);
      if (j == std::string::npos) j = rest.size();
      ab_vals.push_back(rest.substr(i, j - i));
      i = j + 1;
    }
    static const std::set<std::string> keys{"beta", "samples", "top_k", "experts", "prior_scale", "temp_mode",
                                            "kl_norm", "bayes_layers", "router"};
    if (!keys.count(ab_key)) fail("--ablate: unknown key '" + ab_key + "' (beta, samples, top_k, experts, "
                                  "prior_scale, temp_mode, kl_norm, bayes_layers, router)");
  }

  json results;
  results["command"] = "vmoer reproduce" + std::string(r.quick ? " --quick" : "");
  results["seeds"] = r.seeds;
  results["reseed_from"] = r.reseed_from;
  results["split_seed"] = r.split_seed;
  results["threads"] = r.threads;
  results["track"] = r.track;
  results["methods"] = r.methods;
  results["ood_convention"] = "OOD is the positive class; higher score = more OOD";
  std::string table = std::string("# vmoer reproduce") + (r.quick ? " --quick" : "") + "\n\n";
  std::map<std::string, std::string> csvs;
  auto t_all = std::chrono::steady_clock::now();
  for (const std::string& av : ab_vals) {
    RunConfig cfg = base;
    std::string spec = bayes_spec;
    std::vector<std::string> methods = r.methods;
    if (!ab_key.empty()) {
      try {
        if (ab_key == "beta") cfg.beta = std::stod(av);
        if (ab_key == "samples") cfg.router.samples = std::stoi(av);
        if (ab_key == "top_k") cfg.model.top_k = std::stoi(av);
        if (ab_key == "experts") cfg.model.n_experts = std::stoi(av);
        if (ab_key == "prior_scale") cfg.router.prior_scale = std::stod(av);
      } catch (const std::exception&) {
        fail("--ablate: value '" + av + "' for " + ab_key + " is not a number");
      }
      if (ab_key == "temp_mode") cfg.router.temp_mode = av;
      if (ab_key == "kl_norm") cfg.kl_norm = av;
      if (ab_key == "bayes_layers") spec = av;
      if (ab_key == "router") methods = {"det", av};
    }
    std::vector<std::string> tracks;
    if (r.track == "text" || r.track == "both") tracks.push_back("text");
    if (r.track == "vision" || r.track == "both") tracks.push_back("vision");
    std::map<std::string, std::vector<json>> track_recs;
    for (const std::string& track : tracks) {
      bool vit = track == "vision";
      for (int si = 0; si < r.seeds; ++si) {
        RunConfig tc = vit ? vision_config(cfg, r) : cfg;
        tc.seed = r.seed0 + (uint64_t)si;
        std::string fin;
        if (!vit) {
          // ---- stage 0: pretrain on Brown ----------------------------------------------
          RunConfig p = tc;
          p.seed = r.reseed_from == "pretrain" ? tc.seed : r.seed0;  // shared unless re-seeded
          p.stage = "pretrain";
          p.router = nn::RouterConfig{};
          apply_plan(p, plan_for("pretrain", r.quick, r.smoke));
          p.eval_batches = 4;
          std::string pre = train_stage(p, r.out, "pretrain-seed" + std::to_string(p.seed));
          // ---- stage 1: fine-tune on the WordNet task ---------------------------------
          RunConfig f = p;
          f.seed = r.reseed_from == "router" ? r.seed0 : tc.seed;
          f.stage = "finetune";
          f.init = pre;
          apply_plan(f, plan_for("finetune", r.quick, r.smoke));
          f.max_eval_examples = r.smoke ? 16 : r.quick ? 300 : 1000;
          fin = train_stage(f, r.out, "finetune-seed" + std::to_string(f.seed));
        } else {
          // ---- stage 1 (vision): the ViT-MoE trained from scratch on Fashion-MNIST -----
          RunConfig f = tc;
          f.seed = r.reseed_from == "router" ? r.seed0 : tc.seed;
          f.stage = "finetune";
          f.router = nn::RouterConfig{};
          apply_plan(f, plan_for("vision", r.quick, r.smoke));
          f.max_eval_examples = r.smoke ? 16 : r.quick ? 500 : 2000;
          fin = train_stage(f, r.out, "vision-train-seed" + std::to_string(f.seed));
        }
        // ---- data for evaluation ----------------------------------------------------------
        TrackData td;
        td.vit = vit;
        size_t ns = r.smoke ? 16 : r.quick ? 150 : 500;
        if (vit) {
          td.img = load_image_task(tc);
          td.img_ood = load_image_ood_sets(tc);
          td.img_sub = td.img.test;
          td.img_sub.idx.resize(std::min(ns, td.img_sub.size()));
          td.img_sub.labels.resize(td.img_sub.idx.size());
        } else {
          td.text = load_mc_task(tc);
          td.text_ood = load_ood_sets(tc);
          td.text_sub = td.text.test;
          td.text_sub.prompts.resize(std::min(ns, td.text_sub.size()));
          td.text_sub.labels.resize(td.text_sub.prompts.size());
        }
        // ---- which layers are Bayesian --------------------------------------------------
        std::vector<int> bayes;
        nn::ModelConfig mc;
        nn::RouterConfig rc0;
        read_checkpoint_configs(fin, mc, rc0);
        if (spec.rfind("auto:", 0) == 0) {
          nn::Model probe(mc, nn::RouterConfig{}, tc.seed);
          load_checkpoint(fin, probe, nullptr);
          if (tc.device == Device::CUDA) probe.to(Device::CUDA);
          RunConfig pc = tc;
          pc.max_eval_examples = 200;
          int n = std::stoi(spec.substr(5));
          if (vit) {
            ImgTaskData d = load_image_task(pc);
            bayes = susceptible_layers(probe, image_evaluator(probe, d.val, pc), n, 0.01);
          } else {
            McSet sub = td.text.val;
            sub.prompts.resize(std::min<size_t>(200, sub.size()));
            sub.labels.resize(sub.prompts.size());
            bayes = susceptible_layers(probe, mc_evaluator(probe, sub, pc), n, 0.01);
          }
        } else {
          RunConfig tmp;
          tmp.bayes_spec = spec;
          parse_bayes_spec(tmp);
          bayes = tmp.router.bayes_layers;
        }
        std::map<std::string, std::string> track_csvs;
        for (const auto& m : methods) {
          json rec = run_method(m, tc, r.out, fin, td, bayes, track_csvs);
          rec["track"] = track;
          if (!ab_key.empty()) rec["ablation"] = {{ab_key, av}};
          track_recs[track].push_back(rec);
          results["runs"].push_back(rec);
        }
        // Merge this seed's CSV rows; the vision track's methods carry a "vision:" prefix.
        for (auto& [name, csv] : track_csvs) {
          size_t nl = csv.find('\n');
          std::string header = csv.substr(0, nl + 1), body = csv.substr(nl + 1);
          if (vit) {
            std::string pre;
            size_t i = 0;
            while (i < body.size()) {
              size_t j = body.find('\n', i);
              pre += "vision:" + body.substr(i, j - i + 1);
              i = j + 1;
            }
            body = pre;
          }
          if (csvs[name].empty()) csvs[name] = header;
          csvs[name] += body;
        }
      }
    }
    for (auto& [track, recs] : track_recs) {
      std::string title = std::string(track == "vision" ? "Vision track (Fashion-MNIST; OOD: OpenCV digits)"
                                                        : "Text track (WordNet nouns; near/far OOD)") +
                          (ab_key.empty() ? "" : ", ablation " + ab_key + " = " + av);
      table += make_table(recs, methods, r.seeds, title, track == "vision") + "\n";
    }
  }
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();
  results["seconds"] = total_s;
  char buf[128];
  std::snprintf(buf, sizeof buf, "\nSeeds: %d (from %llu). Threads: %d. Wall time: %.1f min.\n", r.seeds,
                (unsigned long long)r.seed0, r.threads, total_s / 60);
  table += buf;
  if (r.seeds > 1 && r.reseed_from != "pretrain")
    table += std::string("Shared across seeds (trained once with seed ") + std::to_string(r.seed0) + "): " +
             (r.reseed_from == "finetune" ? "the pretrained model" : "the pretrained and the fine-tuned model") +
             " (`--reseed-from " + r.reseed_from + "`); the ± is over what each seed re-runs.\n";
  nn::atomic_write(r.out + "/results.json", results.dump(2) + "\n");
  nn::atomic_write(r.out + "/table.md", table);
  for (auto& [name, csv] : csvs) nn::atomic_write(r.out + "/" + name, csv);
  std::printf("%s\n", table.c_str());
  // Figures from the CSVs.
  std::string plot = std::string(VMOER_SOURCE_DIR) + "/scripts/plot.py";
  std::string cmd = "/usr/bin/python3 -c 'import matplotlib' 2>/dev/null";
  if (std::system(cmd.c_str()) == 0) {
    std::string pc = "/usr/bin/python3 '" + plot + "' '" + r.out + "'";
    if (std::system(pc.c_str()) != 0) std::fprintf(stderr, "[reproduce] plotting failed: %s\n", pc.c_str());
  } else {
    std::fprintf(stderr, "[reproduce] matplotlib not found: figures skipped (apt-get install python3-matplotlib, "
                         "then /usr/bin/python3 scripts/plot.py %s)\n", r.out.c_str());
  }
  std::fprintf(stderr, "[reproduce] wrote %s/{results.json,table.md,*.csv}\n", r.out.c_str());
  return 0;
}

void register_reproduce(CLI::App& app) {
  auto r = std::make_shared<ReproConfig>();
  auto* s = app.add_subcommand("reproduce", "the paper's protocol end to end at small scale on real data");
  s->add_flag("--quick", r->quick, "small model, short stages, 1 seed (under 15 minutes on 2 cores)");
  s->add_flag("--smoke", r->smoke, "tiny model and a few steps: checks the pipeline end to end in seconds")
      ->group("");  // hidden: for tests
  s->add_option("--seeds", r->seeds, "seeds (mean ± std)")->capture_default_str();
  s->add_option("--seed", r->seed0, "first seed")->capture_default_str();
  s->add_option("--reseed-from", r->reseed_from,
                "first stage each seed re-runs: pretrain (every stage per seed), finetune (one pretrained "
                "model, trained with the first seed, stands in for the paper's downloaded LLM), or router "
                "(one fine-tuned model too; seeds vary stage 2 and the evaluation's sampling)")
      ->capture_default_str();
  s->add_option("--split-seed", r->split_seed,
                "seed of the data splits and OOD subsamples, the same for every seed")
      ->capture_default_str();
  s->add_option("--track", r->track, "text | vision | both")->capture_default_str();
  s->add_option("--out", r->out, "output directory (default results/<date>-quick|full)");
  s->add_option("--data-dir", r->data_dir, "dataset cache");
  s->add_option("--threads", r->threads, "OpenMP threads")->capture_default_str();
  cli::add_enum_option(s, "--device", r->device, "where the model runs");
  s->add_flag("--allow-tf32", r->allow_tf32, "cuda: let cuBLAS use TF32 tensor cores in every stage");
  s->add_option("--methods", r->methods, "methods to run")->delimiter(',');
  s->add_option("--ablate", r->ablate, "sweep one knob: key=v1,v2 (beta, samples, top_k, experts, prior_scale, "
                                       "temp_mode, kl_norm, bayes_layers, router)");
  s->add_option("--beta", r->beta, "β (default 0.01)");
  s->add_option("--samples", r->samples, "S router samples at evaluation (default 35)");
  s->add_option("--top-k", r->top_k, "K");
  s->add_option("--experts", r->experts, "E");
  s->add_option("--bayes-layers", r->bayes_layers, "list or auto:N (default auto:2)");
  s->add_option("--prior-scale", r->prior_scale, "s");
  s->add_option("--temp-mode", r->temp_mode, "vtsr: shared | per-expert");
  s->add_option("--kl-norm", r->kl_norm, "token-mean | dataset");
  s->add_option("--gammas", r->gammas, "γ grid for stability")->delimiter(',');
  cli::add_runner(s, [r, s] {
    if ((r->quick || r->smoke) && s->count("--seeds") == 0) r->seeds = 1;  // --quick: one seed unless asked
    return run_reproduce(*r);
  });
}

}  // namespace vm::exp

namespace vm::cli {
void register_reproduce_command(CLI::App& app) { exp::register_reproduce(app); }
}  // namespace vm::cli
