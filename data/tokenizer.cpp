#include "data/tokenizer.h"

#include "core/tensor.h"

namespace vm::data {

std::vector<int32_t> encode(const std::string& s) {
  std::vector<int32_t> out(s.size());
  for (size_t i = 0; i < s.size(); ++i) out[i] = (int32_t)(unsigned char)s[i];
  return out;
}

std::string decode(const std::vector<int32_t>& tokens, bool show_special) {
  std::string out;
  out.reserve(tokens.size());
  for (int32_t t : tokens) {
    if (t >= 0 && t < 256) {
      out.push_back((char)(unsigned char)t);
    } else if (t == kBos || t == kEos || t == kPad) {
      if (show_special) out += t == kBos ? "<bos>" : t == kEos ? "<eos>" : "<pad>";
    } else {
      fail("decode: token id " + std::to_string(t) + " outside the vocabulary [0, " +
           std::to_string(kVocab) + ")");
    }
  }
  return out;
}

}  // namespace vm::data
