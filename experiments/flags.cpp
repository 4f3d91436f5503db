// experiments/flags.cpp — `vmoer train` and `vmoer eval`: every field of
// RunConfig is a flag; --config FILE (TOML/INI) supplies defaults that flags
// on the command line override.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "experiments/cli_fields.h"
#include "experiments/commands.h"
#include "experiments/run_config.h"
#include "experiments/trainer.h"
#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#endif

namespace vm::exp {

void require_device(const std::string& device, bool allow_tf32) {
  if (device == "cpu" && allow_tf32) fail("--allow-tf32: only with --device cuda");
  if (device == "cpu") return;
  if (device != "cuda") fail("--device: must be cpu or cuda, got '" + device + "'");
#ifdef VMOER_HAVE_CUDA
  if (!kernels::cuda::cuda_device_available()) fail("--device cuda: no CUDA device on this machine; use --device cpu");
  static bool warned = false;
  if (!warned) {
    warned = true;
    std::fprintf(stderr,
                 "warning: --device cuda on %s: the GPU path (autodiff/ops_cuda.cpp) was written and compiled on "
                 "machines without a GPU; run `vmoer_tests -tc='cuda*'` here first (it compares every op and a "
                 "training step with the CPU)\n",
                 kernels::cuda::cuda_device_name().c_str());
  }
  kernels::cuda::set_allow_tf32(allow_tf32);
  return;
#else
  fail("--device cuda: this build has no CUDA backend (configured with -DVMOER_CUDA=OFF or without nvcc)");
#endif
}

void RunConfig::validate() const {
  auto need = [](bool ok, const std::string& m) {
    if (!ok) fail(m);
  };
  need(stage == "pretrain" || stage == "finetune" || stage == "router",
       "--stage: must be pretrain, finetune or router, got '" + stage + "'");
  need(task == "wordnet-nouns" || task == "wordnet-words" || task == "fashion-mnist",
       "--task: must be wordnet-nouns, wordnet-words or fashion-mnist, got '" + task + "'");
  require_device(device, allow_tf32);
  need(threads >= 1, "--threads: must be >= 1, got " + std::to_string(threads));
  need(steps >= 1, "--steps: must be >= 1, got " + std::to_string(steps));
  need(batch >= 1, "--batch: must be >= 1, got " + std::to_string(batch));
  need(seq >= 2, "--seq: must be >= 2, got " + std::to_string(seq));
  if (model.kind == nn::ModelKind::lm) need(seq <= model.max_seq, "--seq " + std::to_string(seq) + " exceeds --max-seq " + std::to_string(model.max_seq));
  need(grad_accum >= 1, "--grad-accum: must be >= 1, got " + std::to_string(grad_accum));
  need(beta >= 0, "--beta: must be >= 0, got " + std::to_string(beta));
  need(lb_coef >= 0 && z_coef >= 0, "--lb-coef and --z-coef must be >= 0");
  need(kl_norm == "token-mean" || kl_norm == "dataset",
       "--kl-norm: must be token-mean or dataset, got '" + kl_norm + "'");
  need(optim.lr > 0, "--lr: must be > 0");
  need(ece_bins >= 1, "--ece-bins: must be >= 1");
  need(stage == "pretrain" || !init.empty() || resume || stage == "finetune",
       "--stage router needs --init CKPT (the fine-tuned model)");
  if (stage == "router") need(!init.empty() || resume, "--stage router needs --init CKPT (the fine-tuned model)");
  for (double g : gammas) need(g >= 0, "--gammas: values must be >= 0");
  // The architecture checks of model.validate(), phrased with the flag names.
  need(model.n_layers >= 1, "--layers: must be >= 1, got " + std::to_string(model.n_layers));
  need(model.n_experts >= 1, "--experts: must be >= 1, got " + std::to_string(model.n_experts));
  need(model.top_k >= 1, "--top-k: must be >= 1, got " + std::to_string(model.top_k));
  need(model.top_k <= model.n_experts, "--top-k: K = " + std::to_string(model.top_k) +
                                           " exceeds the number of experts E = " + std::to_string(model.n_experts) +
                                           " (--experts)");
  need(model.n_heads >= 1 && model.d_model >= 1 && model.d_model % model.n_heads == 0,
       "--d-model " + std::to_string(model.d_model) + " must be a positive multiple of --heads " +
           std::to_string(model.n_heads));
  for (int l : model.moe_layers)
    need(l >= 0 && l < model.n_layers, "--moe-layers: layer " + std::to_string(l) + " outside [0, " +
                                           std::to_string(model.n_layers) + ") (--layers " +
                                           std::to_string(model.n_layers) + ")");
  model.validate();
  router.validate(model.n_layers, model.n_experts, model.top_k);
}

void parse_bayes_spec(RunConfig& c) {
  const std::string& s = c.bayes_spec;
  c.router.bayes_layers.clear();
  if (s.empty() || s.rfind("auto:", 0) == 0) {
    if (!s.empty()) {
      try {
        size_t pos = 0;
        int n = std::stoi(s.substr(5), &pos);
        if (pos != s.size() - 5 || n < 1) throw std::invalid_argument(s);
      } catch (const std::exception&) {
        fail("--bayes-layers: '" + s + "' is not auto:N with N >= 1");
      }
    }
    return;
  }
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string tok = s.substr(i, j - i);
    try {
      size_t pos = 0;
      int v = std::stoi(tok, &pos);
      if (pos != tok.size()) throw std::invalid_argument(tok);
      c.router.bayes_layers.push_back(v);
    } catch (const std::exception&) {
      fail("--bayes-layers: '" + tok + "' is not a layer index (use a list like 2,3 or auto:N)");
    }
    i = j + 1;
  }
}

