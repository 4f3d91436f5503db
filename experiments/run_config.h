// experiments/run_config.h — every hyper-parameter of `vmoer train` / `vmoer
// eval` / `vmoer inspect` / `vmoer reproduce`, with its default, and the
// field table below it (core/fields.h) that makes each one a flag
// (experiments/cli_fields.h; a TOML/INI file given with --config supplies
// values that flags then override), a JSON key, part of a reproduce stage's
// cache key, and where marked an eval override, a reproduce flag or an
// --ablate key. The model, router and optimiser fields are nn::ModelConfig,
// nn::RouterConfig and nn::AdamWConfig with their own tables.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"
#include "core/tensor.h"
#include "nn/config.h"
#include "nn/optim.h"
#include "nn/router.h"

namespace vm::exp {

enum class Stage : uint8_t { pretrain, finetune, router };
enum class Task : uint8_t { wordnet_nouns, wordnet_words, fashion_mnist };
enum class KlNorm : uint8_t { token_mean, dataset, sequence_sum };
enum class RouterLoss : uint8_t { answer, all };   // stage 2's task loss: answer letter only, or every prompt position
enum class RouterData : uint8_t { train, heldout };  // stage 2's prompts: the fine-tuning ones, or a disjoint held-out split
enum class Split : uint8_t { val, test };

}  // namespace vm::exp

namespace vm {
template <>
struct EnumNames<exp::Stage> {
  static constexpr std::array<std::string_view, 3> names{"pretrain", "finetune", "router"};
};
template <>
struct EnumNames<exp::Task> {
  static constexpr std::array<std::string_view, 3> names{"wordnet-nouns", "wordnet-words", "fashion-mnist"};
};
template <>
struct EnumNames<exp::KlNorm> {
  static constexpr std::array<std::string_view, 3> names{"token-mean", "dataset", "sequence-sum"};
};
template <>
struct EnumNames<exp::RouterLoss> {
  static constexpr std::array<std::string_view, 2> names{"answer", "all"};
};
template <>
struct EnumNames<exp::RouterData> {
  static constexpr std::array<std::string_view, 2> names{"train", "heldout"};
};
template <>
struct EnumNames<exp::Split> {
  static constexpr std::array<std::string_view, 2> names{"val", "test"};
};
template <>
struct EnumNames<Device> {  // core/tensor.h
  static constexpr std::array<std::string_view, 2> names{"cpu", "cuda"};
};
static_assert(enum_names_ok<exp::Stage>() && enum_names_ok<exp::Task>() && enum_names_ok<exp::KlNorm>() &&
              enum_names_ok<exp::RouterLoss>() && enum_names_ok<exp::RouterData>() && enum_names_ok<exp::Split>() &&
              enum_names_ok<Device>());
}  // namespace vm

