#include "data/io.h"

#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/tensor.h"

#ifndef VMOER_SOURCE_DIR
#define VMOER_SOURCE_DIR "."
#endif

namespace vm::data {

namespace fs = std::filesystem;

std::string source_dir() { return VMOER_SOURCE_DIR; }

std::string default_cache_dir() {
  const char* env = std::getenv("VMOER_DATA");
  if (env && *env) return env;
  return source_dir() + "/.cache/data";
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

std::string require_file(const std::string& dir, const std::string& rel) {
  std::string path = dir + "/" + rel;
  if (!file_exists(path)) fail_file(path, "missing (run `vmoer data fetch`)");
  return path;
}

void fail_at(const std::string& file, size_t line, const std::string& what) {
  fail(file + ":" + std::to_string(line) + ": " + what);
}

void fail_file(const std::string& file, const std::string& what) { fail(file + ": " + what); }

std::string read_file(const std::string& path) {
  if (!file_exists(path)) fail_file(path, "missing (run `vmoer data fetch`)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail_file(path, "read error");
  return ss.str();
}

// zlib's gzerror text, without the "<path>: " prefix it adds.
static std::string gz_message(gzFile f, const std::string& path, int* code) {
  std::string msg = gzerror(f, code);
  if (msg.rfind(path + ": ", 0) == 0) msg = msg.substr(path.size() + 2);
  return msg;
}

std::string read_gzip_file(const std::string& path) {
  if (!file_exists(path)) fail_file(path, "missing (run `vmoer data fetch`)");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail_file(path, "cannot open for reading");
  gzbuffer(f, 1 << 17);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int code = 0;
      std::string msg = gz_message(f, path, &code);
      gzclose(f);
      fail_file(path, "corrupt gzip data (" + msg + ")");
    }
    if (n == 0) break;
    out.append(buf, (size_t)n);
  }
  // gzread reports a stream that ends early only through gzerror.
  int code = Z_OK;
  std::string msg = gz_message(f, path, &code);
  std::string err = (code != Z_OK && code != Z_STREAM_END) ? msg : std::string();
  gzclose(f);
  if (!err.empty()) fail_file(path, "truncated or corrupt gzip data (" + err + ")");
  return out;
}

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::vector<std::string_view> split_ws(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_ws(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !is_ws(s[j])) ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ws(s.back())) s.remove_suffix(1);
  return s;
}

std::string collapse_ws(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  for (char c : s) {
    if (is_ws(c)) {
      pending_space = !out.empty();
    } else {
      if (pending_space) out.push_back(' ');
      pending_space = false;
      out.push_back(c);
    }
  }
  return out;
}

std::string truncate_words(const std::string& s, size_t max_bytes) {
  if (max_bytes == 0 || s.size() <= max_bytes) return s;
  // Prefer the last space at or before the cap (the word after it is dropped).
  size_t cut = s.rfind(' ', max_bytes);
  if (cut == std::string::npos || cut == 0) {
    // One long word: cut at the cap, backing off UTF-8 continuation bytes.
    cut = max_bytes;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) --cut;
  }
  return std::string(trim(std::string_view(s).substr(0, cut)));
}

}  // namespace vm::data
