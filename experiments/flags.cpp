// experiments/flags.cpp — `vmoer train` and `vmoer eval`: every field of
// RunConfig's table (experiments/run_config.h) marked for the subcommand is a
// flag; --config FILE (TOML/INI, experiments/commands.cpp) supplies values
// that flags on the command line override.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/dist.h"
#include "experiments/cli_fields.h"
#include "experiments/commands.h"
#include "experiments/run_config.h"
#include "experiments/trainer.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#include "kernels/cuda/gemm.h"
#endif

namespace vm::exp {

void require_device(Device device, bool allow_tf32) {
  if (device == Device::CPU && allow_tf32) fail("--allow-tf32: only with --device cuda");
  if (device == Device::CPU) return;
#ifdef VMOER_HAVE_CUDA
  if (!kernels::cuda::cuda_device_available()) fail("--device cuda: no CUDA device on this machine; use --device cpu");
  dist::use_local_gpu();  // several ranks on a machine: one GPU each (before any other CUDA use)
  static bool warned = false;
  if (!warned) {
    warned = true;
    std::fprintf(stderr,
                 "warning: --device cuda on %s: the GPU path (the ops of autodiff/ with kernels/cuda) was written and compiled on "
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

bool RunConfig::given(std::string_view flag) const {
  return std::find(given_flags.begin(), given_flags.end(), flag) != given_flags.end();
}

void validate_evaluation(const RunConfig& c) {
  if (c.ece_bins < 1) fail("--ece-bins: must be >= 1");
  if (c.mi_samples < 0) fail("--mi-samples: must be >= 0, got " + std::to_string(c.mi_samples));
  if (c.stability_draws < 0) fail("--stability-draws: must be >= 0, got " + std::to_string(c.stability_draws));
  for (double g : c.gammas)
    if (!(g >= 0)) fail("--gammas: values must be >= 0");
}

void RunConfig::validate() const {
  auto need = [](bool ok, const std::string& m) {
    if (!ok) fail(m);
  };
  require_device(device, allow_tf32);
  need(threads >= 1, "--threads: must be >= 1, got " + std::to_string(threads));
  need(steps >= 1, "--steps: must be >= 1, got " + std::to_string(steps));
  need(batch >= 1, "--batch: must be >= 1, got " + std::to_string(batch));
  need(seq >= 2, "--seq: must be >= 2, got " + std::to_string(seq));
  if (model.kind == nn::ModelKind::lm) need(seq <= model.max_seq, "--seq " + std::to_string(seq) + " exceeds --max-seq " + std::to_string(model.max_seq));
  need(epochs >= 0, "--epochs: must be >= 0, got " + std::to_string(epochs));
  need(train_size >= 0, "--train-size: must be >= 0, got " + std::to_string(train_size));
  need(heldout_size >= 0, "--heldout-size: must be >= 0, got " + std::to_string(heldout_size));
  need(val_size >= 0, "--val-size: must be >= 0, got " + std::to_string(val_size));
  need(!(router_loss == RouterLoss::all && model.kind == nn::ModelKind::vit),
       "--router-loss all: the vision model has one supervised position (the class token); use answer");
  need(grad_accum >= 1, "--grad-accum: must be >= 1, got " + std::to_string(grad_accum));
  need(batch_shards >= 1, "--batch-shards: must be >= 1, got " + std::to_string(batch_shards));
  need(expert_parallel >= 1, "--expert-parallel: must be >= 1, got " + std::to_string(expert_parallel));
  need(dist_timeout > 0, "--dist-timeout: must be > 0 seconds, got " + std::to_string(dist_timeout));
  need(bucket_mb > 0 && bucket_mb <= 1024, "--bucket-mb: must be in (0, 1024], got " + std::to_string(bucket_mb));
  need(beta >= 0, "--beta: must be >= 0, got " + std::to_string(beta));
  need(lb_coef >= 0 && z_coef >= 0, "--lb-coef and --z-coef must be >= 0");
  need(optim.lr > 0, "--lr: must be > 0");
  if (stage == Stage::router) need(!init.empty() || resume, "--stage router needs --init CKPT (the fine-tuned model)");
  validate_evaluation(*this);
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

std::optional<AutoLayers> auto_layers(const std::string& spec) {
  for (AutoLayers::Rank rank : {AutoLayers::sensitive, AutoLayers::unstable}) {
    const std::string head = rank == AutoLayers::sensitive ? "auto-sensitive:" : "auto:";
    if (spec.rfind(head, 0) != 0) continue;
    std::string num = spec.substr(head.size());
    try {
      size_t pos = 0;
      int n = std::stoi(num, &pos);
      if (pos != num.size() || n < 1) throw std::invalid_argument(spec);
      return AutoLayers{rank, n};
    } catch (const std::exception&) {
      fail("--bayes-layers: '" + spec + "' is not " + head + "N with N >= 1");
    }
  }
  return std::nullopt;
}

void parse_bayes_spec(RunConfig& c) {
  const std::string& s = c.bayes_spec;
  c.router.bayes_layers.clear();
  if (s.empty() || auto_layers(s)) return;  // auto_layers validates N
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
      fail("--bayes-layers: '" + tok + "' is not a layer index (use a list like 2,3, auto:N or auto-sensitive:N)");
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
  const char* why = c.resume ? "--resume" : "--init";
  for_each_row<nn::ModelConfig>([&](const auto& row) {
    std::string flag = row.flag, key = row.key;
    if (flag.empty() || s->count(flag) == 0 || want[key] == have[key]) return;
    fail(flag + " " + want[key].dump() + " does not match the checkpoint " + path + " (" + key + " = " +
         have[key].dump() + "); with " + why + " the architecture comes from the checkpoint: drop the flag" +
         (c.resume ? " or use a new --out" : ""));
  });
  if ((c.resume || c.stage != Stage::router) && s->count("--router") && c.router.name != rc.name)
    fail("--router " + c.router.name.str() + " does not match the checkpoint " + path + " (router " + rc.name.str() + "); with " +
         why + " the router comes from the checkpoint" + (c.resume ? "" : " (use --stage router to change it)"));
}

void register_train(CLI::App& app) {
  auto c = std::make_shared<RunConfig>();
  auto* s = app.add_subcommand("train", "train a model: pretrain (Brown), finetune (WordNet task), router (stage 2)");
  cli::add_field_options(s, *c, Use::train);
  cli::add_runner(s, [c, s] {
    c->given_flags = cli::given_flags(s, *c, Use::train);
    parse_bayes_spec(*c);
    check_flags_against_checkpoint(s, *c);
    return run_train(*c);
  });
}

void register_eval(CLI::App& app) {
  auto c = std::make_shared<RunConfig>();
  auto* s = app.add_subcommand("eval", "evaluate a checkpoint on the ID test split and the OOD sets");
  s->add_option("--init,--ckpt", c->init, "checkpoint to evaluate (required)")->group("Run");
  cli::add_field_options(s, *c, Use::eval);
  cli::add_runner(s, [c, s] {
    c->given_flags = cli::given_flags(s, *c, Use::eval);
    if (c->given("--bayes-layers")) {
      if (auto_layers(c->bayes_spec))
        fail("--bayes-layers: " + c->bayes_spec +
             " ranks layers while training (vmoer train --stage router); give a list like 2,3");
      parse_bayes_spec(*c);
    }
    validate_evaluation(*c);
    return run_eval(*c);
  });
  cli::require_option(s, "--ckpt");
}

}  // namespace vm::exp

namespace vm::cli {
void register_train_command(CLI::App& app) { exp::register_train(app); }
void register_eval_command(CLI::App& app) { exp::register_eval(app); }
}  // namespace vm::cli
