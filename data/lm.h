// data/lm.h — the Brown corpus as a byte-level language-modelling stream and
// a random-window batch sampler.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/philox.h"
#include "data/brown.h"

namespace vm::data {

// One document as tokens: BOS, then its sentences joined with '\n'.
std::vector<int32_t> lm_document_tokens(const BrownDocument& doc);

struct LmCorpus {
  std::vector<int32_t> train, val;           // concatenated documents
  std::vector<std::string> train_docs, val_docs;  // document ids, in stream order
};

// Split by document: documents are permuted with the seed, the first
// round(val_frac * n) (at least 1 when val_frac > 0 and n > 1) go to val, the
// rest to train; each stream keeps the corpus order of its documents.
LmCorpus build_lm_corpus(const std::vector<BrownDocument>& docs, uint64_t seed, double val_frac = 0.05);
LmCorpus load_brown_lm(const std::string& cache_dir, uint64_t seed, double val_frac = 0.05);

struct LmBatch {
  std::vector<int32_t> inputs, targets;  // B*T each, row-major [b][t]
  int B = 0, T = 0;
};

// B windows at uniform random starts s in [0, N-T-1]: inputs = tokens[s, s+T),
// targets = tokens[s+1, s+T+1). Advances rng (about B draws).
LmBatch sample_lm_batch(const std::vector<int32_t>& tokens, int B, int T, PhiloxStream& rng);

}  // namespace vm::data
