// experiments/metrics.h — evaluation metrics (docs/vmoer-method.md §3):
// classification quality and calibration, OOD detection, uncertainty scores,
// routing stability, expert load, and post-hoc temperature scaling.
//
// Plain std::vector<double> in, doubles out; no dependency on the tensor
// library. Every invalid argument (shape mismatch, label out of range, a row
// that is not a probability distribution, ...) throws vm::Error naming the
// function, e.g. "metrics::nll: 3 labels for 4 rows".
//
// Conventions
//  * Probabilities and logits are row-major matrices (one row per example).
//  * A probability row must be finite, non-negative and sum to 1 within
//    kSumTolerance; use normalize_rows() for anything else.
//  * Logarithms are natural (entropies and NLL are in nats).
//  * OOD detection: OOD is the POSITIVE class and a HIGHER score means MORE
//    OOD. Ranking metrics reproduce scikit-learn 1.2 exactly, ties included.
#pragma once
#include <cstddef>
#include <iosfwd>
#include <string>
#include <vector>

namespace vm::metrics {

// Row sums of a probability matrix must be within this of 1.
inline constexpr double kSumTolerance = 1e-5;
// NLL clamps p_label from below by this (so a zero probability costs 27.6 nats).
inline constexpr double kNllFloor = 1e-12;

// ---- matrices ----------------------------------------------------------------

struct Matrix {
  size_t rows = 0, cols = 0;
  std::vector<double> data;  // rows * cols, row-major

  Matrix() = default;
  Matrix(size_t rows, size_t cols, std::vector<double> data);  // checks the size
  static Matrix from_rows(const std::vector<std::vector<double>>& rows);  // rejects ragged rows

  const double* row(size_t i) const { return data.data() + i * cols; }
  double* row(size_t i) { return data.data() + i * cols; }
  double operator()(size_t i, size_t j) const { return data[i * cols + j]; }
};

// Divides every row by its sum. Throws on a negative or non-finite entry or a
// row that sums to zero.
void normalize_rows(Matrix& m);

// Index of the largest entry; the lowest index wins ties.
size_t argmax(const double* p, size_t k);

// ---- classification and calibration -------------------------------------------
// prediction = argmax(p); confidence = p[prediction].

double accuracy(const Matrix& probs, const std::vector<int>& labels);
// mean_i −log max(p_i[label_i], kNllFloor)
double nll(const Matrix& probs, const std::vector<int>& labels);
// mean_i Σ_c (p_ic − y_ic)², y one-hot (the multi-class Brier score, in [0, 2])
double brier(const Matrix& probs, const std::vector<int>& labels);

enum class Binning {
  EqualWidth,  // bin b = [b/B, (b+1)/B); bin = min(⌊conf·B⌋, B−1), so conf 0 → first, 1 → last
  EqualMass,   // sort by confidence (stable: ties keep example order), rank r → bin ⌊r·B/N⌋;
               // bin sizes differ by at most one; tied confidences may straddle two bins
};

struct ReliabilityBin {
  double lo = 0, hi = 0;  // EqualWidth: b/B and (b+1)/B. EqualMass: smallest and largest
                          // confidence in the bin (both 0 for an empty bin)
  size_t count = 0;
  double mean_confidence = 0;  // 0 when count == 0
  double accuracy = 0;         // fraction correct; 0 when count == 0
};

struct Calibration {
  double ece = 0;  // Σ_b (n_b/N)·|acc_b − conf_b|
  double mce = 0;  // max over non-empty bins of |acc_b − conf_b|
  std::vector<ReliabilityBin> bins;  // the reliability diagram, B entries
};

// From confidences in [0, 1] and 0/1 correctness flags.
Calibration calibration(const std::vector<double>& confidence, const std::vector<int>& correct,
                        int bins = 10, Binning binning = Binning::EqualWidth);
// From predictive distributions and labels.
Calibration calibration(const Matrix& probs, const std::vector<int>& labels, int bins = 10,
                        Binning binning = Binning::EqualWidth);
double ece(const Matrix& probs, const std::vector<int>& labels, int bins = 10,
           Binning binning = Binning::EqualWidth);
double mce(const Matrix& probs, const std::vector<int>& labels, int bins = 10,
           Binning binning = Binning::EqualWidth);

// ---- OOD detection ---------------------------------------------------------------
// scores: higher = more OOD. is_ood: 0 (in-distribution) or 1 (OOD); both classes
// must be present.

struct RocCurve {
  std::vector<double> fpr, tpr, thresholds;  // as sklearn.metrics.roc_curve
};
// sklearn 1.2 roc_curve: one point per distinct score (descending), collinear
// intermediate points dropped when drop_intermediate, then (0, 0) prepended with
// threshold max(score) + 1.
RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int>& is_ood,
                   bool drop_intermediate = true);
// sklearn roc_auc_score(is_ood, scores): trapezoidal area under roc_curve.
double auroc(const std::vector<double>& scores, const std::vector<int>& is_ood);
// sklearn average_precision_score(is_positive, scores): Σ_n (R_n − R_{n−1})·P_n over
// distinct thresholds (no interpolation).
double average_precision(const std::vector<double>& scores, const std::vector<int>& is_positive);
// FPR at the first roc_curve point (drop_intermediate as sklearn's default) whose
// TPR >= tpr_level.
double fpr_at_tpr(const std::vector<double>& scores, const std::vector<int>& is_ood,
                  double tpr_level = 0.95);

