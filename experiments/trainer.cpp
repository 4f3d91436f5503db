// experiments/trainer.cpp — `vmoer train`: one loop for the three stages
// (pretrain, finetune, router), written as named steps the way the paper's
// method reads:
//
//   setup:  output folder → model (fresh, --init, or --resume) → which
//           parameters train → data
//   loop:   batch → forward → objective() → backward → guards → AdamW update
//           → log, validation, checkpoint
//
// Checkpoint files: experiments/checkpoint_io.cpp. Validation and evaluation
// passes: experiments/mc_eval.cpp. What stops a run cleanly (non-finite
// values, disk space, signals): experiments/train_guards.cpp and below.
#include "experiments/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/dist.h"
#include "core/philox.h"
#include "experiments/build_info.h"
#include "experiments/data_parallel.h"
#include "experiments/datasets.h"
#include "experiments/evaluation.h"
#include "experiments/metrics.h"
#include "experiments/train_guards.h"
#include "nn/checkpoint.h"

namespace vm::exp {
namespace fs = std::filesystem;
using nlohmann::json;

// ---- signals: SIGINT/SIGTERM finish the step, save, and exit ------------------------
static std::atomic<int> g_signal{0};
static void on_signal(int s) {
  g_signal = s;
  dist::note_signal(s);  // several ranks: exchanges stop waiting (core/dist.h)
}

// Progress on stderr. On a terminal: one line redrawn in place with \r. Into a
// file or a pipe (make demo's log, reproduce's stage logs): one plain line at
// every 5% of the run and at its last step, so a log holds ~20 lines instead
// of one frame per step.
static bool stderr_is_terminal() {
  static const bool tty = ::isatty(fileno(stderr)) == 1;
  return tty;
}
static void progress_bar(int64_t step, int64_t first, int64_t total, double loss, double tps, double eta_s) {
  const bool tty = stderr_is_terminal();
  if (!tty) {
    const int64_t span = std::max<int64_t>(1, total - first + 1);
    if (step != total && (step - first) * 20 / span == (step - first + 1) * 20 / span) return;
  }
  int width = 30, filled = total ? (int)(width * step / total) : width;
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  std::fprintf(stderr, "%s[%s] step %lld/%lld  loss %.4f  %.0f tok/s  ETA %02d:%02d%s", tty ? "\r" : "", bar.c_str(),
               (long long)step, (long long)total, loss, tps, (int)(eta_s / 60), (int)eta_s % 60, tty ? "   " : "\n");
  std::fflush(stderr);
}
// Ends the redrawn line on a terminal before other output.
static void progress_break(bool progress) {
  if (progress && stderr_is_terminal()) std::fprintf(stderr, "\n");
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


// ---- the data of a stage ------------------------------------------------------------
// Pretraining: Brown token streams. Fine-tuning and stage 2: the MC task.
// The vision model: Fashion-MNIST images.
struct StageData {
  bool vit = false, lm = false;
  LmData lm_data;
  McTaskData mc;
  ImgTaskData img;
  int64_t n_train = 0;            // examples (MC, images); 0 for token streams
  int64_t batches_per_epoch = 1;  // for --kl-norm dataset
};

static StageData load_stage_data(const RunConfig& cfg, const nn::ModelConfig& mc) {
  StageData d;
  d.vit = mc.kind == nn::ModelKind::vit;
  if (d.vit && cfg.stage == Stage::pretrain)
    fail("--stage pretrain: the vision model trains from scratch with --stage finetune (Fashion-MNIST)");
  d.lm = cfg.stage == Stage::pretrain;
  if (d.vit) d.img = load_image_task(cfg);
  else if (d.lm) d.lm_data = load_lm_data(cfg);
  else d.mc = load_mc_task(cfg);
  // --router-data heldout: stage 2 trains on the held-out part of the train
  // split (fine-tuning, reading the same field, trained on the rest).
  if (cfg.stage == Stage::router && cfg.router_data == RouterData::heldout) {
    if (d.vit) d.img.train = d.img.heldout;
    else if (!d.lm) d.mc.train = d.mc.heldout;
  }
  // --val-size: the first N prompts of the validation split.
  if (cfg.val_size > 0) {
    size_t n = (size_t)cfg.val_size;
    if (d.vit && d.img.val.size() > n) {
      d.img.val.idx.resize(n);
      d.img.val.labels.resize(n);
    } else if (!d.lm && !d.vit && d.mc.val.size() > n) {
      d.mc.val.prompts.resize(n);
      d.mc.val.labels.resize(n);
    }
  }
  d.n_train = d.vit ? (int64_t)d.img.train.size() : d.lm ? 0 : (int64_t)d.mc.train.size();
  if (!d.lm && d.n_train == 0) fail("--stage " + cfg.stage.str() + ": the training set is empty");
  d.batches_per_epoch = d.lm ? 1 : std::max<int64_t>(1, (d.n_train + cfg.batch - 1) / cfg.batch);
  return d;
}

// --epochs E > 0: the run's length and validation follow the training set.
//   steps_per_epoch = ⌈n_train / (batch · grad_accum)⌉,  steps = E · steps_per_epoch,
//   validation after every epoch (eval_every = steps_per_epoch), so --patience counts epochs.
int64_t steps_per_epoch(int64_t n_train, int batch, int grad_accum) {
  int64_t per_step = (int64_t)batch * grad_accum;
  return std::max<int64_t>(1, (n_train + per_step - 1) / per_step);
}
int64_t stage_train_size(const RunConfig& cfg) {
  if (cfg.stage == Stage::pretrain) return 0;
  return load_stage_data(cfg, cfg.model).n_train;
}
static void apply_epochs(RunConfig& cfg, const StageData& d) {
  if (cfg.epochs < 0) fail("--epochs: must be >= 0, got " + std::to_string(cfg.epochs));
  if (cfg.epochs == 0) return;
  if (d.lm) fail("--epochs: pretraining samples token windows and has no epochs; use --steps");
  int64_t spe = steps_per_epoch(d.n_train, cfg.batch, cfg.grad_accum);
  cfg.steps = cfg.epochs * spe;
  cfg.eval_every = (int)spe;
  std::fprintf(stderr, "--epochs %d: %lld training examples, %lld steps per epoch, %lld steps\n", cfg.epochs,
               (long long)d.n_train, (long long)spe, (long long)cfg.steps);
}

// ---- batch → forward → task loss ----------------------------------------------------
// Micro-batch number `key` (batches and router noise depend on it alone, which
// is what makes --resume exact). Returns the forward result, the task loss and
// the number of tokens it processed.
struct TaskForward {
  nn::ForwardResult res;
  Var task;
  double tokens = 0;
  int64_t n_seq = 1;           // sequences (examples) in the micro-batch
  std::vector<uint8_t> mask;   // (rows routed per MoE layer) 1 = real token; empty = all real
};

McTargets mc_targets(const McBatch& mb, RouterLoss which) {
  McTargets t;
  if (which == RouterLoss::answer) {  // one row per prompt: its last token predicts the letter
    t.positions = mb.last;
    for (int32_t l : mb.labels) t.targets.push_back(answer_tokens()[(size_t)l]);
    return t;
  }
  // every real row r = b·T + t: target ids[r + 1] (the next prompt byte), the letter at the last row
  for (int b = 0; b < mb.B; ++b)
    for (int i = 0; i < mb.T; ++i) {
      int32_t r = b * mb.T + i;
      if (!mb.mask[(size_t)r]) continue;
      t.positions.push_back(r);
      t.targets.push_back(r == mb.last[(size_t)b] ? answer_tokens()[(size_t)mb.labels[(size_t)b]] : mb.ids[(size_t)r + 1]);
    }
  return t;
}

// Examples [e0, e1) of an MC batch: its rows, with `last` shifted (the padded length T is the batch's).
static McBatch slice_mc_batch(const McBatch& mb, int e0, int e1) {
  McBatch s;
  s.B = e1 - e0;
  s.T = mb.T;
  const size_t r0 = (size_t)e0 * mb.T, r1 = (size_t)e1 * mb.T;
  s.ids.assign(mb.ids.begin() + r0, mb.ids.begin() + r1);
  s.mask.assign(mb.mask.begin() + r0, mb.mask.begin() + r1);
  for (int b = e0; b < e1; ++b) s.last.push_back(mb.last[(size_t)b] - (int32_t)r0);
  s.labels.assign(mb.labels.begin() + e0, mb.labels.begin() + e1);
  return s;
}

// A shard of the micro-batch (data parallelism): its examples [e0, e1), and
// what the shard's loss is normalised by, filled by forward_task from the
// whole micro-batch (every rank builds the whole batch, cheaply, and
// computes its own shards of it).
struct ShardOf {
  int e0 = 0, e1 = 0;
  int64_t B = 0;           // examples in the micro-batch
  double positions = 0;    // positions the task loss averages over
  double n_real = 0;       // real tokens (routed rows) of the micro-batch
};

// The micro-batch (or, with `sh`, its shard sh->e0..e1):
//   whole:  L_task = CE averaged over the batch's positions
//   shard:  L_task,s = CE averaged over the shard's positions · (positions_s / positions),
//           so Σ_s L_task,s = L_task; the shard's rows are rows [e0·T, e1·T) of the
//           batch's B·T (ForwardOptions::row0: the same router noise as in one piece).
static TaskForward forward_task(nn::Model& model, const StageData& d, const RunConfig& cfg, uint64_t key,
                                const nn::ForwardOptions& fo_in, ShardOf* sh = nullptr) {
  TaskForward f;
  nn::ForwardOptions fo = fo_in;
  // rows per example T; sets the shard's row offset and the micro-batch totals
  auto shard_rows = [&](int64_t B, int64_t T, double positions, double n_real) {
    sh->B = B;
    sh->positions = positions;
    sh->n_real = n_real;
    fo.row0 = (int64_t)sh->e0 * T;
    fo.rows_total = B * T;
    fo.n_real_total = n_real;
  };
  if (d.vit) {  // L_task = CE(class)
    std::vector<int64_t> idx = batch_indices(d.n_train, cfg.batch, (int64_t)key, cfg.seed);
    const int64_t Tv = model.config().seq_len_vit(), B = (int64_t)idx.size();
    if (sh) {
      shard_rows(B, Tv, (double)B, (double)(B * Tv));
      idx = std::vector<int64_t>(idx.begin() + sh->e0, idx.begin() + sh->e1);
    }
    f.res = model.forward_vit(image_batch(d.img.train, idx), fo);
    std::vector<int32_t> tg;
    for (int64_t i : idx) tg.push_back(d.img.train.labels[(size_t)i]);
    f.task = ops::cross_entropy(f.res.logits, tg);
    if (sh) f.task = ops::mul_scalar(f.task, (double)idx.size() / (double)B);
    f.tokens = (double)idx.size() * Tv;
    f.n_seq = (int64_t)idx.size();
  } else if (d.lm) {  // L_task = CE(next byte), every position
    std::vector<int32_t> ids, tg;
    lm_batch(d.lm_data.train, cfg.batch, cfg.seq, cfg.seed, nn::name_hash("train/" + std::to_string(key)), ids, tg);
    int B = cfg.batch;
    if (sh) {
      const int64_t T = cfg.seq;
      shard_rows(B, T, (double)ids.size(), (double)ids.size());
      ids = std::vector<int32_t>(ids.begin() + sh->e0 * T, ids.begin() + sh->e1 * T);
      tg = std::vector<int32_t>(tg.begin() + sh->e0 * T, tg.begin() + sh->e1 * T);
      B = sh->e1 - sh->e0;
    }
    std::vector<uint8_t> mask(ids.size(), 1);
    f.res = model.forward_lm(ids, B, cfg.seq, mask, {}, fo);
    f.task = ops::cross_entropy(f.res.logits, tg);
    if (sh) f.task = ops::mul_scalar(f.task, (double)tg.size() / sh->positions);
    f.tokens = (double)ids.size();
    f.n_seq = B;
  } else {  // L_task = CE(answer letter) at the last prompt token; stage 2 with --router-loss all: every position
    McBatch mb = make_mc_batch(d.mc.train, batch_indices(d.n_train, cfg.batch, (int64_t)key, cfg.seed),
                               model.config().max_seq);
    RouterLoss which = cfg.stage == Stage::router ? cfg.router_loss.value() : RouterLoss::answer;
    if (sh) {
      double n_real = 0;
      for (auto m : mb.mask) n_real += m;
      shard_rows(mb.B, mb.T, (double)mc_targets(mb, which).positions.size(), n_real);
      mb = slice_mc_batch(mb, sh->e0, sh->e1);
    }
    McTargets t = mc_targets(mb, which);
    f.res = model.forward_lm(mb.ids, mb.B, mb.T, mb.mask, t.positions, fo);
    f.task = ops::cross_entropy(f.res.logits, t.targets);
    if (sh) f.task = ops::mul_scalar(f.task, (double)t.positions.size() / sh->positions);
    for (auto m : mb.mask) f.tokens += m;
    f.mask = mb.mask;
    f.n_seq = mb.B;
  }
  return f;
}

// ---- the objective ---------------------------------------------------------------------
// The loss a stage minimises (docs/vmoer.md, "Objective"):
//
//   L = L_task + λ_lb · L_lb + λ_z · L_z + β · KL / n + Ω
//
//   L_task  cross-entropy of the stage's targets (forward_task above);
//   L_lb    Switch load-balancing loss, λ_lb = --lb-coef   } pretrain and
//   L_z     router z-loss, λ_z = --z-coef                  } finetune only;
//   KL      Σ over Bayesian layers and routed tokens of KL(q(Δl | h) ‖ p(Δl)),
//           the variational routers' term; β = --beta. n normalises it:
//           --kl-norm token-mean:   n = real tokens routed per layer;
//           --kl-norm dataset:      n = batches per epoch (the minibatch ELBO
//                                   of the whole training set);
//           --kl-norm sequence-sum: n = sequences in the batch, i.e.
//                                   (1/B) Σ_b Σ_layers Σ_{t in b} KL: the per-example
//                                   ELBO (with β = 1 and one supervised position per
//                                   example, L = −ELBO/example); n_real/B times token-mean;
//   Ω       the router's own penalty (vtsr: λ_T · mean or sum of −log T).
//
// Logged per step: "loss" = L (what is minimised); "elbo" = −(L_task + KL/n),
// the evidence lower bound (β = 1, per normalisation unit n); "elbo_beta" =
// −(L_task + β KL/n), the β-weighted ELBO (= −L without L_lb, L_z and Ω).
struct Objective {
  Var loss, task, kl_term;
};

Var kl_term(const RunConfig& cfg, const nn::ForwardResult& res, int64_t n_seq, int64_t batches_per_epoch,
            double n_real_total) {
  double n_real = n_real_total > 0                ? std::max(1.0, n_real_total)
                  : res.moe.empty() ? 1.0 : (double)std::max<int64_t>(1, res.moe[0].n_real);
  double n = cfg.kl_norm == KlNorm::token_mean ? n_real
             : cfg.kl_norm == KlNorm::dataset  ? (double)batches_per_epoch
                                               : (double)std::max<int64_t>(1, n_seq);
  return ops::mul_scalar(res.kl, 1.0 / n);
}

// A shard of a micro-batch (data parallelism) passes the micro-batch's n_seq
// and real tokens (n_real_total), and res.lb_loss computed with the
// micro-batch's expert counts: its L is then its share of the micro-batch's.
static Objective objective(const RunConfig& cfg, const Var& task, const nn::ForwardResult& res, int64_t n_seq,
                           int64_t batches_per_epoch, double n_real_total = 0) {
  Objective o;
  o.task = task;
  o.kl_term = kl_term(cfg, res, n_seq, batches_per_epoch, n_real_total);
  Var loss = task;
  if (cfg.lb_coef > 0 && cfg.stage != Stage::router) loss = ops::add(loss, ops::mul_scalar(res.lb_loss, cfg.lb_coef));
  if (cfg.z_coef > 0 && cfg.stage != Stage::router) loss = ops::add(loss, ops::mul_scalar(res.z_loss, cfg.z_coef));
  loss = ops::add(loss, ops::mul_scalar(o.kl_term, cfg.beta));
  o.loss = ops::add(loss, res.penalty);
  return o;
}

// ---- validation ---------------------------------------------------------------------------
// The number early stopping and best.safetensors follow: held-out NLL of the
// stage's task (next byte on --eval-batches fixed Brown batches; answer NLL on
// the validation split).
static double validation_nll(nn::Model& model, const StageData& d, const RunConfig& cfg) {
  if (d.lm) {
    NoGradGuard ng;
    // Several ranks: each computes its share of the batches [r·K/N, (r+1)·K/N);
    // the per-batch values are gathered and summed in batch order (as one process).
    const int K = cfg.eval_batches, N = dist::size(), r = dist::rank();
    std::vector<double> nll;
    for (int k = (int)((int64_t)r * K / N); k < (int)((int64_t)(r + 1) * K / N); ++k) {
      std::vector<int32_t> ids, tg;
      lm_batch(d.lm_data.val, cfg.batch, cfg.seq, cfg.split_seed, nn::name_hash("val/" + std::to_string(k)), ids, tg);
      std::vector<uint8_t> mask(ids.size(), 1);
      nn::ForwardOptions fo;
      fo.seed = cfg.seed;
      auto res = model.forward_lm(ids, cfg.batch, cfg.seq, mask, {}, fo);
      nll.push_back(ops::cross_entropy(res.logits, tg).item());
    }
    if (dist::active()) {
      dist::Pack p;
      p.put_vec(nll);
      nll.clear();
      for (const std::string& b : dist::allgather(p.bytes(), "validation")) {
        dist::Unpack u(b);
        for (double v : u.get_vec<double>()) nll.push_back(v);
      }
    }
    double tot = 0;
    for (double v : nll) tot += v;
    return tot / cfg.eval_batches;
  }
  if (d.vit) return evaluate_images(model, d.img.val, cfg).nll;
  return evaluate_mc(model, d.mc.val, cfg).nll;
}

// ---- setup: the model -----------------------------------------------------------------------
// The model and router configs a run trains: --resume continues the
// checkpoint's; --init takes the model from the checkpoint (stage 2 keeps its
// own router); --bayes-layers auto:N picks the N MoE layers whose routing is
// least stable under input noise in the fine-tuned (det) model, auto-sensitive:N
// the N whose answer NLL changes most when their top-K is random (eval.cpp).
static void resolve_configs(RunConfig& cfg, const std::string& last_path, nn::ModelConfig& mc, nn::RouterConfig& rc) {
  mc = cfg.model;
  rc = cfg.router;
  if (cfg.resume) {
    if (!fs::exists(last_path)) fail("--resume: no checkpoint at " + last_path);
    read_checkpoint_configs(last_path, mc, rc);
    inherit_data_settings(cfg, last_path);
  } else if (!cfg.init.empty()) {
    if (cfg.stage == Stage::router) inherit_data_settings(cfg, cfg.init);
    nn::RouterConfig init_rc;
    read_checkpoint_configs(cfg.init, mc, init_rc);
    if (cfg.stage != Stage::router) rc = init_rc;
  }
  if (cfg.stage == Stage::pretrain || cfg.stage == Stage::finetune) {
    if (nn::router_info(rc.name).bayesian)
      fail("--router " + rc.name.str() + ": Bayesian routers are trained in stage 2 (--stage router)");
  }
  if (mc.kind == nn::ModelKind::vit && cfg.task != Task::fashion_mnist) cfg.task = Task::fashion_mnist;
  std::optional<AutoLayers> autol = auto_layers(cfg.bayes_spec);
  if (cfg.stage == Stage::router && !cfg.resume && autol) {
    nn::RouterConfig det;
    nn::Model probe(mc, det, cfg.seed);
    load_checkpoint(cfg.init, probe, nullptr);
    if (cfg.device == Device::CUDA) probe.to(Device::CUDA);
    RunConfig pc = cfg;
    pc.max_eval_examples = 256;
    if (mc.kind == nn::ModelKind::vit) {
      ImgTaskData d = load_image_task(pc);
      rc.bayes_layers = resolve_auto_layers(
          probe, *autol, [&](nn::Model& m) { return image_evaluator(m, d.val, pc); }, cfg.auto_gamma, cfg.seed);
    } else {
      McTaskData d = load_mc_task(pc);
      rc.bayes_layers = resolve_auto_layers(
          probe, *autol, [&](nn::Model& m) { return mc_evaluator(m, d.val, pc); }, cfg.auto_gamma, cfg.seed);
    }
    std::string ls;
    for (int l : rc.bayes_layers) ls += (ls.empty() ? "" : ",") + std::to_string(l);
    if (autol->rank == AutoLayers::unstable)
      std::fprintf(stderr, "--bayes-layers %s -> %s (least stable at gamma %.3g)\n", cfg.bayes_spec.c_str(), ls.c_str(),
                   cfg.auto_gamma);
    else
      std::fprintf(stderr, "--bayes-layers %s -> %s (largest answer-NLL change under a random top-K)\n",
                   cfg.bayes_spec.c_str(), ls.c_str());
  }
}

// Which parameters train: stage 2 only the router heads (W_r stays frozen);
// then --train-only and --freeze.
static void select_trainable(nn::ParamStore& ps, const RunConfig& cfg, const nn::RouterConfig& rc) {
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
}

// ---- checkpoints during the run -------------------------------------------------------------
// A checkpoint is written only from finite parameters; a failed write (disk
// full, I/O error) leaves the previous file in place and names it.
struct RunCheckpoints {
  std::string last_path, best_path;
  int64_t saved_step = -1;  // step of the checkpoint in last_path (-1: none of this run)

  std::string last_good() const {
    if (saved_step < 0 || !fs::exists(last_path)) return "none";
    return last_path + " (step " + std::to_string(saved_step) + ")";
  }
  // Several ranks: they first compare a hash of their parameters (the same
  // gradients must have given the same updates), then rank 0 writes and
  // every rank learns the outcome (dist::on_root).
  void save(const std::string& path, nn::Model& model, const nn::AdamW* opt, const TrainState& st) const {
    std::string bad = first_nonfinite_param(model.params());
    if (!bad.empty())
      dist::fail_all("step " + std::to_string(st.step) + ": parameter " + tensor_and_layer(bad) +
                     " is non-finite after the update; not saving " + path + "; last good checkpoint: " + last_good());
    if (dist::active()) {
      dist::Pack p;
      p.put<uint64_t>(dp::state_hash(model.params()));
      std::vector<std::string> h = dist::allgather(p.bytes(), "checkpoint");
      for (size_t r = 1; r < h.size(); ++r)
        if (h[r] != h[0])
          dist::fail_all("step " + std::to_string(st.step) + ": the parameters of rank " + std::to_string(r) +
                         " differ from rank 0's (the ranks' updates diverged); not saving " + path +
                         "; last good checkpoint: " + last_good());
    }
    dist::on_root("checkpoint", [&] {
      try {
        save_checkpoint(path, model, opt, st);
      } catch (const Error& e) {
        fail("step " + std::to_string(st.step) + ": cannot save checkpoint: " + e.what() +
             "; last good checkpoint: " + last_good());
      }
    });
  }
};

// The summed terms of a step: one micro-batch's (or one batch shard's), and
// their sum over the step (added in micro-batch / shard order).
struct StepTerms {
  double loss = 0, task = 0, kl = 0, lb = 0, z = 0, penalty = 0, tokens = 0;
  StepTerms& operator+=(const StepTerms& o) {
    loss += o.loss, task += o.task, kl += o.kl, lb += o.lb, z += o.z, penalty += o.penalty, tokens += o.tokens;
    return *this;
  }
};

// What one optimisation step logs: sums over its micro-batches.
struct StepStats : StepTerms {
  std::vector<json> layers;  // expert load of the last micro-batch, per MoE layer
  std::vector<json> temperature;  // vtsr: learned T of the last micro-batch, per Bayesian layer
};

// The scalars one micro-batch logs, read in one transfer (items: one wait on
// the GPU instead of one per value).
struct StepScalars {
  double loss, task, kl_term, lb, z, penalty, kl_raw;
};
static StepScalars read_step_scalars(const Objective& obj, const TaskForward& f) {
  const std::vector<float> v = items<float>({&obj.loss.value(), &f.task.value(), &obj.kl_term.value(),
                                             &f.res.lb_loss.value(), &f.res.z_loss.value(), &f.res.penalty.value(),
                                             &f.res.kl.value()});
  return {v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
}

// Per MoE layer (layer id, tokens kept per expert, assignments dropped).
static std::vector<json> layer_load_of(const std::vector<int>& layers, const std::vector<std::vector<int64_t>>& counts,
                                       const std::vector<int64_t>& dropped) {
  std::vector<json> out;
  for (size_t l = 0; l < layers.size(); ++l) {
    std::vector<double> c(counts[l].begin(), counts[l].end());
    double total = 0;
    for (double x : c) total += x;
    // CV and dead experts as metrics.cpp defines them; a layer that routed
    // nothing has CV 0 here (metrics::load_cv calls it undefined).
    metrics::LoadStats ls = total > 0 ? metrics::load_stats(c) : metrics::LoadStats{0.0, (int)c.size()};
    out.push_back(json{{"layer", layers[l]}, {"cv", ls.cv}, {"dead", ls.dead}, {"dropped", dropped[l]}});
  }
  return out;
}
static std::vector<json> layer_load(const nn::ForwardResult& res) {
  std::vector<int> layers;
  std::vector<std::vector<int64_t>> counts;
  std::vector<int64_t> dropped;
  for (auto& a : res.moe) {
    layers.push_back(a.layer);
    counts.push_back(a.expert_counts);
    dropped.push_back(a.dropped);
  }
  return layer_load_of(layers, counts, dropped);
}

// vtsr: the learned temperature per layer, mean and std over the real tokens
// of the micro-batch (RouterOut::temperature: a token's mean over its T's),
// from the sums Σ T, Σ T², n (shards add theirs).
struct TempSums {
  int layer = 0;
  double s = 0, s2 = 0, n = 0;
};
static std::vector<TempSums> temperature_sums(const nn::ForwardResult& res, const std::vector<uint8_t>& mask) {
  std::vector<TempSums> out;
  for (auto& a : res.moe) {
    const auto& T = a.route.temperature;
    if (T.empty()) continue;
    TempSums t{a.layer};
    for (size_t i = 0; i < T.size(); ++i) {
      if (!mask.empty() && !mask[i]) continue;
      t.s += T[i];
      t.s2 += (double)T[i] * T[i];
      t.n += 1;
    }
    out.push_back(t);
  }
  return out;
}
static std::vector<json> temperature_json(const std::vector<TempSums>& ts) {
  std::vector<json> out;
  for (const TempSums& t : ts) {
    if (t.n == 0) continue;
    double m = t.s / t.n;
    out.push_back(json{{"layer", t.layer}, {"mean", m}, {"std", std::sqrt(std::max(0.0, t.s2 / t.n - m * m))}});
  }
  return out;
}
static std::vector<json> layer_temperature(const nn::ForwardResult& res, const std::vector<uint8_t>& mask) {
  return temperature_json(temperature_sums(res, mask));
}

// ---- data parallelism: a micro-batch computed in shards ---------------------------------
// (docs/SCALE.md) The micro-batch's B examples are S shards (--batch-shards);
// rank r of N computes shards [r·S/N, (r+1)·S/N) (experiments/data_parallel.h).
// Shard s minimises its share of the micro-batch's objective,
//   L_s = L_task,s + λ_lb L_lb,s + λ_z L_z,s + β KL_s / n + Ω_s,   Σ_s L_s = L,
// with L_task,s from forward_task (positions_s / positions of the CE mean),
// L_z,s and Ω_s (mean) over the shard's real tokens divided by the
// micro-batch's n_real, KL_s the shard's sum with n as --kl-norm for the whole
// micro-batch, and L_lb,s = E Σ_e f_e P_e,s: P_e,s the shard's router
// probabilities summed over its tokens / n_real, f_e from the micro-batch's
// expert counts (exchanged: every shard's counts per layer, exact integers).
// Gradient: g_s = ∇ L_s / A (A = --grad-accum) is one leaf of the fixed tree
// (dist::TreeSum): the rank's shards locally, then the ranks' partial sums
// (dist::allreduce_sum); the micro-batches' sums are added in order. So the
// result is a function of S only, never of N (when S/N is a power of two).
struct DataParallel {
  dp::ShardRange mine;        // this rank's shards
  int S = 1;
  dp::GradLayout grads;       // the trainable gradients as one vector
  int64_t bucket = 1 << 20;   // all-reduce bucket (floats)
  uint64_t grad_bytes = 0;    // bytes this rank sent in gradient all-reduces (this step)
  // Expert parallelism: the routed rows this rank sent to or received from
  // the other members of its group in the forward dispatch (this step),
  // from the exchanged kept counts of every shard (docs/SCALE.md §8).
  uint64_t ep_rows = 0;
  // Expert sharding (docs/SCALE.md §8): which gradient entries are expert
  // tensors and which slice this rank owns; the bytes of the expert
  // gradients' all-reduce within the replica set (this step, a part of grad_bytes).
  dp::ExpertShard x;
  uint64_t expert_grad_bytes = 0;
  int inject_rank = -1;       // VMOER_TEST_INJECT_RANK: the test hooks act on this rank only (-1: every rank)
};

// One micro-batch (number `key`) in shards. Adds its losses to `s` (and its
// expert load, on the last micro-batch), its gradient to G (micro 0: sets it)
// and the parameters that got one to G_defined, identically on every rank.
// A non-finite loss or gradient on any rank stops every rank with the same
// line (dist::CollectiveError), naming the rank.
static void sharded_micro_batch(nn::Model& model, const StageData& data, const RunConfig& cfg, uint64_t key,
                                int64_t step, bool first_micro, bool last_micro, const nn::ForwardOptions& fo,
                                DataParallel& dp_, const NanInjection& inject, const std::string& last_good,
                                StepStats& s, Tensor& G, std::vector<uint8_t>& G_defined) {
  auto& ps = model.params();
  const int K = model.config().top_k;
  const int n_local = dp_.mine.last - dp_.mine.first;
  // batch → forward, every shard of this rank (graphs kept until the expert counts are known)
  std::vector<TaskForward> fw;
  std::vector<ShardOf> shards;
  for (int j = dp_.mine.first; j < dp_.mine.last; ++j) {
    ShardOf sh{dp::shard_begin(j, dp_.S, cfg.batch), dp::shard_begin(j + 1, dp_.S, cfg.batch)};
    nn::ForwardOptions fo_shard = fo;
    fo_shard.expert_parallel = dist::ep_size() > 1;  // the group's members compute the same shard index together
    fw.push_back(forward_task(model, data, cfg, key, fo_shard, &sh));
    shards.push_back(sh);
  }
  const ShardOf tot = shards[0];  // the micro-batch's totals (the same in every shard)
  // exchange 1: expert counts of every shard, per MoE layer: before capacity
  // (wanted, for f_e), kept (counts) and dropped (the log's expert load)
  const size_t L = fw[0].res.moe.size();
  dist::Pack p1;
  for (auto& f : fw)
    for (auto& a : f.res.moe) {
      p1.put_vec(a.wanted);
      p1.put_vec(a.expert_counts);
      p1.put<int64_t>(a.dropped);
    }
  std::vector<std::vector<int64_t>> wanted(L), counts(L);
  std::vector<int64_t> dropped(L, 0);
  const int P = dist::ep_size(), me = dist::rank() % P, group0 = dist::rank() - me;
  const std::vector<std::string> all_counts = dist::allgather(p1.bytes(), "expert-count exchange");
  for (size_t q = 0; q < all_counts.size(); ++q) {
    dist::Unpack u(all_counts[q]);
    const bool in_group = P > 1 && (int)q >= group0 && (int)q < group0 + P;
    while (!u.done())
      for (size_t l = 0; l < L; ++l) {
        auto w = u.get_vec<int64_t>(), c = u.get_vec<int64_t>();
        if (in_group) {  // rows of member q's shard to this rank's experts, or of this rank's to the others'
          const int El = (int)c.size() / P;
          for (size_t e = 0; e < c.size(); ++e) {
            const bool mine = (int)e / El == me;
            if ((int)q == dist::rank() ? !mine : mine) dp_.ep_rows += (uint64_t)c[e];
          }
        }
        if (wanted[l].empty()) wanted[l].assign(w.size(), 0), counts[l].assign(c.size(), 0);
        for (size_t e = 0; e < w.size(); ++e) wanted[l][e] += w[e];
        for (size_t e = 0; e < c.size(); ++e) counts[l][e] += c[e];
        dropped[l] += u.get<int64_t>();
      }
  }
  // → objective → backward, shard by shard; each shard's gradient is a leaf of the tree
  std::vector<StepTerms> vals;
  std::vector<std::vector<TempSums>> temps;
  dp::GradTree tree;
  std::vector<uint8_t> defined(dp_.grads.names.size(), 0);
  std::string bad;
  const bool inject_here = dp_.inject_rank < 0 || dp_.inject_rank == dist::rank();
  for (int i = 0; i < n_local; ++i) {
    TaskForward& f = fw[(size_t)i];
    Var lb;  // Σ over layers (in order) of E Σ_e f_e P_e,s with the micro-batch's f_e
    for (size_t l = 0; l < L; ++l) {
      const nn::MoEAux& a = f.res.moe[l];
      if (!a.p_mean.defined()) continue;
      Var v = nn::moe_lb_loss(a.p_mean, wanted[l], (float)tot.n_real, K);
      lb = lb.defined() ? ops::add(lb, v) : v;
    }
    f.res.lb_loss = lb.defined() ? lb : ops::constant(Tensor::scalar(0).to(model.device()));
    Objective obj = objective(cfg, f.task, f.res, tot.B, data.batches_per_epoch, tot.n_real);
    const double lv = obj.loss.item();
    if (!std::isfinite(lv) && bad.empty())
      bad = "step " + std::to_string(step) + ": loss is " + std::to_string(lv) + " (task " +
            std::to_string(f.task.item()) + ", KL " + std::to_string(f.res.kl.item()) + "): " +
            locate_nonfinite(ps, f.res);
    backward(ops::mul_scalar(obj.loss, 1.0 / cfg.grad_accum));
    if (step == inject.step && inject.grad && last_micro && i == 0 && inject_here) {
      Var& v = ps.get(inject.param);
      if (v.grad().defined()) {
        Tensor h = v.grad().to(Device::CPU).clone();
        h[0] = std::nanf("");
        v.grad() = h.to(v.grad().device());
      }
    }
    tree.add(dp::take_grads(ps, dp_.grads, defined));
    vals.push_back({lv, f.task.item(), obj.kl_term.item(), f.res.lb_loss.item(), f.res.z_loss.item(),
                    f.res.penalty.item(), f.tokens});
    temps.push_back(temperature_sums(f.res, f.mask));
  }
  fw.clear();  // the graphs
  Tensor partial = tree.take();
  if (bad.empty()) {
    std::string nf = dp::first_nonfinite(dp_.grads, partial);
    if (!nf.empty()) {
      std::string bad_value = first_nonfinite_param(ps);
      bad = "step " + std::to_string(step) + ": non-finite gradient in parameter " + tensor_and_layer(nf) +
            (bad_value.empty() ? std::string() : " (parameter " + tensor_and_layer(bad_value) + " holds a non-finite value)");
    }
  }
  if (!bad.empty()) bad += "; stopped, last good checkpoint: " + last_good;
  // exchange 2: each rank's verdict, its shards' losses and temperatures, and
  // which parameters got a gradient
  dist::Pack p2;
  p2.put_str(bad);
  p2.put_vec(defined);
  for (int i = 0; i < n_local; ++i) {
    p2.put(vals[(size_t)i]);
    p2.put_vec(temps[(size_t)i]);
  }
  std::vector<std::string> all = dist::allgather(p2.bytes(), "loss exchange");
  for (size_t r = 0; r < all.size(); ++r) {  // the lowest rank that failed speaks for all
    dist::Unpack u(all[r]);
    std::string e = u.get_str();
    if (!e.empty()) dist::fail_all(r == 0 || !dist::active() ? e : "rank " + std::to_string(r) + ": " + e);
  }
  std::vector<TempSums> tsum;
  for (size_t r = 0; r < all.size(); ++r) {  // shards in order: rank by rank, each rank's in order
    dist::Unpack u(all[r]);
    u.get_str();
    std::vector<uint8_t> d = u.get_vec<uint8_t>();
    for (size_t k = 0; k < d.size(); ++k) G_defined[k] |= d[k];
    while (!u.done()) {
      s += u.get<StepTerms>();
      std::vector<TempSums> t = u.get_vec<TempSums>();
      if (tsum.empty()) tsum = t;
      else
        for (size_t k = 0; k < t.size(); ++k) tsum[k].s += t[k].s, tsum[k].s2 += t[k].s2, tsum[k].n += t[k].n;
    }
  }
  // the micro-batch's gradient: Σ over the ranks in the fixed tree
  const uint64_t b0 = dist::bytes_sent();
  if (dp_.x.on())  // expert tensors: each slice over its owners' replica set only
    dp::allreduce_grads_sharded(partial, dp_.grads, dp_.x, dp_.bucket, dp_.expert_grad_bytes);
  else
    dp::allreduce_grads(partial, dp_.bucket);
  dp_.grad_bytes += dist::bytes_sent() - b0;
  if (first_micro) G = partial;
  else dp::add_into(G, partial);
  if (last_micro) {
    s.layers = layer_load_of(model.moe_layer_ids(), counts, dropped);
    s.temperature = temperature_json(tsum);
  }
}

// ---- the run ---------------------------------------------------------------------------------
// --batch-shards: given, or the checkpoint's on --resume, or one per rank;
// a multiple of the number of ranks, at most one per example.
static void resolve_batch_shards(RunConfig& cfg, const std::string& last_path) {
  const int N = dist::size();
  std::string from = "--batch-shards " + std::to_string(cfg.batch_shards);
  if (!cfg.given("--batch-shards")) {
    if (cfg.resume) {
      cfg.batch_shards = read_checkpoint_state(last_path).batch_shards;
      from = "--batch-shards " + std::to_string(cfg.batch_shards) + " (the checkpoint's)";
      if (cfg.batch_shards != 1 || N != 1)
        std::fprintf(stderr, "note: %s, continued by %d rank%s\n", from.c_str(), N, N == 1 ? "" : "s");
    } else {
      cfg.batch_shards = N;
      from = "--batch-shards " + std::to_string(N) + " (one per rank)";
    }
  }
  if (cfg.batch_shards % N != 0)
    dist::fail_all(from + " is not a multiple of the " + std::to_string(N) + " ranks; give --batch-shards " +
                   std::to_string(N * ((cfg.batch_shards + N - 1) / N)) +
                   " (a run continued with other shards agrees with the uninterrupted one to float rounding only)");
  if (cfg.batch_shards > cfg.batch)
    dist::fail_all(from + " exceeds --batch " + std::to_string(cfg.batch) + ": every shard needs an example");
  const int per = cfg.batch_shards / N;
  if (N > 1 && (per & (per - 1)) != 0)
    std::fprintf(stderr, "note: %d shards per rank is not a power of two: the run is deterministic, but its bits "
                         "differ from a run with another number of ranks (docs/SCALE.md)\n", per);
}

int run_train(RunConfig cfg) {
  // setup: output folder, model, trainable parameters, optimiser, data
  cfg.validate();
  omp_set_num_threads(cfg.threads);
  dist::set_timeout(cfg.dist_timeout);
  // No silent overwrite: an --out that holds a run is continued (--resume) or
  // replaced (--force), never both, never by accident. (Several ranks: rank
  // 0's view of the folder decides, before it writes anything in it.)
  if (cfg.resume && cfg.force) fail("--force: with --resume the run is continued, not replaced; give one of them");
  if (!cfg.resume && !cfg.force)
    for (const char* f : {"last.safetensors", "best.safetensors", "log.jsonl"})
      if (dist::root_says(fs::exists(cfg.out + "/" + f), "setup"))
        dist::fail_all("--out: '" + cfg.out + "' holds a run (" + f + "); --resume continues it, --force replaces it, "
                       "or choose another --out");
  // Checked here, created only once the setup has accepted every input: a
  // missing --init or a bad --bayes-layers leaves no folder behind.
  check_out_dir(cfg.out);
  if (!cfg.resume && !cfg.init.empty() && !fs::exists(cfg.init)) fail("--init: no such file '" + cfg.init + "'");
  RunCheckpoints ck{cfg.out + "/last.safetensors", cfg.out + "/best.safetensors"};

  nn::ModelConfig mc;
  nn::RouterConfig rc;
  resolve_configs(cfg, ck.last_path, mc, rc);
  StageData data = load_stage_data(cfg, mc);
  apply_epochs(cfg, data);
  resolve_batch_shards(cfg, ck.last_path);
  dp::resolve_expert_parallel(cfg.expert_parallel, mc.n_experts);
  dist::on_root("setup", [&] { prepare_out_dir(cfg.out); });
  nn::Model model(mc, rc, cfg.seed);
  nn::AdamWConfig oc = cfg.optim;
  oc.total_steps = cfg.steps;
  nn::AdamW opt(oc);
  TrainState st;
  st.stage = cfg.stage.str();
  st.seed = cfg.seed;
  st.split_seed = cfg.split_seed;
  st.batch_shards = cfg.batch_shards;
  st.data = data_settings(cfg);  // eval and inspect inherit these (experiments/checkpoint_io.h)
  st.evaluation = cfg.eval_protocol;
  if (cfg.resume) {
    st = load_checkpoint(ck.last_path, model, &opt);
    st.batch_shards = cfg.batch_shards;
    ck.saved_step = st.step;
    std::fprintf(stderr, "resuming %s from step %lld\n", ck.last_path.c_str(), (long long)st.step);
  } else if (!cfg.init.empty()) {
    // Stage 2 adds router heads the fine-tuned checkpoint does not have.
    load_checkpoint(cfg.init, model, nullptr, cfg.stage == Stage::router ? "\\.router\\." : "");
  }
  // Expert sharding: AdamW updates (and keeps moments for) this rank's experts
  // only; a resumed checkpoint's full moments are cut to this rank's shard
  // (every rank reads the file: the scatter of each shard to its owner).
  if (dist::ep_size() > 1)
    opt.set_owned(dp::owned_slices(model.params(), mc.n_experts, dist::ep_size(), dist::ep_rank()));
  // --device cuda: parameters and optimizer state move to the GPU once the
  // checkpoints are loaded (load_checkpoint writes host tensors).
  if (cfg.device == Device::CUDA) {
    model.to(Device::CUDA);
    opt.to(Device::CUDA);
  }
  auto& ps = model.params();
  select_trainable(ps, cfg, rc);
  dist::on_root("setup", [&] { reserve_checkpoint_space(cfg.out, ps); });
  NanInjection inject = nan_injection(ps);
  // Expert sharding: each rank keeps only its experts' weights (E/P of every
  // MoE layer's, dp::shard_expert_weights); the model's counts are the full ones.
  const int64_t n_params = ps.count(), n_trainable = ps.count(true);
  if (dist::ep_size() > 1) dp::shard_expert_weights(ps, mc.n_experts, dist::ep_size(), dist::ep_rank());
  // Data parallelism (docs/SCALE.md): the batch in S shards, this rank's share of them.
  const bool sharded = cfg.batch_shards > 1 || dist::active();
  DataParallel dp_;
  if (sharded) {
    dp_.S = cfg.batch_shards;
    dp_.mine = dp::shard_range(dp_.S, dist::size(), dist::rank());
    dp_.grads = dp::grad_layout(ps);
    dp_.x = dp::expert_shard(dp_.grads, mc.n_experts, dist::ep_size(), dist::ep_rank());
    dp_.bucket = std::max<int64_t>(1, (int64_t)(cfg.bucket_mb * (1 << 20) / 4));
    if (const char* r = std::getenv("VMOER_TEST_INJECT_RANK"); r && *r) dp_.inject_rank = std::atoi(r);
  }
  const bool inject_here = dp_.inject_rank < 0 || dp_.inject_rank == dist::rank();
  const RankFault fault = rank_fault();

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  // <out>/config.json: the resolved configuration and where it ran
  // (experiments/build_info.h); rewritten with "finished" at the end. A
  // resumed run keeps the first start's record under "first_run".
  json prov = provenance(cfg.threads, utc_now());
  prov["config"] = fields_to_json<json>(cfg);
  prov["paths_relative_to"] = "cwd";
  if (cfg.resume && fs::exists(cfg.out + "/config.json")) {
    try {
      std::ifstream f(cfg.out + "/config.json");
      json old = json::parse(f);
      prov["first_run"] = old.contains("first_run") ? old["first_run"] : old;
    } catch (const std::exception&) {
    }
  }
  nn::atomic_write(cfg.out + "/config.json", prov.dump(2) + "\n");  // rank 0 only (nn::atomic_write)
  std::ofstream log;  // rank 0 writes the log
  if (dist::root()) log.open(cfg.out + "/log.jsonl", cfg.resume ? std::ios::app : std::ios::trunc);
  json start{{"event", "start"}, {"stage", cfg.stage}, {"model", mc}, {"router", rc},
             {"params", n_params}, {"trainable", n_trainable}, {"seed", cfg.seed}, {"threads", cfg.threads}};
  if (sharded) start["ranks"] = dist::size(), start["batch_shards"] = cfg.batch_shards;
  if (dist::ep_size() > 1) start["expert_parallel"] = dist::ep_size();
  log << start.dump() << "\n";
  std::fprintf(stderr, "%s: %lld parameters (%lld trainable), %d threads%s\n", cfg.stage.str().c_str(),
               (long long)n_params, (long long)n_trainable, cfg.threads,
               sharded ? (", " + std::to_string(dist::size()) + " rank(s), " + std::to_string(cfg.batch_shards) +
                          " batch shards").c_str()
                       : "");

  auto t_start = std::chrono::steady_clock::now();
  double tokens_done = 0;
  const int64_t start_step = st.step;
  int exit_code = 0;
  Tensor G;                         // sharded: the step's gradient (all micro-batches)
  std::vector<uint8_t> G_defined;
  // Expert sharding: in a step each rank holds its own experts only (forward_ep
  // reads no other); before anything reads every weight the group gathers
  // them (every rank alike), and they are freed again at the next step.
  auto experts_current = [&] {
    if (dp_.x.on()) dp::gather_expert_weights(ps, dp_.x);
  };
  auto experts_own = [&] {
    if (dp_.x.on()) dp::shard_expert_weights(ps, mc.n_experts, dist::ep_size(), dist::ep_rank());
  };
  // last.safetensors: the whole optimizer state (rank 0 gathers the expert moments of group 0)
  auto save_last = [&] {
    experts_current();
    if (!dp_.x.on()) {
      ck.save(ck.last_path, model, &opt, st);
      return;
    }
    nn::AdamW full(opt.config());
    full.set_steps_done(opt.steps_done());
    full.state() = dp::full_optimizer_state(opt, dp_.x);
    ck.save(ck.last_path, model, &full, st);
  };
  for (int64_t step = st.step + 1; step <= cfg.steps; ++step) {
    // what a lost peer's line says (core/dist.h): the step, the last good checkpoint
    if (dist::active()) dist::set_context("step " + std::to_string(step), "stopped, last good checkpoint: " + ck.last_good());
    maybe_fault(fault, dist::rank(), step);
    const uint64_t bytes0 = dist::bytes_sent(), ep_bytes0 = dist::ep_bytes_sent();
    const double xs0 = dist::exchange_seconds();
    dp_.grad_bytes = 0;
    dp_.expert_grad_bytes = 0;
    dp_.ep_rows = 0;
    ps.zero_grad();
    experts_own();
    if (step == inject.step && !inject.grad && inject_here) {
      Tensor& pv = ps.get(inject.param).value();
      Tensor h = pv.to(Device::CPU).clone();
      h[0] = std::nanf("");
      pv = h.to(pv.device());
    }
    StepStats s;
    if (sharded) G_defined.assign(dp_.grads.names.size(), 0);
    for (int micro = 0; micro < cfg.grad_accum; ++micro) {
      // batch → forward
      uint64_t key = (uint64_t)(step - 1) * cfg.grad_accum + micro;
      nn::ForwardOptions fo;
      fo.training = true;
      fo.seed = cfg.seed;
      fo.step = key;
      fo.samples = rc.train_samples;
      if (sharded) {  // → every shard: objective, backward; gradients summed in the fixed tree
        sharded_micro_batch(model, data, cfg, key, step, micro == 0, micro == cfg.grad_accum - 1, fo, dp_, inject,
                            ck.last_good(), s, G, G_defined);
        continue;
      }
      TaskForward f = forward_task(model, data, cfg, key, fo);
      // → objective → backward (gradients averaged over the micro-batches)
      Objective obj = objective(cfg, f.task, f.res, f.n_seq, data.batches_per_epoch);
      backward(ops::mul_scalar(obj.loss, 1.0 / cfg.grad_accum));
      // → the logged terms, read together (on the GPU one wait, not one per
      // value), and the loss checked before any update: a non-finite loss
      // stops the run here, its gradients unused
      const StepScalars sc = read_step_scalars(obj, f);
      if (!std::isfinite(sc.loss)) {
        fail("step " + std::to_string(step) + ": loss is " + std::to_string(sc.loss) + " (task " +
             std::to_string(sc.task) + ", KL " + std::to_string(sc.kl_raw) + "): " + locate_nonfinite(ps, f.res) +
             "; stopped, last good checkpoint: " + ck.last_good());
      }
      if (step == inject.step && inject.grad && micro == cfg.grad_accum - 1) {
        Var& v = ps.get(inject.param);
        if (v.grad().defined()) {
          Tensor h = v.grad().to(Device::CPU).clone();
          h[0] = std::nanf("");
          v.grad() = h.to(v.grad().device());
        }
      }
      s += StepTerms{sc.loss, sc.task, sc.kl_term, sc.lb, sc.z, sc.penalty, (double)f.tokens};
      if (micro == cfg.grad_accum - 1) {
        s.layers = layer_load(f.res);
        s.temperature = layer_temperature(f.res, f.mask);
      }
    }
    if (sharded) dp::put_grads(ps, dp_.grads, G, G_defined);
    // → guards: a non-finite gradient stops the run before the update; the
    // gradients are searched only when their global norm is not finite
    // (sharded: each rank checked its own part above, so this finds nothing new)
    // (sharded: per parameter, and per expert of an expert tensor, then summed
    // in order — dp::grad_norm — the same double in one process and on every
    // rank whichever experts it owns)
    const double gnorm_pre = sharded ? dp::grad_norm(G, dp_.grads, G_defined, dp_.x) : nn::global_grad_norm(ps);
    std::string bad = nonfinite_grad_given_norm(ps, gnorm_pre);
    if (dp_.x.on() && !std::isfinite(gnorm_pre)) {  // the owner of the bad expert names it, for every rank
      for (const std::string& b : dist::allgather(bad, "gradient check"))
        if (!b.empty()) {
          bad = b;
          break;
        }
    }
    if (!bad.empty()) {
      std::string bad_value = first_nonfinite_param(ps);  // the likely origin, if a value is already bad
      dist::fail_all("step " + std::to_string(step) + ": non-finite gradient in parameter " + tensor_and_layer(bad) +
           (bad_value.empty() ? std::string() : " (parameter " + tensor_and_layer(bad_value) + " holds a non-finite value)") +
           "; stopped, last good checkpoint: " + ck.last_good());
    }
    // → update (the same gradient on every rank: the same update)
    double gnorm = opt.step(ps, gnorm_pre);
    const int64_t param_floats = ps.count();  // what this rank holds in the step (sharded: its experts only)
    const PoolStats pool = pool_stats();       // the allocator's bytes in use after the update
    st.step = step;

    // → log, validation, checkpoint
    tokens_done += s.tokens;
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    double tps = tokens_done / std::max(el, 1e-9);
    double ga = cfg.grad_accum;
    json rec{{"step", step},         {"loss", s.loss / ga},       {"task_loss", s.task / ga},
             {"kl", s.kl / ga},      {"elbo", -(s.task + s.kl) / ga},
             {"elbo_beta", -(s.task + cfg.beta * s.kl) / ga},
             {"lb_loss", s.lb / ga}, {"z_loss", s.z / ga},        {"penalty", s.penalty / ga},
             {"lr", opt.last_lr()},  {"grad_norm", gnorm},        {"tokens_per_s", tps},
             {"seconds", el},
             {"layers", s.layers}};
    if (!s.temperature.empty()) rec["temperature"] = s.temperature;
    bool do_eval = cfg.eval_every > 0 && (step % cfg.eval_every == 0 || step == cfg.steps);
    bool stop = false;
    if (do_eval) {
      experts_current();
      double v = validation_nll(model, data, cfg);  // several ranks: each its share, gathered
      rec["val_nll"] = v;
      if (v < st.best_val) {
        st.best_val = v;
        st.bad_evals = 0;
        ck.save(ck.best_path, model, nullptr, st);
      } else if (++st.bad_evals >= cfg.patience && cfg.patience > 0) {
        stop = true;
        rec["early_stop"] = true;
      }
    }
    bool timed_out = cfg.time_limit_s > 0 && el > cfg.time_limit_s;
    int sig = g_signal;
    if (dist::active()) {  // rank 0's clock and signals decide for every rank
      timed_out = dist::root_says(timed_out, "step end");
      if (!dist::root_says(sig != 0, "step end")) sig = 0;
      else if (!sig) sig = SIGTERM;
    }
    // What rank 0 sent in this step so far (docs/SCALE.md checks its formulae
    // against these): the gradient all-reduce, and every exchange (the
    // checkpoint's, below, are not included).
    if (dist::active()) {
      rec["comm_grad_bytes"] = dp_.grad_bytes;
      // the AdamW moments this rank holds (floats): with expert sharding its experts' only
      rec["adam_state_floats"] = opt.state_floats();
      rec["param_floats"] = param_floats;
      rec["mem_live_bytes"] = pool.live;       // tensors alive after the update (weights, moments, ...)
      rec["mem_peak_live_bytes"] = pool.peak_live;  // the most alive at once so far (activations included)
      rec["comm_bytes"] = dist::bytes_sent() - bytes0;
      if (dist::ep_size() > 1) {
        rec["comm_ep_bytes"] = dist::ep_bytes_sent() - ep_bytes0;  // the expert all-to-alls (a part of comm_bytes)
        rec["comm_expert_grad_bytes"] = dp_.expert_grad_bytes;  // the replica-set all-reduce (in comm_grad_bytes)
        rec["ep_rows"] = dp_.ep_rows;
      }
      rec["comm_seconds"] = dist::exchange_seconds() - xs0;  // inside exchanges, waiting for slower ranks included
    }
    log << rec.dump() << "\n";
    log.flush();
    if (cfg.progress) {
      double eta = (double)(cfg.steps - step) * el / std::max<int64_t>(1, step - start_step);
      progress_bar(step, start_step + 1, cfg.steps, s.loss / ga, tps, eta);
    }
    if (do_eval || stop || timed_out || step == cfg.steps || sig || step % 100 == 0) {
      save_last();
      ck.saved_step = step;
    }
    if (sig) {
      progress_break(cfg.progress);
      std::fprintf(stderr, "signal %d: saved %s at step %lld\n", sig, ck.last_path.c_str(), (long long)step);
      exit_code = 128 + sig;
      break;
    }
    if (stop) {
      progress_break(cfg.progress);
      std::fprintf(stderr, "early stop at step %lld (best val NLL %.4f)\n", (long long)step, st.best_val);
      break;
    }
    if (timed_out) {
      log << json{{"event", "time_limit"}, {"step", step}, {"seconds", el}}.dump() << "\n";
      log.flush();
      progress_break(cfg.progress);
      std::fprintf(stderr, "time limit %.0f s reached at step %lld\n", cfg.time_limit_s, (long long)step);
      break;
    }
  }
  progress_break(cfg.progress);
  if (dist::active()) dist::set_context("end of training", "");
  experts_current();
  if (dist::root_says(!fs::exists(ck.best_path), "end"))
    dist::on_root("checkpoint", [&] { save_checkpoint(ck.best_path, model, nullptr, st); });
  std::string best = st.best_val < 1e299 ? std::to_string(st.best_val) : std::string("n/a (no evaluation ran)");
  prov["finished"] = utc_now();
  prov["exit_code"] = exit_code;
  nn::atomic_write(cfg.out + "/config.json", prov.dump(2) + "\n");
  std::fprintf(stderr, "%s done: step %lld, best val %s, checkpoints in %s\n", cfg.stage.str().c_str(),
               (long long)st.step, best.c_str(), cfg.out.c_str());
  dist::set_context("", "");
  return exit_code;
}

}  // namespace vm::exp
