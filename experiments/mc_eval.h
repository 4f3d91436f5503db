// experiments/mc_eval.h — evaluation of a model on a multiple-choice set
// (text: the answer letter's distribution at the last prompt token) or an
// image set (the class token), with the per-example uncertainty scores and
// router diagnostics that eval, reproduce, inspect and training's validation
// use. The metrics themselves are experiments/metrics.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/vision.h"
#include "experiments/run_config.h"
#include "nn/transformer.h"

namespace vm::exp {

// A multiple-choice set: prompts and labels (label -1 for unlabelled OOD sets).
struct McSet {
  std::string name;
  std::vector<std::string> prompts;
  std::vector<int32_t> labels;
  size_t size() const { return prompts.size(); }
};

// One padded batch of prompts for the causal LM.
struct McBatch {
  int B = 0, T = 0;
  std::vector<int32_t> ids;        // (B*T), PAD after each prompt
  std::vector<uint8_t> mask;       // (B*T), 1 = real token
  std::vector<int32_t> last;       // (B) row b*T + len_b − 1: where the answer is predicted
  std::vector<int32_t> labels;     // (B)
};
McBatch make_mc_batch(const McSet& set, const std::vector<int64_t>& idx, int max_seq);

// The four answer-letter tokens (bytes 'A'..'D').
const std::vector<int32_t>& answer_tokens();

// Evaluate a model on an MC set: probs over the 4 letters (N x 4) and per-example
// uncertainty scores. Used by eval, reproduce and the tests.
struct McEval {
  std::vector<std::vector<double>> probs;  // (N, classes): 4 answer letters, or 10 image classes
  std::vector<int32_t> labels;
  std::vector<double> entropy;             // predictive entropy of the class distribution
  std::vector<double> ilv;                 // tr Σ at the final token, averaged over Bayesian layers (0 if none)
  std::vector<double> gate_entropy;        // entropy of the routing distribution at the final token, mean over MoE layers
  std::vector<double> temperature;         // vtsr mean temperature at the final token (0 if none)
  std::vector<double> mutual_info;         // I(y; router noise) from --mi-samples passes (0 when off)
  // Tokens in the example (prompt bytes; image patches + class token): the
  // "length" OOD score, a baseline that knows nothing of the model — a score
  // that only tracks how many tokens are routed shows up against it.
  std::vector<double> length;
  // The predictive-average arm (--mi-samples M): p̂(y|x) = (1/M) Σ_m p_m(y|x)
  // over M passes that each route every token with one fresh router draw
  // (mc_routing_draw). Empty when M = 0; equal to probs for a router without
  // randomness (every draw is the same pass). mutual_info comes from the same passes.
  std::vector<std::vector<double>> predictive;  // (N, classes)
  int predictive_samples = 0;                   // M
  double nll = 0, accuracy = 0;
};
// The experts every real token chose, per MoE layer (flattened (tokens, K)), in
// a fixed token order; used for routing stability and expert load.
struct RoutingTrace {
  std::vector<int> layers;
  std::vector<std::vector<int32_t>> experts;  // per MoE layer
  // Top-K of the routing distribution itself (RouterOut::probs: p̄ for mfvr,
  // fcvr and mc-dropout, softmax(l/T) for sample-k and vtsr, softmax(l) for
  // det), per MoE layer, same layout as experts. Differs from experts only
  // where the selection samples (sample-k, vtsr).
  std::vector<std::vector<int32_t>> dist_experts;
  // Per MoE layer, the router's temperature at every real token (vtsr: the
  // learned T, sample-k: the fixed one); empty for routers without one.
  std::vector<std::vector<float>> temperature;
};
// Evaluation and inspection read the logits, router probabilities and gates
// on the host: this brings them there when the model runs on the GPU (no-op
// on the CPU). Only for results no gradient flows through (under NoGradGuard).
void host_diagnostics(nn::ForwardResult& res);

// The router's random numbers at evaluation are keyed by the run seed, the
// data set's name and the draw: fo.seed = seed + hash("eval/<set>[/<draw>]"),
// then router_stream(fo.seed, layer, batch index, purpose) as in training. So
// batch b of the ID set and batch b of an OOD set draw differently, the same
// set evaluated twice draws the same (determinism), and draw = "" is the main
// pass; "mi/<m>" the m-th pass of the predictive arm; "stability/<d>" the d-th
// independent-noise pass of the stability sweep.
uint64_t eval_router_seed(uint64_t seed, const std::string& set, const std::string& draw);

// draw: see eval_router_seed. The --mi-samples passes run only for draw "".
McEval evaluate_mc(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise = 0.0,
                   RoutingTrace* trace = nullptr, const std::string& draw = "");
// The m-th (m >= 1) pass of the predictive arm: every token routed with one
// fresh router sample (S = 1) under draw key "mi/<m>".
McEval mc_routing_draw(nn::Model& model, const McSet& set, const RunConfig& cfg, int m);

// ---- vision track ---------------------------------------------------------------
// A view of an image set: which images, with which labels (−1 for OOD).
struct ImgSet {
  std::string name;
  std::shared_ptr<const data::ImageSet> src;
  std::vector<int32_t> idx;
  std::vector<int32_t> labels;
  size_t size() const { return idx.size(); }
};
Tensor image_batch(const ImgSet& set, const std::vector<int64_t>& idx);  // (B, H*W)
// Class distributions (N, classes) and diagnostics at the class token.
McEval evaluate_images(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise = 0.0,
                       RoutingTrace* trace = nullptr, const std::string& draw = "");

}  // namespace vm::exp
