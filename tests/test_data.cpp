// tests/test_data.cpp — the data layer on tiny fixtures (tests/fixtures/data,
// laid out like a real cache; regenerate with make_fixtures.py there), plus
// real-data counts when `vmoer data fetch` has filled the default cache.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/tensor.h"
#include "data/data.h"

using namespace vm::data;
namespace fs = std::filesystem;

namespace {

const std::string kFix = std::string(VMOER_SOURCE_DIR) + "/tests/fixtures/data";

// A scratch directory, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("vmoer_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& rel) const { return (path / rel).string(); }
};

void write_file(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// The error message of f(), or "" if it does not throw vm::Error.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const vm::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::set<std::string> sources(const std::vector<McExample>& v) {
  std::set<std::string> s;
  for (const auto& e : v) s.insert(e.source);
  return s;
}

std::vector<std::string> prompts(const std::vector<McExample>& v) {
  std::vector<std::string> p;
  for (const auto& e : v) p.push_back(e.prompt);
  return p;
}

}  // namespace

// ---- tokenizer -----------------------------------------------------------------

TEST_CASE("tokenizer: byte-level ids, specials, round trip") {
  CHECK(kVocab == 259);
  CHECK(kBos == 256);
  CHECK(kEos == 257);
  CHECK(kPad == 258);
  CHECK(encode("Ab\n") == std::vector<int32_t>{65, 98, 10});
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back((char)i);
  std::string utf8 = "na\xC3\xAFve \xE2\x80\x9Cquote\xE2\x80\x9D";
  for (const std::string& s : {all, utf8, std::string()}) {
    auto t = encode(s);
    for (int32_t id : t) CHECK((id >= 0 && id < 256));
    CHECK(decode(t) == s);
  }
  CHECK(decode({kBos, 'h', 'i', kEos, kPad}) == "hi");
  CHECK(decode({kBos, 'h', kEos}, true) == "<bos>h<eos>");
  CHECK(contains(error_of([] { decode({259}); }), "259"));
  CHECK(contains(error_of([] { decode({-1}); }), "-1"));
}

// ---- helpers -------------------------------------------------------------------

TEST_CASE("io: whitespace and word-boundary truncation") {
  CHECK(collapse_ws("  a \n\t b  c ") == "a b c");
  CHECK(truncate_words("the quick brown fox", 0) == "the quick brown fox");
  CHECK(truncate_words("the quick brown fox", 100) == "the quick brown fox");
  CHECK(truncate_words("the quick brown fox", 12) == "the quick");
  CHECK(truncate_words("the quick brown fox", 15) == "the quick brown");
  CHECK(truncate_words("abcdefgh", 5) == "abcde");
  // No space to cut at: never splits a UTF-8 sequence ("\xC3\xAF" is one character).
  CHECK(truncate_words("ab\xC3\xAF" "cd", 3) == "ab");
  CHECK(contains(error_of([] { read_file("/nonexistent/vmoer/file.txt"); }),
                 "/nonexistent/vmoer/file.txt: missing (run `vmoer data fetch`)"));
}

TEST_CASE("shuffle: Philox Fisher-Yates is a seeded permutation") {
  vm::PhiloxStream a{42, kStreamSplit, 0}, b{42, kStreamSplit, 0}, c{43, kStreamSplit, 0};
  auto pa = permutation(50, a), pb = permutation(50, b), pc = permutation(50, c);
  CHECK(pa == pb);
  CHECK(pa != pc);
  auto sorted = pa;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) CHECK(sorted[i] == i);
  // Pinned: the same numbers on every platform (no std:: distributions).
  vm::PhiloxStream g{7, 1, 0};
  CHECK(permutation(8, g) == std::vector<size_t>{1, 2, 7, 4, 6, 5, 3, 0});
  vm::PhiloxStream u{1, 2, 0};
  for (int i = 0; i < 1000; ++i) CHECK(uniform_index(u, 3) < 3);
  CHECK(uniform_index(u, 1) == 0);
}

// ---- Brown ---------------------------------------------------------------------

