// tests/test_metrics.cpp — experiments/metrics.{h,cpp} and `vmoer metrics`:
// hand-computed cases, agreement with scikit-learn (reference/sklearn_metrics.py),
// strict CSV errors, and the command end to end.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "experiments/metrics.h"

namespace mt = vm::metrics;
namespace fs = std::filesystem;

namespace {

// |a − b| <= tol·max(1, |b|): absolute near [0, 1], relative for larger values.
bool close(double a, double b, double tol = 1e-12) {
  return std::abs(a - b) <= tol * std::max(1.0, std::abs(b));
}
#define CHECK_CLOSE(a, b) CHECK_MESSAGE(close((a), (b)), #a " = ", (a), " vs ", (b))

// A scratch directory removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("vmoer_test_metrics_" + tag + "_" + std::to_string((long)::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    fs::path p = path / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
};

struct CmdResult {
  int status = -1;  // exit code, -1 if not exited normally
  std::string out;
};
CmdResult run_cmd(const std::string& cmd) {
  CmdResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE_MESSAGE(p != nullptr, "popen failed: ", cmd);
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, got);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}
std::string quote(const std::string& s) { return "'" + s + "'"; }

// Shortest text that reads back as exactly x.
std::string fmt(double x) {
  char buf[32];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, ptr);
}

// The vm::Error message thrown by f, or "" if it does not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const vm::Error& e) {
    return e.what();
  }
  return "";
}

const std::string kPython = "/usr/bin/python3";
const std::string kReference = std::string(VMOER_SOURCE_DIR) + "/reference/sklearn_metrics.py";
const std::string kFixtures = std::string(VMOER_SOURCE_DIR) + "/tests/fixtures/metrics/";

// True when the scikit-learn reference can run. Otherwise says so loudly and
// fails under CI (which installs sklearn); elsewhere the caller skips.
bool sklearn_available() {
  CmdResult r = run_cmd(kPython + " -c 'import sklearn, numpy' 2>&1");
  if (r.status == 0) return true;
  MESSAGE("scikit-learn reference NOT RUN: ", kPython,
          " cannot import sklearn/numpy (apt-get install python3-sklearn): ", r.out);
  if (std::getenv("CI")) FAIL("CI is set but scikit-learn is unavailable");
  return false;
}

}  // namespace

// ---- hand-computed cases --------------------------------------------------------

TEST_CASE("metrics: accuracy, NLL and Brier by hand (argmax ties go to the lowest index)") {
  mt::Matrix p = mt::Matrix::from_rows({{0.7, 0.2, 0.1},    // pred 0, correct
                                        {0.5, 0.5, 0.0},    // tie -> pred 0, label 1: wrong
                                        {0.2, 0.2, 0.6},    // pred 2, correct
                                        {0.1, 0.1, 0.8},    // pred 2, label 1: wrong
                                        {0.0, 1.0, 0.0}});  // pred 1, label 0: p_label = 0
  std::vector<int> y{0, 1, 2, 1, 0};
  CHECK(mt::argmax(p.row(1), 3) == 0);
  CHECK(mt::accuracy(p, y) == 0.4);
  // NLL = mean −log max(p_label, 1e-12)
  double nll = (-std::log(0.7) - std::log(0.5) - std::log(0.6) - std::log(0.1) - std::log(1e-12)) / 5;
  CHECK_CLOSE(mt::nll(p, y), nll);
  // Brier rows: .09+.04+.01, .25+.25+0, .04+.04+.16, .01+.81+.64, 1+1+0
  CHECK_CLOSE(mt::brier(p, y), (0.14 + 0.5 + 0.24 + 1.46 + 2.0) / 5);
}

