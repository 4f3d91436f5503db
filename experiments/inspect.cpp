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
#include "experiments/build_info.h"
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

// --text "a\nb": the escapes \n, \t and \\ as the characters they name.
static std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'n' || s[i + 1] == 't' || s[i + 1] == '\\')) {
      out += s[i + 1] == 'n' ? '\n' : s[i + 1] == 't' ? '\t' : '\\';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

static int run_inspect(InspectConfig ic) {
  const std::string started = utc_now();
  RunConfig& cfg = ic.run;
  if (!ic.text.empty() && ic.index >= 0) fail("--text and --index: give one of them (the input is either your text or a test example)");
  ic.text = unescape(ic.text);
  require_device(cfg.device, cfg.allow_tf32);
  omp_set_num_threads(cfg.threads);
  auto model = load_model_for_eval(cfg);
  inherit_data_settings(cfg, cfg.init);
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
  json prov = provenance(cfg.threads, started);  // experiments/build_info.h
  prov["config"] = fields_to_json<json>(cfg);
  prov["paths_relative_to"] = "cwd";
  out["provenance"] = prov;
  if (ic.as_json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  // Human-readable view: the input, what applies to this router, a legend.
  const nn::RouterKind kind = model->router_config().name;
  const bool posterior = kind == nn::RouterKind::mfvr || kind == nn::RouterKind::fcvr;
  const bool sampled = kind == nn::RouterKind::sample_k || kind == nn::RouterKind::vtsr;
  const bool bayes = nn::router_info(kind).bayesian && !model->bayes_layer_ids().empty();
  const bool uses_S = bayes && nn::router_reads(kind, "samples");
  std::printf("checkpoint %s\nrouter %s", cfg.init.c_str(), out["router"].get<std::string>().c_str());
  if (uses_S) std::printf("  S=%d samples", out["samples"].get<int>());
  std::printf("  Bayesian layers:");
  if (!bayes) std::printf(" none (deterministic routing everywhere)");
  else
    for (int l : model->bayes_layer_ids()) std::printf(" %d", l);
  std::printf("\n\nprompt (%d tokens with <bos>%s):\n%s\n\n", T, first > 0 ? ", the last shown below" : "", prompt.c_str());
  std::printf("answer distribution  A %.3f  B %.3f  C %.3f  D %.3f", ev.probs[0][0], ev.probs[0][1], ev.probs[0][2],
              ev.probs[0][3]);
  if (label >= 0) std::printf("   (label %c)", 'A' + label);
  std::printf("\npredictive entropy %.3f nats   ILV (final token) ", ev.entropy[0]);
  if (posterior) std::printf("%.3f", ev.ilv[0]);
  else std::printf("n/a (%s has no logit posterior)", out["router"].get<std::string>().c_str());
  std::printf("   gate entropy (final token) %.3f\n\n", ev.gate_entropy[0]);
  std::printf("legend: per token and MoE layer\n"
              "  experts e(g)  the K experts the token is sent to, with their gates g (renormalised over the K)\n"
              "  H             entropy (nats) of the routing distribution p\n"
              "  p             the routing distribution over the E experts%s\n",
              posterior ? " (p-bar: the average of softmax over the S posterior samples)" : "");
  if (posterior)
    std::printf("  σ             posterior std of each logit;  ILV  inferred logit variance tr Σ at this token\n");
  if (kind == nn::RouterKind::vtsr) std::printf("  T             the token's temperature (vtsr)\n");
  if (sampled)
    std::printf("  note: %s samples its selection, so the experts are a draw, not the top-K of p; another --seed gives "
                "another draw\n",
                out["router"].get<std::string>().c_str());
  std::printf("\n");
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
  s->add_option("--ckpt,--init", ic->run.init, "checkpoint (required)");
  s->add_option("--text", ic->text, "input text (e.g. a full prompt ending with 'Answer:')");
  s->add_option("--index", ic->index, "an example of the test split instead of --text");
  s->add_option("--last", ic->max_tokens, "show only the last N tokens (0 = all)")->capture_default_str();
  s->add_flag("--json", ic->as_json, "machine-readable output");
  cli::add_field_options(s, ic->run, Use::inspect);
  cli::add_runner(s, [ic, s] {
    ic->run.given_flags = cli::given_flags(s, ic->run, Use::inspect);
    return run_inspect(*ic);
  });
  cli::require_option(s, "--ckpt");
}

}  // namespace vm::exp

namespace vm::cli {
void register_inspect_command(CLI::App& app) { exp::register_inspect(app); }
}  // namespace vm::cli