TEST_CASE("brown: tags stripped, sentences per document, genre") {
  auto docs = load_brown(kFix);
  REQUIRE(docs.size() == 2);
  CHECK(docs[0].id == "ca01");
  CHECK(docs[0].genre == "news");
  CHECK(docs[1].id == "cr01");
  CHECK(docs[1].genre == "humor");
  REQUIRE(docs[0].sentences.size() == 3);
  CHECK(docs[0].sentences[0] ==
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
        "produced \"no evidence\" that any irregularities took place.");
  // Words containing '/' keep it (the tag follows the last '/').
  CHECK(docs[0].sentences[1] == "The jury said, \"the 1/2 and/or / rule\" (1).");
  CHECK(docs[0].sentences[2] == "Merger proposed");
  CHECK(docs[1].sentences.size() == 2);
  CHECK(docs[1].sentences[1] == "For it seems that Barco, fancying himself a ladies' man, had a habit.");

  auto raw = load_brown(kFix, /*detokenize=*/false);
  CHECK(raw[0].sentences[1] == "The jury said , `` the 1/2 and/or / rule '' ( 1 ) .");

  auto sents = brown_sentences(docs);
  REQUIRE(sents.size() == 5);
  CHECK(sents[3].genre == "humor");
  CHECK(sents[3].doc == "cr01");
}

TEST_CASE("brown: malformed and missing files name the file") {
  TempDir t;
  write_file(t.file("brown/cats.txt"), "ca01 news\n");
  write_file(t.file("brown/ca01"), "\tThe/at jury/nn\n\n\tsaid/vbd it notag/nn\n");
  std::string msg = error_of([&] { load_brown(t.path.string()); });
  CHECK(contains(msg, t.file("brown/ca01") + ":3:"));
  CHECK(contains(msg, "'it'"));

  write_file(t.file("brown/cats.txt"), "ca01 news\nca02 news\n");
  write_file(t.file("brown/ca01"), "\tThe/at jury/nn\n");
  msg = error_of([&] { load_brown(t.path.string()); });
  CHECK(contains(msg, t.file("brown/ca02") + ": missing (run `vmoer data fetch`)"));

  write_file(t.file("brown/cats.txt"), "ca01 news extra\n");
  CHECK(contains(error_of([&] { load_brown(t.path.string()); }), t.file("brown/cats.txt") + ":1:"));

  CHECK(contains(error_of([&] { load_brown(t.file("nothing")); }), "cats.txt: missing (run `vmoer data fetch`)"));
}

// ---- LM stream -----------------------------------------------------------------

TEST_CASE("lm: documents as BOS + sentences joined by newlines, split by document") {
  auto docs = load_brown(kFix);
  auto d1 = lm_document_tokens(docs[1]);
  CHECK(d1.front() == kBos);
  CHECK(decode(d1) == docs[1].sentences[0] + "\n" + docs[1].sentences[1]);

  LmCorpus c = build_lm_corpus(docs, 3, 0.5);
  REQUIRE(c.train_docs.size() == 1);
  REQUIRE(c.val_docs.size() == 1);
  CHECK(c.train_docs[0] != c.val_docs[0]);
  CHECK(c.train.size() + c.val.size() == lm_document_tokens(docs[0]).size() + d1.size());
  CHECK(c.train.front() == kBos);
  CHECK(c.val.front() == kBos);
  // Deterministic from the seed.
  LmCorpus again = build_lm_corpus(docs, 3, 0.5);
  CHECK(again.train == c.train);
  CHECK(again.val_docs == c.val_docs);
  // val_frac 0: everything is training data.
  CHECK(build_lm_corpus(docs, 3, 0.0).val.empty());
}

TEST_CASE("lm: sample_lm_batch windows, targets shifted by one, seeded") {
  std::vector<int32_t> toks(100);
  for (int i = 0; i < 100; ++i) toks[i] = i;
  vm::PhiloxStream r1{5, 9, 0}, r2{5, 9, 0};
  LmBatch b = sample_lm_batch(toks, 4, 16, r1);
  CHECK(b.B == 4);
  CHECK(b.T == 16);
  REQUIRE(b.inputs.size() == 64);
  REQUIRE(b.targets.size() == 64);
  for (int i = 0; i < 4; ++i) {
    int s = b.inputs[i * 16];
    CHECK(s + 16 < 100);  // the last target exists
    for (int t = 0; t < 16; ++t) {
      CHECK(b.inputs[i * 16 + t] == s + t);
      CHECK(b.targets[i * 16 + t] == s + t + 1);
    }
  }
  CHECK(sample_lm_batch(toks, 4, 16, r2).inputs == b.inputs);
  CHECK(sample_lm_batch(toks, 4, 16, r1).inputs != b.inputs);  // the stream advanced
  // T = N-1 leaves exactly one window.
  LmBatch one = sample_lm_batch(toks, 2, 99, r1);
  CHECK(one.inputs[0] == 0);
  CHECK(one.targets[98] == 99);
  CHECK(contains(error_of([&] { sample_lm_batch(toks, 1, 100, r1); }), "too few"));
}

