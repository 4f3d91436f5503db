// fuzz/fuzz_wordnet.cpp — data::load_wordnet_file (WordNet data.* lines).
#include "core/tensor.h"
#include "data/wordnet.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("wordnet");
  fuzz::write_bytes(path, data, size);
  try {
    auto synsets = vm::data::load_wordnet_file(path);
    for (auto& s : synsets) {
      if (s.words.empty()) __builtin_trap();
      if (s.lex_file < 0 || s.lex_file > 44) __builtin_trap();
      (void)vm::data::lexname(s.lex_file);
    }
  } catch (const vm::Error&) {
  }
  return 0;
}
