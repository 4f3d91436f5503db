// experiments/metrics.cpp — see metrics.h for the definitions implemented here.
#include "experiments/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <istream>
#include <limits>
#include <numeric>
#include <optional>
#include <string_view>

#include "core/tensor.h"  // vm::Error, vm::fail

namespace vm::metrics {

namespace {

// Neumaier-compensated sum: means over many examples stay accurate to ~1 ulp
// (agreeing with numpy's pairwise sums far below 1e-12).
class Sum {
 public:
  void add(double x) {
    double t = s_ + x;
    c_ += std::abs(s_) >= std::abs(x) ? (s_ - t) + x : (x - t) + s_;
    s_ = t;
  }
  double value() const { return s_ + c_; }

 private:
  double s_ = 0, c_ = 0;
};

[[noreturn]] void bad(const char* who, const std::string& msg) {
  vm::fail(std::string("metrics::") + who + ": " + msg);
}

// Shortest round-trip text of a double, for error messages.
std::string num(double x) {
  char buf[32];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, ptr);
}

// A non-empty probability matrix whose rows are distributions (metrics.h).
void check_distributions(const char* who, const Matrix& p) {
  if (p.rows == 0) bad(who, "no rows");
  if (p.cols == 0) bad(who, "rows have no entries");
  if (p.data.size() != p.rows * p.cols) bad(who, "matrix data size does not match its shape");
  for (size_t i = 0; i < p.rows; ++i) {
    double s = 0;
    for (size_t c = 0; c < p.cols; ++c) {
      double v = p(i, c);
      if (!std::isfinite(v)) bad(who, "row " + std::to_string(i) + ": non-finite probability");
      if (v < 0) bad(who, "row " + std::to_string(i) + ": negative probability " + num(v));
      s += v;
    }
    if (std::abs(s - 1.0) > kSumTolerance)
      bad(who, "row " + std::to_string(i) + " sums to " + num(s) +
                   ", not 1 (call metrics::normalize_rows first)");
  }
}

void check_labels(const char* who, const Matrix& p, const std::vector<int>& labels) {
  if (labels.size() != p.rows)
    bad(who, std::to_string(labels.size()) + " labels for " + std::to_string(p.rows) + " rows");
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || (size_t)labels[i] >= p.cols)
      bad(who, "label " + std::to_string(labels[i]) + " at row " + std::to_string(i) +
                   " out of range for " + std::to_string(p.cols) + " classes");
}

void check_binary(const char* who, const char* what, const std::vector<int>& y) {
  for (size_t i = 0; i < y.size(); ++i)
    if (y[i] != 0 && y[i] != 1)
      bad(who, std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(y[i]) +
                   ", expected 0 or 1");
}

// ---- ranking curves (sklearn.metrics._ranking._binary_clf_curve) ----------------

struct ClfCurve {
  std::vector<long long> fps, tps;  // cumulative counts at each distinct threshold
  std::vector<double> thresholds;   // distinct scores, descending
  long long positives = 0, negatives = 0;
};

// Requires both classes: every ranking metric here is undefined otherwise.
ClfCurve clf_curve(const char* who, const std::vector<double>& scores,
                   const std::vector<int>& is_pos) {
  if (scores.size() != is_pos.size())
    bad(who, std::to_string(scores.size()) + " scores for " + std::to_string(is_pos.size()) +
                 " labels");
  check_binary(who, "label", is_pos);
  for (size_t i = 0; i < scores.size(); ++i)
    if (!std::isfinite(scores[i])) bad(who, "score[" + std::to_string(i) + "] is not finite");
  ClfCurve c;
  for (int y : is_pos) (y ? c.positives : c.negatives) += 1;
  if (c.positives == 0 || c.negatives == 0)
    bad(who, "needs both classes; got " + std::to_string(c.positives) + " positive and " +
                 std::to_string(c.negatives) + " negative examples");

  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  long long tp = 0, fp = 0;
  for (size_t r = 0; r < order.size(); ++r) {
    (is_pos[order[r]] ? tp : fp) += 1;
    // One point after the last example of each group of tied scores.
    if (r + 1 == order.size() || scores[order[r + 1]] != scores[order[r]]) {
      c.fps.push_back(fp);
      c.tps.push_back(tp);
      c.thresholds.push_back(scores[order[r]]);
    }
  }
  return c;
}

}  // namespace

// ---- matrices ------------------------------------------------------------------