// ---- WordNet -------------------------------------------------------------------

TEST_CASE("wordnet: synset fields, licence lines skipped") {
  auto nouns = load_wordnet(kFix, "noun");
  REQUIRE(nouns.size() == 30);
  const Synset& s = nouns[0];
  CHECK(s.offset == 5787);
  CHECK(s.lex_file == 3);
  CHECK(s.pos == 'n');
  CHECK(s.words == std::vector<std::string>{"benthos"});
  CHECK(s.gloss == "organisms (plants and animals) that live at or near the bottom of a sea");
  // Gloss stops at the first ';' (examples dropped); '_' becomes ' '.
  auto ship = std::find_if(nouns.begin(), nouns.end(), [](const Synset& x) { return x.offset == 2666501; });
  REQUIRE(ship != nouns.end());
  CHECK(ship->words == std::vector<std::string>{"abandoned ship", "derelict"});
  auto darter = std::find_if(nouns.begin(), nouns.end(), [](const Synset& x) { return x.offset == 1314910; });
  CHECK(darter->gloss == "a person or other animal that moves abruptly and rapidly");

  auto verbs = load_wordnet(kFix, "verb");  // verb lines carry frames after the pointers
  REQUIRE(verbs.size() == 3);
  CHECK(verbs[0].gloss == "suck in (air)");
  CHECK(verbs[2].words == std::vector<std::string>{"hack", "whoop"});
  CHECK(lexname(verbs[0].lex_file) == "verb.body");

  auto adjs = load_wordnet(kFix, "adj");  // satellites, syntactic markers "(ip)" "(p)"
  REQUIRE(adjs.size() == 3);
  CHECK(adjs[0].pos == 's');
  CHECK(adjs[1].words == std::vector<std::string>{"abounding", "galore"});
  CHECK(adjs[2].words == std::vector<std::string>{"handy", "ready to hand"});
}

TEST_CASE("wordnet: lexicographer names") {
  CHECK(noun_category(3) == "Tops");
  CHECK(noun_category(5) == "animal");
  CHECK(noun_category(28) == "time");
  CHECK(lexname(18) == "noun.person");
  CHECK(lexname(44) == "adj.ppl");
  std::vector<std::string> id;
  for (int c : id_noun_categories()) id.push_back(noun_category(c));
  CHECK(id == std::vector<std::string>{"animal", "artifact", "person", "plant"});
  CHECK(!error_of([] { noun_category(29); }).empty());
  CHECK(!error_of([] { lexname(45); }).empty());
}

TEST_CASE("wordnet: malformed lines name file and line") {
  TempDir t;
  const std::string path = t.file("wordnet/data.noun");
  const std::string lic = "  1 This software and database is being provided to you  \n";
  const std::string good = "01314026 05 n 01 conspecific 0 001 @ 00004475 n 0000 | an organism  \n";
  struct Case {
    std::string line, what;
  };
  std::vector<Case> cases{
      {"01314026 05 n 01 conspecific 0 001 @ 00004475 n 0000 an organism  \n", "' | '"},
      {"0131402x 05 n 01 conspecific 0 001 @ 00004475 n 0000 | an organism  \n", "offset"},
      {"01314026 05 q 01 conspecific 0 001 @ 00004475 n 0000 | an organism  \n", "synset type"},
      {"01314026 05 n 03 conspecific 0 001 @ 00004475 n 0000 | an organism  \n", "word count"},
      {"01314026 05 n 01 conspecific 0 002 @ 00004475 n 0000 | an organism  \n", "pointer count"},
      {"01314026 77 n 01 conspecific 0 001 @ 00004475 n 0000 | an organism  \n", "lexicographer"},
  };
  for (const auto& c : cases) {
    write_file(path, lic + good + c.line);
    std::string msg = error_of([&] { load_wordnet(t.path.string(), "noun"); });
    CHECK_MESSAGE(contains(msg, path + ":3:"), msg);
    CHECK_MESSAGE(contains(msg, c.what), msg);
  }
  CHECK(contains(error_of([&] { load_wordnet(t.file("none"), "verb"); }),
                 "data.verb: missing (run `vmoer data fetch`)"));
  CHECK(contains(error_of([&] { load_wordnet(kFix, "adverb"); }), "adverb"));
}