// With --resume (or --init outside stage 2) the architecture comes from the
// checkpoint. A model flag given explicitly on the command line that disagrees
// with the checkpoint is an error rather than silently ignored.
static void check_flags_against_checkpoint(CLI::App* s, const RunConfig& c) {
  std::string path;
  if (c.resume) path = c.out + "/last.safetensors";
  else if (!c.init.empty()) path = c.init;
  else return;
  if (!std::filesystem::exists(path)) return;  // run_train reports the missing file
  nn::ModelConfig mc;
  nn::RouterConfig rc;
  read_checkpoint_configs(path, mc, rc);
  nlohmann::json want = c.model, have = mc;
  static const std::pair<const char*, const char*> kModelFlags[] = {
      {"--model-kind", "kind"},   {"--d-model", "d_model"},     {"--layers", "n_layers"},
      {"--heads", "n_heads"},     {"--max-seq", "max_seq"},     {"--norm", "norm"},
      {"--tied-head", "tied_head"}, {"--experts", "n_experts"}, {"--top-k", "top_k"},
      {"--d-expert", "d_expert"}, {"--act", "act"},             {"--shared-expert", "shared_expert"},
      {"--moe-layers", "moe_layers"}, {"--capacity-factor", "capacity_factor"}};
  const char* why = c.resume ? "--resume" : "--init";
  for (auto& [flag, key] : kModelFlags) {
    if (s->count(flag) == 0 || want.value(key, nlohmann::json()) == have.value(key, nlohmann::json())) continue;
    fail(std::string(flag) + " " + want[key].dump() + " does not match the checkpoint " + path + " (" + key + " = " +
         have[key].dump() + "); with " + why + " the architecture comes from the checkpoint: drop the flag" +
         (c.resume ? " or use a new --out" : ""));
  }
  if ((c.resume || c.stage != "router") && s->count("--router") && c.router.name != rc.name)
    fail("--router " + c.router.name.str() + " does not match the checkpoint " + path + " (router " + rc.name.str() + "); with " +
         why + " the router comes from the checkpoint" + (c.resume ? "" : " (use --stage router to change it)"));
}