TEST_CASE("metrics: ECE/MCE with equal-width bins by hand") {
  mt::Matrix p = mt::Matrix::from_rows({{0.7, 0.2, 0.1}, {0.5, 0.5, 0.0}, {0.2, 0.2, 0.6}, {0.1, 0.1, 0.8}});
  std::vector<int> y{0, 1, 2, 1};
  // One example in each of bins 7, 5, 6, 8; gaps .3, .5, .4, .8.
  mt::Calibration c = mt::calibration(p, y);
  CHECK_CLOSE(c.ece, (0.3 + 0.5 + 0.4 + 0.8) / 4);
  CHECK_CLOSE(c.mce, 0.8);
  REQUIRE(c.bins.size() == 10);
  CHECK(c.bins[7].count == 1);
  CHECK(c.bins[7].accuracy == 1.0);
  CHECK_CLOSE(c.bins[7].mean_confidence, 0.7);
  CHECK(c.bins[5].accuracy == 0.0);
  CHECK(c.bins[0].count == 0);
  CHECK(c.bins[0].mean_confidence == 0.0);
  CHECK_CLOSE(c.bins[3].lo, 0.3);
  CHECK_CLOSE(c.bins[3].hi, 0.4);
  CHECK(mt::ece(p, y) == c.ece);
  CHECK(mt::mce(p, y) == c.mce);

  SUBCASE("confidence exactly 0 and 1 land in the first and last bins") {
    mt::Calibration d = mt::calibration(std::vector<double>{0.0, 1.0, 1.0, 0.25, 0.999},
                                        std::vector<int>{0, 1, 0, 1, 1}, 4);
    REQUIRE(d.bins.size() == 4);
    CHECK(d.bins[0].count == 1);  // 0.0
    CHECK(d.bins[1].count == 1);  // 0.25 = 1/4 exactly -> bin 1
    CHECK(d.bins[3].count == 3);  // 1.0, 1.0, 0.999
    CHECK_CLOSE(d.bins[3].mean_confidence, (2.999) / 3);
    CHECK_CLOSE(d.bins[3].accuracy, 2.0 / 3);
    CHECK(d.bins[3].lo == 0.75);
    CHECK(d.bins[3].hi == 1.0);
    // gaps: bin0 |0−0| = 0, bin1 |1−.25| = .75, bin3 |2/3 − 2.999/3|
    double g3 = std::abs(2.0 / 3 - 2.999 / 3);
    CHECK_CLOSE(d.ece, 0.75 / 5 + 3.0 / 5 * g3);
    CHECK_CLOSE(d.mce, 0.75);
  }
  SUBCASE("bin = min(floor(conf * B), B - 1)") {
    mt::Calibration d = mt::calibration(std::vector<double>{0.05, 0.95, 0.55, 0.1},
                                        std::vector<int>{1, 1, 1, 1}, 10);
    CHECK(d.bins[0].count == 1);  // 0.05
    CHECK(d.bins[1].count == 1);  // 0.1 (0.1 * 10 == 1 in doubles)
    CHECK(d.bins[5].count == 1);  // 0.55
    CHECK(d.bins[9].count == 1);  // 0.95
  }
  SUBCASE("one bin: ECE = |accuracy − mean confidence|") {
    mt::Calibration d = mt::calibration(std::vector<double>{0.9, 0.6}, std::vector<int>{1, 0}, 1);
    CHECK_CLOSE(d.ece, std::abs(0.5 - 0.75));
    CHECK_CLOSE(d.mce, d.ece);
  }
}

TEST_CASE("metrics: ECE/MCE with equal-mass bins by hand") {
  // Sorted: .1(0) .2(1) | .3(0) .5(1) | .7(1) .9(1)
  std::vector<double> conf{0.9, 0.1, 0.5, 0.3, 0.7, 0.2};
  std::vector<int> ok{1, 0, 1, 0, 1, 1};
  mt::Calibration c = mt::calibration(conf, ok, 3, mt::Binning::EqualMass);
  REQUIRE(c.bins.size() == 3);
  for (const auto& b : c.bins) CHECK(b.count == 2);
  CHECK(c.bins[0].lo == 0.1);
  CHECK(c.bins[0].hi == 0.2);
  CHECK(c.bins[1].lo == 0.3);
  CHECK(c.bins[1].hi == 0.5);
  CHECK(c.bins[2].lo == 0.7);
  CHECK(c.bins[2].hi == 0.9);
  CHECK_CLOSE(c.bins[0].mean_confidence, 0.15);
  CHECK_CLOSE(c.ece, (0.35 + 0.1 + 0.2) / 3);
  CHECK_CLOSE(c.mce, 0.35);

  SUBCASE("ties split by example order; sizes differ by at most one") {
    // 5 examples, 2 bins: ranks 0..2 -> bin 0, 3..4 -> bin 1.
    mt::Calibration d = mt::calibration(std::vector<double>{0.5, 0.5, 0.5, 0.5, 0.5},
                                        std::vector<int>{1, 1, 1, 0, 0}, 2, mt::Binning::EqualMass);
    CHECK(d.bins[0].count == 3);
    CHECK(d.bins[1].count == 2);
    CHECK(d.bins[0].accuracy == 1.0);
    CHECK(d.bins[1].accuracy == 0.0);
    CHECK_CLOSE(d.ece, 3.0 / 5 * 0.5 + 2.0 / 5 * 0.5);
  }
  SUBCASE("fewer examples than bins leaves empty bins") {
    mt::Calibration d = mt::calibration(std::vector<double>{0.8, 0.4}, std::vector<int>{1, 1}, 3,
                                        mt::Binning::EqualMass);
    CHECK(d.bins[0].count == 1);  // 0.4
    CHECK(d.bins[1].count == 1);  // 0.8 (rank 1 -> ⌊3/2⌋ = 1)
    CHECK(d.bins[2].count == 0);
    CHECK_CLOSE(d.mce, 0.6);
  }
}