// ---- dictionaries ----------------------------------------------------------------

TEST_CASE("dict: dictd base64") {
  CHECK(dict_b64_decode("A") == 0);
  CHECK(dict_b64_decode("/") == 63);
  CHECK(dict_b64_decode("BA") == 64);
  CHECK(dict_b64_decode("uA") == 46 * 64);
  CHECK(dict_b64_decode("BdqM") == ((1ull * 64 + 29) * 64 + 42) * 64 + 12);
  CHECK(!error_of([] { dict_b64_decode("a=b"); }).empty());
  CHECK(!error_of([] { dict_b64_decode(""); }).empty());
}

TEST_CASE("dict: Devil's Dictionary entries cleaned to one line") {
  auto d = load_dict(kFix, "devil");
  // Metadata entry, the repeated index line and the bare "See HUSBAND." are gone.
  REQUIRE(d.size() == 4);
  CHECK(d[0].headword == "abasement");
  CHECK(d[0].definition ==
        "A decent and customary mental attitude in the presence of wealth of power. Peculiarly "
        "appropriate in an employee when addressing an employer.");
  CHECK(d[1].headword == "cui bono");
  CHECK(d[1].definition == "What good would that do me?");
  CHECK(d[2].headword == "danger");  // verse definition, attribution dropped
  CHECK(d[2].definition ==
        "A savage beast which, when it sleeps, Man girds at and despises, But takes himself away by leaps "
        "And bounds when it arises.");
  CHECK(d[3].definition == "The science and history of the animal kingdom, including its king, the House Fly "
                           "(Musca maledicta).");
  // Length cap at a word boundary.
  auto capped = load_dict(kFix, "devil", 40);
  CHECK(capped[0].definition == "A decent and customary mental attitude");
  for (const auto& e : capped) CHECK(e.definition.size() <= 40);
}

TEST_CASE("dict: Jargon File entries cleaned to one line") {
  auto j = load_dict(kFix, "jargon");
  REQUIRE(j.size() == 3);
  CHECK(j[0].headword == "/dev/null");
  CHECK(j[0].definition == "A notional 'black hole' in any information space. See bit bucket.");
  CHECK(j[1].definition == "Major success.");  // "1. [common]" notes dropped
  CHECK(j[2].headword == "zorkmid");
  CHECK(j[2].definition ==
        "The canonical unit of currency in hacker-written games. This originated in Zork but has spread to "
        "nethack.");
  CHECK(clean_dict_definition("x", "x\n\n    n.\n\n    Short.\n", 0) == "Short.");
}

TEST_CASE("dict: bad index and truncated .dict.dz name the file") {
  TempDir t;
  fs::create_directories(t.file("devil"));
  fs::copy_file(kFix + "/devil/devil.dict.dz", t.file("devil/devil.dict.dz"));
  const std::string idx = t.file("devil/devil.index");

  write_file(idx, "abasement\tB\tC\nbad\tA*\tB\n");
  std::string msg = error_of([&] { load_dict(t.path.string(), "devil"); });
  CHECK_MESSAGE(contains(msg, idx + ":2:"), msg);

  write_file(idx, "abasement\tB\n");
  CHECK(contains(error_of([&] { load_dict(t.path.string(), "devil"); }), idx + ":1:"));

  write_file(idx, "abasement\tB\tC\nfar\t////\tB\n");
  msg = error_of([&] { load_dict(t.path.string(), "devil"); });
  CHECK_MESSAGE(contains(msg, idx + ":2:"), msg);
  CHECK_MESSAGE(contains(msg, "past the end"), msg);

  // A .dict.dz cut in half.
  std::string dz = read_file(kFix + "/devil/devil.dict.dz");
  write_file(t.file("devil/devil.dict.dz"), dz.substr(0, dz.size() / 2));
  write_file(idx, "abasement\tB\tC\n");
  msg = error_of([&] { load_dict(t.path.string(), "devil"); });
  CHECK_MESSAGE(contains(msg, t.file("devil/devil.dict.dz") + ": truncated or corrupt gzip"), msg);

  CHECK(contains(error_of([&] { load_dict(t.path.string(), "jargon"); }),
                 "jargon.dict.dz: missing (run `vmoer data fetch`)"));
}

