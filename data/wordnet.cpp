#include "data/wordnet.h"

#include <cctype>
#include <charconv>

#include "core/tensor.h"
#include "data/io.h"

namespace vm::data {

namespace {

// lexnames(5WN): file number -> name.
const char* const kLexnames[45] = {
    "adj.all",         "adj.pert",          "adv.all",           "noun.Tops",        "noun.act",
    "noun.animal",     "noun.artifact",     "noun.attribute",    "noun.body",        "noun.cognition",
    "noun.communication", "noun.event",     "noun.feeling",      "noun.food",        "noun.group",
    "noun.location",   "noun.motive",       "noun.object",       "noun.person",      "noun.phenomenon",
    "noun.plant",      "noun.possession",   "noun.process",      "noun.quantity",    "noun.relation",
    "noun.shape",      "noun.state",        "noun.substance",    "noun.time",        "verb.body",
    "verb.change",     "verb.cognition",    "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact",    "verb.creation",     "verb.emotion",      "verb.motion",      "verb.perception",
    "verb.possession", "verb.social",       "verb.stative",      "verb.weather",     "adj.ppl"};

// Parses an unsigned integer field in the given base; fails naming file:line.
uint32_t parse_num(std::string_view tok, int base, const char* what, const std::string& file, size_t line) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v, base);
  if (ec != std::errc() || p != tok.data() + tok.size())
    fail_at(file, line, std::string("bad ") + what + " '" + std::string(tok) + "'");
  return v;
}

// "dog" / "hot_dog" / "able(a)" -> "dog" / "hot dog" / "able".
std::string clean_word(std::string_view w) {
  if (!w.empty() && w.back() == ')') {
    size_t open = w.rfind('(');
    if (open != std::string_view::npos && open > 0) w = w.substr(0, open);
  }
  std::string out(w);
  for (char& c : out)
    if (c == '_') c = ' ';
  return out;
}

}  // namespace

std::string lexname(int lex_file) {
  if (lex_file < 0 || lex_file > 44) fail("lexname: lexicographer file " + std::to_string(lex_file) + " outside 0..44");
  return kLexnames[lex_file];
}

std::string noun_category(int lex_file) {
  if (lex_file < 3 || lex_file > 28)
    fail("noun_category: lexicographer file " + std::to_string(lex_file) + " is not a noun file (03..28)");
  return lexname(lex_file).substr(5);  // drop "noun."
}

const std::vector<int>& id_noun_categories() {
  static const std::vector<int> cats{5, 6, 18, 20};  // animal, artifact, person, plant
  return cats;
}

std::vector<Synset> load_wordnet_file(const std::string& path) {
  std::string text = read_file(path);
  auto lines = split_lines(text);
  std::vector<Synset> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    size_t ln = i + 1;
    if (line.empty() || line.substr(0, 2) == "  ") continue;  // licence header
    size_t bar = line.find(" | ");
    if (bar == std::string_view::npos) fail_at(path, ln, "no ' | ' before the gloss");
    auto f = split_ws(line.substr(0, bar));
    if (f.size() < 6) fail_at(path, ln, "too few fields before the gloss");
    Synset s;
    if (f[0].size() != 8) fail_at(path, ln, "synset offset '" + std::string(f[0]) + "' is not 8 digits");
    s.offset = parse_num(f[0], 10, "synset offset", path, ln);
    s.lex_file = (int)parse_num(f[1], 10, "lexicographer file number", path, ln);
    if (s.lex_file > 44) fail_at(path, ln, "lexicographer file number " + std::string(f[1]) + " outside 00..44");
    if (f[2].size() != 1 || std::string_view("nvasr").find(f[2][0]) == std::string_view::npos)
      fail_at(path, ln, "bad synset type '" + std::string(f[2]) + "'");
    s.pos = f[2][0];
    size_t w_cnt = parse_num(f[3], 16, "word count", path, ln);
    size_t k = 4;
    if (w_cnt == 0 || k + 2 * w_cnt >= f.size()) fail_at(path, ln, "word count " + std::string(f[3]) + " does not match the fields");
    for (size_t w = 0; w < w_cnt; ++w, k += 2) {
      // Each word is followed by its lex_id, one hex digit.
      if (f[k + 1].size() != 1 || !std::isxdigit((unsigned char)f[k + 1][0]))
        fail_at(path, ln, "word count " + std::string(f[3]) + " does not match the fields (lex_id '" +
                              std::string(f[k + 1]) + "' after word '" + std::string(f[k]) + "')");
      s.words.push_back(clean_word(f[k]));
    }
    size_t p_cnt = parse_num(f[k++], 10, "pointer count", path, ln);
    size_t rest = f.size() - k;  // pointers (4 fields each), then verb frames
    if (rest < 4 * p_cnt) fail_at(path, ln, "pointer count " + std::to_string(p_cnt) + " does not match the fields");
    rest -= 4 * p_cnt;
    if (rest != 0) {
      // Only verbs carry frames: f_cnt then "+ f_num w_num" per frame.
      size_t f_cnt = parse_num(f[k + 4 * p_cnt], 10, "frame count", path, ln);
      if (s.pos != 'v' || rest != 1 + 3 * f_cnt) fail_at(path, ln, "unexpected fields after the pointers");
    }
    std::string_view gloss = line.substr(bar + 3);
    size_t semi = gloss.find(';');
    if (semi != std::string_view::npos) gloss = gloss.substr(0, semi);
    s.gloss = std::string(trim(gloss));
    out.push_back(std::move(s));
  }
  if (out.empty()) fail_file(path, "no synsets");
  return out;
}

std::vector<Synset> load_wordnet(const std::string& cache_dir, const std::string& pos_name) {
  if (pos_name != "noun" && pos_name != "verb" && pos_name != "adj")
    fail("load_wordnet: part of speech '" + pos_name + "' is not noun, verb or adj");
  return load_wordnet_file(require_file(cache_dir + "/wordnet", "data." + pos_name));
}

}  // namespace vm::data