struct OodMetrics {
  double auroc = 0;
  double aupr_in = 0;   // average_precision(1 − is_ood, −scores): ID positive
  double aupr_out = 0;  // average_precision(is_ood, scores): OOD positive
  // FPR95 in its two conventions (docs/vmoer.md "Measuring without artefacts"):
  // ours, OOD positive: the fraction of ID examples flagged OOD at the first
  // threshold that recalls 95% of the OOD set,
  double fpr95_ood_recall = 0;  // fpr_at_tpr(scores, is_ood, 0.95)
  // OpenOOD's, ID positive: the fraction of OOD examples accepted as ID at
  // the first threshold that keeps 95% of the ID set (score −s, label 1 − is_ood).
  double fpr95_id_tpr = 0;      // fpr_at_tpr(−scores, 1 − is_ood, 0.95)
};
OodMetrics ood_metrics(const std::vector<double>& scores, const std::vector<int>& is_ood);
// Same, from the scores of an ID set and an OOD set.
OodMetrics ood_metrics_from_sets(const std::vector<double>& id_scores,
                                 const std::vector<double>& ood_scores);

// ---- uncertainty scores -------------------------------------------------------------

// Max softmax probability per row (a confidence: higher = more ID).
std::vector<double> max_prob(const Matrix& probs);
// MSP as an OOD score: 1 − max prob (higher = more OOD). It ranks exactly like
// −max prob, so AUROC/AUPR/FPR95 are identical; only thresholds differ.
std::vector<double> msp_ood_score(const Matrix& probs);
// H(p) = −Σ_c p_c log p_c, with 0·log 0 = 0. p must be a distribution.
double entropy(const double* p, size_t k);
std::vector<double> predictive_entropy(const Matrix& probs);
// Mean over S sampled distributions; samples[s] is N x K for every s.
Matrix mean_distribution(const std::vector<Matrix>& samples);
// Per row: H(mean_s p_s) − mean_s H(p_s) (the BALD mutual information), clamped
// at 0 against round-off (it is >= 0 by Jensen's inequality).
std::vector<double> mutual_information(const std::vector<Matrix>& samples);

// ---- routing stability ---------------------------------------------------------------

// |A ∩ B| / |A ∪ B| of two sets of expert indices. Indices must be >= 0 and
// distinct within a set; at least one set must be non-empty.
double jaccard(const std::vector<int>& a, const std::vector<int>& b);
// a and b hold T rows of k expert indices (row-major, T·k entries, e.g. one
// row per token per layer); returns the Jaccard index averaged over rows.
double mean_jaccard(const std::vector<int>& a, const std::vector<int>& b, size_t k);

// ---- expert load -----------------------------------------------------------------------

// Tokens routed to each expert: counts[e] = #{i : expert_indices[i] == e}.
std::vector<double> expert_counts(const std::vector<int>& expert_indices, int num_experts);
// Coefficient of variation std/mean of per-expert counts (population std).
double load_cv(const std::vector<double>& counts);
// Number of experts with a count of exactly zero.
int dead_experts(const std::vector<double>& counts);
struct LoadStats {
  double cv = 0;
  int dead = 0;
};
LoadStats load_stats(const std::vector<double>& counts);
// One entry per layer: counts_per_layer[l] holds layer l's per-expert counts.
std::vector<LoadStats> load_stats_per_layer(const std::vector<std::vector<double>>& counts_per_layer);

// ---- temperature scaling (post-hoc calibration baseline) ----------------------------------

// softmax(logits / T) per row (max-subtracted).
Matrix softmax(const Matrix& logits, double temperature = 1.0);
// mean_i [logsumexp(z_i/T) − z_{i,y_i}/T]: the exact log-softmax NLL (no floor).
double nll_at_temperature(const Matrix& logits, const std::vector<int>& labels, double temperature);

struct TemperatureFit {
  double temperature = 1;
  double nll_before = 0;  // at T = 1
  double nll_after = 0;   // at the fitted T
  bool at_bound = false;  // the minimiser lies on [t_min, t_max]'s boundary
};
// argmin_T nll_at_temperature over T in [t_min, t_max]: golden-section search on
// log T (the NLL is convex in 1/T, hence unimodal in log T), then Newton steps
// in 1/T with backtracking. Throws if the NLL does not depend on T (every row
// of logits constant).
TemperatureFit fit_temperature(const Matrix& logits, const std::vector<int>& labels,
                               double t_min = 1e-2, double t_max = 1e2);

// ---- CSV input (the `vmoer metrics` file formats) -------------------------------------------
// Strict: every problem throws vm::Error "NAME:LINE: what", e.g.
// "probs.csv:7: negative probability -0.2 in column p1". Fields are trimmed of
// spaces; CRLF line ends and a UTF-8 BOM are accepted; blank lines only at the end.

struct LabeledProbs {
  Matrix probs;  // rows renormalised to sum to 1
  std::vector<int> labels;
};
// Header `label,p0,p1,...,p{K-1}` (K >= 2), then one row per example: an integer
// label in [0, K) and K finite non-negative numbers, not all zero.
LabeledProbs read_probs_csv(const std::string& path);
LabeledProbs read_probs_csv(std::istream& in, const std::string& name);

struct OodScores {
  std::vector<double> scores;
  std::vector<int> is_ood;
};
// Header `score,is_ood`, then rows of a finite score and 0 or 1. Both classes
// must be present.
OodScores read_ood_csv(const std::string& path);
OodScores read_ood_csv(std::istream& in, const std::string& name);

}  // namespace vm::metrics