TEST_CASE("metrics: ROC, AUROC, AUPR, FPR95 by hand (values as scikit-learn 1.2)") {
  SUBCASE("the roc_curve documentation example") {
    std::vector<double> s{0.1, 0.4, 0.35, 0.8};
    std::vector<int> y{0, 0, 1, 1};
    mt::RocCurve r = mt::roc_curve(s, y);
    CHECK(r.fpr == std::vector<double>{0, 0, 0.5, 0.5, 1});
    CHECK(r.tpr == std::vector<double>{0, 0.5, 0.5, 1, 1});
    REQUIRE(r.thresholds.size() == 5);
    CHECK_CLOSE(r.thresholds[0], 1.8);  // max score + 1
    CHECK(r.thresholds[4] == 0.1);
    CHECK_CLOSE(mt::auroc(s, y), 0.75);
    mt::OodMetrics m = mt::ood_metrics(s, y);
    CHECK_CLOSE(m.auroc, 0.75);
    CHECK_CLOSE(m.aupr_out, 5.0 / 6);  // .5·1 + .5·(2/3)
    CHECK_CLOSE(m.aupr_in, 5.0 / 6);
    CHECK(m.fpr95_ood_recall == 0.5);
    CHECK(m.fpr95_id_tpr == 0.5);  // symmetric case: both conventions agree
    mt::OodMetrics m2 = mt::ood_metrics_from_sets({0.1, 0.4}, {0.35, 0.8});
    CHECK(m2.auroc == m.auroc);
    CHECK(m2.aupr_in == m.aupr_in);
  }
  SUBCASE("tied scores form one ROC point") {
    std::vector<double> s{0.5, 0.5, 0.5, 0.2};
    std::vector<int> y{1, 0, 1, 0};
    mt::RocCurve r = mt::roc_curve(s, y);
    CHECK(r.fpr == std::vector<double>{0, 0.5, 1});
    CHECK(r.tpr == std::vector<double>{0, 1, 1});
    mt::OodMetrics m = mt::ood_metrics(s, y);
    CHECK_CLOSE(m.auroc, 0.75);
    CHECK_CLOSE(m.aupr_out, 2.0 / 3);  // one threshold: recall 1 at precision 2/3
    CHECK_CLOSE(m.aupr_in, 0.75);      // −0.2 (ID) first: .5·1 + .5·(2/4)
    CHECK(m.fpr95_ood_recall == 0.5);
    CHECK_CLOSE(mt::auroc({1, 1, 1, 1}, {0, 1, 0, 1}), 0.5);  // all tied
  }
  SUBCASE("drop_intermediate removes collinear points") {
    std::vector<double> s{0.9, 0.8, 0.7, 0.6};
    std::vector<int> y{1, 1, 0, 0};
    mt::RocCurve r = mt::roc_curve(s, y);
    CHECK(r.fpr == std::vector<double>{0, 0, 0, 1});
    CHECK(r.tpr == std::vector<double>{0, 0.5, 1, 1});
    CHECK(r.thresholds[3] == 0.6);
    CHECK(mt::roc_curve(s, y, false).fpr.size() == 5);
    CHECK(mt::auroc(s, y) == 1.0);
  }
  SUBCASE("FPR95 uses the point sklearn keeps, not the dropped one") {
    // (fps, tps) per distinct score: (0,18) (1,19) (2,20) (3,20). (1,19) is
    // collinear and dropped, so TPR 0.95 is first reached at (2,20): FPR 2/3.
    std::vector<double> s(18, 10.0);
    std::vector<int> y(18, 1);
    for (auto [sc, lab] : {std::pair{9.0, 0}, {9.0, 1}, {8.0, 0}, {8.0, 1}, {7.0, 0}}) {
      s.push_back(sc);
      y.push_back(lab);
    }
    CHECK_CLOSE(mt::fpr_at_tpr(s, y, 0.95), 2.0 / 3);
    CHECK_CLOSE(mt::auroc(s, y), 0.9666666666666667);
    CHECK_CLOSE(mt::average_precision(s, y), 0.9929545454545454);
  }
  SUBCASE("ranking metrics need both classes and 0/1 labels") {
    CHECK(error_of([] { mt::auroc({0.1, 0.2}, {1, 1}); }).find("needs both classes") != std::string::npos);
    CHECK(error_of([] { mt::auroc({0.1, 0.2}, {0, 2}); }).find("expected 0 or 1") != std::string::npos);
    CHECK(error_of([] { mt::auroc({0.1, NAN}, {0, 1}); }).find("not finite") != std::string::npos);
    CHECK(error_of([] { mt::auroc({0.1}, {0, 1}); }).find("1 scores for 2 labels") != std::string::npos);
  }
}

TEST_CASE("metrics: FPR95 in both conventions on an asymmetric case, by hand") {
  // ID scores {0.1, 0.2, 0.3, 0.9}, OOD {0.5, 0.6, 0.7, 0.95} (higher = more OOD).
  // Ours (OOD positive): the threshold 0.5 recalls all OOD and flags one ID
  // example (0.9) of four: 0.25. OpenOOD's (ID positive, score −s): keeping
  // 95% of ID needs the threshold −0.9, which accepts three OOD of four: 0.75.
  mt::OodMetrics m = mt::ood_metrics_from_sets({0.1, 0.2, 0.3, 0.9}, {0.5, 0.6, 0.7, 0.95});
  CHECK(m.fpr95_ood_recall == 0.25);
  CHECK(m.fpr95_id_tpr == 0.75);
  // Swapping the roles of the sets (and the sign of the score) swaps the conventions.
  mt::OodMetrics r = mt::ood_metrics_from_sets({-0.5, -0.6, -0.7, -0.95}, {-0.1, -0.2, -0.3, -0.9});
  CHECK(r.fpr95_ood_recall == m.fpr95_id_tpr);
  CHECK(r.fpr95_id_tpr == m.fpr95_ood_recall);
}

