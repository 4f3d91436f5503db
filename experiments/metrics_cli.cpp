// experiments/metrics_cli.cpp — `vmoer metrics`: classification, calibration and
// OOD-detection metrics from CSV files, printed as one JSON object.
//
//   vmoer metrics --probs probs.csv [--ood ood.csv] [--bins 10] [--binning width|mass]
//
// probs.csv: header `label,p0,p1,...`; ood.csv: header `score,is_ood` (see
// metrics.h for the exact formats and definitions).
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "experiments/commands.h"
#include "experiments/metrics.h"

namespace vm::cli {

void register_metrics_command(CLI::App& app) {
  struct Options {
    std::string probs, ood, binning = "width";
    int bins = 10;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "metrics", "Accuracy, NLL, Brier, ECE/MCE from class probabilities; AUROC, AUPR, FPR95 (two "
                 "conventions: fpr95_ood_recall, ours; fpr95_id_tpr, OpenOOD's) from OOD scores. "
                 "Prints one JSON object.");
  sub->add_option("--probs", opt->probs, "CSV with header label,p0,p1,... (rows are renormalised; required)");
  sub->add_option("--ood", opt->ood,
                  "CSV with header score,is_ood (OOD is positive; higher score = more OOD)");
  sub->add_option("--bins", opt->bins, "number of confidence bins for ECE/MCE")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  sub->add_option("--binning", opt->binning, "width: equal-width bins; mass: equal-mass bins")
      ->check(CLI::IsMember(std::vector<std::string>{"width", "mass"}))
      ->capture_default_str();

  add_runner(sub, [=] {
    namespace mt = vm::metrics;
    const mt::Binning binning = opt->binning == "mass" ? mt::Binning::EqualMass : mt::Binning::EqualWidth;
    // Read both files before computing anything, so a bad --ood fails fast.
    mt::LabeledProbs data = mt::read_probs_csv(opt->probs);
    std::unique_ptr<mt::OodScores> ood;
    if (!opt->ood.empty()) ood = std::make_unique<mt::OodScores>(mt::read_ood_csv(opt->ood));

    mt::Calibration cal = mt::calibration(data.probs, data.labels, opt->bins, binning);
    nlohmann::ordered_json out;
    out["n"] = data.labels.size();
    out["accuracy"] = mt::accuracy(data.probs, data.labels);
    out["nll"] = mt::nll(data.probs, data.labels);
    out["brier"] = mt::brier(data.probs, data.labels);
    out["ece"] = cal.ece;
    out["mce"] = cal.mce;
    if (ood) {
      mt::OodMetrics m = mt::ood_metrics(ood->scores, ood->is_ood);
      out["auroc"] = m.auroc;
      out["aupr_in"] = m.aupr_in;
      out["aupr_out"] = m.aupr_out;
      out["fpr95_ood_recall"] = m.fpr95_ood_recall;  // ID flagged OOD at 95% OOD recall (ours)
      out["fpr95_id_tpr"] = m.fpr95_id_tpr;          // OOD accepted as ID at 95% ID kept (OpenOOD)
      out["convention"] = "OOD is the positive class; a higher score means more OOD";
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  });
  require_option(sub, "--probs");
}

}  // namespace vm::cli