Matrix::Matrix(size_t r, size_t c, std::vector<double> d) : rows(r), cols(c), data(std::move(d)) {
  if (data.size() != rows * cols)
    bad("Matrix", std::to_string(data.size()) + " values for a " + std::to_string(rows) + "x" +
                      std::to_string(cols) + " matrix");
}

Matrix Matrix::from_rows(const std::vector<std::vector<double>>& rows) {
  Matrix m;
  m.rows = rows.size();
  m.cols = rows.empty() ? 0 : rows[0].size();
  m.data.reserve(m.rows * m.cols);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].size() != m.cols)
      bad("Matrix::from_rows", "row " + std::to_string(i) + " has " +
                                   std::to_string(rows[i].size()) + " entries, row 0 has " +
                                   std::to_string(m.cols));
    m.data.insert(m.data.end(), rows[i].begin(), rows[i].end());
  }
  return m;
}

void normalize_rows(Matrix& m) {
  for (size_t i = 0; i < m.rows; ++i) {
    double* p = m.row(i);
    double s = 0;
    for (size_t c = 0; c < m.cols; ++c) {
      if (!std::isfinite(p[c]) || p[c] < 0)
        bad("normalize_rows", "row " + std::to_string(i) + ": entry " + num(p[c]) +
                                  " is not a finite non-negative number");
      s += p[c];
    }
    if (s == 0) bad("normalize_rows", "row " + std::to_string(i) + " sums to zero");
    for (size_t c = 0; c < m.cols; ++c) p[c] /= s;
  }
}

size_t argmax(const double* p, size_t k) {
  size_t best = 0;
  for (size_t c = 1; c < k; ++c)
    if (p[c] > p[best]) best = c;  // strict: the lowest index wins ties
  return best;
}

// ---- classification and calibration ------------------------------------------------

double accuracy(const Matrix& probs, const std::vector<int>& labels) {
  check_distributions("accuracy", probs);
  check_labels("accuracy", probs, labels);
  size_t hits = 0;
  for (size_t i = 0; i < probs.rows; ++i) hits += argmax(probs.row(i), probs.cols) == (size_t)labels[i];
  return (double)hits / (double)probs.rows;
}

double nll(const Matrix& probs, const std::vector<int>& labels) {
  check_distributions("nll", probs);
  check_labels("nll", probs, labels);
  Sum s;
  for (size_t i = 0; i < probs.rows; ++i) s.add(-std::log(std::max(probs(i, labels[i]), kNllFloor)));
  return s.value() / (double)probs.rows;
}

double brier(const Matrix& probs, const std::vector<int>& labels) {
  check_distributions("brier", probs);
  check_labels("brier", probs, labels);
  Sum s;
  for (size_t i = 0; i < probs.rows; ++i) {
    double r = 0;
    for (size_t c = 0; c < probs.cols; ++c) {
      double d = probs(i, c) - (c == (size_t)labels[i] ? 1.0 : 0.0);
      r += d * d;
    }
    s.add(r);
  }
  return s.value() / (double)probs.rows;
}

Calibration calibration(const std::vector<double>& confidence, const std::vector<int>& correct,
                        int bins, Binning binning) {
  const char* who = "calibration";
  const size_t n = confidence.size();
  if (n == 0) bad(who, "no examples");
  if (correct.size() != n)
    bad(who, std::to_string(n) + " confidences for " + std::to_string(correct.size()) +
                 " correctness flags");
  if (bins < 1) bad(who, "bins must be >= 1, got " + std::to_string(bins));
  check_binary(who, "correct", correct);
  for (size_t i = 0; i < n; ++i)
    if (!(confidence[i] >= 0 && confidence[i] <= 1))
      bad(who, "confidence[" + std::to_string(i) + "] = " + num(confidence[i]) + " not in [0, 1]");

  const size_t B = (size_t)bins;
  std::vector<size_t> bin_of(n);
  if (binning == Binning::EqualWidth) {
    // bin = min(⌊conf·B⌋, B−1): conf 0 lands in the first bin, conf 1 in the last.
    for (size_t i = 0; i < n; ++i)
      bin_of[i] = std::min((size_t)std::floor(confidence[i] * (double)B), B - 1);
  } else {
    // Rank r in the stable confidence order goes to bin ⌊r·B/N⌋.
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return confidence[a] < confidence[b]; });
    for (size_t r = 0; r < n; ++r) bin_of[order[r]] = r * B / n;
  }

  Calibration out;
  out.bins.resize(B);
  std::vector<Sum> conf_sum(B);
  std::vector<size_t> hits(B, 0);
  for (size_t i = 0; i < n; ++i) {
    ReliabilityBin& b = out.bins[bin_of[i]];
    if (binning == Binning::EqualMass) {
      b.lo = b.count == 0 ? confidence[i] : std::min(b.lo, confidence[i]);
      b.hi = b.count == 0 ? confidence[i] : std::max(b.hi, confidence[i]);
    }
    b.count += 1;
    conf_sum[bin_of[i]].add(confidence[i]);
    hits[bin_of[i]] += (size_t)correct[i];
  }
  for (size_t k = 0; k < B; ++k) {
    ReliabilityBin& b = out.bins[k];
    if (binning == Binning::EqualWidth) {
      b.lo = (double)k / (double)B;
      b.hi = (double)(k + 1) / (double)B;
    }
    if (b.count == 0) continue;
    b.mean_confidence = conf_sum[k].value() / (double)b.count;
    b.accuracy = (double)hits[k] / (double)b.count;
    double gap = std::abs(b.accuracy - b.mean_confidence);
    out.ece += (double)b.count / (double)n * gap;  // ECE = Σ_b (n_b/N)·|acc_b − conf_b|
    out.mce = std::max(out.mce, gap);              // MCE = max over non-empty bins
  }
  return out;
}