// ---- vision --------------------------------------------------------------------

TEST_CASE("idx: Fashion-MNIST fixture loads as floats in [0,1]") {
  ImageSet tr = load_fashion_mnist(kFix, true);
  CHECK(tr.n == 3);
  CHECK(tr.h == 28);
  CHECK(tr.w == 28);
  REQUIRE(tr.pixels.size() == 3u * 28 * 28);
  CHECK(tr.labels == std::vector<int32_t>{9, 0, 3});
  // Pixel (y, x) of image i is (i*50 + y*x) % 256.
  CHECK(tr.image(2)[5 * 28 + 7] == doctest::Approx(((2 * 50 + 35) % 256) / 255.0f));
  CHECK(tr.image(0)[27 * 28 + 27] == doctest::Approx(((27 * 27) % 256) / 255.0f));
  for (float p : tr.pixels) CHECK((p >= 0.0f && p <= 1.0f));
  ImageSet te = load_fashion_mnist(kFix, false);
  CHECK(te.n == 2);
  CHECK(te.labels == std::vector<int32_t>{1, 7});
}

TEST_CASE("idx: truncated, bad magic, mismatched files name the file") {
  TempDir t;
  const std::string dir = t.file("fashion-mnist");
  fs::create_directories(dir);
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"})
    fs::copy_file(kFix + "/fashion-mnist/" + f, dir + "/" + f);
  const std::string images = dir + "/train-images-idx3-ubyte.gz";
  const std::string gz = read_file(images);

  // A gzip stream cut short.
  write_file(images, gz.substr(0, gz.size() - 40));
  std::string msg = error_of([&] { load_fashion_mnist(t.path.string(), true); });
  CHECK_MESSAGE(contains(msg, images + ":"), msg);
  CHECK_MESSAGE(contains(msg, "truncated"), msg);

  // A complete gzip stream of an IDX file missing data bytes (written uncompressed:
  // gzread passes plain files through).
  std::string raw = read_gzip_file(kFix + "/fashion-mnist/train-images-idx3-ubyte.gz");
  write_file(images, raw.substr(0, raw.size() - 100));
  msg = error_of([&] { load_fashion_mnist(t.path.string(), true); });
  CHECK_MESSAGE(contains(msg, images + ": truncated: the dimensions need 2352 data bytes"), msg);

  write_file(images, raw + "xx");
  CHECK(contains(error_of([&] { load_fashion_mnist(t.path.string(), true); }), "trailing bytes"));

  std::string bad = raw;
  bad[2] = 0x0D;  // float IDX, not bytes
  write_file(images, bad);
  CHECK(contains(error_of([&] { load_fashion_mnist(t.path.string(), true); }), images + ": bad IDX magic"));

  // 3 images, 2 labels.
  write_file(images, raw);
  std::string lab = read_gzip_file(kFix + "/fashion-mnist/train-labels-idx1-ubyte.gz");
  lab[7] = 2;
  lab.pop_back();
  write_file(dir + "/train-labels-idx1-ubyte.gz", lab);
  CHECK(contains(error_of([&] { load_fashion_mnist(t.path.string(), true); }), "2 labels for 3 images"));

  CHECK(contains(error_of([&] { load_fashion_mnist(t.path.string(), false); }),
                 "t10k-images-idx3-ubyte.gz: missing (run `vmoer data fetch`)"));
}

TEST_CASE("digits: 20x20 cells padded to 28x28, labels by row block") {
  // Fixture: 40x200, 2 columns x 10 rows of cells; every pixel of cell i is 10*(i+1).
  ImageSet d = load_digits(kFix);
  REQUIRE(d.n == 20);
  CHECK(d.h == 28);
  CHECK(d.w == 28);
  for (int i = 0; i < 20; ++i) {
    CHECK(d.labels[i] == i / 2);
    CHECK(d.image(i)[14 * 28 + 14] == doctest::Approx(10 * (i + 1) / 255.0f));
    CHECK(d.image(i)[4 * 28 + 4] == doctest::Approx(10 * (i + 1) / 255.0f));
    CHECK(d.image(i)[3 * 28 + 14] == 0.0f);   // padding
    CHECK(d.image(i)[14 * 28 + 24] == 0.0f);  // padding
  }
  ImageSet raw = load_digits(kFix, 0);
  CHECK(raw.h == 20);
  CHECK(raw.image(0)[0] == doctest::Approx(10 / 255.0f));
}

