#include "data/tasks.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <unordered_set>

#include "core/tensor.h"
#include "data/io.h"
#include "data/shuffle.h"
#include "data/tokenizer.h"

namespace vm::data {

namespace {

const char* const kLetters[4] = {"A", "B", "C", "D"};

// A noun synset eligible for the ID task, with its (capped) gloss.
struct Item {
  const Synset* s;
  std::string gloss;
  int label;  // index into id_noun_categories()
};

// ID-category synsets with a non-empty gloss whose text was not seen before.
std::vector<Item> id_items(const std::vector<Synset>& nouns, size_t max_gloss_bytes) {
  const auto& cats = id_noun_categories();
  std::vector<Item> items;
  std::unordered_set<std::string> seen;
  for (const Synset& s : nouns) {
    auto it = std::find(cats.begin(), cats.end(), s.lex_file);
    if (s.pos != 'n' || it == cats.end()) continue;
    std::string g = truncate_words(s.gloss, max_gloss_bytes);
    if (g.empty() || !seen.insert(g).second) continue;
    items.push_back({&s, std::move(g), (int)(it - cats.begin())});
  }
  return items;
}

std::string synset_source(const Synset& s) {
  char off[16];
  std::snprintf(off, sizeof off, "%08u", s.offset);
  return lexname(s.lex_file) + ":" + off;
}

// Permutes the items with the seed and cuts them into train/val/test.
std::array<std::vector<Item>, 3> split_items(std::vector<Item> items, const McTaskOptions& opt) {
  if (opt.train_frac < 0 || opt.val_frac < 0 || opt.train_frac + opt.val_frac > 1.0 + 1e-9)
    fail("wordnet task: train_frac " + std::to_string(opt.train_frac) + " and val_frac " +
         std::to_string(opt.val_frac) + " must be >= 0 and sum to at most 1");
  if (items.empty()) fail("wordnet task: no noun synsets of the categories animal, artifact, person, plant");
  PhiloxStream rng{opt.seed, kStreamSplit, 0};
  shuffle(items, rng);
  size_t n = items.size();
  size_t n_train = (size_t)(opt.train_frac * (double)n);
  size_t n_val = std::min(n - n_train, (size_t)(opt.val_frac * (double)n));
  std::array<std::vector<Item>, 3> out;
  out[0].assign(items.begin(), items.begin() + (std::ptrdiff_t)n_train);
  out[1].assign(items.begin() + (std::ptrdiff_t)n_train, items.begin() + (std::ptrdiff_t)(n_train + n_val));
  out[2].assign(items.begin() + (std::ptrdiff_t)(n_train + n_val), items.end());
  return out;
}

bool contains_word(const Synset& s, const std::string& w) {
  return std::find(s.words.begin(), s.words.end(), w) != s.words.end();
}

}  // namespace

const std::array<std::string, 4>& category_options() {
  static const std::array<std::string, 4> opts{"animal", "artifact", "person", "plant"};
  return opts;
}

std::string words_prompt(const std::string& definition, const std::array<std::string, 4>& options) {
  std::string p = "Definition: " + definition + "\n";
  for (int i = 0; i < 4; ++i) p += std::string(kLetters[i]) + ". " + options[i] + "\n";
  return p + "Answer:";
}

std::string category_prompt(const std::string& definition) { return words_prompt(definition, category_options()); }

McTask build_wordnet_nouns_task(const std::vector<Synset>& nouns, const McTaskOptions& opt) {
  auto splits = split_items(id_items(nouns, opt.max_gloss_bytes), opt);
  McTask task;
  task.name = "wordnet-nouns";
  std::vector<McExample>* dst[3] = {&task.train, &task.val, &task.test};
  for (int k = 0; k < 3; ++k)
    for (const Item& it : splits[k]) dst[k]->push_back({category_prompt(it.gloss), it.label, synset_source(*it.s)});
  return task;
}

McTask build_wordnet_words_task(const std::vector<Synset>& nouns, const McTaskOptions& opt) {
  std::vector<Item> items = id_items(nouns, opt.max_gloss_bytes);
  // Distractor pools: every eligible synset of each category (first word only
  // appears as option text, never its gloss, so sharing pools leaks nothing).
  std::vector<std::vector<const Synset*>> pool(4);
  for (const Item& it : items) pool[it.label].push_back(it.s);
  auto splits = split_items(std::move(items), opt);
  PhiloxStream rng{opt.seed, kStreamOptions, 0};
  McTask task;
  task.name = "wordnet-words";
  std::vector<McExample>* dst[3] = {&task.train, &task.val, &task.test};
  for (int k = 0; k < 3; ++k) {
    for (const Item& it : splits[k]) {
      const auto& cands = pool[it.label];
      std::array<std::string, 4> opts{it.s->words[0], "", "", ""};
      int have = 1;
      // Rejection sampling; give up after many tries (a category with < 4
      // distinct words cannot make a question).
      for (int tries = 0; have < 4 && tries < 1000; ++tries) {
        const Synset* d = cands[(size_t)uniform_index(rng, cands.size())];
        const std::string& w = d->words[0];
        if (contains_word(*it.s, w) || std::find(opts.begin(), opts.begin() + have, w) != opts.begin() + have)
          continue;
        opts[have++] = w;
      }
      if (have < 4)
        fail("wordnet-words: category noun." + category_options()[it.label] +
             " has too few distinct words for four options");
      std::vector<int> order{0, 1, 2, 3};
      shuffle(order, rng);
      std::array<std::string, 4> shown;
      int label = -1;
      for (int i = 0; i < 4; ++i) {
        shown[i] = opts[order[i]];
        if (order[i] == 0) label = i;
      }
      dst[k]->push_back({words_prompt(it.gloss, shown), label, synset_source(*it.s)});
    }
  }
  return task;
}

McTask load_mc_task(const std::string& name, const std::string& cache_dir, const McTaskOptions& opt) {
  if (name == "wordnet-nouns") return build_wordnet_nouns_task(load_wordnet(cache_dir, "noun"), opt);
  if (name == "wordnet-words") return build_wordnet_words_task(load_wordnet(cache_dir, "noun"), opt);
  fail("unknown task '" + name + "' (expected wordnet-nouns or wordnet-words)");
}

std::map<std::string, std::vector<McExample>> build_ood_sets(const std::vector<Synset>& nouns,
                                                             const std::vector<Synset>& verbs,
                                                             const std::vector<DictEntry>& devil,
                                                             const std::vector<DictEntry>& jargon,
                                                             const OodOptions& opt) {
  // Texts already used by the ID task (and, as we go, by earlier OOD examples).
  std::unordered_set<std::string> seen;
  for (const Item& it : id_items(nouns, opt.max_gloss_bytes)) seen.insert(it.gloss);
  const auto& cats = id_noun_categories();

  std::map<std::string, std::vector<McExample>> sets;
  auto add = [&](const std::string& set, const std::string& text, const std::string& source) {
    std::string t = truncate_words(text, opt.max_gloss_bytes);
    if (t.empty() || !seen.insert(t).second) return;
    sets[set].push_back({category_prompt(t), -1, source});
  };
  for (const Synset& s : nouns)
    if (s.pos == 'n' && std::find(cats.begin(), cats.end(), s.lex_file) == cats.end())
      add("near-nouns", s.gloss, synset_source(s));
  for (const Synset& s : verbs) add("near-verbs", s.gloss, synset_source(s));
  for (const DictEntry& e : devil) add("far-devil", e.definition, "devil:" + e.headword);
  for (const DictEntry& e : jargon) add("far-jargon", e.definition, "jargon:" + e.headword);

  // Deterministic subsample: permute each set on its own stream, keep a prefix.
  const char* names[4] = {"near-nouns", "near-verbs", "far-devil", "far-jargon"};
  for (int i = 0; i < 4; ++i) {
    auto& v = sets[names[i]];
    if (v.empty()) fail(std::string("build_ood_sets: OOD set ") + names[i] + " is empty");
    PhiloxStream rng{opt.seed, kStreamOod + (uint64_t)i, 0};
    shuffle(v, rng);
    if (opt.size > 0 && v.size() > opt.size) v.resize(opt.size);
  }
  return sets;
}

std::map<std::string, std::vector<McExample>> load_ood_sets(const std::string& cache_dir, const OodOptions& opt) {
  // Loaded in a fixed order, so a missing file is always reported the same way.
  auto nouns = load_wordnet(cache_dir, "noun");
  auto verbs = load_wordnet(cache_dir, "verb");
  auto devil = load_dict(cache_dir, "devil", opt.max_dict_bytes);
  auto jargon = load_dict(cache_dir, "jargon", opt.max_dict_bytes);
  return build_ood_sets(nouns, verbs, devil, jargon, opt);
}

std::vector<int32_t> mc_prompt_tokens(const McExample& ex) {
  std::vector<int32_t> t;
  t.reserve(ex.prompt.size() + 1);
  t.push_back(kBos);
  for (unsigned char c : ex.prompt) t.push_back((int32_t)c);
  return t;
}

std::vector<int32_t> mc_option_tokens(const McTask& task) {
  std::vector<int32_t> t;
  for (const std::string& l : task.option_letters) {
    if (l.size() != 1) fail("mc_option_tokens: option letter '" + l + "' is not one byte");
    t.push_back((int32_t)(unsigned char)l[0]);
  }
  return t;
}

int32_t mc_answer_token(const McExample& ex) {
  if (ex.label < 0 || ex.label > 3)
    fail("mc_answer_token: example from " + ex.source + " has label " + std::to_string(ex.label) +
         " (OOD examples have no answer)");
  return (int32_t)'A' + ex.label;
}

}  // namespace vm::data
