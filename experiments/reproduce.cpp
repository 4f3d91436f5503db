// experiments/reproduce.cpp — `vmoer reproduce`: the paper's protocol at small
// scale on real data (method notes §2–4), in one command:
//   pretrain (Brown) -> stage-1 fine-tune (WordNet nouns) -> for each method
//   [det, det+TS, sample-k, mc-dropout, mfvr, fcvr, vtsr] stage 2 where it has
//   parameters -> evaluation on ID test, near- and far-OOD -> stability vs γ
//   -> FLOPs; over --seeds seeds (mean ± std). Stages whose inputs did not
//   change are reused from the stage cache (--stages, default <out>/stages/).
#include <fcntl.h>
#include <omp.h>
#include <sys/file.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <ctime>
#include <functional>
#include <set>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/dist.h"
#include "experiments/build_info.h"
#include "experiments/cli_fields.h"
#include "experiments/commands.h"
#include "experiments/data_parallel.h"
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

enum class Track : uint8_t { text, vision, both };
// --plan: the stage plans (plan_for). standard: the paper's protocol at small
// scale (today's); overconfident: a regime where det is over-confident.
enum class Plan : uint8_t { standard, overconfident };

}  // namespace vm::exp

template <>
struct vm::EnumNames<vm::exp::Track> {
  static constexpr std::array<std::string_view, 3> names{"text", "vision", "both"};
};
template <>
struct vm::EnumNames<vm::exp::Plan> {
  static constexpr std::array<std::string_view, 2> names{"standard", "overconfident"};
};
static_assert(vm::enum_names_ok<vm::exp::Track>() && vm::enum_names_ok<vm::exp::Plan>());