namespace vm::exp {

struct RunConfig {
  // ---- what to run ----------------------------------------------------------
  Named<Stage> stage = Stage::pretrain;
  Named<Task> task = Task::wordnet_nouns;  // finetune/router/eval task
  std::string data_dir;            // default: vm::data::default_cache_dir()
  std::string out = "runs/latest";
  std::string init;                // checkpoint to start from (finetune, router, eval)
  bool resume = false;             // continue <out>/last.safetensors
  bool force = false;              // start afresh in an --out that holds a run (replacing it)
  uint64_t seed = 1;
  // Seed of the data splits (WordNet train/val/test, Brown train/val,
  // Fashion-MNIST val) and of the OOD subsamples. Fixed by default so that
  // every --seed trains and is scored on the same sets, as the paper's fixed
  // benchmarks are; --seed varies initialisation, batches and sampling only.
  uint64_t split_seed = 1;
  int threads = 2;
  Named<Device> device = Device::CPU;
  bool allow_tf32 = false;  // --allow-tf32 (cuda)
  // ---- model ------------------------------------------------------------------
  nn::ModelConfig model;
  nn::RouterConfig router;
  // ---- optimisation -------------------------------------------------------------
  nn::AdamWConfig optim;
  int64_t steps = 200;
  // > 0: the run lasts `epochs` passes over its training set (steps =
  // epochs · ⌈n_train / (batch · grad_accum)⌉, --steps ignored) and validates
  // at the end of every epoch, so --patience counts epochs. 0: --steps and --eval-every.
  int epochs = 0;
  int batch = 16;
  int seq = 128;                   // pretrain context length
  int grad_accum = 1;
  int eval_every = 50;
  int eval_batches = 8;            // pretrain: batches of held-out text per evaluation
  int patience = 0;                // early stopping (evaluations without val-NLL improvement), 0 = off
  std::vector<std::string> freeze; // regexes of parameter names to freeze
  std::vector<std::string> train_only;  // if set, freeze everything else
  double lb_coef = 0.01;           // Switch load-balancing coefficient
  double z_coef = 1e-3;            // router z-loss coefficient
  double beta = 0.01;              // L = L_task + β · KL
  Named<KlNorm> kl_norm = KlNorm::token_mean;
  Named<RouterLoss> router_loss = RouterLoss::answer;  // stage 2's task loss
  // Data of the MC/image training stages (experiments/datasets.cpp, split_train):
  // the ID train split is permuted with --split-seed; its first train_size
  // examples (0 = all but the held-out part) are the fine-tuning set; with
  // --router-data heldout its last heldout_size are stage 2's and no other stage's.
  int train_size = 0;              // 0 = the whole train split (less the held-out part)
  Named<RouterData> router_data = RouterData::train;
  int heldout_size = 0;            // --router-data heldout: 0 = a fifth of the train split
  int val_size = 0;                // training's validation: first N of the val split, 0 = all (after --max-eval-examples)
  double gloss_max_bytes = 160;    // cap on the definition length in the MC prompt
  int max_train_examples = 0;      // 0 = all
  int max_eval_examples = 0;       // 0 = all
  int ood_size = 1000;             // examples per OOD set in eval
  bool progress = true;            // progress bar on stderr
  double time_limit_s = 0;         // stop training after this wall time (0 = none)
  // ---- evaluation ------------------------------------------------------------
  Named<Split> split = Split::test;
  int ece_bins = 10;
  std::vector<double> gammas{0.001, 0.002, 0.005, 0.007, 0.01, 0.02, 0.05};
  bool stability = false;          // run the routing-stability sweep in eval
  bool ood = true;                 // evaluate the OOD sets in eval
  int mi_samples = 0;              // eval: M passes with one router draw each: predictive arm + mutual information (0 = off)
  int stability_draws = 3;         // eval: independent-noise stability averaged over this many fresh router draws
  bool sensitivity = false;        // eval: per-layer routing sensitivity (ΔNLL under a random top-K)
  std::string bayes_spec;          // --bayes-layers: "2,3", "auto:N" (N least stable MoE layers) or
                                   // "auto-sensitive:N" (N layers whose random top-K changes the answer NLL most)
  double auto_gamma = 0.01;        // γ used to rank layers for auto:N
  // ---- processes (mpirun/srun; docs/SCALE.md) ------------------------------------
  // The global batch is computed as batch_shards shards (examples
  // [j·B/S, (j+1)·B/S)) whose gradients are summed in a fixed tree; under
  // mpirun each of the N ranks computes S/N of them, so a run gives the same
  // bits at any N that leaves each rank a power-of-two number of shards.
  // 1: the batch in one piece (the single-process computation). Not given:
  // one shard per rank (--resume: the checkpoint's).
  int batch_shards = 1;
  // Expert parallelism: the ranks form groups of this many consecutive ranks;
  // in training each member computes the experts [q·E/P, (q+1)·E/P) of every
  // MoE layer for the whole group's tokens (docs/SCALE.md). 1: off.
  int expert_parallel = 1;
  double dist_timeout = 600;       // seconds a rank waits for the others at any exchange before it stops the job
  double bucket_mb = 4;            // gradient all-reduce bucket (MiB)
  // ---- not a hyper-parameter -------------------------------------------------
  // The flags given on the command line (or in --config), e.g. "--samples":
  // eval and inspect override the checkpoint's settings with these only, and
  // take the checkpoint's split seed unless "--split-seed" is among them.
  std::vector<std::string> given_flags;
  // reproduce: the evaluation settings of its run, by field key ({"ood_size":
  // 200, "seed": 2, ...}); its training stages store them in their checkpoints
  // ("evaluation" metadata) so that `vmoer eval` on one repeats the run's
  // evaluation (inherit_eval_protocol). Not part of a stage's cache key.
  nlohmann::json eval_protocol = nlohmann::json::object();