Calibration calibration(const Matrix& probs, const std::vector<int>& labels, int bins,
                        Binning binning) {
  check_distributions("calibration", probs);
  check_labels("calibration", probs, labels);
  std::vector<double> conf(probs.rows);
  std::vector<int> correct(probs.rows);
  for (size_t i = 0; i < probs.rows; ++i) {
    size_t pred = argmax(probs.row(i), probs.cols);
    conf[i] = probs(i, pred);
    correct[i] = pred == (size_t)labels[i];
  }
  return calibration(conf, correct, bins, binning);
}

double ece(const Matrix& probs, const std::vector<int>& labels, int bins, Binning binning) {
  return calibration(probs, labels, bins, binning).ece;
}

double mce(const Matrix& probs, const std::vector<int>& labels, int bins, Binning binning) {
  return calibration(probs, labels, bins, binning).mce;
}

// ---- OOD detection ----------------------------------------------------------------------

RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int>& is_ood,
                   bool drop_intermediate) {
  ClfCurve c = clf_curve("roc_curve", scores, is_ood);
  const size_t m = c.fps.size();
  std::vector<size_t> keep;
  for (size_t i = 0; i < m; ++i) {
    // sklearn keeps the ends and every point where fps or tps has a nonzero
    // second difference (a corner); collinear points in between are dropped.
    bool corner = i == 0 || i + 1 == m || !drop_intermediate || m <= 2 ||
                  c.fps[i + 1] - 2 * c.fps[i] + c.fps[i - 1] != 0 ||
                  c.tps[i + 1] - 2 * c.tps[i] + c.tps[i - 1] != 0;
    if (corner) keep.push_back(i);
  }
  RocCurve r;
  r.fpr.push_back(0);
  r.tpr.push_back(0);
  r.thresholds.push_back(c.thresholds[0] + 1);  // sklearn 1.2: an extra point at (0, 0)
  for (size_t i : keep) {
    r.fpr.push_back((double)c.fps[i] / (double)c.negatives);
    r.tpr.push_back((double)c.tps[i] / (double)c.positives);
    r.thresholds.push_back(c.thresholds[i]);
  }
  return r;
}

double auroc(const std::vector<double>& scores, const std::vector<int>& is_ood) {
  RocCurve r = roc_curve(scores, is_ood, true);
  Sum area;  // np.trapz(tpr, fpr)
  for (size_t i = 1; i < r.fpr.size(); ++i)
    area.add((r.fpr[i] - r.fpr[i - 1]) * (r.tpr[i] + r.tpr[i - 1]) / 2.0);
  return area.value();
}

double average_precision(const std::vector<double>& scores, const std::vector<int>& is_positive) {
  ClfCurve c = clf_curve("average_precision", scores, is_positive);
  Sum ap;  // Σ_n (R_n − R_{n−1})·P_n, R_{−1} = 0
  double prev_recall = 0;
  for (size_t i = 0; i < c.tps.size(); ++i) {
    double precision = (double)c.tps[i] / (double)(c.tps[i] + c.fps[i]);
    double recall = (double)c.tps[i] / (double)c.positives;
    ap.add((recall - prev_recall) * precision);
    prev_recall = recall;
  }
  return ap.value();
}