TEST_CASE("metrics: uncertainty scores") {
  mt::Matrix p = mt::Matrix::from_rows({{0.25, 0.25, 0.25, 0.25}, {1, 0, 0, 0}, {0.5, 0.5, 0, 0}});
  std::vector<double> h = mt::predictive_entropy(p);
  CHECK_CLOSE(h[0], std::log(4.0));
  CHECK(h[1] == 0.0);  // 0·log 0 = 0
  CHECK_CLOSE(h[2], std::log(2.0));
  CHECK(mt::max_prob(p) == std::vector<double>{0.25, 1, 0.5});
  CHECK(mt::msp_ood_score(p) == std::vector<double>{0.75, 0, 0.5});

  // Two confident samples that disagree: MI = H([.5,.5]) − 0 = log 2.
  // Identical samples: MI = 0.
  mt::Matrix s1 = mt::Matrix::from_rows({{1, 0}, {0.3, 0.7}});
  mt::Matrix s2 = mt::Matrix::from_rows({{0, 1}, {0.3, 0.7}});
  mt::Matrix mean = mt::mean_distribution({s1, s2});
  CHECK(mean.data == std::vector<double>{0.5, 0.5, 0.3, 0.7});
  std::vector<double> mi = mt::mutual_information({s1, s2});
  CHECK_CLOSE(mi[0], std::log(2.0));
  CHECK(mi[1] == 0.0);
  // Mixed: samples (.9,.1) and (.5,.5); mean (.7,.3).
  mt::Matrix a = mt::Matrix::from_rows({{0.9, 0.1}}), b = mt::Matrix::from_rows({{0.5, 0.5}});
  auto H2 = [](double q) { return -q * std::log(q) - (1 - q) * std::log(1 - q); };
  CHECK_CLOSE(mt::mutual_information({a, b})[0], H2(0.7) - (H2(0.9) + H2(0.5)) / 2);

  CHECK(error_of([&] { mt::mutual_information({s1, p}); }).find("sample 1 is 3x4") != std::string::npos);
  CHECK(error_of([] { mt::predictive_entropy(mt::Matrix::from_rows({{0.5, 0.6}})); })
            .find("sums to 1.1") != std::string::npos);
  CHECK(error_of([] { mt::mutual_information({}); }).find("no samples") != std::string::npos);
}

TEST_CASE("metrics: Jaccard index of top-K expert sets") {
  CHECK(mt::jaccard({1, 2}, {2, 3}) == 1.0 / 3);
  CHECK(mt::jaccard({3, 1}, {1, 3}) == 1.0);  // order does not matter
  CHECK(mt::jaccard({0, 1}, {2, 3}) == 0.0);
  CHECK(mt::jaccard({0, 1, 2, 3}, {2, 3, 4, 5}) == 2.0 / 6);
  // Rows (token, layer) of k = 2: 1/3, 1, 0 -> mean 4/9.
  CHECK_CLOSE(mt::mean_jaccard({1, 2, 5, 6, 0, 1}, {2, 3, 6, 5, 2, 3}, 2), 4.0 / 9);
  CHECK(error_of([] { mt::jaccard({1, 1}, {1, 2}); }).find("duplicate") != std::string::npos);
  CHECK(error_of([] { mt::jaccard({-1, 1}, {1, 2}); }).find("negative") != std::string::npos);
  CHECK(error_of([] { mt::jaccard({}, {}); }).find("both sets are empty") != std::string::npos);
  CHECK(error_of([] { mt::mean_jaccard({1, 2, 3}, {1, 2, 3}, 2); }).find("multiple of k") != std::string::npos);
  CHECK(error_of([] { mt::mean_jaccard({1, 2}, {1, 2, 3, 4}, 2); }).find("2 vs 4") != std::string::npos);
}

TEST_CASE("metrics: expert load") {
  CHECK(mt::load_cv({2, 2, 2, 2}) == 0.0);
  // {4,0,0,0}: mean 1, population variance (9+1+1+1)/4 = 3.
  CHECK_CLOSE(mt::load_cv({4, 0, 0, 0}), std::sqrt(3.0));
  CHECK(mt::dead_experts({4, 0, 0, 0}) == 3);
  CHECK(mt::dead_experts({1, 2}) == 0);
  std::vector<double> counts = mt::expert_counts({0, 2, 2, 3, 0, 2}, 5);
  CHECK(counts == std::vector<double>{2, 0, 3, 1, 0});
  mt::LoadStats st = mt::load_stats(counts);
  // mean 6/5, squared deviations .64 1.44 3.24 .04 1.44 -> variance 6.8/5
  CHECK_CLOSE(st.cv, std::sqrt(6.8 / 5) / 1.2);
  CHECK(st.dead == 2);
  std::vector<mt::LoadStats> layers = mt::load_stats_per_layer({{1, 1}, {2, 0}});
  REQUIRE(layers.size() == 2);
  CHECK(layers[0].cv == 0.0);
  CHECK(layers[1].cv == 1.0);
  CHECK(layers[1].dead == 1);
  CHECK(error_of([] { mt::load_cv({0, 0}); }).find("every count is zero") != std::string::npos);
  CHECK(error_of([] { mt::load_cv({1, -1}); }).find("count[1]") != std::string::npos);
  CHECK(error_of([] { mt::expert_counts({0, 4}, 4); }).find("expert index 4") != std::string::npos);
}