namespace vm::exp {

struct ReproConfig {
  bool quick = false;
  bool smoke = false;  // tiny end-to-end run for tests (seconds, meaningless numbers)
  int seeds = 3;
  uint64_t seed0 = 1;
  // The first stage that each seed re-runs; the stages before it are trained
  // once, with the first seed, and shared (see the --reseed-from help).
  // Default finetune (since 2026-12-01, the study of issue 17): a router's
  // effect is compared with the spread across fine-tuned models, which on the
  // faithful run was larger than every router's ECE and AUROC change on one
  // fine-tuned model (docs/RESULTS.md "Fine-tuning seeds").
  Named<Stage> reseed_from = Stage::finetune;
  Named<Track> track = Track::text;
  Named<Plan> plan = Plan::standard;
  std::string out;
  std::string stages;  // the stage cache; empty: <out>/stages
  std::vector<std::string> methods{"det", "det+ts", "sample-k", "mc-dropout", "mfvr", "fcvr", "vtsr"};
  std::string ablate;  // key=v1,v2,...
  bool no_time_caps = false;  // stages run their step counts whatever the wall time
  // The RunConfig fields that are flags of reproduce (Use::repro in the field
  // tables); those given override the preset in every stage.
  RunConfig run;
};

// A row of the table: a router, or a router with temperature scaling fitted
// on the validation split ("det+ts").
struct Method {
  nn::RouterKind router = nn::RouterKind::det;
  bool temperature_scaling = false;
};
static std::string slurp_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

static Method parse_method(const std::string& s) {
  static const std::string ts = "+ts";
  bool scaled = s.size() > ts.size() && s.compare(s.size() - ts.size(), ts.size(), ts) == 0;
  try {
    return Method{parse_enum<nn::RouterKind>(scaled ? s.substr(0, s.size() - ts.size()) : s), scaled};
  } catch (const Error& e) {
    fail("--methods: " + std::string(e.what()) + "; or a router with +ts (temperature scaling), e.g. det+ts");
  }
}

// ---- presets: what differs from the defaults of the field tables (run_config.h) ----
static RunConfig preset(const ReproConfig& r) {
  RunConfig c;
  auto& m = c.model;
  m.max_seq = 192;
  c.gloss_max_bytes = 100;
  c.bayes_spec = "auto:2";
  c.given_flags = {"--split-seed"};  // every stage uses the split of the reproduce run, never a checkpoint's
  if (r.smoke) {
    c.progress = false;
    m.d_model = 32;
    m.n_layers = 2;
    m.n_heads = 2;
    m.n_experts = 4;
    m.d_expert = 48;
    m.max_seq = 160;
    c.router.samples = 4;
    c.mi_samples = 2;
    c.gammas = {0.01};
    c.max_eval_examples = 24;
    c.ood_size = 12;
  } else if (r.quick || r.plan == Plan::overconfident) {  // the overconfident plan: the quick model
    m.d_model = 96;
    m.d_expert = 192;
    c.gammas = {0.005, 0.01, 0.05};
    c.mi_samples = 4;
    c.max_eval_examples = 400;
    c.ood_size = 200;
  } else {
    m.d_expert = 256;
    c.mi_samples = 8;
  }
  // The over-confident regime (issue 16 §3): a small fine-tuning set, many
  // epochs, the last checkpoint. Stage 2 trains on the same prompts unless
  // --router-data heldout.
  if (r.plan == Plan::overconfident) {
    c.train_size = r.smoke ? 24 : 2120;
    c.heldout_size = c.train_size;  // --router-data heldout: as many held-out prompts as fine-tuning ones
  }
  return c;
}

// The vision track's model: a ViT-MoE over 4×4 patches of 28×28 images.
static RunConfig vision_config(const RunConfig& text, const ReproConfig& r) {
  RunConfig c = text;
  c.task = Task::fashion_mnist;
  auto& m = c.model;
  m.kind = nn::ModelKind::vit;
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
  int epochs = 0;     // > 0: steps = epochs over the stage's training set, validation per epoch (--epochs)
  bool last = false;  // evaluate the last checkpoint, not the best on validation
};
enum class PlanFor { pretrain, finetune, router, vision };
// Step counts decide every stage, so a seed gives the same run on any machine.
// The time limit is only a safety cap (about 3x the expected time on 2 cores);
// a stage that hits it is reported, because its result then depends on speed.
//
// --plan overconfident (quick model, --train-size 2120): fine-tuning runs 15
// epochs of batch 32 (≈ 1,000 steps, as the measurement: det's last
// checkpoint ECE 0.212) with no early stopping, and the LAST checkpoint is the
// model every method starts from; stage 2 runs up to 10 epochs over its
// prompts with patience 2 epochs, validated on the whole val split (up to
// --val-size 1000). --smoke shrinks it to 1 epoch of 24 prompts.
static StagePlan plan_for_capped(PlanFor stage, const ReproConfig& r);
static StagePlan plan_for(PlanFor stage, const ReproConfig& r) {
  StagePlan p = plan_for_capped(stage, r);
  if (r.no_time_caps) p.time_limit = 0;
  return p;
}
static StagePlan plan_for_capped(PlanFor stage, const ReproConfig& r) {
  if (r.plan == Plan::overconfident && (stage == PlanFor::finetune || stage == PlanFor::router)) {
    if (stage == PlanFor::finetune)
      return r.smoke ? StagePlan{0, 0, 8, 1e-3, 0, 0, 1, true} : StagePlan{0, 2700, 32, 1e-3, 0, 0, 15, true};
    return r.smoke ? StagePlan{0, 0, 8, 1e-3, 0, 0, 1} : StagePlan{0, 1800, 32, 3e-3, 0, 2, 10};
  }
  bool quick = r.quick || r.plan == Plan::overconfident;
  if (r.smoke) return stage == PlanFor::router ? StagePlan{3, 0, 8, 1e-3, 3, 0} : StagePlan{4, 0, 8, 1e-3, 0, 0};
  if (stage == PlanFor::vision) return quick ? StagePlan{300, 450, 64, 2e-3, 100, 0} : StagePlan{4000, 7200, 64, 2e-3, 250, 0};
  if (stage == PlanFor::pretrain) return quick ? StagePlan{900, 600, 16, 2e-3, 0, 0} : StagePlan{8000, 10800, 16, 2e-3, 500, 0};
  if (stage == PlanFor::finetune) return quick ? StagePlan{500, 900, 32, 1e-3, 125, 0} : StagePlan{3000, 10800, 32, 1e-3, 250, 0};
  return quick ? StagePlan{150, 300, 32, 3e-3, 50, 2} : StagePlan{400, 3600, 32, 2e-3, 50, 4};
}

// --epochs E for a stage: the trainer derives steps and validation from the
// training set (run_train); here the same steps, for the 5% warm-up.
static void set_epochs(RunConfig& c, int epochs) {
  c.epochs = epochs;
  if (epochs <= 0) return;
  c.steps = epochs * steps_per_epoch(stage_train_size(c), c.batch, c.grad_accum);
  c.eval_every = 0;  // the trainer validates once per epoch
  c.optim.warmup = c.steps / 20;
}

// Copy a stage plan into a run configuration (5% linear warm-up). c.stage and
// its data fields must be set (an epoch plan counts the stage's examples).
static void apply_plan(RunConfig& c, const StagePlan& p) {
  c.steps = p.steps;
  c.time_limit_s = p.time_limit;
  c.batch = p.batch;
  c.optim.lr = p.lr;
  c.optim.warmup = p.steps / 20;
  c.eval_every = p.eval_every;
  c.patience = p.patience;
  set_epochs(c, p.epochs);
}

// Fields read by stage 2 only (and, for the data fields, fine-tuning): reset
// to their defaults in the stages that do not read them, so giving them to
// reproduce does not retrain those stages (their cache keys stay the same).
static void reset_stage2_fields(RunConfig& c, bool keep_data) {
  const RunConfig d;
  c.router_loss = d.router_loss;
  c.beta = d.beta;        // β and the KL's normalisation: only a stage-2 router has a KL
  c.kl_norm = d.kl_norm;  // (before 2026-12-01 they were kept, so --ablate kl_norm retrained pretraining and fine-tuning)
  c.epochs = d.epochs;
  if (keep_data) return;
  c.train_size = d.train_size;
  c.router_data = d.router_data;
  c.heldout_size = d.heldout_size;
}

// ---- the stage cache ---------------------------------------------------------------
RunConfig training_stage(RunConfig c) {
  copy_fields(c, RunConfig{}, [](const auto& row, const std::string&) { return row.group == Group::evaluation; });
  return c;
}

json stage_inputs(const RunConfig& c) {
  json j = json::object();
  for_each_field(c, [&](const auto& row, const auto& v, std::string path) {
    if (row.use & Use::runtime) return;
    using Row = std::remove_cvref_t<decltype(row)>;
    if ((row.use & Use::key_if_set) && v == typename Row::config{}.*row.member) return;  // at its default
    for (char& ch : path)
      if (ch == '.') ch = '/';
    j[json::json_pointer("/" + path)] = v;
  });
  return j;
}

std::string stage_key(const RunConfig& c) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)nn::name_hash(stage_inputs(c).dump()));
  return std::string(buf).substr(0, 12);
}