double fpr_at_tpr(const std::vector<double>& scores, const std::vector<int>& is_ood,
                  double tpr_level) {
  if (!(tpr_level > 0 && tpr_level <= 1))
    bad("fpr_at_tpr", "tpr_level " + num(tpr_level) + " not in (0, 1]");
  RocCurve r = roc_curve(scores, is_ood, true);
  for (size_t i = 0; i < r.tpr.size(); ++i)
    if (r.tpr[i] >= tpr_level) return r.fpr[i];
  return r.fpr.back();  // unreachable: the last TPR is 1
}

OodMetrics ood_metrics(const std::vector<double>& scores, const std::vector<int>& is_ood) {
  OodMetrics m;
  m.auroc = auroc(scores, is_ood);
  m.aupr_out = average_precision(scores, is_ood);
  std::vector<double> neg(scores.size());
  std::vector<int> is_id(is_ood.size());
  for (size_t i = 0; i < scores.size(); ++i) neg[i] = -scores[i];
  for (size_t i = 0; i < is_ood.size(); ++i) is_id[i] = 1 - is_ood[i];
  m.aupr_in = average_precision(neg, is_id);
  m.fpr95_ood_recall = fpr_at_tpr(scores, is_ood, 0.95);
  m.fpr95_id_tpr = fpr_at_tpr(neg, is_id, 0.95);
  return m;
}

OodMetrics ood_metrics_from_sets(const std::vector<double>& id_scores,
                                 const std::vector<double>& ood_scores) {
  std::vector<double> scores(id_scores);
  scores.insert(scores.end(), ood_scores.begin(), ood_scores.end());
  std::vector<int> is_ood(id_scores.size(), 0);
  is_ood.resize(scores.size(), 1);
  return ood_metrics(scores, is_ood);
}

// ---- uncertainty scores ------------------------------------------------------------------------

std::vector<double> max_prob(const Matrix& probs) {
  check_distributions("max_prob", probs);
  std::vector<double> out(probs.rows);
  for (size_t i = 0; i < probs.rows; ++i) out[i] = probs(i, argmax(probs.row(i), probs.cols));
  return out;
}

std::vector<double> msp_ood_score(const Matrix& probs) {
  std::vector<double> out = max_prob(probs);
  for (double& v : out) v = 1.0 - v;
  return out;
}

double entropy(const double* p, size_t k) {
  double h = 0;
  for (size_t c = 0; c < k; ++c)
    if (p[c] > 0) h -= p[c] * std::log(p[c]);  // 0·log 0 = 0
  return h;
}

std::vector<double> predictive_entropy(const Matrix& probs) {
  check_distributions("predictive_entropy", probs);
  std::vector<double> out(probs.rows);
  for (size_t i = 0; i < probs.rows; ++i) out[i] = entropy(probs.row(i), probs.cols);
  return out;
}

Matrix mean_distribution(const std::vector<Matrix>& samples) {
  if (samples.empty()) bad("mean_distribution", "no samples");
  for (size_t s = 0; s < samples.size(); ++s) {
    if (samples[s].rows != samples[0].rows || samples[s].cols != samples[0].cols)
      bad("mean_distribution", "sample " + std::to_string(s) + " is " +
                                   std::to_string(samples[s].rows) + "x" +
                                   std::to_string(samples[s].cols) + ", sample 0 is " +
                                   std::to_string(samples[0].rows) + "x" +
                                   std::to_string(samples[0].cols));
    check_distributions("mean_distribution", samples[s]);
  }
  Matrix mean(samples[0].rows, samples[0].cols,
              std::vector<double>(samples[0].rows * samples[0].cols, 0.0));
  for (const Matrix& m : samples)
    for (size_t j = 0; j < m.data.size(); ++j) mean.data[j] += m.data[j];
  for (double& v : mean.data) v /= (double)samples.size();
  return mean;
}

std::vector<double> mutual_information(const std::vector<Matrix>& samples) {
  Matrix mean = mean_distribution(samples);  // validates every sample
  std::vector<double> out(mean.rows);
  for (size_t i = 0; i < mean.rows; ++i) {
    double mean_h = 0;  // mean_s H(p_s)
    for (const Matrix& m : samples) mean_h += entropy(m.row(i), m.cols);
    mean_h /= (double)samples.size();
    out[i] = std::max(0.0, entropy(mean.row(i), mean.cols) - mean_h);
  }
  return out;
}