// Flags shared by train and eval.
static void add_common(CLI::App* s, RunConfig& c) {
  s->set_config("--config", "", "TOML/INI file with flag values (flags on the command line win)");
  s->add_option("--seed", c.seed, "random seed: initialisation, batch order, router and dropout noise")
      ->capture_default_str();
  s->add_option("--split-seed", c.split_seed,
                "seed of the data splits and OOD subsamples (fixed by default: every --seed sees the same sets)")
      ->capture_default_str();
  s->add_option("--threads", c.threads, "OpenMP threads")->capture_default_str();
  s->add_option("--device", c.device, "cpu | cuda")->capture_default_str();
  s->add_flag("--allow-tf32", c.allow_tf32,
              "cuda: let cuBLAS use TF32 tensor cores (10-bit mantissa products; off = IEEE fp32 GEMMs)");
  s->add_option("--out", c.out, "output directory")->capture_default_str();
  s->add_option("--data-dir", c.data_dir, "dataset cache (default: $VMOER_DATA or .cache/data)");
  s->add_option("--task", c.task, "wordnet-nouns | wordnet-words | fashion-mnist")->capture_default_str();
  s->add_option("--batch", c.batch, "sequences per batch")->capture_default_str();
  s->add_option("--gloss-max-bytes", c.gloss_max_bytes, "cap on the definition length")->capture_default_str();
  s->add_option("--max-eval-examples", c.max_eval_examples, "0 = all")->capture_default_str();
  s->add_flag("!--no-progress", c.progress, "no progress bar");
  // router (also needed at eval time: S, and to override the stored router settings)
  auto& r = c.router;
  cli::add_enum_option(s, "--router", r.name, "router of the Bayesian layers");
  s->add_option("--samples", r.samples, "S router samples per token at evaluation")->capture_default_str();
  s->add_option("--train-samples", r.train_samples, "router samples per token in training")->capture_default_str();
  s->add_option("--router-temp", r.temp, "sample-k temperature T")->capture_default_str();
  s->add_option("--router-dropout", r.dropout, "mc-dropout p")->capture_default_str();
  s->add_option("--prior-scale", r.prior_scale, "s in the prior N(l_det, s² I)")->capture_default_str();
  cli::add_enum_option(s, "--temp-mode", r.temp_mode, "vtsr");
  cli::add_enum_option(s, "--temp-posterior", r.temp_posterior, "vtsr");
  s->add_option("--temp-penalty", r.temp_penalty, "vtsr point: λ of λ Σ −log T")->capture_default_str();
  s->add_option("--temp-prior-scale", r.temp_prior_scale, "vtsr lognormal: s_T")->capture_default_str();
  cli::add_enum_option(s, "--vtsr-sampler", r.vtsr_sampler, "selection of K experts");
  s->add_option("--router-jitter", r.jitter, "multiplicative router-input jitter in training")->capture_default_str();
}

static void add_model(CLI::App* s, RunConfig& c) {
  auto& m = c.model;
  cli::add_enum_option(s, "--model-kind", m.kind, "model");
  s->add_option("--d-model", m.d_model, "model width")->capture_default_str();
  s->add_option("--layers", m.n_layers, "transformer blocks")->capture_default_str();
  s->add_option("--heads", m.n_heads, "attention heads")->capture_default_str();
  s->add_option("--max-seq", m.max_seq, "positions")->capture_default_str();
  cli::add_enum_option(s, "--norm", m.norm, "normalisation");
  s->add_option("--tied-head", m.tied_head, "tie the output head to the token embedding")->capture_default_str();
  s->add_option("--experts", m.n_experts, "E experts per MoE layer")->capture_default_str();
  s->add_option("--top-k", m.top_k, "K experts per token")->capture_default_str();
  s->add_option("--d-expert", m.d_expert, "expert hidden size")->capture_default_str();
  cli::add_enum_option(s, "--act", m.act, "expert activation");
  s->add_option("--shared-expert", m.shared_expert, "add a DeepSeek-style shared expert")->capture_default_str();
  s->add_option("--moe-layers", m.moe_layers, "layers with MoE FFN (default: all)")->delimiter(',');
  s->add_option("--capacity-factor", m.capacity_factor, "0 = dropless")->capture_default_str();
}