TEST_CASE("digits: truncated or mis-sized PNG names the file") {
  TempDir t;
  const std::string png = t.file("digits/digits.png");
  std::string bytes = read_file(kFix + "/digits/digits.png");
  write_file(png, bytes.substr(0, bytes.size() - 30));
  std::string msg = error_of([&] { load_digits(t.path.string()); });
  CHECK_MESSAGE(contains(msg, png + ": "), msg);
  CHECK_MESSAGE(contains(msg, "PNG"), msg);

  write_file(png, "not a png at all");
  CHECK(contains(error_of([&] { load_digits(t.path.string()); }), png + ": not a readable PNG"));

  // A valid 40x200 PNG read as a 20-row grid would be fine; a 20x20 one has 1 row.
  ImageSet ok = load_digits_png(kFix + "/digits/digits.png");
  CHECK(ok.n == 20);
  CHECK(contains(error_of([] { load_digits_png(kFix + "/digits/digits.png", -1); }), "negative"));
  CHECK(contains(error_of([&] { load_digits(t.file("none")); }), "digits.png: missing (run `vmoer data fetch`)"));
}

// ---- multiple-choice tasks -------------------------------------------------------

TEST_CASE("tasks: the category prompt, byte for byte") {
  CHECK(category_prompt("a young plant or a small plant") ==
        "Definition: a young plant or a small plant\nA. animal\nB. artifact\nC. person\nD. plant\nAnswer:");
  CHECK(words_prompt("g", {"w", "x", "y", "z"}) == "Definition: g\nA. w\nB. x\nC. y\nD. z\nAnswer:");
}

TEST_CASE("tasks: wordnet-nouns split by synset, no leakage, seeded") {
  auto nouns = load_wordnet(kFix, "noun");
  McTaskOptions opt;
  opt.seed = 11;
  McTask task = build_wordnet_nouns_task(nouns, opt);
  CHECK(task.name == "wordnet-nouns");
  CHECK(task.option_letters == std::vector<std::string>{"A", "B", "C", "D"});
  // 24 ID synsets with distinct glosses (a duplicate gloss is dropped): 19/2/3.
  CHECK(task.train.size() == 19);
  CHECK(task.val.size() == 2);
  CHECK(task.test.size() == 3);

  // No synset and no prompt in two splits.
  auto tr = sources(task.train), va = sources(task.val), te = sources(task.test);
  CHECK(tr.size() + va.size() + te.size() == 24);
  std::set<std::string> all(tr);
  all.insert(va.begin(), va.end());
  all.insert(te.begin(), te.end());
  CHECK(all.size() == 24);
  std::set<std::string> ps;
  for (auto* split : {&task.train, &task.val, &task.test})
    for (const auto& e : *split) CHECK(ps.insert(e.prompt).second);

  // Labels follow the category; every example uses the fixed prompt.
  for (auto* split : {&task.train, &task.val, &task.test}) {
    for (const auto& e : *split) {
      REQUIRE((e.label >= 0 && e.label < 4));
      CHECK(e.source.rfind("noun." + category_options()[e.label] + ":", 0) == 0);
      CHECK(e.prompt.rfind("Definition: ", 0) == 0);
      CHECK(contains(e.prompt, "\nA. animal\nB. artifact\nC. person\nD. plant\nAnswer:"));
    }
  }
  // A specific synset's prompt.
  for (auto* split : {&task.train, &task.val, &task.test})
    for (const auto& e : *split)
      if (e.source == "noun.plant:11531090") {
        CHECK(e.prompt == category_prompt("a young plant or a small plant"));
        CHECK(e.label == 3);
      }

  // Same seed: same split; another seed: a different one.
  McTask again = build_wordnet_nouns_task(nouns, opt);
  CHECK(prompts(again.train) == prompts(task.train));
  CHECK(prompts(again.test) == prompts(task.test));
  opt.seed = 12;
  McTask other = build_wordnet_nouns_task(nouns, opt);
  CHECK(prompts(other.train) != prompts(task.train));

  // Gloss cap.
  opt.max_gloss_bytes = 20;
  McTask capped = build_wordnet_nouns_task(nouns, opt);
  for (const auto& e : capped.train) {
    size_t len = e.prompt.find('\n') - std::string("Definition: ").size();
    CHECK(len <= 20);
  }
  opt.train_frac = 0.95;
  CHECK(!error_of([&] { build_wordnet_nouns_task(nouns, opt); }).empty());
}