  bool given(std::string_view flag) const;
  void validate() const;  // throws vm::Error naming the flag
  bool operator==(const RunConfig&) const = default;
};

// --device: cpu, or cuda where the build has the backend and the machine a
// GPU; otherwise one line saying which is missing. allow_tf32 (--allow-tf32,
// cuda only) lets cuBLAS use TF32 tensor cores for float GEMMs; off, they are
// IEEE fp32 with fp32 accumulation, as the CPU-parity tests expect.
void require_device(Device device, bool allow_tf32 = false);

// ---- the stage cache of `vmoer reproduce` (experiments/reproduce.cpp) ----------
// A training stage's config: the Group::evaluation fields reset to their
// defaults (run_train does not read them), so they cannot change the stage.
RunConfig training_stage(RunConfig c);
// What a stage's cache key hashes: every field of the config, serialized
// through the field tables ({"model": {...}, "router": {...}, "optim": {...},
// "beta": ..., ...}), except the Use::runtime ones (out, resume, threads,
// progress). Written to the stage's done.json.
nlohmann::json stage_inputs(const RunConfig& c);
// 12 hex digits of the hash of stage_inputs(c): the stage directory's suffix.
std::string stage_key(const RunConfig& c);

}  // namespace vm::exp

namespace vm {
// One row per field (core/fields.h). Group::evaluation rows are read by
// evaluation only: reproduce's training stages reset them (so they are not
// part of a training stage's cache key). Use::runtime rows cannot change a
// result and are left out of every cache key.
template <>
struct FieldTable<exp::RunConfig> {
  using C = exp::RunConfig;
  static constexpr unsigned kTrainEval = Use::train | Use::eval;
  static constexpr unsigned kEverywhere = Use::train | Use::eval | Use::inspect | Use::repro;
  static constexpr auto rows = std::tuple{
      VM_FIELD(stage, "--stage", Group::run, Use::train, "training stage"),
      VM_FIELD(task, "--task", Group::data, kTrainEval | Use::inherit, "task of fine-tuning, stage 2 and evaluation"),
      VM_FIELD(data_dir, "--data-dir", Group::data, kEverywhere, "dataset cache (default: $VMOER_DATA or .cache/data)"),
      VM_FIELD(out, "--out", Group::run, kTrainEval | Use::runtime, "output directory"),
      VM_FIELD(init, "--init", Group::run, Use::train, "checkpoint to start from"),
      VM_FIELD(resume, "--resume", Group::run, Use::train | Use::runtime, "continue <out>/last.safetensors"),
      VM_FIELD(force, "--force", Group::run, Use::train | Use::runtime,
               "start afresh in an --out that holds a run (its checkpoints and log are replaced); without it "
               "such an --out is refused"),
      VM_FIELD(seed, "--seed", Group::run, kTrainEval | Use::inspect,
               "random seed: initialisation, batch order, router and dropout noise"),
      VM_FIELD(split_seed, "--split-seed", Group::data, kEverywhere,
               "seed of the data splits and OOD subsamples (fixed by default: every --seed sees the same sets; "
               "eval and inspect: the checkpoint's)"),
      // Any thread count gives the same bits since commit b1c05d5 (docs/RELIABILITY.md).
      VM_FIELD(threads, "--threads", Group::run, kEverywhere | Use::runtime, "OpenMP threads"),
      VM_FIELD(device, "--device", Group::run, kEverywhere, "where the model runs"),
      VM_FIELD(allow_tf32, "--allow-tf32", Group::run, kEverywhere,
               "cuda: let cuBLAS use TF32 tensor cores (10-bit mantissa products; off = IEEE fp32 GEMMs)"),
      VM_FIELD(model, "", Group::model, 0, "the model (nn/config.h)"),
      VM_FIELD(router, "", Group::router, 0, "the router (nn/router.h)"),
      VM_FIELD(optim, "", Group::optimisation, 0, "AdamW and its schedule (nn/optim.h)"),
      VM_FIELD(steps, "--steps", Group::optimisation, Use::train, "optimizer steps"),
      VM_FIELD(epochs, "--epochs", Group::optimisation, Use::train | Use::repro | Use::ablate,
               "> 0: train this many epochs of the training set (replaces --steps), validate after each, "
               "--patience in epochs; reproduce: stage 2's epochs (0: the plan's)"),
      VM_FIELD(batch, "--batch", Group::optimisation, kTrainEval, "sequences per batch"),
      VM_FIELD(seq, "--seq", Group::data, Use::train, "pretraining context length"),
      VM_FIELD(grad_accum, "--grad-accum", Group::optimisation, Use::train, "micro-batches per step"),
      VM_FIELD(eval_every, "--eval-every", Group::optimisation, Use::train, "steps between evaluations"),
      VM_FIELD(eval_batches, "--eval-batches", Group::optimisation, Use::train,
               "pretrain: held-out batches per evaluation"),
      VM_FIELD(patience, "--patience", Group::optimisation, Use::train,
               "early stopping patience in evaluations (0 = off)"),
      VM_FIELD(freeze, "--freeze", Group::optimisation, Use::train, "regex of parameter names to freeze (repeatable)"),
      VM_FIELD(train_only, "--train-only", Group::optimisation, Use::train,
               "regex of the only parameters to train (repeatable)"),
      VM_FIELD(lb_coef, "--lb-coef", Group::optimisation, Use::train, "load-balancing loss coefficient"),
      VM_FIELD(z_coef, "--z-coef", Group::optimisation, Use::train, "router z-loss coefficient"),
      VM_FIELD(beta, "--beta", Group::optimisation, Use::train | Use::repro | Use::ablate, "β in L = L_task + β KL"),
      VM_FIELD(kl_norm, "--kl-norm", Group::optimisation, Use::train | Use::repro | Use::ablate,
               "KL per routed token (token-mean), per batch of an epoch (dataset: the minibatch ELBO), or summed "
               "over each sequence's tokens and layers and averaged over sequences (sequence-sum: per-example ELBO)"),
      VM_FIELD(router_loss, "--router-loss", Group::optimisation, Use::train | Use::repro | Use::ablate,
               "stage 2's task loss: the answer letter only, or every position of the prompt (next byte) too"),
      VM_FIELD(train_size, "--train-size", Group::data, Use::train | Use::repro | Use::ablate,
               "fine-tuning/stage-2 prompts: a subset of this size of the ID train split, seeded by --split-seed "
               "(0 = all)"),
      VM_FIELD(router_data, "--router-data", Group::data, Use::train | Use::repro | Use::ablate,
               "stage 2 trains on the fine-tuning prompts (train) or a held-out part of the train split that "
               "fine-tuning does not see (heldout; give it to both stages)"),
      VM_FIELD(heldout_size, "--heldout-size", Group::data, Use::train | Use::repro | Use::ablate,
               "--router-data heldout: prompts in the held-out part (0 = a fifth of the train split)"),
      VM_FIELD(val_size, "--val-size", Group::data, Use::train,
               "validation prompts during training: first N of the val split (0 = all)"),
      VM_FIELD(gloss_max_bytes, "--gloss-max-bytes", Group::data, kTrainEval | Use::inspect | Use::inherit,
               "cap on the definition length in the MC prompt"),
      VM_FIELD(max_train_examples, "--max-train-examples", Group::data, Use::train, "0 = all"),
      VM_FIELD(max_eval_examples, "--max-eval-examples", Group::data, kTrainEval,
               "cap on the val/test prompts (0 = all); in eval it caps each OOD set too unless --ood-size is given"),
      VM_FIELD(ood_size, "--ood-size", Group::evaluation, Use::eval, "examples per OOD set"),
      VM_FIELD(progress, "--no-progress", Group::run, kTrainEval | Use::negated | Use::runtime, "no progress bar"),
      // runtime: a cap changes nothing unless it is hit, and a stage that hits
      // it says so (reproduce: done.json "time_capped", continued when rerun
      // with a larger cap or none), so it is not part of a stage's cache key
      VM_FIELD(time_limit_s, "--time-limit", Group::optimisation, Use::train | Use::runtime,
               "stop after this many seconds (0 = none)"),
      VM_FIELD(split, "--split", Group::evaluation, Use::eval, "split to evaluate"),
      VM_FIELD(ece_bins, "--ece-bins", Group::evaluation, Use::eval, "ECE bins"),
      VM_FIELD(gammas, "--gammas", Group::evaluation, Use::eval | Use::repro,
               "noise levels γ of the stability sweep (σ = γ · mean embedding norm)"),
      VM_FIELD(stability, "--stability", Group::evaluation, Use::eval, "routing-stability sweep over --gammas"),
      VM_FIELD(ood, "--no-ood", Group::evaluation, Use::eval | Use::negated, "skip the OOD sets"),
      VM_FIELD(mi_samples, "--mi-samples", Group::evaluation, Use::eval,
               "M extra passes with one router draw each (cost: M more passes per set, stochastic routers only): the "
               "predictive arm averaging the answer distribution over them (its own acc/NLL/ECE) and the "
               "mutual-information OOD score (0 = off)"),
      VM_FIELD(stability_draws, "--stability-draws", Group::evaluation, Use::eval | Use::repro,
               "stability with independent router noise: fresh router draws per γ, averaged (cost: this many more "
               "noisy passes per γ; 0 = off)"),
      VM_FIELD(sensitivity, "--sensitivity", Group::evaluation, Use::eval,
               "per-layer routing sensitivity: answer-NLL change when one MoE layer routes to a random K-subset "
               "(cost: one pass per MoE layer + 1)"),
      VM_FIELD(bayes_spec, "--bayes-layers", Group::router,
               kTrainEval | Use::override | Use::repro | Use::ablate,
               "MoE layers with the Bayesian router: a list like 2,3, or auto:N (train, reproduce) for the N "
               "layers whose routing is least stable under input noise, or auto-sensitive:N for the N layers whose "
               "answer NLL changes most under a random top-K; empty: every MoE layer"),
      VM_FIELD(auto_gamma, "--auto-gamma", Group::router, Use::train, "γ that ranks the layers for auto:N"),
      VM_FIELD(batch_shards, "--batch-shards", Group::optimisation, Use::train | Use::repro | Use::key_if_set,
               "compute each batch as S shards whose gradients are summed in a fixed order; under mpirun -np N each "
               "rank computes S/N of them (default: one per rank; --resume: the checkpoint's), and the run has the "
               "same bits at any N that divides S into powers of two (docs/SCALE.md)"),
      VM_FIELD(expert_parallel, "--expert-parallel", Group::optimisation,
               Use::train | Use::eval | Use::repro | Use::key_if_set,
               "under mpirun -np N: shard each MoE layer's experts over P ranks (P divides N and the experts); "
               "the routed tokens go to the rank that owns their expert and back (all-to-all); training applies "
               "the capacity over the P ranks' tokens together, evaluation per batch as one process does "
               "(docs/SCALE.md)"),
      VM_FIELD(dist_timeout, "--dist-timeout", Group::run, Use::train | Use::eval | Use::repro | Use::runtime,
               "multi-process runs: seconds a rank waits for the others at an exchange before it stops the job, "
               "naming the rank that did not answer"),
      VM_FIELD(bucket_mb, "--bucket-mb", Group::run, Use::train | Use::repro | Use::runtime,
               "multi-process runs: size of the gradient all-reduce buckets in MiB (the result does not depend on it)"),
  };
};
static_assert(fields_complete<exp::RunConfig>(/*given_flags, eval_protocol*/ 2), "every member of RunConfig needs a row in its table");
}  // namespace vm