// Two reproduce runs that share one --stages folder must not train the same
// stage at once: both would append to its log.jsonl and write its
// checkpoints in turn (it happened in the study of issue 17). Rank 0 holds an
// advisory lock (flock(2)) on <stage folder>/.lock while it looks the stage up
// and trains it; the lock goes with the process, so a killed run leaves none
// behind. A second process waits for it and then finds the stage done (one
// process), or stops in one line (several ranks: the others would wait past
// --dist-timeout).
class StageLock {
 public:
  StageLock(const std::string& path, const std::string& name) {
    bool busy = false;
    if (dist::root()) {
      fs::create_directories(fs::path(path).parent_path());
      fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd_ < 0) fail("reproduce: cannot open the stage lock '" + path + "': " + std::strerror(errno));
      busy = ::flock(fd_, LOCK_EX | LOCK_NB) != 0;
      if (busy && errno != EWOULDBLOCK) fail("reproduce: cannot lock '" + path + "': " + std::strerror(errno));
    }
    if (!dist::root_says(busy, "reproduce stage lock")) return;
    const std::string msg = "stage " + name + " is being trained by another process sharing --stages (" + path + ")";
    if (dist::active()) dist::fail_all("reproduce: " + msg + "; run again when it has finished");
    std::fprintf(stderr, "[reproduce] %s: waiting for it\n", msg.c_str());
    if (::flock(fd_, LOCK_EX) != 0) fail("reproduce: cannot lock '" + path + "': " + std::strerror(errno));
  }
  ~StageLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  StageLock(const StageLock&) = delete;
  StageLock& operator=(const StageLock&) = delete;

 private:
  int fd_ = -1;
};