TEST_CASE("tasks: wordnet-words options and labels") {
  auto nouns = load_wordnet(kFix, "noun");
  McTaskOptions opt;
  opt.seed = 4;
  McTask words = build_wordnet_words_task(nouns, opt);
  McTask cats = build_wordnet_nouns_task(nouns, opt);
  CHECK(words.name == "wordnet-words");
  // Same synset split as the category task.
  CHECK(sources(words.train) == sources(cats.train));
  CHECK(sources(words.test) == sources(cats.test));
  std::set<int> labels;
  for (auto* split : {&words.train, &words.val, &words.test}) {
    for (const auto& e : *split) {
      REQUIRE((e.label >= 0 && e.label < 4));
      labels.insert(e.label);
      // The option at the label is a word of the synset; options are distinct.
      uint32_t off = (uint32_t)std::stoul(e.source.substr(e.source.rfind(':') + 1));
      auto it = std::find_if(nouns.begin(), nouns.end(), [&](const Synset& s) { return s.offset == off; });
      REQUIRE(it != nouns.end());
      std::vector<std::string> opts;
      size_t pos = 0;
      for (const char* l : {"\nA. ", "\nB. ", "\nC. ", "\nD. "}) {
        pos = e.prompt.find(l, pos);
        REQUIRE(pos != std::string::npos);
        size_t end = e.prompt.find('\n', pos + 1);
        opts.push_back(e.prompt.substr(pos + 4, end - pos - 4));
        pos = end;
      }
      CHECK(opts[e.label] == it->words[0]);
      CHECK(std::set<std::string>(opts.begin(), opts.end()).size() == 4);
      CHECK(e.prompt.rfind("Definition: " + it->gloss + "\n", 0) == 0);
    }
  }
  CHECK(labels.size() > 1);  // options are shuffled
  McTask again = build_wordnet_words_task(nouns, opt);
  CHECK(prompts(again.train) == prompts(words.train));
  CHECK(load_mc_task("wordnet-words", kFix, opt).train.size() == words.train.size());
  CHECK(contains(error_of([] { load_mc_task("wordnet-verbs", kFix); }), "wordnet-verbs"));
}

TEST_CASE("tasks: OOD sets") {
  OodOptions opt;
  opt.seed = 2;
  opt.size = 0;
  auto sets = load_ood_sets(kFix, opt);
  REQUIRE(sets.size() == 4);
  // near-nouns: the other categories, without the gloss that duplicates an ID gloss.
  REQUIRE(sets.count("near-nouns"));
  CHECK(sets["near-nouns"].size() == 4);
  CHECK(sets["near-verbs"].size() == 3);
  CHECK(sets["far-devil"].size() == 4);
  CHECK(sets["far-jargon"].size() == 3);
  auto nn = sources(sets["near-nouns"]);
  CHECK(nn == std::set<std::string>{"noun.Tops:00005787", "noun.act:00034479", "noun.body:05217061",
                                    "noun.food:07556872"});
  for (const auto& [name, v] : sets) {
    for (const auto& e : v) {
      CHECK(e.label == -1);
      CHECK(contains(e.prompt, "\nA. animal\nB. artifact\nC. person\nD. plant\nAnswer:"));
    }
  }
  bool found = false;
  for (const auto& e : sets["far-devil"])
    if (e.source == "devil:cui bono") {
      CHECK(e.prompt == category_prompt("What good would that do me?"));
      found = true;
    }
  CHECK(found);

  // Subsampling: deterministic, seeded, a prefix of the seeded order.
  opt.size = 2;
  auto small = load_ood_sets(kFix, opt);
  for (const auto& [name, v] : small) CHECK(v.size() == 2);
  auto all_verbs = prompts(sets["near-verbs"]);
  CHECK(prompts(small["near-verbs"]) == std::vector<std::string>(all_verbs.begin(), all_verbs.begin() + 2));
  CHECK(prompts(load_ood_sets(kFix, opt)["far-devil"]) == prompts(small["far-devil"]));
  std::set<std::vector<std::string>> orders;
  for (uint64_t s = 0; s < 8; ++s) {
    opt.seed = s;
    opt.size = 0;
    orders.insert(prompts(load_ood_sets(kFix, opt)["far-devil"]));
  }
  CHECK(orders.size() > 1);

  opt.max_gloss_bytes = 15;
  for (const auto& [name, v] : load_ood_sets(kFix, opt))
    for (const auto& e : v) CHECK(e.prompt.find('\n') - std::string("Definition: ").size() <= 15);
}

