// data/tasks.h — the multiple-choice tasks built from the real data.
//
// ID task "wordnet-nouns": a WordNet noun gloss from one of the four largest
// noun categories, options in a fixed order; the answer is the letter:
//   Definition: <gloss>\nA. animal\nB. artifact\nC. person\nD. plant\nAnswer:
// Harder variant "wordnet-words": which of four shuffled words (distractors
// from the same category) the gloss defines.
// OOD sets use the category prompt with definitions from elsewhere (label -1):
//   near-nouns (the other 22 noun categories), near-verbs (data.verb),
//   far-devil (The Devil's Dictionary), far-jargon (the Jargon File).
// Splits and subsamples are deterministic functions of the seed (Philox).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/dict.h"
#include "data/wordnet.h"

namespace vm::data {

struct McExample {
  std::string prompt;  // ends with "Answer:"; the model predicts the next byte
  int32_t label = -1;  // option index 0..3, -1 for OOD examples
  std::string source;  // e.g. "noun.animal:01234567", "devil:abasement"
};

struct McTask {
  std::string name;
  std::vector<McExample> train, val, test;
  std::vector<std::string> option_letters{"A", "B", "C", "D"};
};

struct McTaskOptions {
  uint64_t seed = 0;
  double train_frac = 0.8, val_frac = 0.1;  // the test split gets the rest
  size_t max_gloss_bytes = 0;               // cut glosses at a word boundary; 0 = no cap
};

struct OodOptions {
  uint64_t seed = 0;
  size_t size = 1000;          // examples per set (all of a smaller set); 0 = all
  size_t max_gloss_bytes = 0;  // cap applied to every OOD text; 0 = no cap
  size_t max_dict_bytes = 300; // cap when reading dictionary definitions
};

// The option names of the ID task, in prompt order.
const std::array<std::string, 4>& category_options();  // animal, artifact, person, plant
// "Definition: <def>\nA. animal\nB. artifact\nC. person\nD. plant\nAnswer:"
std::string category_prompt(const std::string& definition);
// "Definition: <def>\nA. <o0>\nB. <o1>\nC. <o2>\nD. <o3>\nAnswer:"
std::string words_prompt(const std::string& definition, const std::array<std::string, 4>& options);

// Split by synset: eligible synsets (non-empty gloss, gloss text not seen
// before in file order, so no text appears twice) are permuted with the seed
// and cut train_frac / val_frac / rest. No synset or prompt is in two splits.
McTask build_wordnet_nouns_task(const std::vector<Synset>& nouns, const McTaskOptions& opt = {});
// Same split; options = the synset's first word and three first words of other
// synsets of its category (distinct, none a word of the synset), shuffled.
McTask build_wordnet_words_task(const std::vector<Synset>& nouns, const McTaskOptions& opt = {});
// By name ("wordnet-nouns" or "wordnet-words") from <cache_dir>/wordnet.
McTask load_mc_task(const std::string& name, const std::string& cache_dir, const McTaskOptions& opt = {});

// The four OOD sets keyed "near-nouns", "near-verbs", "far-devil", "far-jargon".
// Texts equal to an ID gloss or repeated are dropped; each set is permuted with
// the seed (its own stream) and its first opt.size examples kept.
std::map<std::string, std::vector<McExample>> build_ood_sets(const std::vector<Synset>& nouns,
                                                             const std::vector<Synset>& verbs,
                                                             const std::vector<DictEntry>& devil,
                                                             const std::vector<DictEntry>& jargon,
                                                             const OodOptions& opt = {});
std::map<std::string, std::vector<McExample>> load_ood_sets(const std::string& cache_dir, const OodOptions& opt = {});

// Causal-LM view: BOS followed by the prompt's bytes. The prediction is the
// next-token distribution after the last prompt token, restricted to the
// option tokens (the bytes 'A'..'D' = 65..68).
std::vector<int32_t> mc_prompt_tokens(const McExample& ex);
std::vector<int32_t> mc_option_tokens(const McTask& task);  // {65, 66, 67, 68}
int32_t mc_answer_token(const McExample& ex);               // 65 + label; fails for OOD (label -1)

}  // namespace vm::data