TEST_CASE("metrics: temperature scaling") {
  SUBCASE("closed form: logits (4, 0), 3 of 4 labels are class 0") {
    // NLL(β) = ¾ log(1+e^{−4β}) + ¼ log(1+e^{4β}) is minimal at σ(4β) = ¾, i.e. T = 4 / ln 3.
    mt::Matrix z = mt::Matrix::from_rows({{4, 0}, {4, 0}, {4, 0}, {4, 0}});
    std::vector<int> y{0, 0, 1, 0};
    mt::TemperatureFit fit = mt::fit_temperature(z, y);
    CHECK(close(fit.temperature, 4 / std::log(3.0), 1e-9));
    CHECK_FALSE(fit.at_bound);
    CHECK_CLOSE(fit.nll_after, -(0.75 * std::log(0.75) + 0.25 * std::log(0.25)));
    CHECK_CLOSE(fit.nll_before, 0.75 * std::log1p(std::exp(-4.0)) + 0.25 * std::log1p(std::exp(4.0)));
    CHECK(fit.nll_after < fit.nll_before);
    // The exact-NLL helper agrees with the floor-clamped NLL of the scaled softmax.
    mt::Matrix p = mt::softmax(z, fit.temperature);
    CHECK_CLOSE(mt::nll(p, y), mt::nll_at_temperature(z, y, fit.temperature));
    CHECK_CLOSE(p(0, 0), 0.75);
  }
  SUBCASE("random logits: a local minimum of the NLL") {
    std::mt19937_64 rng(7);
    std::normal_distribution<double> g(0.0, 3.0);
    std::vector<double> d;
    std::vector<int> y;
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int i = 0; i < 200; ++i) {
      for (int c = 0; c < 5; ++c) d.push_back(g(rng));
      // Informative but overconfident logits: the argmax is right 60% of the time.
      y.push_back(u(rng) < 0.6 ? (int)mt::argmax(&d[d.size() - 5], 5) : (int)(rng() % 5));
    }
    mt::Matrix z(200, 5, d);
    mt::TemperatureFit fit = mt::fit_temperature(z, y);
    CHECK_FALSE(fit.at_bound);
    CHECK(fit.nll_after <= mt::nll_at_temperature(z, y, fit.temperature * (1 + 1e-4)));
    CHECK(fit.nll_after <= mt::nll_at_temperature(z, y, fit.temperature * (1 - 1e-4)));
    CHECK(fit.nll_after <= fit.nll_before);
  }
  SUBCASE("optimum on the boundary") {
    mt::Matrix z = mt::Matrix::from_rows({{5, 0}, {0, 5}});
    mt::TemperatureFit sharp = mt::fit_temperature(z, {0, 1}, 0.05, 20);  // all right: T -> 0
    CHECK(sharp.at_bound);
    CHECK(sharp.temperature == 0.05);
    mt::TemperatureFit flat = mt::fit_temperature(z, {1, 0}, 0.05, 20);  // all wrong: T -> inf
    CHECK(flat.at_bound);
    CHECK(flat.temperature == 20);
    CHECK_CLOSE(flat.nll_after, mt::nll_at_temperature(z, {1, 0}, 20));
    // Saturated: exp(−100/T) underflows for T < 0.134 and the NLL is exactly 0 there.
    mt::Matrix big = mt::Matrix::from_rows({{100, 0}, {0, 100}});
    mt::TemperatureFit sat = mt::fit_temperature(big, {0, 1});
    CHECK(sat.at_bound);
    CHECK(sat.temperature == 0.01);
    CHECK(sat.nll_after == 0.0);
  }
  SUBCASE("invalid input") {
    mt::Matrix flat = mt::Matrix::from_rows({{1, 1}, {2, 2}});
    CHECK(error_of([&] { mt::fit_temperature(flat, {0, 1}); }).find("constant") != std::string::npos);
    mt::Matrix z = mt::Matrix::from_rows({{1, 0}});
    CHECK(error_of([&] { mt::fit_temperature(z, {2}); }).find("label 2") != std::string::npos);
    CHECK(error_of([&] { mt::fit_temperature(z, {0}, 2, 1); }).find("t_min < t_max") != std::string::npos);
  }
}

TEST_CASE("metrics: argument validation") {
  mt::Matrix p = mt::Matrix::from_rows({{0.5, 0.5}, {0.2, 0.8}});
  CHECK(error_of([&] { mt::nll(p, {0}); }).find("metrics::nll: 1 labels for 2 rows") == 0);
  CHECK(error_of([&] { mt::accuracy(p, {0, 2}); }).find("label 2 at row 1 out of range") != std::string::npos);
  mt::Matrix logits = mt::Matrix::from_rows({{2.0, -1.0}});
  CHECK(error_of([&] { mt::brier(logits, {0}); }).find("negative probability -1") != std::string::npos);
  CHECK(error_of([] { mt::accuracy(mt::Matrix(), {}); }).find("no rows") != std::string::npos);
  CHECK(error_of([] { mt::Matrix::from_rows({{1, 0}, {1}}); }).find("row 1 has 1 entries") != std::string::npos);
  CHECK(error_of([] { mt::Matrix(2, 2, {1, 2, 3}); }).find("3 values for a 2x2") != std::string::npos);
  CHECK(error_of([] { mt::calibration(std::vector<double>{1.5}, std::vector<int>{1}); })
            .find("not in [0, 1]") != std::string::npos);
  CHECK(error_of([] { mt::calibration(std::vector<double>{0.5}, std::vector<int>{1}, 0); })
            .find("bins must be >= 1") != std::string::npos);
  mt::Matrix q = mt::Matrix::from_rows({{2, 6}, {0, 0}});
  CHECK(error_of([&] { mt::normalize_rows(q); }).find("row 1 sums to zero") != std::string::npos);
  CHECK(q(0, 0) == 0.25);  // row 0 already normalised
}

// ---- CSV input ------------------------------------------------------------------------

