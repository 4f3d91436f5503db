// fuzz/fuzz_dict.cpp — the dictd reader: the input is split at the first
// "\n%%\n" into an index file and a dictionary text (written plain: gzread
// passes non-gzip data through, as dictzip is gzip-compatible); the text is
// also fed to clean_dict_definition directly with the first line as headword.
#include <string_view>

#include "core/tensor.h"
#include "data/dict.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string index_path = fuzz::scratch_path("dict_index");
  static const std::string dict_path = fuzz::scratch_path("dict_text");
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t sep = in.find("\n%%\n");
  std::string_view index = sep == std::string_view::npos ? in : in.substr(0, sep);
  std::string_view text = sep == std::string_view::npos ? std::string_view() : in.substr(sep + 4);
  fuzz::write_bytes(index_path, reinterpret_cast<const uint8_t*>(index.data()), index.size());
  fuzz::write_bytes(dict_path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  try {
    auto entries = vm::data::load_dict_files(dict_path, index_path, 300);
    for (auto& e : entries)
      if (e.definition.empty() || e.definition.size() > 300) __builtin_trap();
  } catch (const vm::Error&) {
  }
  size_t nl = in.find('\n');
  std::string head(in.substr(0, nl == std::string_view::npos ? in.size() : nl));
  std::string def = vm::data::clean_dict_definition(head, std::string(in), 64);
  if (def.size() > 64) __builtin_trap();
  return 0;
}
