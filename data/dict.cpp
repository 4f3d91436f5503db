#include "data/dict.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <utility>

#include "core/tensor.h"
#include "data/io.h"

namespace vm::data {

namespace {

bool is_blank(std::string_view s) { return trim(s).empty(); }

bool iequal_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower((unsigned char)s[i]) != std::tolower((unsigned char)prefix[i])) return false;
  return true;
}

size_t indent_of(std::string_view s) {
  size_t n = 0;
  while (n < s.size() && (s[n] == ' ' || s[n] == '\t')) ++n;
  return n;
}

// After a Devil's Dictionary headword: drops the ", " / "? " / ". " that
// follows it (the part of speech goes with the leading notes).
std::string_view strip_head_punct(std::string_view rest) {
  while (!rest.empty() && std::string_view(",.?!: \t").find(rest.front()) != std::string_view::npos)
    rest.remove_prefix(1);
  return rest;
}

// Typographic UTF-8 punctuation -> ASCII; other bytes unchanged.
std::string asciify_punct(std::string_view s) {
  static const std::pair<std::string_view, std::string_view> kMap[] = {
      {"\xE2\x80\x98", "'"},  {"\xE2\x80\x99", "'"},  {"\xE2\x80\x9C", "\""},  {"\xE2\x80\x9D", "\""},
      {"\xE2\x80\x93", "-"},  {"\xE2\x80\x94", "--"}, {"\xE2\x80\xA6", "..."}, {"\xC2\xA0", " "},
      {"\xC2\xAD", ""},       {"\xC2\xB4", "'"},      {"\xC2\xB7", ""}};
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    bool hit = false;
    for (const auto& [from, to] : kMap) {
      if (s.substr(i, from.size()) == from) {
        out += to;
        i += from.size();
        hit = true;
        break;
      }
    }
    if (!hit) out.push_back(s[i++]);
  }
  return out;
}

// Removes markup: {cross-ref} braces and _italic_ underscores (an underscore
// inside a word, as in foo_bar, stays).
std::string strip_markup(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '{' || c == '}') continue;
    if (c == '_') {
      bool alnum_before = i > 0 && std::isalnum((unsigned char)s[i - 1]);
      bool alnum_after = i + 1 < s.size() && std::isalnum((unsigned char)s[i + 1]);
      if (!(alnum_before && alnum_after)) continue;
    }
    out.push_back(c);
  }
  return out;
}

// Drops leading notes, repeatedly: "[etymology; usage]", "(also ...)",
// "(alt. ...)", a sense number "1.", a part-of-speech or usage abbreviation
// ("n.", "v.t.", "obs.", "interj.", "n.,v.").
std::string_view strip_leading_notes(std::string_view t) {
  for (;;) {
    t = trim(t);
    if (!t.empty() && t[0] == '[') {
      size_t close = t.find(']');
      if (close == std::string_view::npos) return t;
      t.remove_prefix(close + 1);
      continue;
    }
    if (t.rfind("(also ", 0) == 0 || t.rfind("(alt", 0) == 0) {  // "(also derez)", "(alt.: fly page)"
      size_t close = t.find(')');
      if (close == std::string_view::npos) return t;
      t.remove_prefix(close + 1);
      continue;
    }
    size_t n = 0;
    while (n < t.size() && !std::isspace((unsigned char)t[n])) ++n;
    std::string_view tok = t.substr(0, n);
    bool number = tok.size() >= 2 && tok.back() == '.' &&
                  std::all_of(tok.begin(), tok.end() - 1, [](char c) { return std::isdigit((unsigned char)c); });
    bool abbrev = tok.size() >= 2 && tok.size() <= 8 && tok.back() == '.' &&
                  std::all_of(tok.begin(), tok.end(), [](char c) { return std::islower((unsigned char)c) || c == '.' || c == ','; });
    if (!number && !abbrev) return t;
    t.remove_prefix(n);
  }
}

// One paragraph -> one clean line (before the length cap).
std::string clean_paragraph(const std::string& para) {
  return std::string(strip_leading_notes(collapse_ws(strip_markup(asciify_punct(para)))));
}

// "See foo." / "Syn. for foo." entries only point elsewhere.
bool is_cross_reference(std::string_view t) {
  return t.rfind("See ", 0) == 0 || t.rfind("see ", 0) == 0 || t.rfind("Syn.", 0) == 0 || t.rfind("Syn ", 0) == 0;
}

}  // namespace