TEST_CASE("metrics: CSV readers accept well-formed files") {
  TempDir tmp("ok");
  // CRLF, a BOM, spaces around fields, trailing blank lines; rows are renormalised.
  std::string path = tmp.write("p.csv", "\xEF\xBB\xBFlabel, p0 ,p1\r\n1, 2, 6\r\n0,0.5,0.5\r\n\r\n\n");
  mt::LabeledProbs d = mt::read_probs_csv(path);
  CHECK(d.labels == std::vector<int>{1, 0});
  CHECK(d.probs.rows == 2);
  CHECK(d.probs.cols == 2);
  CHECK(d.probs.data == std::vector<double>{0.25, 0.75, 0.5, 0.5});

  std::istringstream ood("score,is_ood\n-1.5,0\n2e3,1\n0,0\n");
  mt::OodScores o = mt::read_ood_csv(ood, "ood.csv");
  CHECK(o.scores == std::vector<double>{-1.5, 2000, 0});
  CHECK(o.is_ood == std::vector<int>{0, 1, 0});
}

TEST_CASE("metrics: every malformed CSV is a vm::Error naming the file and line") {
  TempDir tmp("bad");
  struct Bad {
    std::string text;
    int line;
    std::string what;
  };
  const std::vector<Bad> bad_probs = {
      {"label,p0,p1\n0,0.5,0.5\n1,0.3,-0.2\n", 3, "negative probability -0.2 in column p1"},
      {"label,p0,p1\n0,nan,0.5\n", 2, "non-finite value 'nan' in column p0"},
      {"label,p0,p1\n0,0.5,inf\n", 2, "non-finite value 'inf' in column p1"},
      {"label,p0,p1\n0,0.5,-Infinity\n", 2, "non-finite value '-Infinity' in column p1"},
      {"label,p0,p1\n0,abc,0.5\n", 2, "not a number 'abc' in column p0"},
      {"label,p0,p1\n0,0.5,0.5x\n", 2, "not a number '0.5x' in column p1"},
      {"label,p0,p1\n0,0.5,1e999\n", 2, "number out of range '1e999' in column p1"},
      {"label,p0,p1\n0,,0.5\n", 2, "empty field in column p0"},
      {"label,p0,p1\n0,0.5,0.5\n1,0.5\n", 3, "expected 3 fields, got 2"},
      {"label,p0,p1\n0,0.5,0.5,0\n", 2, "expected 3 fields, got 4"},
      {"label,p0,p1\n0,0.5,0.5\n0,0,0\n", 3, "all probabilities are zero"},
      {"label,p0,p1\n2,0.5,0.5\n", 2, "label 2 out of range for 2 classes (0..1)"},
      {"label,p0,p1\n-1,0.5,0.5\n", 2, "label -1 out of range"},
      {"label,p0,p1\n1.0,0.5,0.5\n", 2, "label: not an integer '1.0'"},
      {"label,p0,p1\nx,0.5,0.5\n", 2, "label: not an integer 'x'"},
      {"", 1, "empty file"},
      {"\n  \n", 1, "empty file"},
      {"label,p0,p1\n", 2, "no data rows"},
      {"y,p0,p1\n0,0.5,0.5\n", 1, "missing 'label' column"},
      {"p0,label,p1\n0.5,0,0.5\n", 1, "'label' must be the first column"},
      {"label,p0,q1\n0,0.5,0.5\n", 1, "column 3 is named 'q1', expected 'p1'"},
      {"label,p0\n0,1\n", 1, "at least two probability columns"},
      {"label,p0,p1\n0,0.5,0.5\n\n1,0.5,0.5\n", 3, "blank line before more data"},
  };
  for (size_t i = 0; i < bad_probs.size(); ++i) {
    std::string path = tmp.write("probs_" + std::to_string(i) + ".csv", bad_probs[i].text);
    std::string msg = error_of([&] { mt::read_probs_csv(path); });
    std::string where = path + ":" + std::to_string(bad_probs[i].line) + ": ";
    CHECK_MESSAGE(msg.rfind(where, 0) == 0, "case ", i, ": '", msg, "' should start with '", where, "'");
    CHECK_MESSAGE(msg.find(bad_probs[i].what) != std::string::npos, "case ", i, ": '", msg,
                  "' should contain '", bad_probs[i].what, "'");
    CHECK_MESSAGE(msg.find('\n') == std::string::npos, "case ", i, ": message is not one line");
  }

  const std::vector<Bad> bad_ood = {
      {"score,label\n0.5,1\n", 1, "expected header 'score,is_ood', got 'score,label'"},
      {"score,is_ood\n0.5,2\n0.1,0\n", 2, "is_ood must be 0 or 1, got '2'"},
      {"score,is_ood\n0.5,yes\n", 2, "is_ood: not an integer 'yes'"},
      {"score,is_ood\n0.5,1\nnan,0\n", 3, "non-finite value 'nan' in column score"},
      {"score,is_ood\n0.5,1\n-inf,0\n", 3, "non-finite value '-inf' in column score"},
      {"score,is_ood\n0.5,1\nhigh,0\n", 3, "not a number 'high' in column score"},
      {"score,is_ood\n0.5,1,3\n", 2, "expected 2 fields, got 3"},
      {"score,is_ood\n0.5\n", 2, "expected 2 fields, got 1"},
      {"", 1, "empty file"},
      {"score,is_ood\n", 2, "no data rows"},
      {"score,is_ood\n0.5,1\n0.7,1\n", 4, "needs both classes, but every row has is_ood=1"},
      {"score,is_ood\n0.5,0\n", 3, "needs both classes, but every row has is_ood=0"},
  };
  for (size_t i = 0; i < bad_ood.size(); ++i) {
    std::string path = tmp.write("ood_" + std::to_string(i) + ".csv", bad_ood[i].text);
    std::string msg = error_of([&] { mt::read_ood_csv(path); });
    std::string where = path + ":" + std::to_string(bad_ood[i].line) + ": ";
    CHECK_MESSAGE(msg.rfind(where, 0) == 0, "case ", i, ": '", msg, "' should start with '", where, "'");
    CHECK_MESSAGE(msg.find(bad_ood[i].what) != std::string::npos, "case ", i, ": '", msg,
                  "' should contain '", bad_ood[i].what, "'");
  }

  std::string missing = (tmp.path / "no_such.csv").string();
  CHECK(error_of([&] { mt::read_probs_csv(missing); }) == missing + ": cannot open file");
  CHECK(error_of([&] { mt::read_ood_csv(missing); }) == missing + ": cannot open file");
}