// ---- routing stability ----------------------------------------------------------------------------

double jaccard(const std::vector<int>& a, const std::vector<int>& b) {
  auto sorted_set = [](std::vector<int> v, const char* name) {
    std::sort(v.begin(), v.end());
    if (!v.empty() && v.front() < 0) bad("jaccard", std::string("negative expert index in set ") + name);
    if (std::adjacent_find(v.begin(), v.end()) != v.end())
      bad("jaccard", std::string("duplicate expert index in set ") + name);
    return v;
  };
  std::vector<int> sa = sorted_set(a, "A"), sb = sorted_set(b, "B");
  if (sa.empty() && sb.empty()) bad("jaccard", "both sets are empty");
  std::vector<int> common;
  std::set_intersection(sa.begin(), sa.end(), sb.begin(), sb.end(), std::back_inserter(common));
  double inter = (double)common.size();
  return inter / ((double)sa.size() + (double)sb.size() - inter);  // |A∩B| / |A∪B|
}

double mean_jaccard(const std::vector<int>& a, const std::vector<int>& b, size_t k) {
  if (k == 0) bad("mean_jaccard", "k must be >= 1");
  if (a.size() != b.size())
    bad("mean_jaccard", std::to_string(a.size()) + " vs " + std::to_string(b.size()) + " indices");
  if (a.empty() || a.size() % k != 0)
    bad("mean_jaccard", std::to_string(a.size()) + " indices is not a positive multiple of k = " +
                            std::to_string(k));
  const size_t rows = a.size() / k;
  Sum s;
  for (size_t r = 0; r < rows; ++r)
    s.add(jaccard(std::vector<int>(a.begin() + r * k, a.begin() + (r + 1) * k),
                  std::vector<int>(b.begin() + r * k, b.begin() + (r + 1) * k)));
  return s.value() / (double)rows;
}

// ---- expert load ------------------------------------------------------------------------------------

std::vector<double> expert_counts(const std::vector<int>& expert_indices, int num_experts) {
  if (num_experts < 1) bad("expert_counts", "num_experts must be >= 1");
  std::vector<double> counts((size_t)num_experts, 0.0);
  for (size_t i = 0; i < expert_indices.size(); ++i) {
    int e = expert_indices[i];
    if (e < 0 || e >= num_experts)
      bad("expert_counts", "expert index " + std::to_string(e) + " at position " +
                               std::to_string(i) + " out of range for " +
                               std::to_string(num_experts) + " experts");
    counts[(size_t)e] += 1;
  }
  return counts;
}

namespace {
void check_counts(const char* who, const std::vector<double>& counts) {
  if (counts.empty()) bad(who, "no experts");
  for (size_t e = 0; e < counts.size(); ++e)
    if (!std::isfinite(counts[e]) || counts[e] < 0)
      bad(who, "count[" + std::to_string(e) + "] = " + num(counts[e]) +
                   " is not a finite non-negative number");
}
}  // namespace

double load_cv(const std::vector<double>& counts) {
  check_counts("load_cv", counts);
  const double n = (double)counts.size();
  double mean = 0;
  for (double c : counts) mean += c;
  mean /= n;
  if (mean == 0) bad("load_cv", "every count is zero (CV undefined)");
  double var = 0;  // population variance
  for (double c : counts) var += (c - mean) * (c - mean);
  var /= n;
  return std::sqrt(var) / mean;
}

int dead_experts(const std::vector<double>& counts) {
  check_counts("dead_experts", counts);
  return (int)std::count(counts.begin(), counts.end(), 0.0);
}

LoadStats load_stats(const std::vector<double>& counts) {
  return LoadStats{load_cv(counts), dead_experts(counts)};
}

std::vector<LoadStats> load_stats_per_layer(const std::vector<std::vector<double>>& counts_per_layer) {
  std::vector<LoadStats> out;
  out.reserve(counts_per_layer.size());
  for (const auto& c : counts_per_layer) out.push_back(load_stats(c));
  return out;
}

// ---- temperature scaling ---------------------------------------------------------------------------

