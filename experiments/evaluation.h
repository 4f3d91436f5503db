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
// draw keys the router's random numbers (mc_eval.h eval_router_seed): "" the
// main pass. The --mi-samples passes are off in these evaluators.
struct EvalFn {
  std::function<McEval(double noise, RoutingTrace* trace, const std::string& draw)> run;
  double embed_norm = 1.0;
};
EvalFn mc_evaluator(nn::Model& model, const McSet& set, const RunConfig& cfg);
EvalFn image_evaluator(nn::Model& model, const ImgSet& set, const RunConfig& cfg);
// Routing stability of one layer at one γ under the three definitions of
// eval.cpp (shared router noise, independent noise averaged over `draws`
// fresh draws (NaN when draws = 0), the routing distribution's own top-K).
struct LayerStability {
  int layer;
  double shared, independent, distribution;
};
std::vector<LayerStability> layer_stability3(nn::Model& model, const EvalFn& eval, double gamma, int draws,
                                             const RoutingTrace* clean = nullptr);
// Per γ in gammas: {gamma, sigma, draws, jaccard: {shared, independent, distribution}, per_layer}
nlohmann::json stability_sweep(nn::Model& model, const EvalFn& eval, const std::vector<double>& gammas, int draws);
// Per-layer shared-noise Jaccard at one γ (used by --bayes-layers auto:N)
std::vector<std::pair<int, double>> layer_stability(nn::Model& model, const EvalFn& eval, double gamma);
// The N MoE layers whose routing is least stable under input noise.
std::vector<int> susceptible_layers(nn::Model& model, const EvalFn& eval, int n, double gamma);
// Routing sensitivity, per MoE layer l: ΔNLL_l = NLL(layer l routes to a
// uniformly random K-subset with gates 1/K, every other layer det) − NLL(det
// everywhere), the models built from `trained`'s weights (its router heads
// unused); eval evaluates a model on a fixed set.
std::vector<std::pair<int, double>> routing_sensitivity(nn::Model& trained,
                                                        const std::function<McEval(nn::Model&)>& eval, uint64_t seed);
// The N layers of largest ΔNLL (sorted by layer); N outside [1, layers] is an error naming the flag.
std::vector<int> sensitive_layers(const std::vector<std::pair<int, double>>& sens, int n);
nlohmann::json sensitivity_json(const std::vector<std::pair<int, double>>& sens);
// --bayes-layers auto:N / auto-sensitive:N on a fine-tuned det model; make_eval builds the evaluation of a model.
std::vector<int> resolve_auto_layers(nn::Model& probe, const AutoLayers& a,
                                     const std::function<EvalFn(nn::Model&)>& make_eval, double gamma, uint64_t seed);
// For each Bayesian layer, each router-head parameter: ‖W_init‖ and ‖W − W_init‖
// (Frobenius), W_init rebuilt from the stage-2 seed (nn/params.h).
nlohmann::json head_movement(nn::Model& model, uint64_t init_seed);
// Per MoE layer with a temperature (vtsr, sample-k): mean and std over tokens.
nlohmann::json temperature_stats(const RoutingTrace& tr);
// The predictive arm's ID metrics (id_metrics of p̂) with its M and the mean
// mutual information; null when --mi-samples was 0.
nlohmann::json predictive_json(const McEval& ev, int bins);
nlohmann::json expert_load(nn::Model& model, const RoutingTrace& tr);
std::unique_ptr<nn::Model> load_model_for_eval(const RunConfig& cfg);
// Apply a fitted temperature to an evaluation's answer distributions.
McEval temperature_scaled(const McEval& ev, double T);

}  // namespace vm::exp
