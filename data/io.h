// data/io.h — file access shared by the data loaders: the cache location,
// whole-file reads (plain and gzip), and the two error shapes every loader uses:
//   "<file>: missing (run `vmoer data fetch`)"  and  "<file>:<line>: <what>".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vm::data {

// $VMOER_DATA if set and non-empty, else <source dir>/.cache/data (the default
// of scripts/fetch_data.sh).
std::string default_cache_dir();

// Directory holding scripts/ and data/manifest.sha256 (compile-time source dir).
std::string source_dir();

// "<dir>/<rel>"; fails with the missing-file message when it does not exist.
std::string require_file(const std::string& dir, const std::string& rel);
bool file_exists(const std::string& path);

// Whole file as bytes; fails naming the file when it is missing or unreadable.
std::string read_file(const std::string& path);
// Whole gzip (or dictzip) file decompressed; a truncated or corrupt stream is
// an error naming the file.
std::string read_gzip_file(const std::string& path);

// Throws vm::Error "<file>:<line>: <what>".
[[noreturn]] void fail_at(const std::string& file, size_t line, const std::string& what);
// Throws vm::Error "<file>: <what>".
[[noreturn]] void fail_file(const std::string& file, const std::string& what);

// Splits text into lines ('\n'; a trailing '\r' is dropped). Line i is line
// number i + 1 in messages.
std::vector<std::string_view> split_lines(std::string_view text);
// Splits on runs of spaces/tabs.
std::vector<std::string_view> split_ws(std::string_view s);
std::string_view trim(std::string_view s);

// Cuts s to at most max_bytes at a word boundary (a space), without splitting
// a UTF-8 sequence when there is no space to cut at. max_bytes == 0: no cap.
std::string truncate_words(const std::string& s, size_t max_bytes);
// Collapses every run of whitespace to one space and trims the ends.
std::string collapse_ws(std::string_view s);

}  // namespace vm::data