namespace {

void check_logits(const char* who, const Matrix& logits, const std::vector<int>& labels) {
  if (logits.rows == 0 || logits.cols == 0) bad(who, "empty logits");
  if (logits.data.size() != logits.rows * logits.cols)
    bad(who, "matrix data size does not match its shape");
  for (size_t j = 0; j < logits.data.size(); ++j)
    if (!std::isfinite(logits.data[j])) bad(who, "non-finite logit at row " + std::to_string(j / logits.cols));
  check_labels(who, logits, labels);
}

// NLL(β) = mean_i [logsumexp(β z_i) − β z_{i,y}] with β = 1/T, and its first two
// derivatives in β: mean_i (E_q[z] − z_y) and mean_i Var_q[z], q = softmax(β z_i).
// Written relative to the row maximum m (log1p, centred sums) so that tiny
// values stay accurate when the softmax saturates.
struct NllEval {
  double f = 0, g = 0, h = 0;
};
NllEval nll_beta(const Matrix& z, const std::vector<int>& labels, double beta) {
  Sum f, g, h;
  std::vector<double> q(z.cols);
  for (size_t i = 0; i < z.rows; ++i) {
    const double* r = z.row(i);
    const size_t m = argmax(r, z.cols), y = (size_t)labels[i];
    double rest = 0;  // Σ_{c≠m} exp(β (z_c − z_m))
    for (size_t c = 0; c < z.cols; ++c)
      if (c != m) rest += (q[c] = std::exp(beta * (r[c] - r[m])));
    q[m] = 1.0;
    double mean = 0;  // E_q[z] − z_m
    for (size_t c = 0; c < z.cols; ++c) mean += (q[c] /= 1.0 + rest) * (r[c] - r[m]);
    double var = 0;
    for (size_t c = 0; c < z.cols; ++c) var += q[c] * (r[c] - r[m] - mean) * (r[c] - r[m] - mean);
    f.add(beta * (r[m] - r[y]) + std::log1p(rest));
    g.add(mean + (r[m] - r[y]));
    h.add(var);
  }
  const double n = (double)z.rows;
  return {f.value() / n, g.value() / n, h.value() / n};
}

}  // namespace

Matrix softmax(const Matrix& logits, double temperature) {
  if (!(temperature > 0) || !std::isfinite(temperature))
    bad("softmax", "temperature must be positive and finite, got " + num(temperature));
  if (logits.data.size() != logits.rows * logits.cols)
    bad("softmax", "matrix data size does not match its shape");
  for (double v : logits.data)
    if (!std::isfinite(v)) bad("softmax", "non-finite logit");
  Matrix out = logits;
  for (size_t i = 0; i < out.rows; ++i) {
    double* r = out.row(i);
    double mx = r[argmax(r, out.cols)];
    double s = 0;
    for (size_t c = 0; c < out.cols; ++c) s += (r[c] = std::exp((r[c] - mx) / temperature));
    for (size_t c = 0; c < out.cols; ++c) r[c] /= s;
  }
  return out;
}

double nll_at_temperature(const Matrix& logits, const std::vector<int>& labels, double temperature) {
  check_logits("nll_at_temperature", logits, labels);
  if (!(temperature > 0) || !std::isfinite(temperature))
    bad("nll_at_temperature", "temperature must be positive and finite, got " + num(temperature));
  return nll_beta(logits, labels, 1.0 / temperature).f;
}