// ---- agreement with scikit-learn -----------------------------------------------------------------

namespace {

// Random probabilities with exact zeros, tied entries, one-hot rows (confidence
// exactly 1) and zero-probability labels (the NLL floor). Rows are not normalised.
std::string random_probs_csv(std::mt19937_64& rng, size_t n, size_t k) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::string s = "label";
  for (size_t c = 0; c < k; ++c) (s += ",p") += std::to_string(c);
  s += "\n";
  std::vector<double> row(k);
  for (size_t i = 0; i < n; ++i) {
    double kind = u(rng);
    double sum = 0;
    for (size_t c = 0; c < k; ++c) {
      double v = u(rng);
      row[c] = v < 0.1 ? 0.0 : std::pow(v, 3) * 5;
      if (kind < 0.15 && c > 0) row[c] = row[0];  // ties (argmax -> lowest index)
      sum += row[c];
    }
    if (kind > 0.9 || sum == 0) {  // one-hot
      std::fill(row.begin(), row.end(), 0.0);
      row[rng() % k] = 1.0;
    }
    s += std::to_string(rng() % k);
    for (double v : row) (s += ',') += fmt(v);
    s += "\n";
  }
  return s;
}

// Scores with many ties (a small grid) mixed with continuous values.
std::string random_ood_csv(std::mt19937_64& rng, size_t n, bool all_tied) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::normal_distribution<double> g(0.0, 1.0);
  std::string s = "score,is_ood\n";
  for (size_t i = 0; i < n; ++i) {
    int y = i == 0 ? 0 : i == 1 ? 1 : (u(rng) < 0.3);
    double score = all_tied ? 0.5 : u(rng) < 0.6 ? std::floor(u(rng) * 5) / 4 - 0.5 * y
                                                  : g(rng) + 0.8 * y;
    ((s += fmt(score)) += ',') += std::to_string(y) + "\n";
  }
  return s;
}

void check_against(const nlohmann::json& ref, const nlohmann::json& got, bool ood) {
  std::vector<std::string> keys{"accuracy", "nll", "brier", "ece", "mce"};
  if (ood) keys.insert(keys.end(), {"auroc", "aupr_in", "aupr_out", "fpr95_ood_recall", "fpr95_id_tpr"});
  CHECK(got.at("n").get<long>() == ref.at("n").get<long>());
  for (const auto& key : keys)
    CHECK_MESSAGE(close(got.at(key).get<double>(), ref.at(key).get<double>()), key, ": ours ",
                  got.at(key).get<double>(), " sklearn ", ref.at(key).get<double>());
}

}  // namespace

TEST_CASE("metrics: agreement with scikit-learn to 1e-12 (random CSVs, many ties)") {
  if (!sklearn_available()) return;
  TempDir tmp("sklearn");
  std::mt19937_64 rng(20240611);
  struct Case {
    size_t n, k, n_ood;
    int bins;
    const char* binning;
    bool all_tied;
  };
  const std::vector<Case> cases = {
      {1, 2, 2, 10, "width", false},     {7, 3, 9, 10, "mass", false},
      {64, 4, 100, 15, "width", false},  {500, 4, 1000, 10, "mass", false},
      {3000, 10, 5000, 10, "width", false}, {200, 2, 50, 1, "width", true},
      {1000, 4, 2000, 7, "mass", false},
  };
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    CAPTURE(ci);
    std::string probs = tmp.write("probs.csv", random_probs_csv(rng, c.n, c.k));
    std::string ood = tmp.write("ood.csv", random_ood_csv(rng, c.n_ood, c.all_tied));
    CmdResult r = run_cmd(kPython + " " + quote(kReference) + " --probs " + quote(probs) + " --ood " +
                          quote(ood) + " --bins " + std::to_string(c.bins) + " --binning " + c.binning +
                          " 2>&1");
    REQUIRE_MESSAGE(r.status == 0, r.out);
    nlohmann::json ref = nlohmann::json::parse(r.out);

    mt::LabeledProbs d = mt::read_probs_csv(probs);
    mt::OodScores o = mt::read_ood_csv(ood);
    mt::Binning binning = std::string(c.binning) == "mass" ? mt::Binning::EqualMass : mt::Binning::EqualWidth;
    mt::Calibration cal = mt::calibration(d.probs, d.labels, c.bins, binning);
    mt::OodMetrics m = mt::ood_metrics(o.scores, o.is_ood);
    nlohmann::json got = {{"n", d.labels.size()},
                          {"accuracy", mt::accuracy(d.probs, d.labels)},
                          {"nll", mt::nll(d.probs, d.labels)},
                          {"brier", mt::brier(d.probs, d.labels)},
                          {"ece", cal.ece},
                          {"mce", cal.mce},
                          {"auroc", m.auroc},
                          {"aupr_in", m.aupr_in},
                          {"aupr_out", m.aupr_out},
                          {"fpr95_ood_recall", m.fpr95_ood_recall},
                          {"fpr95_id_tpr", m.fpr95_id_tpr}};
    check_against(ref, got, true);

    // The ROC curve itself, point for point (drop_intermediate as sklearn).
    mt::RocCurve roc = mt::roc_curve(o.scores, o.is_ood);
    const auto& rr = ref.at("roc");
    REQUIRE(roc.fpr.size() == rr.at("fpr").size());
    for (size_t i = 0; i < roc.fpr.size(); ++i) {
      CHECK(roc.fpr[i] == rr.at("fpr")[i].get<double>());
      CHECK(roc.tpr[i] == rr.at("tpr")[i].get<double>());
      CHECK(close(roc.thresholds[i], rr.at("thresholds")[i].get<double>()));
    }
  }
}