void register_train(CLI::App& app) {
  auto c = std::make_shared<RunConfig>();
  auto* s = app.add_subcommand("train", "train a model: pretrain (Brown), finetune (WordNet task), router (stage 2)");
  add_common(s, *c);
  add_model(s, *c);
  s->add_option("--stage", c->stage, "pretrain | finetune | router")->capture_default_str();
  s->add_option("--init", c->init, "checkpoint to start from");
  s->add_flag("--resume", c->resume, "continue <out>/last.safetensors");
  s->add_option("--steps", c->steps, "optimizer steps")->capture_default_str();
  s->add_option("--seq", c->seq, "pretraining context length")->capture_default_str();
  s->add_option("--grad-accum", c->grad_accum, "micro-batches per step")->capture_default_str();
  s->add_option("--lr", c->optim.lr, "peak learning rate")->capture_default_str();
  s->add_option("--weight-decay", c->optim.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  s->add_option("--warmup", c->optim.warmup, "linear warm-up steps")->capture_default_str();
  s->add_option("--min-lr-ratio", c->optim.min_lr_ratio, "cosine floor as a fraction of --lr")->capture_default_str();
  s->add_option("--clip", c->optim.clip, "max global grad norm (0 = off)")->capture_default_str();
  s->add_option("--eval-every", c->eval_every, "steps between evaluations")->capture_default_str();
  s->add_option("--eval-batches", c->eval_batches, "pretrain: held-out batches per evaluation")->capture_default_str();
  s->add_option("--patience", c->patience, "early stopping patience in evaluations (0 = off)")->capture_default_str();
  s->add_option("--freeze", c->freeze, "regex of parameter names to freeze (repeatable)");
  s->add_option("--train-only", c->train_only, "regex of the only parameters to train (repeatable)");
  s->add_option("--lb-coef", c->lb_coef, "load-balancing loss coefficient")->capture_default_str();
  s->add_option("--z-coef", c->z_coef, "router z-loss coefficient")->capture_default_str();
  s->add_option("--beta", c->beta, "β in L = L_task + β KL")->capture_default_str();
  s->add_option("--kl-norm", c->kl_norm, "token-mean | dataset")->capture_default_str();
  s->add_option("--bayes-layers", c->bayes_spec,
                 "MoE layers with the Bayesian router: a list like 2,3, or auto:N for the N layers whose routing is "
                 "least stable under input noise (default: all)");
  s->add_option("--max-train-examples", c->max_train_examples, "0 = all")->capture_default_str();
  s->add_option("--time-limit", c->time_limit_s, "stop after this many seconds (0 = none)")->capture_default_str();
  cli::add_runner(s, [c, s] {
    c->split_seed_set = s->count("--split-seed") > 0;
    parse_bayes_spec(*c);
    check_flags_against_checkpoint(s, *c);
    return run_train(*c);
  });
}

void register_eval(CLI::App& app) {
  auto c = std::make_shared<RunConfig>();
  auto* s = app.add_subcommand("eval", "evaluate a checkpoint on the ID test split and the OOD sets");
  add_common(s, *c);
  s->add_option("--init,--ckpt", c->init, "checkpoint to evaluate")->required();
  s->add_option("--split", c->split, "val | test")->capture_default_str();
  s->add_option("--ece-bins", c->ece_bins, "ECE bins")->capture_default_str();
  s->add_option("--ood-size", c->ood_size, "examples per OOD set")->capture_default_str();
  s->add_flag("!--no-ood", c->ood, "skip the OOD sets");
  s->add_flag("--stability", c->stability, "routing-stability sweep over --gammas");
  s->add_option("--mi-samples", c->mi_samples,
                "extra passes with one router sample each, for the mutual-information score (0 = off)")
      ->capture_default_str();
  s->add_option("--gammas", c->gammas, "noise levels γ (σ = γ · mean embedding norm)")->delimiter(',');
  s->add_option("--bayes-layers", c->bayes_spec,
                "with --router: the MoE layers that get it, a list like 2,3 (default: the checkpoint's, or all)");
  cli::add_runner(s, [c, s] {
    c->samples_set = s->count("--samples") > 0;
    c->split_seed_set = s->count("--split-seed") > 0;
    for (const char* f : {"--router", "--router-temp", "--router-dropout", "--prior-scale", "--temp-mode",
                          "--temp-posterior", "--temp-penalty", "--temp-prior-scale", "--vtsr-sampler", "--bayes-layers"})
      if (s->count(f)) c->router_flags.push_back(f);
    if (s->count("--bayes-layers")) {
      if (c->bayes_spec.rfind("auto:", 0) == 0)
        fail("--bayes-layers: auto:N ranks layers while training (vmoer train --stage router); give a list like 2,3");
      parse_bayes_spec(*c);
    }
    return run_eval(*c);
  });
}

}  // namespace vm::exp

namespace vm::cli {
void register_train_command(CLI::App& app) { exp::register_train(app); }
void register_eval_command(CLI::App& app) { exp::register_eval(app); }
}  // namespace vm::cli