TemperatureFit fit_temperature(const Matrix& logits, const std::vector<int>& labels, double t_min,
                               double t_max) {
  const char* who = "fit_temperature";
  check_logits(who, logits, labels);
  if (!(t_min > 0 && t_min < t_max && std::isfinite(t_max)))
    bad(who, "need 0 < t_min < t_max < inf, got [" + num(t_min) + ", " + num(t_max) + "]");
  // Var_q[z] is zero for every β exactly when every row of logits is constant.
  bool constant = true;
  for (size_t i = 0; i < logits.rows && constant; ++i)
    for (size_t c = 1; c < logits.cols; ++c)
      if (logits(i, c) != logits(i, 0)) constant = false;
  if (constant) bad(who, "every row of logits is constant: the NLL does not depend on T");

  auto f_logt = [&](double u) { return nll_beta(logits, labels, std::exp(-u)).f; };

  // Golden-section search on u = log T.
  const double inv_phi = (std::sqrt(5.0) - 1) / 2;
  double a = std::log(t_min), b = std::log(t_max);
  double x1 = b - inv_phi * (b - a), x2 = a + inv_phi * (b - a);
  double f1 = f_logt(x1), f2 = f_logt(x2);
  while (b - a > 1e-6) {
    if (f1 <= f2) {
      b = x2, x2 = x1, f2 = f1;
      x1 = b - inv_phi * (b - a), f1 = f_logt(x1);
    } else {
      a = x1, x1 = x2, f1 = f2;
      x2 = a + inv_phi * (b - a), f2 = f_logt(x2);
    }
  }

  // Newton polish in β = 1/T (the NLL is convex in β), with backtracking and
  // β kept inside [1/t_max, 1/t_min].
  const double beta_lo = 1.0 / t_max, beta_hi = 1.0 / t_min;
  double beta = std::clamp(std::exp(-(a + b) / 2), beta_lo, beta_hi);
  NllEval cur = nll_beta(logits, labels, beta);
  for (int it = 0; it < 50 && cur.h > 0; ++it) {
    double step = -cur.g / cur.h;
    double next = std::clamp(beta + step, beta_lo, beta_hi);
    NllEval ev = nll_beta(logits, labels, next);
    for (int half = 0; half < 40 && ev.f > cur.f; ++half) {
      next = beta + (next - beta) / 2;
      ev = nll_beta(logits, labels, next);
    }
    if (ev.f > cur.f) break;  // no descent left at double precision
    bool done = std::abs(next - beta) <= 1e-15 * beta;
    beta = next;
    cur = ev;
    if (done) break;
  }
  // On a boundary (within the golden-section resolution) with the slope pointing
  // out of the interval: the constrained minimiser is the bound itself.
  // (g = dNLL/dβ; g < 0 means a lower T would still help.)
  TemperatureFit fit;
  fit.temperature = 1.0 / beta;
  if (std::log(fit.temperature / t_min) < 1e-6 && cur.g <= 0) {
    fit.temperature = t_min, fit.at_bound = true;
    cur = nll_beta(logits, labels, 1.0 / t_min);
  } else if (std::log(t_max / fit.temperature) < 1e-6 && cur.g >= 0) {
    fit.temperature = t_max, fit.at_bound = true;
    cur = nll_beta(logits, labels, 1.0 / t_max);
  }
  fit.nll_before = nll_beta(logits, labels, 1.0).f;
  fit.nll_after = cur.f;
  return fit;
}

// ---- CSV input ------------------------------------------------------------------------------------

namespace {

class CsvLines {
 public:
  CsvLines(std::istream& in, std::string name) : in_(in), name_(std::move(name)) {}

  [[noreturn]] void error(size_t line, const std::string& msg) const {
    vm::fail(name_ + ":" + std::to_string(line) + ": " + msg);
  }

  // Next non-blank line split into trimmed fields; false at the end of input.
  // A blank line followed by more data is an error.
  bool next(std::vector<std::string>& fields, size_t& line_no) {
    std::string line;
    size_t blank_at = 0;
    while (std::getline(in_, line)) {
      ++line_;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
      if (line.find_first_not_of(" \t") == std::string::npos) {
        if (blank_at == 0) blank_at = line_;
        continue;
      }
      if (blank_at != 0) error(blank_at, "blank line before more data");
      fields.clear();
      size_t start = 0;
      while (true) {
        size_t comma = line.find(',', start);
        std::string f = line.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        size_t b = f.find_first_not_of(" \t"), e = f.find_last_not_of(" \t");
        fields.push_back(b == std::string::npos ? std::string() : f.substr(b, e - b + 1));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      line_no = line_;
      return true;
    }
    if (in_.bad()) error(line_ + 1, "read error");
    return false;
  }

  size_t lines_read() const { return line_; }

 private:
  std::istream& in_;
  std::string name_;
  size_t line_ = 0;
};

// A finite double spanning the whole field, or an error message.
std::optional<std::string> parse_double(const std::string& s, double& out) {
  if (s.empty()) return std::string("empty field");
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc::result_out_of_range) return "number out of range '" + s + "'";
  if (ec != std::errc() || ptr != s.data() + s.size()) return "not a number '" + s + "'";
  if (!std::isfinite(out)) return "non-finite value '" + s + "'";
  return std::nullopt;
}

// An integer spanning the whole field, or an error message.
std::optional<std::string> parse_int(const std::string& s, long long& out) {
  if (s.empty()) return std::string("empty field");
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc::result_out_of_range) return "integer out of range '" + s + "'";
  if (ec != std::errc() || ptr != s.data() + s.size()) return "not an integer '" + s + "'";
  return std::nullopt;
}

void check_field_count(const CsvLines& csv, size_t line, const std::vector<std::string>& f,
                       size_t expected) {
  if (f.size() != expected)
    csv.error(line, "expected " + std::to_string(expected) + " fields, got " + std::to_string(f.size()));
}