TEST_CASE("tasks: token ids for a causal LM") {
  McExample ex{category_prompt("x"), 2, "noun.person:1"};
  auto t = mc_prompt_tokens(ex);
  CHECK(t.front() == kBos);
  CHECK(t.size() == ex.prompt.size() + 1);
  CHECK(decode(t) == ex.prompt);
  CHECK(t.back() == ':');
  CHECK(mc_answer_token(ex) == 'C');
  McTask task;
  CHECK(mc_option_tokens(task) == std::vector<int32_t>{65, 66, 67, 68});
  McExample ood{category_prompt("y"), -1, "devil:y"};
  CHECK(contains(error_of([&] { mc_answer_token(ood); }), "devil:y"));
}

// ---- the real data (only when fetched) --------------------------------------------

TEST_CASE("real data: counts (skipped when the cache is absent)") {
  const std::string cache = default_cache_dir();
  if (!file_exists(cache + "/wordnet/data.noun") || !file_exists(cache + "/brown/cats.txt") ||
      !file_exists(cache + "/digits/digits.png") || !file_exists(cache + "/jargon/jargon.index") ||
      !file_exists(cache + "/fashion-mnist/t10k-labels-idx1-ubyte.gz")) {
    MESSAGE("real data cache " << cache << " absent: skipping real-data counts (run `vmoer data fetch`)");
    return;
  }
  auto nouns = load_wordnet(cache, "noun");
  CHECK(nouns.size() == 82115);
  std::map<int, int> per;
  for (const auto& s : nouns) per[s.lex_file]++;
  CHECK(per[5] == 7509);    // animal
  CHECK(per[6] == 11587);   // artifact
  CHECK(per[18] == 11087);  // person
  CHECK(per[20] == 8030);   // plant
  // These are the four largest noun categories.
  std::vector<std::pair<int, int>> by_count;
  for (auto [c, n] : per) by_count.push_back({n, c});
  std::sort(by_count.rbegin(), by_count.rend());
  std::set<int> top4{by_count[0].second, by_count[1].second, by_count[2].second, by_count[3].second};
  CHECK(top4 == std::set<int>{5, 6, 18, 20});
  CHECK(per.size() == 26);

  McTask task = build_wordnet_nouns_task(nouns);
  size_t n = task.train.size() + task.val.size() + task.test.size();
  CHECK(n > 37000);
  CHECK(n <= 38213);

  auto verbs = load_wordnet(cache, "verb");
  CHECK(verbs.size() == 13767);
  CHECK(load_wordnet(cache, "adj").size() == 18156);

  auto docs = load_brown(cache);
  CHECK(docs.size() == 500);
  size_t sents = 0;
  std::set<std::string> genres;
  for (const auto& d : docs) {
    sents += d.sentences.size();
    genres.insert(d.genre);
  }
  CHECK(sents == 57340);
  CHECK(genres.size() == 15);

  CHECK(load_dict(cache, "devil").size() > 950);
  CHECK(load_dict(cache, "jargon").size() > 2000);

  ImageSet tr = load_fashion_mnist(cache, true), te = load_fashion_mnist(cache, false);
  CHECK(tr.n == 60000);
  CHECK(te.n == 10000);
  CHECK(tr.h == 28);
  ImageSet dg = load_digits(cache);
  CHECK(dg.n == 5000);
  CHECK(dg.h == 28);
  for (int c = 0; c < 10; ++c) CHECK(std::count(dg.labels.begin(), dg.labels.end(), c) == 500);
}
