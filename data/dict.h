// data/dict.h — dictd dictionaries (Debian dict-devil, dict-jargon): a
// dictzip-compressed text (.dict.dz, gzip-compatible) and an index with one
// line per entry: "headword<TAB>offset<TAB>length", offset and length in
// dictd's base64 (A-Z a-z 0-9 + /, most significant digit first).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vm::data {

struct DictEntry {
  std::string headword;
  std::string definition;  // one line of plain text (see clean_dict_definition)
};

// dictd base64 number; fails on an empty string or a character outside the alphabet.
uint64_t dict_b64_decode(std::string_view s);

// One entry's raw text -> one line of plain text:
//  - the headword is dropped: a first line that is just the headword (Jargon
//    File; its pronunciation lines up to the first blank line go too), or a
//    leading "HEADWORD," (Devil's Dictionary);
//  - the definition is the first paragraph that is not empty after cleaning
//    and not a bare cross-reference ("See ...", "Syn. ..."); verse
//    attributions (lines indented 20+ spaces) are dropped;
//  - cleaning: typographic quotes/dashes become ASCII, {cross-reference}
//    braces and _italic_ underscores go, whitespace collapses, and leading
//    notes go: "[etymology]", "(also ...)", sense numbers "1.", abbreviations
//    such as "n." "v.t." "obs.";
//  - the result is cut to max_bytes at a word boundary (0 = no cap).
// Returns "" when no paragraph qualifies.
std::string clean_dict_definition(const std::string& headword, const std::string& raw, size_t max_bytes);

// Reads a dictionary: entries in index order, the "00database..." metadata
// entries and repeated (offset, length) pairs skipped, entries whose cleaned
// definition is empty dropped.
std::vector<DictEntry> load_dict_files(const std::string& dict_dz_path, const std::string& index_path,
                                       size_t max_bytes = 300);
// <cache_dir>/<name>/<name>.dict.dz and .index, name "devil" or "jargon".
std::vector<DictEntry> load_dict(const std::string& cache_dir, const std::string& name, size_t max_bytes = 300);

}  // namespace vm::data