std::ifstream open_or_fail(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) vm::fail(path + ": cannot open file");
  return in;
}

}  // namespace

LabeledProbs read_probs_csv(std::istream& in, const std::string& name) {
  CsvLines csv(in, name);
  std::vector<std::string> f;
  size_t line = 0;
  if (!csv.next(f, line)) csv.error(1, "empty file (expected a header 'label,p0,p1,...')");
  if (f[0] != "label") {
    if (std::find(f.begin(), f.end(), "label") != f.end())
      csv.error(line, "'label' must be the first column (expected 'label,p0,p1,...')");
    csv.error(line, "missing 'label' column (expected header 'label,p0,p1,...')");
  }
  const size_t k = f.size() - 1;
  if (k < 2) csv.error(line, "expected at least two probability columns (header 'label,p0,p1,...')");
  std::vector<std::string> columns(f.begin() + 1, f.end());
  for (size_t c = 0; c < k; ++c) {
    std::string expected = std::string("p").append(std::to_string(c));
    if (columns[c] != expected)
      csv.error(line, "column " + std::to_string(c + 2) + " is named '" + columns[c] + "', expected '" +
                          expected + "'");
  }

  LabeledProbs out;
  std::vector<double> row(k);
  while (csv.next(f, line)) {
    check_field_count(csv, line, f, k + 1);
    long long label = 0;
    if (auto err = parse_int(f[0], label)) csv.error(line, "label: " + *err);
    if (label < 0 || (unsigned long long)label >= k)
      csv.error(line, "label " + f[0] + " out of range for " + std::to_string(k) + " classes (0.." +
                          std::to_string(k - 1) + ")");
    double sum = 0;
    for (size_t c = 0; c < k; ++c) {
      if (auto err = parse_double(f[c + 1], row[c])) csv.error(line, *err + " in column " + columns[c]);
      if (row[c] < 0) csv.error(line, "negative probability " + f[c + 1] + " in column " + columns[c]);
      sum += row[c];
    }
    if (sum == 0) csv.error(line, "all probabilities are zero");
    if (!std::isfinite(sum)) csv.error(line, "probabilities sum to infinity");
    for (size_t c = 0; c < k; ++c) out.probs.data.push_back(row[c] / sum);  // renormalise
    out.labels.push_back((int)label);
  }
  if (out.labels.empty()) csv.error(csv.lines_read() + 1, "no data rows after the header");
  out.probs.rows = out.labels.size();
  out.probs.cols = k;
  return out;
}

LabeledProbs read_probs_csv(const std::string& path) {
  std::ifstream in = open_or_fail(path);
  return read_probs_csv(in, path);
}

OodScores read_ood_csv(std::istream& in, const std::string& name) {
  CsvLines csv(in, name);
  std::vector<std::string> f;
  size_t line = 0;
  if (!csv.next(f, line)) csv.error(1, "empty file (expected a header 'score,is_ood')");
  if (f.size() != 2 || f[0] != "score" || f[1] != "is_ood") {
    std::string got;
    for (size_t i = 0; i < f.size(); ++i) got += (i ? "," : "") + f[i];
    csv.error(line, "expected header 'score,is_ood', got '" + got + "'");
  }
  OodScores out;
  size_t n_ood = 0;
  while (csv.next(f, line)) {
    check_field_count(csv, line, f, 2);
    double score = 0;
    long long y = 0;
    if (auto err = parse_double(f[0], score)) csv.error(line, *err + " in column score");
    if (auto err = parse_int(f[1], y)) csv.error(line, "is_ood: " + *err);
    if (y != 0 && y != 1) csv.error(line, "is_ood must be 0 or 1, got '" + f[1] + "'");
    out.scores.push_back(score);
    out.is_ood.push_back((int)y);
    n_ood += (size_t)y;
  }
  const size_t end_line = csv.lines_read() + 1;
  if (out.scores.empty()) csv.error(end_line, "no data rows after the header");
  if (n_ood == 0 || n_ood == out.scores.size())
    csv.error(end_line, std::string("needs both classes, but every row has is_ood=") +
                            (n_ood == 0 ? "0" : "1") + " (AUROC/AUPR are undefined)");
  return out;
}

OodScores read_ood_csv(const std::string& path) {
  std::ifstream in = open_or_fail(path);
  return read_ood_csv(in, path);
}

}  // namespace vm::metrics
