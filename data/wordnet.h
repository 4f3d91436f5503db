// data/wordnet.h — WordNet 3.0 data files (data.noun, data.verb, data.adj,
// data.adv; Debian wordnet-base). One synset per line:
//   offset lex_filenum ss_type w_cnt [word lex_id]... p_cnt [ptr]... [frames] | gloss
// Lines starting with two spaces are the licence header and are skipped.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vm::data {

struct Synset {
  uint32_t offset = 0;             // byte offset in its data file (the synset id)
  int lex_file = 0;                // lexicographer file number (field 2), 0..44
  char pos = 'n';                  // ss_type: n v a s r
  std::vector<std::string> words;  // lemmas, '_' -> ' ', adjective markers "(a)" removed
  std::string gloss;               // text after "| " up to the first ';', trimmed
};

// Name of a lexicographer file, e.g. 5 -> "noun.animal", 38 -> "verb.motion".
// Fails for numbers outside 0..44.
std::string lexname(int lex_file);
// The category part for nouns: 5 -> "animal"; fails unless 3 <= lex_file <= 28.
std::string noun_category(int lex_file);
// Lexicographer numbers of the four largest noun categories, in the fixed
// option order of the ID task: animal, artifact, person, plant.
const std::vector<int>& id_noun_categories();

// Parses one data file. Malformed lines fail naming file:line.
std::vector<Synset> load_wordnet_file(const std::string& path);
// <cache_dir>/wordnet/data.<pos_name>, pos_name one of noun, verb, adj.
std::vector<Synset> load_wordnet(const std::string& cache_dir, const std::string& pos_name);

}  // namespace vm::data
