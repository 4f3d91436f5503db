// experiments/evaluation.h — the evaluation pieces shared by `vmoer eval` and
// `vmoer reproduce` (experiments/eval.cpp).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "experiments/trainer.h"

namespace vm::exp {

// accuracy, nll, brier, ece, mce, reliability bins of an MC evaluation
nlohmann::json id_metrics(const McEval& ev, int bins);
// OOD scores (higher = more OOD): msp (negated max prob), entropy, ilv, gate_entropy, temperature
std::map<std::string, std::vector<double>> ood_scores(const McEval& ev);
// AUROC / AUPR-In / AUPR-Out / FPR95 for each informative score
nlohmann::json ood_metrics_json(const McEval& id, const McEval& ood);
// An evaluation pass over a fixed set with embedding noise σ (text or
// images), and the mean L2 norm of that set's input embeddings (σ = γ · norm).
struct EvalFn {
  std::function<McEval(double noise, RoutingTrace* trace)> run;
  double embed_norm = 1.0;
};
EvalFn mc_evaluator(nn::Model& model, const McSet& set, const RunConfig& cfg);
EvalFn image_evaluator(nn::Model& model, const ImgSet& set, const RunConfig& cfg);
// Jaccard of top-K sets with and without embedding noise for each γ in gammas
nlohmann::json stability_sweep(nn::Model& model, const EvalFn& eval, const std::vector<double>& gammas);
// Per-layer Jaccard at one γ (used by --bayes-layers auto:N)
std::vector<std::pair<int, double>> layer_stability(nn::Model& model, const EvalFn& eval, double gamma);
// The N MoE layers whose routing is least stable under input noise.
std::vector<int> susceptible_layers(nn::Model& model, const EvalFn& eval, int n, double gamma);
nlohmann::json expert_load(nn::Model& model, const RoutingTrace& tr);
std::unique_ptr<nn::Model> load_model_for_eval(const RunConfig& cfg);
// Apply a fitted temperature to an evaluation's answer distributions.
McEval temperature_scaled(const McEval& ev, double T);

}  // namespace vm::exp
