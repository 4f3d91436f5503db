// data/tokenizer.h — the byte-level tokenizer: token i < 256 is byte i, plus
// three special tokens. Every string (UTF-8 or not) encodes losslessly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vm::data {

constexpr int32_t kBos = 256;    // start of a document / prompt
constexpr int32_t kEos = 257;    // end of a sequence
constexpr int32_t kPad = 258;    // padding (never a training target)
constexpr int32_t kVocab = 259;  // 256 bytes + 3 specials

// Bytes of s as tokens 0..255 (no specials added).
std::vector<int32_t> encode(const std::string& s);
// Inverse of encode. Special tokens are skipped, or rendered as "<bos>",
// "<eos>", "<pad>" when show_special; an id outside [0, kVocab) is an error.
std::string decode(const std::vector<int32_t>& tokens, bool show_special = false);

}  // namespace vm::data