uint64_t dict_b64_decode(std::string_view s) {
  static const std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  if (s.empty() || s.size() > 10) fail("dict base64 number '" + std::string(s) + "' is empty or too long");
  uint64_t v = 0;
  for (char c : s) {
    size_t d = kAlphabet.find(c);
    if (d == std::string_view::npos) fail("dict base64 number '" + std::string(s) + "' has a character outside A-Za-z0-9+/");
    v = v * 64 + d;
  }
  return v;
}

std::string clean_dict_definition(const std::string& headword, const std::string& raw, size_t max_bytes) {
  auto lines = split_lines(raw);
  std::vector<std::string> body;  // lines after the headword, the first possibly shortened
  size_t i = 0;
  while (i < lines.size() && is_blank(lines[i])) ++i;
  if (i < lines.size()) {
    std::string_view first = trim(lines[i]);
    if (first.size() == headword.size() && iequal_prefix(first, headword)) {
      // Jargon File: headword line, pronunciation/part-of-speech lines, blank line.
      while (i < lines.size() && !is_blank(lines[i])) ++i;
    } else if (iequal_prefix(first, headword) &&
               (first.size() == headword.size() || !std::isalnum((unsigned char)first[headword.size()]))) {
      // Devil's Dictionary: "HEADWORD, n.  Definition starts here".
      body.emplace_back(strip_head_punct(first.substr(headword.size())));
      ++i;
    }
  }
  for (; i < lines.size(); ++i) body.emplace_back(lines[i]);

  // The first paragraph that is a definition (has a letter after cleaning, is
  // not a bare cross-reference); verse attributions (deeply indented) dropped.
  std::string para;
  for (size_t k = 0; k <= body.size(); ++k) {
    if (k == body.size() || is_blank(body[k])) {
      std::string text = clean_paragraph(para);
      bool has_letter = std::any_of(text.begin(), text.end(), [](char c) { return std::isalpha((unsigned char)c); });
      if (has_letter && !is_cross_reference(text)) return truncate_words(text, max_bytes);
      para.clear();
      continue;
    }
    if (k > 0 && indent_of(body[k]) >= 20) continue;
    para += body[k];
    para += ' ';
  }
  return "";
}

std::vector<DictEntry> load_dict_files(const std::string& dict_dz_path, const std::string& index_path,
                                       size_t max_bytes) {
  std::string index = read_file(index_path);
  std::string dict = read_gzip_file(dict_dz_path);
  std::vector<DictEntry> out;
  std::set<std::pair<uint64_t, uint64_t>> seen;
  auto lines = split_lines(index);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (line.empty()) continue;
    size_t t1 = line.find('\t');
    size_t t2 = t1 == std::string_view::npos ? t1 : line.find('\t', t1 + 1);
    if (t2 == std::string_view::npos || line.find('\t', t2 + 1) != std::string_view::npos)
      fail_at(index_path, i + 1, "expected 'headword<TAB>offset<TAB>length'");
    std::string headword(line.substr(0, t1));
    uint64_t off = 0, len = 0;
    try {
      off = dict_b64_decode(line.substr(t1 + 1, t2 - t1 - 1));
      len = dict_b64_decode(line.substr(t2 + 1));
    } catch (const Error& e) {
      fail_at(index_path, i + 1, e.what());
    }
    if (off + len > dict.size())
      fail_at(index_path, i + 1,
              "entry '" + headword + "' (offset " + std::to_string(off) + ", length " + std::to_string(len) +
                  ") points past the end of " + dict_dz_path + " (" + std::to_string(dict.size()) + " bytes)");
    if (headword.rfind("00database", 0) == 0 || headword.rfind("00-database", 0) == 0) continue;
    if (!seen.insert({off, len}).second) continue;
    std::string def = clean_dict_definition(headword, dict.substr(off, len), max_bytes);
    if (!def.empty()) out.push_back({headword, std::move(def)});
  }
  if (out.empty()) fail_file(index_path, "no dictionary entries");
  return out;
}

std::vector<DictEntry> load_dict(const std::string& cache_dir, const std::string& name, size_t max_bytes) {
  std::string dir = cache_dir + "/" + name;
  std::string dz = require_file(dir, name + ".dict.dz");
  std::string index = require_file(dir, name + ".index");
  return load_dict_files(dz, index, max_bytes);
}

}  // namespace vm::data