// ---- `vmoer metrics` end to end ----------------------------------------------------------------------

TEST_CASE("metrics: `vmoer metrics` end to end") {
  const std::string bin = std::string(VMOER_BINARY_DIR) + "/vmoer";
  REQUIRE_MESSAGE(fs::exists(bin), bin, " not found: build the `vmoer` target before the tests");
  const std::string probs = kFixtures + "probs.csv", ood = kFixtures + "ood.csv";

  SUBCASE("JSON with the documented keys") {
    CmdResult r = run_cmd(quote(bin) + " metrics --probs " + quote(probs) + " --ood " + quote(ood) + " 2>&1");
    REQUIRE_MESSAGE(r.status == 0, r.out);
    nlohmann::json j = nlohmann::json::parse(r.out);
    for (const char* key : {"n", "accuracy", "nll", "brier", "ece", "mce", "auroc", "aupr_in",
                            "aupr_out", "fpr95_ood_recall", "fpr95_id_tpr", "convention"})
      CHECK_MESSAGE(j.contains(key), "missing key ", key);
    CHECK(j.size() == 12);
    CHECK(j["n"] == 4);
    CHECK(j["accuracy"].get<double>() == 0.5);
    CHECK_CLOSE(j["ece"].get<double>(), 0.5);
    CHECK_CLOSE(j["mce"].get<double>(), 0.8);
    CHECK_CLOSE(j["auroc"].get<double>(), 0.75);
    CHECK(j["fpr95_ood_recall"].get<double>() == 0.5);
    CHECK(j["fpr95_id_tpr"].get<double>() == 0.5);
    const std::string conv = j["convention"];
    CHECK(conv.find("OOD is the positive class") != std::string::npos);
    CHECK(conv.find("higher score means more OOD") != std::string::npos);
    if (sklearn_available()) {
      CmdResult ref = run_cmd(kPython + " " + quote(kReference) + " --probs " + quote(probs) + " --ood " +
                              quote(ood) + " 2>&1");
      REQUIRE_MESSAGE(ref.status == 0, ref.out);
      check_against(nlohmann::json::parse(ref.out), j, true);
    }
  }
  SUBCASE("without --ood: no OOD keys; equal-mass bins") {
    CmdResult r = run_cmd(quote(bin) + " metrics --probs " + quote(probs) + " --bins 2 --binning mass 2>&1");
    REQUIRE_MESSAGE(r.status == 0, r.out);
    nlohmann::json j = nlohmann::json::parse(r.out);
    CHECK(j.size() == 6);
    CHECK_FALSE(j.contains("auroc"));
    CHECK_FALSE(j.contains("convention"));
  }
  SUBCASE("a bad flag exits 2") {
    for (const std::string& args : {" metrics --probs " + quote(probs) + " --bogus",
                                   " metrics --probs " + quote(probs) + " --bins 0",
                                   " metrics --probs " + quote(probs) + " --binning quantile",
                                   std::string(" metrics")}) {
      CmdResult r = run_cmd(quote(bin) + args + " 2>&1");
      CHECK_MESSAGE(r.status == 2, args, " -> ", r.status, ": ", r.out);
    }
  }
  SUBCASE("a bad file exits 1 with one line naming the file and line") {
    const std::string bad = kFixtures + "probs_negative.csv";
    CmdResult r = run_cmd(quote(bin) + " metrics --probs " + quote(bad) + " 2>&1");
    CHECK(r.status == 1);
    CHECK(r.out == "vmoer: " + bad + ":8: negative probability -0.2 in column p1\n");
    CmdResult r2 = run_cmd(quote(bin) + " metrics --probs " + quote(probs) + " --ood " +
                           quote(kFixtures + "no_such.csv") + " 2>&1");
    CHECK(r2.status == 1);
    CHECK(r2.out.find("no_such.csv: cannot open file") != std::string::npos);
  }
}
