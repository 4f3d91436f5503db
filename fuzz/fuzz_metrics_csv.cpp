// fuzz/fuzz_metrics_csv.cpp — the `vmoer metrics` CSV readers (probs and OOD
// scores), then the metrics themselves on whatever parsed.
#include <sstream>

#include "core/tensor.h"
#include "experiments/metrics.h"

namespace mt = vm::metrics;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string s(reinterpret_cast<const char*>(data), size);
  try {
    std::istringstream in(s);
    mt::LabeledProbs p = mt::read_probs_csv(in, "probs.csv");
    (void)mt::accuracy(p.probs, p.labels);
    (void)mt::nll(p.probs, p.labels);
    (void)mt::brier(p.probs, p.labels);
    (void)mt::calibration(p.probs, p.labels, 10, mt::Binning::EqualWidth);
    (void)mt::calibration(p.probs, p.labels, 7, mt::Binning::EqualMass);
  } catch (const vm::Error&) {
  }
  try {
    std::istringstream in(s);
    mt::OodScores o = mt::read_ood_csv(in, "ood.csv");
    (void)mt::ood_metrics(o.scores, o.is_ood);
  } catch (const vm::Error&) {
  }
  return 0;
}
