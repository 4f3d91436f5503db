// experiments/inspect.cpp — `vmoer inspect`: what the router does, token by
// token. For one input (raw text, or an example of the task's test split),
// print per token and per MoE layer the chosen experts and gates, the routing
// distribution, the posterior mean and standard deviation of the logits
// (mfvr/fcvr) or the temperature (vtsr), and the uncertainty scores.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "data/tokenizer.h"
#include "experiments/cli_fields.h"
#include "experiments/commands.h"
#include "experiments/datasets.h"
#include "experiments/evaluation.h"
#include "experiments/trainer.h"

namespace vm::exp {
using nlohmann::json;

struct InspectConfig {
  RunConfig run;
  std::string text;
  int index = -1;
  bool as_json = false;
  int max_tokens = 0;  // print only the last N tokens (0 = all)
};

static std::string show_byte(int32_t t) {
  if (t == data::kBos) return "<bos>";
  if (t == data::kEos) return "<eos>";
  if (t == data::kPad) return "<pad>";
  if (t == '\n') return "\\n";
  if (t < 32 || t > 126) {
    char b[8];
    std::snprintf(b, sizeof b, "\\x%02x", t);
    return b;
  }
  return std::string(1, (char)t);
}

static int run_inspect(InspectConfig ic) {
  RunConfig& cfg = ic.run;
  require_device(cfg.device, cfg.allow_tf32);
  omp_set_num_threads(cfg.threads);
  auto model = load_model_for_eval(cfg);
  inherit_split_seed(cfg, cfg.init);
  std::string prompt = ic.text;
  int label = -1;
  if (prompt.empty()) {
    if (ic.index < 0) fail("inspect: give --text TEXT or --index N (an example of the test split)");
    McTaskData task = load_mc_task(cfg);
    if (ic.index >= (int)task.test.size())
      fail("--index: " + std::to_string(ic.index) + " outside the test split of " + std::to_string(task.test.size()));
    prompt = task.test.prompts[(size_t)ic.index];
    label = task.test.labels[(size_t)ic.index];
  }
  McSet one;
  one.prompts = {prompt};
  one.labels = {label};
  McBatch mb = make_mc_batch(one, {0}, model->config().max_seq);
  NoGradGuard ng;
  nn::ForwardOptions fo;
  fo.seed = cfg.seed;
  fo.samples = model->router_config().samples;
  auto res = model->forward_lm(mb.ids, mb.B, mb.T, mb.mask, mb.last, fo);
  host_diagnostics(res);
  McEval ev = evaluate_mc(*model, one, cfg);
  int E = model->config().n_experts, K = model->config().top_k;
  int T = mb.T;
  int first = ic.max_tokens > 0 ? std::max(0, T - ic.max_tokens) : 0;
  json out;
  out["checkpoint"] = cfg.init;
  out["router"] = model->router_config().name;
  out["samples"] = model->router_config().samples;
  out["bayes_layers"] = model->bayes_layer_ids();
  out["prompt"] = prompt;
  out["label"] = label;
  out["answer_distribution"] = {{"A", ev.probs[0][0]}, {"B", ev.probs[0][1]}, {"C", ev.probs[0][2]}, {"D", ev.probs[0][3]}};
  out["predictive_entropy"] = ev.entropy[0];
  out["ilv_final_token"] = ev.ilv[0];
  out["gate_entropy_final_token"] = ev.gate_entropy[0];
  json toks = json::array();
  for (int t = first; t < T; ++t) {
    json tok{{"position", t}, {"token", show_byte(mb.ids[(size_t)t])}};
    json layers = json::array();
    for (auto& a : res.moe) {
      const auto& r = a.route;
      json L{{"layer", a.layer}};
      std::vector<int> ex;
      std::vector<double> g, p;
      for (int j = 0; j < K; ++j) {
        ex.push_back(r.experts[(size_t)t * K + j]);
        g.push_back(r.gates.value()[(int64_t)t * K + j]);
      }
      double H = 0;
      for (int e = 0; e < E; ++e) {
        double q = r.probs.value()[(int64_t)t * E + e];
        p.push_back(q);
        if (q > 0) H -= q * std::log(q);
      }
      L["experts"] = ex;
      L["gates"] = g;
      L["probs"] = p;
      L["gate_entropy"] = H;
      if (!r.post_mean.empty()) {
        L["posterior_mean"] = std::vector<float>(r.post_mean.begin() + (size_t)t * E, r.post_mean.begin() + (size_t)(t + 1) * E);
        L["posterior_std"] = std::vector<float>(r.post_std.begin() + (size_t)t * E, r.post_std.begin() + (size_t)(t + 1) * E);
        L["ilv"] = r.ilv[(size_t)t];
      }
      if (!r.temperature.empty()) L["temperature"] = r.temperature[(size_t)t];
      layers.push_back(L);
    }
    tok["layers"] = layers;
    toks.push_back(tok);
  }
  out["tokens"] = toks;
  if (ic.as_json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  // Human-readable view.
  std::printf("checkpoint %s  router %s  S=%d  Bayesian layers:", cfg.init.c_str(), out["router"].get<std::string>().c_str(),
              out["samples"].get<int>());
  for (int l : model->bayes_layer_ids()) std::printf(" %d", l);
  std::printf("\nanswer distribution  A %.3f  B %.3f  C %.3f  D %.3f", ev.probs[0][0], ev.probs[0][1], ev.probs[0][2],
              ev.probs[0][3]);
  if (label >= 0) std::printf("   (label %c)", 'A' + label);
  std::printf("\npredictive entropy %.3f nats   ILV (final token) %.3f   gate entropy (final token) %.3f\n\n",
              ev.entropy[0], ev.ilv[0], ev.gate_entropy[0]);
  for (auto& tok : toks) {
    std::printf("[%3d] '%s'\n", tok["position"].get<int>(), tok["token"].get<std::string>().c_str());
    for (auto& L : tok["layers"]) {
      std::printf("      layer %d: experts", L["layer"].get<int>());
      for (size_t j = 0; j < L["experts"].size(); ++j)
        std::printf(" %d(%.2f)", L["experts"][j].get<int>(), L["gates"][j].get<double>());
      std::printf("  H=%.2f  p=[", L["gate_entropy"].get<double>());
      for (size_t e = 0; e < L["probs"].size(); ++e) std::printf("%s%.2f", e ? " " : "", L["probs"][e].get<double>());
      std::printf("]");
      if (L.contains("posterior_std")) {
        std::printf("  σ=[");
        for (size_t e = 0; e < L["posterior_std"].size(); ++e)
          std::printf("%s%.2f", e ? " " : "", L["posterior_std"][e].get<double>());
        std::printf("] ILV=%.2f", L["ilv"].get<double>());
      }
      if (L.contains("temperature")) std::printf("  T=%.3f", L["temperature"].get<double>());
      std::printf("\n");
    }
  }
  return 0;
}

void register_inspect(CLI::App& app) {
  auto ic = std::make_shared<InspectConfig>();
  auto* s = app.add_subcommand("inspect", "per-token routing of one input: experts, gates, posterior, uncertainty");
  s->add_option("--ckpt,--init", ic->run.init, "checkpoint")->required();
  s->add_option("--text", ic->text, "input text (e.g. a full prompt ending with 'Answer:')");
  s->add_option("--index", ic->index, "an example of the test split instead of --text");
  s->add_option("--last", ic->max_tokens, "show only the last N tokens (0 = all)")->capture_default_str();
  s->add_flag("--json", ic->as_json, "machine-readable output");
  cli::add_field_options(s, ic->run, Use::inspect);
  cli::add_runner(s, [ic, s] {
    ic->run.given_flags = cli::given_flags(s, ic->run, Use::inspect);
    return run_inspect(*ic);
  });
}

}  // namespace vm::exp

namespace vm::cli {
void register_inspect_command(CLI::App& app) { exp::register_inspect(app); }
}  // namespace vm::cli
