#include "data/lm.h"

#include <algorithm>
#include <cmath>

#include "core/tensor.h"
#include "data/shuffle.h"
#include "data/tokenizer.h"

namespace vm::data {

std::vector<int32_t> lm_document_tokens(const BrownDocument& doc) {
  std::vector<int32_t> t{kBos};
  for (size_t i = 0; i < doc.sentences.size(); ++i) {
    if (i > 0) t.push_back('\n');
    for (unsigned char c : doc.sentences[i]) t.push_back((int32_t)c);
  }
  return t;
}

LmCorpus build_lm_corpus(const std::vector<BrownDocument>& docs, uint64_t seed, double val_frac) {
  if (val_frac < 0 || val_frac >= 1) fail("build_lm_corpus: val_frac " + std::to_string(val_frac) + " outside [0, 1)");
  if (docs.empty()) fail("build_lm_corpus: no documents");
  size_t n = docs.size();
  size_t n_val = (size_t)std::llround(val_frac * (double)n);
  if (val_frac > 0 && n > 1) n_val = std::max<size_t>(n_val, 1);
  n_val = std::min(n_val, n - 1);  // train keeps at least one document
  PhiloxStream rng{seed, kStreamLmSplit, 0};
  std::vector<size_t> perm = permutation(n, rng);
  std::vector<char> is_val(n, 0);
  for (size_t i = 0; i < n_val; ++i) is_val[perm[i]] = 1;
  LmCorpus c;
  for (size_t i = 0; i < n; ++i) {
    auto toks = lm_document_tokens(docs[i]);
    auto& dst = is_val[i] ? c.val : c.train;
    dst.insert(dst.end(), toks.begin(), toks.end());
    (is_val[i] ? c.val_docs : c.train_docs).push_back(docs[i].id);
  }
  return c;
}

LmCorpus load_brown_lm(const std::string& cache_dir, uint64_t seed, double val_frac) {
  return build_lm_corpus(load_brown(cache_dir), seed, val_frac);
}

LmBatch sample_lm_batch(const std::vector<int32_t>& tokens, int B, int T, PhiloxStream& rng) {
  if (B <= 0 || T <= 0) fail("sample_lm_batch: B=" + std::to_string(B) + " and T=" + std::to_string(T) + " must be positive");
  if (tokens.size() < (size_t)T + 1)
    fail("sample_lm_batch: " + std::to_string(tokens.size()) + " tokens are too few for windows of T+1=" +
         std::to_string(T + 1));
  LmBatch b;
  b.B = B;
  b.T = T;
  b.inputs.resize((size_t)B * T);
  b.targets.resize((size_t)B * T);
  uint64_t n_starts = tokens.size() - (size_t)T;  // s in [0, N-T-1]
  for (int i = 0; i < B; ++i) {
    size_t s = (size_t)uniform_index(rng, n_starts);
    std::copy(tokens.begin() + (std::ptrdiff_t)s, tokens.begin() + (std::ptrdiff_t)(s + T), b.inputs.begin() + (std::ptrdiff_t)i * T);
    std::copy(tokens.begin() + (std::ptrdiff_t)(s + 1), tokens.begin() + (std::ptrdiff_t)(s + T + 1),
              b.targets.begin() + (std::ptrdiff_t)i * T);
  }
  return b;
}

}  // namespace vm::data