// Train one stage unless a finished copy with the same inputs exists. Returns
// the best checkpoint, or with `last` the last one.
// `stages` is the cache folder. A stage that starts from another stage's
// checkpoint (--init under `stages`) is keyed by that checkpoint's place in
// the cache, not by the absolute path: moving or sharing the cache (several
// --out folders, one --stages) keeps the keys.
static std::string train_stage(RunConfig c, const std::string& stages, const std::string& name, bool last = false) {
  c = training_stage(std::move(c));
  // Under mpirun the stage is trained by every rank, one batch shard each
  // unless --batch-shards says otherwise (run_train does the same): the
  // shards are part of the key, the rank count is not (docs/SCALE.md).
  if (!c.given("--batch-shards")) c.batch_shards = dist::size();
  RunConfig keyed = c;
  if (keyed.init.rfind(stages + "/", 0) == 0) keyed.init = "<stages>/" + keyed.init.substr(stages.size() + 1);
  json inputs = stage_inputs(keyed);
  std::string dir = stages + "/" + name + "-" + stage_key(keyed);
  StageLock lock(dir + "/.lock", name);  // held until the stage is done or found done
  std::string done = dir + "/done.json";
  std::string best = dir + "/best.safetensors";
  const std::string result = last ? dir + "/last.safetensors" : best;
  double earlier_s = 0;  // a capped stage continued: the wall time before
  // Every rank takes rank 0's view of the cache (rank 0 alone writes it).
  if (dist::root_says(fs::exists(done) && fs::exists(result), "reproduce stage cache")) {
    json dj = json::parse(slurp_file(done), nullptr, false);
    bool capped = dj.is_object() && dj.value("time_capped", false);
    double cap = dj.is_object() ? dj.value("time_limit_s", -1.0) : -1.0;  // -1: not recorded (older done.json)
    if (!capped || (c.time_limit_s > 0 && (cap < 0 || c.time_limit_s <= cap))) {
      if (capped)
        std::fprintf(stderr, "[reproduce] WARNING: reusing %s, which stopped at its time cap before its last step "
                     "(--no-time-caps continues it)\n", dir.c_str());
      else
        std::fprintf(stderr, "[reproduce] %s: reusing %s\n", name.c_str(), dir.c_str());
      return result;
    }
    std::fprintf(stderr, "[reproduce] %s stopped at its time cap before; continuing it to its last step\n",
                 name.c_str());
    earlier_s = dj.value("seconds", 0.0);
    if (dist::root()) fs::remove(done);
  }
  if (dist::root()) fs::create_directories(dir);
  c.out = dir;
  // A stage that was stopped (Ctrl-C, time out, a killed session) left its
  // last checkpoint here: continue it. Resuming reproduces the uninterrupted
  // run (tests/test_reliability.cpp), so the cache stays a function of inputs.
  c.resume = dist::root_says(fs::exists(dir + "/last.safetensors"), "reproduce stage cache");
  c.force = !c.resume;  // stopped before its first checkpoint: nothing in it is worth keeping
  std::fprintf(stderr, "[reproduce] %s %s %s\n", name.c_str(), c.resume ? "resuming in" : "->", dir.c_str());
  auto t0 = std::chrono::steady_clock::now();
  int rc = run_train(c);
  if (rc != 0) fail("reproduce: stage " + name + " stopped with exit code " + std::to_string(rc));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  secs += earlier_s;
  // Did the stage run all its steps (or stop early on validation NLL), or
  // stop at the time cap (the log's last line is then the time_limit event)?
  bool capped = false;
  {
    std::ifstream lf(dir + "/log.jsonl");
    std::string line, last_line;
    while (std::getline(lf, line))
      if (!line.empty()) last_line = line;
    capped = last_line.find("\"time_limit\"") != std::string::npos;
  }
  if (capped)
    std::fprintf(stderr, "[reproduce] WARNING: stage %s hit its %.0f s time cap: its result depends on machine speed\n",
                 name.c_str(), c.time_limit_s);
  nn::atomic_write(done, json{{"inputs", inputs},
                              {"seconds", secs},
                              {"time_capped", capped},
                              {"time_limit_s", c.time_limit_s}}
                             .dump(2) + "\n");
  return result;
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
// The evaluation settings of this run (c: a seed's config), stored in the
// checkpoints of its fine-tuning and stage-2 stages: `vmoer eval` on one of
// them with no flags repeats this run's ID and OOD numbers
// (inherit_eval_protocol in experiments/checkpoint_io.h).
static json eval_protocol(const RunConfig& c) {
  return json{{"max_eval_examples", c.max_eval_examples}, {"ood_size", c.ood_size}, {"mi_samples", c.mi_samples},
              {"gammas", c.gammas},   {"stability_draws", c.stability_draws}, {"ece_bins", c.ece_bins},
              {"seed", c.seed}};
}

static json run_method(const std::string& method, const ReproConfig& r, const RunConfig& base,
                       const std::string& finetuned, const TrackData& td, const std::vector<int>& bayes,
                       std::map<std::string, std::string>& csvs) {
  RunConfig c = base;
  c.router.bayes_layers = bayes;
  Method how = parse_method(method);
  c.router.name = how.router;
  const nn::RouterInfo& router = nn::router_info(how.router);
  std::string ckpt = finetuned;
  if (router.heads) {
    RunConfig s = c;
    s.stage = Stage::router;
    s.init = finetuned;
    std::string bl;
    for (int l : bayes) bl += (bl.empty() ? "" : ",") + std::to_string(l);
    s.bayes_spec = bl;
    s.optim.weight_decay = 0.0;
    s.eval_protocol = eval_protocol(c);
    StagePlan sp = plan_for(PlanFor::router, r);
    if (sp.epochs > 0) {
      // epoch plans validate on the whole val split, up to --val-size 1000 (smoke: its 24)
      s.max_eval_examples = r.smoke ? base.max_eval_examples : 0;
      s.val_size = 1000;
    } else {
      s.max_eval_examples = std::min(base.max_eval_examples > 0 ? base.max_eval_examples : 100000, 300);
    }
    apply_plan(s, sp);
    if (base.epochs > 0) set_epochs(s, base.epochs);  // --epochs given to reproduce: stage 2's length
    s.optim.warmup = std::max<int64_t>(1, s.steps / 20);
    ckpt = train_stage(s, r.stages, std::string(td.vit ? "vision-" : "") + "router-" + c.router.name.str() + "-seed" +
                                     std::to_string(c.seed));
  }
  // Model for evaluation: the finetuned weights with the method's router on the chosen layers.
  nn::ModelConfig mc;
  nn::RouterConfig stored;
  read_checkpoint_configs(ckpt, mc, stored);
  nn::RouterConfig rc = c.router;
  nn::Model model(mc, rc, c.seed);
  load_checkpoint(ckpt, model, nullptr);
  if (c.device == Device::CUDA) model.to(Device::CUDA);
  // --expert-parallel P: evaluated with the experts sharded, as `vmoer eval` does
  dp::resolve_expert_parallel(c.expert_parallel, mc.n_experts);
  dp::shard_expert_weights(model.params(), mc.n_experts, dist::ep_size(), dist::ep_rank());
  auto t0 = std::chrono::steady_clock::now();
  McEval test = td.vit ? evaluate_images(model, td.img.test, c) : evaluate_mc(model, td.text.test, c);
  double eval_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The validation split: temperature scaling is fitted on it, and its ID
  // metrics ("val") are what a choice between configurations may look at
  // (the study's screening picks on val NLL, never on the test split).
  // Router draws are keyed by the set's name, so this pass does not change
  // the test numbers.
  McEval val = td.vit ? evaluate_images(model, td.img.val, c) : evaluate_mc(model, td.text.val, c);
  double T = 1.0;
  if (how.temperature_scaling) {
    metrics::Matrix logits = metrics::Matrix::from_rows(val.probs);
    for (auto& x : logits.data) x = std::log(std::max(x, 1e-300));
    T = metrics::fit_temperature(logits, std::vector<int>(val.labels.begin(), val.labels.end())).temperature;
    test = temperature_scaled(test, T);
    val = temperature_scaled(val, T);  // fitted on these: optimistic for +ts
  }
  json rec;
  rec["method"] = method;
  rec["seed"] = c.seed;
  rec["checkpoint"] = ckpt;
  rec["bayes_layers"] = router.bayesian ? json(bayes) : json::array();
  rec["temperature_scaling"] = T;
  rec["id"] = id_metrics(test, c.ece_bins);
  rec["val"] = id_metrics(val, c.ece_bins);
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
    if (how.temperature_scaling) oe = temperature_scaled(oe, T);
    json m = ood_metrics_json(test, oe);
    o[os.name] = {{"kind", ood_kind(os.name)}, {"n", os.size()}, {"scores", m}};
    if (m.contains("entropy")) {
      by_kind[ood_kind(os.name)].push_back(m["entropy"]["auroc"].get<double>());
      by_kind["fpr95_ood_recall"].push_back(m["entropy"]["fpr95_ood_recall"].get<double>());
      by_kind["fpr95_id_tpr"].push_back(m["entropy"]["fpr95_id_tpr"].get<double>());
    }
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
  rec["stability"] = stability_sweep(model, ev, c.gammas, c.stability_draws);
  RoutingTrace tr;
  ev.run(0.0, &tr, "");
  rec["expert_load"] = expert_load(model, tr);
  rec["temperature"] = temperature_stats(tr);  // per layer: vtsr's learned T (sample-k: its fixed T)
  rec["head_movement"] = router.heads ? head_movement(model, read_checkpoint_state(ckpt).seed) : json::array();
  rec["predictive"] = predictive_json(test, c.ece_bins);  // null for det and when --mi-samples is 0
  rec["flops"] = flops_json(model, td.vit ? model.config().seq_len_vit() : 128);
  // reliability diagram rows
  std::string& rel = csvs["reliability.csv"];
  if (rel.empty()) rel = "method,seed,bin_lo,bin_hi,count,confidence,accuracy\n";
  for (auto& b : rec["id"]["reliability"])
    rel += method + "," + std::to_string(c.seed) + "," + std::to_string(b["lo"].get<double>()) + "," +
           std::to_string(b["hi"].get<double>()) + "," + std::to_string(b["count"].get<size_t>()) + "," +
           std::to_string(b["confidence"].get<double>()) + "," + std::to_string(b["accuracy"].get<double>()) + "\n";
  std::string& st = csvs["stability.csv"];
  // stability.csv: the three definitions of eval.cpp (shared / independent / distribution) as columns
  if (st.empty()) st = "method,seed,gamma,layer,shared,independent,distribution\n";
  auto jcols = [](const json& j) {
    auto num = [](const json& v) { return v.is_null() ? std::string("nan") : std::to_string(v.get<double>()); };
    return num(j["shared"]) + "," + num(j["independent"]) + "," + num(j["distribution"]);
  };
  for (auto& row : rec["stability"]) {
    st += method + "," + std::to_string(c.seed) + "," + std::to_string(row["gamma"].get<double>()) + ",mean," +
          jcols(row["jaccard"]) + "\n";
    for (auto& pl : row["per_layer"])
      st += method + "," + std::to_string(c.seed) + "," + std::to_string(row["gamma"].get<double>()) + "," +
            std::to_string(pl["layer"].get<int>()) + "," + jcols(pl["jaccard"]) + "\n";
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

// Mean Jaccard at γ under one definition: "shared", "independent" or "distribution".
static double jaccard_at(const json& rec, double gamma, const char* def = "shared") {
  for (auto& row : rec["stability"])
    if (std::abs(row["gamma"].get<double>() - gamma) < 1e-12) {
      const json& v = row["jaccard"][def];
      return v.is_null() ? NAN : v.get<double>();
    }
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
      // the routing as used, run twice (independent router draws): what the
      // paper's +38% is compared with (docs/vmoer.md §8); all three in the
      // measurement table below
      {"Jaccard γ=0.01 (indep.)", [](const json& r) { return jaccard_at(r, 0.01, "independent"); }},
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
  const std::string det(enum_name(nn::RouterKind::det));  // the baseline row
  if (vals.count(det)) {
    s += "\nRelative change against `det` (paper's headline claims: routing stability +38%, ECE −94%, "
         "OOD AUROC +12%, FLOPs < 1%):\n\n| method | stability (Jaccard γ=0.01, independent draws) | ECE | AUROC near | AUROC far | FLOPs |\n"
         "|---|---|---|---|---|---|\n";
    auto rel = [&](const std::string& m, size_t i) {
      double a = mean_of(vals[m][i]), b = mean_of(vals[det][i]);
      char out[32];
      if (std::isnan(a) || std::isnan(b) || b == 0) return std::string("—");
      std::snprintf(out, sizeof out, "%+.1f%%", 100.0 * (a - b) / b);
      return std::string(out);
    };
    for (auto& m : methods) {
      if (m == det || !vals.count(m)) continue;
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

// The measurement columns of issue 16 (docs/vmoer.md "Measuring without
// artefacts"), one row per method, mean over seeds: stability at γ = 0.01
// under the three definitions, both FPR95 conventions of the entropy score
// (mean over OOD sets), the predictive arm (p̂ averaged over --mi-samples
// routing draws) and its mutual-information AUROC, the router's temperature
// per layer (vtsr: learned), and how far the router heads moved from their
// initialisation (‖W − W₀‖ / ‖W₀‖, mean over the Bayesian layers).
static std::string make_measurement_table(const std::vector<json>& recs, const std::vector<std::string>& methods) {
  auto cell = [](const std::vector<double>& v, const char* fmt = " %.3f |") {
    char b[48];
    double m = mean_of(v);
    if (std::isnan(m)) return std::string(" — |");
    std::snprintf(b, sizeof b, fmt, m);
    return std::string(b);
  };
  auto num = [](const json& j, const char* k) {
    return j.is_object() && j.contains(k) && j[k].is_number() ? j[k].get<double>() : NAN;
  };
  std::string s =
      "\nMeasurement (Jaccard at γ = 0.01: shared router noise / independent draws / top-K of the routing "
      "distribution; FPR95 of the entropy score, ours = ID flagged at 95% OOD recall, OpenOOD = OOD accepted at 95% "
      "ID kept; p̂ = answer distribution averaged over the routing draws; T: temperature per layer, mean ± std over "
      "tokens; heads: ‖W − W₀‖ / ‖W₀‖ per head, mean over layers):\n\n"
      "| method | J shared | J indep. | J dist. | FPR95 ours | FPR95 OpenOOD | p̂ ACC | p̂ NLL | p̂ ECE | MI AUROC near | "
      "MI AUROC far | T per layer | heads moved |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (auto& m : methods) {
    std::vector<std::vector<double>> v(10);
    std::string temps, heads;
    for (auto& r : recs) {
      if (r["method"].get<std::string>() != m) continue;
      v[0].push_back(jaccard_at(r, 0.01, "shared"));
      v[1].push_back(jaccard_at(r, 0.01, "independent"));
      v[2].push_back(jaccard_at(r, 0.01, "distribution"));
      v[3].push_back(num(r["auroc_mean"], "fpr95_ood_recall"));
      v[4].push_back(num(r["auroc_mean"], "fpr95_id_tpr"));
      const json& p = r.value("predictive", json());
      v[5].push_back(num(p, "accuracy"));
      v[6].push_back(num(p, "nll"));
      v[7].push_back(num(p, "ece"));
      v[8].push_back(num(r["auroc_mean"], "near:mutual_info"));
      v[9].push_back(num(r["auroc_mean"], "far:mutual_info"));
      if (temps.empty())  // the first seed's
        for (auto& t : r.value("temperature", json::array())) {
          char b[64];
          std::snprintf(b, sizeof b, "%sL%d %.3g±%.2g", temps.empty() ? "" : ", ", t["layer"].get<int>(),
                        t["mean"].get<double>(), t["std"].get<double>());
          temps += b;
        }
      if (heads.empty()) {
        std::map<std::string, std::vector<double>> ratio;  // head -> per layer ‖ΔW‖/‖W₀‖
        for (auto& l : r.value("head_movement", json::array()))
          for (auto& h : l["heads"])
            if (h["norm_init"].get<double>() > 0)
              ratio[h["param"].get<std::string>()].push_back(h["norm_moved"].get<double>() /
                                                             h["norm_init"].get<double>());
        for (auto& [name, rs] : ratio) {
          char b[80];
          std::snprintf(b, sizeof b, "%s%s %.3g", heads.empty() ? "" : ", ", name.c_str(), mean_of(rs));
          heads += b;
        }
      }
    }
    if (v[0].empty()) continue;
    s += "| " + m + " |";
    for (size_t i = 0; i < 10; ++i) s += cell(v[i]);
    s += " " + (temps.empty() ? std::string("—") : temps) + " | " + (heads.empty() ? std::string("—") : heads) + " |\n";
  }
  return s;
}

// ---- --ablate KEY=v1,v2: KEY names a field with Use::ablate by its flag -------------
static std::string ablate_key(std::string_view flag) {
  std::string k(flag.substr(2));
  for (char& ch : k)
    if (ch == '-') ch = '_';
  return k;  // --top-k -> top_k
}
static std::string ablate_keys() {
  std::string out;
  const RunConfig d;
  for_each_field(d, [&](const auto& row, const auto&, const std::string&) {
    if (!(row.use & Use::ablate)) return;
    if (!out.empty()) out += ", ";
    out += ablate_key(row.flag);
  });
  return out;
}
// Only scalar fields can be ablated (the values are separated by commas).
template <class C>
constexpr bool ablate_rows_scalar() {
  bool ok = true;
  for_each_row<C>([&](const auto& row) {
    using T = typename std::remove_cvref_t<decltype(row)>::type;
    if constexpr (HasFields<T>)
      ok = ok && ablate_rows_scalar<T>();
    else if constexpr (is_vector<T>::value || std::is_same_v<T, bool>)
      ok = ok && !(row.use & Use::ablate);
  });
  return ok;
}
static_assert(ablate_rows_scalar<RunConfig>(), "an --ablate key must be a number, a name or a string");

// Set the field that --ablate KEY names to `text`; false when KEY names none.
static bool set_ablated(RunConfig& c, const std::string& key, const std::string& text) {
  bool found = false;
  for_each_field(c, [&](const auto& row, auto& v, const std::string&) {
    using T = std::remove_cvref_t<decltype(v)>;
    if (!(row.use & Use::ablate) || ablate_key(row.flag) != key) return;
    found = true;
    auto not_a_number = [&] { fail("--ablate: value '" + text + "' for " + key + " is not a number"); };
    if constexpr (is_named<T>::value) {
      try {
        v = parse_enum<decltype(v.value())>(text);
      } catch (const Error& e) {
        fail("--ablate: value '" + text + "' for " + key + ": " + e.what());
      }
    } else if constexpr (std::is_same_v<T, std::string>) {
      v = text;
    } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || end != text.data() + text.size()) not_a_number();
    } else if constexpr (std::is_floating_point_v<T>) {
      char* end = nullptr;
      v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size()) not_a_number();
    }
  });
  return found;
}

// Pretraining and fine-tuning use the deterministic router on every layer.
static void reset_router(RunConfig& c) {
  RunConfig d;
  c.router = d.router;
  c.bayes_spec = d.bayes_spec;
}

static int run_reproduce(ReproConfig r) {
  const std::string started = utc_now();
  if (r.seeds < 1) fail("--seeds: must be >= 1");
  if (r.plan == Plan::overconfident && r.track != Track::text)
    fail("--plan overconfident: the text track only (--track text); its --train-size is a WordNet subset");
  // The preset, then the RunConfig flags given to reproduce.
  RunConfig base = preset(r);
  copy_fields(base, r.run, [&](const auto& row, const std::string&) { return r.run.given(row.flag); });
  if (r.run.given("--batch-shards")) base.given_flags.push_back("--batch-shards");  // else one per rank (train_stage)
  require_device(base.device, base.allow_tf32);
  omp_set_num_threads(base.threads);
  dist::set_timeout(base.dist_timeout);
  std::vector<Method> parsed_methods;
  for (auto& m : r.methods) parsed_methods.push_back(parse_method(m));

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
    for (auto& v : ab_vals) {  // every value checked before any training
      RunConfig scratch = base;
      if (!set_ablated(scratch, ab_key, v)) fail("--ablate: unknown key '" + ab_key + "' (" + ablate_keys() + ")");
    }
  }
  if (r.out.empty()) {
    auto t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d", std::localtime(&t));
    r.out = std::string("results/") + buf + (r.smoke ? "-smoke" : "") +
            (r.plan == Plan::overconfident ? "-overconfident" : r.smoke ? "" : r.quick ? "-quick" : "-full");
  }
  if (dist::root()) fs::create_directories(r.out);  // rank 0 writes every output
  if (r.stages.empty()) r.stages = r.out + "/stages";
  while (r.stages.size() > 1 && r.stages.back() == '/') r.stages.pop_back();

  json results;
  results["command"] = "vmoer reproduce" + std::string(r.quick ? " --quick" : "") +
                       (r.plan == Plan::standard ? "" : " --plan " + r.plan.str());
  results["plan"] = r.plan;
  results["seeds"] = r.seeds;
  results["reseed_from"] = r.reseed_from;
  results["split_seed"] = base.split_seed;
  results["threads"] = base.threads;
  results["track"] = r.track;
  results["methods"] = r.methods;
  results["stages"] = r.stages;  // the stage cache this run read and wrote
  results["ood_convention"] = "OOD is the positive class; higher score = more OOD";
  std::string table = std::string("# vmoer reproduce") + (r.quick ? " --quick" : "") +
                      (r.plan == Plan::standard ? "" : " --plan " + r.plan.str()) + "\n\n";
  if (r.plan == Plan::overconfident)
    table += std::string("Plan overconfident: the ") + (r.smoke ? "smoke" : "quick") + " model fine-tuned on " +
             std::to_string(base.train_size) + " prompts of the train split (--train-size) for " +
             std::to_string(plan_for(PlanFor::finetune, r).epochs) +
             " epoch(s) without early stopping; every method starts from the LAST fine-tuning checkpoint. Stage 2: " +
             (base.router_data == RouterData::heldout ? "a held-out part of the train split"
                                                       : "the same prompts as fine-tuning") +
             ".\n\n";
  std::map<std::string, std::string> csvs;
  auto t_all = std::chrono::steady_clock::now();
  for (const std::string& av : ab_vals) {
    RunConfig cfg = base;
    std::vector<std::string> methods = r.methods;
    if (!ab_key.empty()) {
      set_ablated(cfg, ab_key, av);
      if (ab_key == ablate_key("--router")) methods = {"det", av};  // the router against det
    }
    std::vector<Track> tracks;
    if (r.track != Track::vision) tracks.push_back(Track::text);
    if (r.track != Track::text) tracks.push_back(Track::vision);
    std::map<Track, std::vector<json>> track_recs;
    for (Track track : tracks) {
      bool vit = track == Track::vision;
      for (int si = 0; si < r.seeds; ++si) {
        RunConfig tc = vit ? vision_config(cfg, r) : cfg;
        tc.seed = r.seed0 + (uint64_t)si;
        std::string fin;
        if (!vit) {
          // ---- stage 0: pretrain on Brown ----------------------------------------------
          RunConfig p = tc;
          p.seed = r.reseed_from == Stage::pretrain ? tc.seed : r.seed0;  // shared unless re-seeded
          p.stage = Stage::pretrain;
          reset_router(p);
          reset_stage2_fields(p, false);
          apply_plan(p, plan_for(PlanFor::pretrain, r));
          p.eval_batches = 4;
          std::string pre = train_stage(p, r.stages, "pretrain-seed" + std::to_string(p.seed));
          // ---- stage 1: fine-tune on the WordNet task ---------------------------------
          RunConfig f = p;
          f.seed = r.reseed_from == Stage::router ? r.seed0 : tc.seed;
          f.stage = Stage::finetune;
          f.init = pre;
          // The fine-tuning set. With --train-size it is the same prompts whatever
          // --router-data says (split_train), so the stage is shared by both;
          // without, the held-out part is carved out of it: fine-tuning reads the field.
          f.train_size = tc.train_size;
          if (tc.train_size == 0) {
            f.router_data = tc.router_data;
            f.heldout_size = tc.heldout_size;
          } else {
            RunConfig whole = tc;  // the whole train split's size: N + H must fit, fail before training
            whole.train_size = 0;
            whole.router_data = RouterData::train;
            whole.max_train_examples = 0;
            split_train(load_mc_task(whole).train.size(), tc);
          }
          f.max_eval_examples = r.smoke ? 16 : (r.quick || r.plan == Plan::overconfident) ? 300 : 1000;
          StagePlan fp = plan_for(PlanFor::finetune, r);
          apply_plan(f, fp);
          f.eval_protocol = eval_protocol(tc);
          f.eval_protocol["seed"] = f.seed;
          fin = train_stage(f, r.stages, "finetune-seed" + std::to_string(f.seed), fp.last);
        } else {
          // ---- stage 1 (vision): the ViT-MoE trained from scratch on Fashion-MNIST -----
          RunConfig f = tc;
          f.seed = r.reseed_from == Stage::router ? r.seed0 : tc.seed;
          f.stage = Stage::finetune;
          reset_router(f);
          reset_stage2_fields(f, true);
          apply_plan(f, plan_for(PlanFor::vision, r));
          f.eval_protocol = eval_protocol(tc);
          f.eval_protocol["seed"] = f.seed;
          f.max_eval_examples = r.smoke ? 16 : r.quick ? 500 : 2000;
          fin = train_stage(f, r.stages, "vision-train-seed" + std::to_string(f.seed));
        }
        // ---- data for evaluation ----------------------------------------------------------
        TrackData td;
        td.vit = vit;
        size_t ns = r.smoke ? 16 : (r.quick || r.plan == Plan::overconfident) ? 150 : 500;
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
        if (std::optional<AutoLayers> autol = auto_layers(tc.bayes_spec)) {
          nn::Model probe(mc, nn::RouterConfig{}, tc.seed);
          load_checkpoint(fin, probe, nullptr);
          if (tc.device == Device::CUDA) probe.to(Device::CUDA);
          dp::resolve_expert_parallel(tc.expert_parallel, mc.n_experts);
          dp::shard_expert_weights(probe.params(), mc.n_experts, dist::ep_size(), dist::ep_rank());
          RunConfig pc = tc;
          pc.max_eval_examples = 200;
          if (vit) {
            ImgTaskData d = load_image_task(pc);
            bayes = resolve_auto_layers(
                probe, *autol, [&](nn::Model& m) { return image_evaluator(m, d.val, pc); }, tc.auto_gamma, tc.seed);
          } else {
            McSet sub = td.text.val;
            sub.prompts.resize(std::min<size_t>(200, sub.size()));
            sub.labels.resize(sub.prompts.size());
            bayes = resolve_auto_layers(
                probe, *autol, [&](nn::Model& m) { return mc_evaluator(m, sub, pc); }, tc.auto_gamma, tc.seed);
          }
          std::string ls;
          for (int l : bayes) ls += (ls.empty() ? "" : ",") + std::to_string(l);
          std::fprintf(stderr, "[reproduce] --bayes-layers %s -> %s\n", tc.bayes_spec.c_str(), ls.c_str());
        } else {
          RunConfig tmp = tc;
          parse_bayes_spec(tmp);
          bayes = tmp.router.bayes_layers;
        }
        std::map<std::string, std::string> track_csvs;
        for (const auto& m : methods) {
          json rec = run_method(m, r, tc, fin, td, bayes, track_csvs);
          rec["track"] = enum_name(track);
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
      std::string title = std::string(track == Track::vision ? "Vision track (Fashion-MNIST; OOD: OpenCV digits)"
                                                        : "Text track (WordNet nouns; near/far OOD)") +
                          (ab_key.empty() ? "" : ", ablation " + ab_key + " = " + (av.empty() ? "\"\" (empty)" : av));
      table += make_table(recs, methods, r.seeds, title, track == Track::vision) +
               make_measurement_table(recs, methods) + "\n";
    }
  }
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();
  results["seconds"] = total_s;
  // Where this came from (experiments/build_info.h): the base configuration
  // of every stage (before each stage's plan), the command, commit, CPU,
  // times. Stage paths in "runs" are relative to "cwd".
  json prov = provenance(base.threads, started);
  prov["config"] = fields_to_json<json>(base);
  prov["paths_relative_to"] = "cwd";
  prov["finished"] = utc_now();
  prov["reproduce"] = {{"plan", r.plan},       {"quick", r.quick},   {"seeds", r.seeds},
                       {"seed", r.seed0},      {"reseed_from", r.reseed_from}, {"track", r.track},
                       {"methods", r.methods}, {"ablate", r.ablate}, {"stages", r.stages},
                       {"no_time_caps", r.no_time_caps}};
  results["provenance"] = prov;
  table += "\nBuilt as: " + version_line() + ". Command: `" + command_line() + "`.\n";
  char buf[128];
  std::snprintf(buf, sizeof buf, "\nSeeds: %d (from %llu). Threads: %d. Wall time: %.1f min.\n", r.seeds,
                (unsigned long long)r.seed0, base.threads, total_s / 60);
  table += buf;
  if (r.seeds > 1 && r.reseed_from != Stage::pretrain)
    table += std::string("Shared across seeds (trained once with seed ") + std::to_string(r.seed0) + "): " +
             (r.reseed_from == Stage::finetune ? "the pretrained model" : "the pretrained and the fine-tuned model") +
             " (`--reseed-from " + r.reseed_from.str() + "`); the ± is over what each seed re-runs.\n";
  nn::atomic_write(r.out + "/config.json", prov.dump(2) + "\n");  // as train's and eval's
  nn::atomic_write(r.out + "/results.json", results.dump(2) + "\n");
  nn::atomic_write(r.out + "/table.md", table);
  for (auto& [name, csv] : csvs) nn::atomic_write(r.out + "/" + name, csv);
  std::printf("%s\n", table.c_str());
  // Figures from the CSVs.
  std::string plot = std::string(VMOER_SOURCE_DIR) + "/scripts/plot.py";
  std::string cmd = "/usr/bin/python3 -c 'import matplotlib' 2>/dev/null";
  if (!dist::root()) {
  } else if (std::system(cmd.c_str()) == 0) {
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
  r->run = preset(*r);  // so that --help shows the full preset's values
  auto* s = app.add_subcommand("reproduce", "the paper's protocol end to end at small scale on real data");
  s->add_flag("--quick", r->quick, "small model, short stages, 1 seed (under 15 minutes on 2 cores)");
  s->add_flag("--smoke", r->smoke, "tiny model and a few steps: checks the pipeline end to end in seconds")
      ->group("");  // hidden: for tests
  s->add_option("--seeds", r->seeds, "seeds (mean ± std)")->capture_default_str();
  s->add_flag("--no-time-caps", r->no_time_caps,
              "train every stage to its step count whatever the wall time (default: a stage stops at about 3x "
              "its expected time on 2 cores, and says so; a capped stage in the cache is continued with this flag)");
  s->add_option("--seed", r->seed0, "first seed")->capture_default_str();
  cli::add_enum_option(s, "--reseed-from", r->reseed_from,
                       "first stage each seed re-runs: pretrain (every stage per seed), finetune (the default: one "
                       "pretrained model, trained with the first seed, stands in for the paper's downloaded LLM; "
                       "each seed fine-tunes its own), or router (one fine-tuned model too; seeds vary stage 2 and "
                       "the evaluation's sampling only, so the ± understates the spread across fine-tuned models)");
  cli::add_enum_option(s, "--track", r->track, "text, vision, or both tracks");
  cli::add_enum_option(s, "--plan", r->plan,
                       "stage plans: standard, or overconfident (quick model, --train-size 2120, 15 fine-tuning "
                       "epochs, last checkpoint, stage 2 by epochs: det is over-confident; text track)");
  s->add_option("--out", r->out, "output directory (default results/<date>-quick|full)");
  s->add_option("--stages", r->stages,
                "stage cache: checkpoints of every trained stage, reused when a stage's inputs agree "
                "(default <out>/stages; give several runs one folder to share their stages)");
  s->add_option("--methods", r->methods, "methods to run: routers, or a router with +ts (temperature scaling)")
      ->delimiter(',');
  s->add_option("--ablate", r->ablate, "sweep one knob: key=v1,v2 (" + ablate_keys() + ")");
  // The RunConfig flags of reproduce (Use::repro): given, they override the preset in every stage.
  cli::add_field_options(s, r->run, Use::repro);
  cli::add_runner(s, [r, s] {
    if ((r->quick || r->smoke || r->plan == Plan::overconfident) && s->count("--seeds") == 0)
      r->seeds = 1;  // --quick, --plan overconfident: one seed unless asked
    r->run.given_flags = cli::given_flags(s, r->run, Use::repro);
    return run_reproduce(*r);
  });
}

}  // namespace vm::exp

namespace vm::cli {
void register_reproduce_command(CLI::App& app) { exp::register_reproduce(app); }
}  // namespace vm::cli
