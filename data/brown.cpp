#include "data/brown.h"

#include "data/io.h"

namespace vm::data {

std::vector<std::string> brown_words(std::string_view line, const std::string& file, size_t lineno) {
  std::vector<std::string> words;
  for (std::string_view tok : split_ws(line)) {
    size_t slash = tok.rfind('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 == tok.size())
      fail_at(file, lineno, "token '" + std::string(tok) + "' is not of the form word/tag");
    words.emplace_back(tok.substr(0, slash));
  }
  return words;
}

std::string brown_join(const std::vector<std::string>& words, bool detokenize) {
  std::string out;
  bool glue = true;  // no space before the next word (start of text, after an opener)
  for (const std::string& w : words) {
    if (!detokenize) {
      if (!out.empty()) out.push_back(' ');
      out += w;
      continue;
    }
    // Closers attach to the previous word; openers attach to the next.
    bool closer = w == "," || w == "." || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" ||
                  w == "]" || w == "''" || w == "'";
    bool opener = w == "``" || w == "(" || w == "[";
    if (!glue && !closer) out.push_back(' ');
    out += (w == "``" || w == "''") ? std::string("\"") : w;
    glue = opener;
  }
  return out;
}

std::vector<BrownDocument> load_brown_dir(const std::string& dir, bool detokenize) {
  std::string cats_path = require_file(dir, "cats.txt");
  std::string cats = read_file(cats_path);
  std::vector<BrownDocument> docs;
  auto cat_lines = split_lines(cats);
  for (size_t i = 0; i < cat_lines.size(); ++i) {
    auto f = split_ws(cat_lines[i]);
    if (f.empty()) continue;
    if (f.size() != 2) fail_at(cats_path, i + 1, "expected '<document id> <genre>'");
    BrownDocument doc;
    doc.id = std::string(f[0]);
    doc.genre = std::string(f[1]);
    std::string path = require_file(dir, doc.id);
    std::string text = read_file(path);
    auto lines = split_lines(text);
    for (size_t j = 0; j < lines.size(); ++j) {
      if (trim(lines[j]).empty()) continue;  // blank lines separate paragraphs
      doc.sentences.push_back(brown_join(brown_words(lines[j], path, j + 1), detokenize));
    }
    if (doc.sentences.empty()) fail_file(path, "no sentences");
    docs.push_back(std::move(doc));
  }
  if (docs.empty()) fail_file(cats_path, "lists no documents");
  return docs;
}

std::vector<BrownDocument> load_brown(const std::string& cache_dir, bool detokenize) {
  return load_brown_dir(cache_dir + "/brown", detokenize);
}

std::vector<BrownSentence> brown_sentences(const std::vector<BrownDocument>& docs) {
  std::vector<BrownSentence> out;
  for (const auto& d : docs)
    for (const auto& s : d.sentences) out.push_back({s, d.genre, d.id});
  return out;
}

}  // namespace vm::data
