// experiments/data_cli.cpp — `vmoer data fetch [--data-dir DIR]` (runs scripts/fetch_data.sh)
// and `vmoer data info [--data-dir DIR]` (loads every data set, prints counts).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <sys/wait.h>

#include "core/dist.h"
#include "core/tensor.h"
#include "data/data.h"
#include "experiments/commands.h"

namespace vm::cli {

namespace {

namespace fs = std::filesystem;

// scripts/fetch_data.sh: from the source tree, else next to the executable
// (<bin>/../scripts or <bin>/../../scripts).
std::string find_fetch_script() {
  std::vector<fs::path> candidates{fs::path(data::source_dir()) / "scripts/fetch_data.sh"};
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path().parent_path() / "scripts/fetch_data.sh");
    candidates.push_back(exe.parent_path().parent_path().parent_path() / "scripts/fetch_data.sh");
  }
  for (const auto& p : candidates)
    if (fs::is_regular_file(p, ec)) return p.string();
  fail("scripts/fetch_data.sh: not found (looked in " + candidates[0].string() + " and next to the executable)");
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

int run_fetch(const std::string& cache) {
  if (dist::active())
    dist::fail_all("vmoer data fetch: run it once without mpirun (every rank would download into the same folder)");
  std::string cmd = "bash " + shell_quote(find_fetch_script()) + " " + shell_quote(cache);
  std::fflush(stdout);
  int rc = std::system(cmd.c_str());
  if (rc == -1) fail("data fetch: cannot start bash");
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
}

// Runs one report; a failure prints the loader's message and marks the run bad.
template <class F>
void report(const char* name, bool& ok, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    std::printf("%-14s %s\n", name, e.what());
    ok = false;
  }
}

int run_info(const std::string& cache) {
  using namespace vm::data;
  std::printf("cache: %s\n", cache.c_str());
  bool ok = true;
  report("brown", ok, [&] {
    auto docs = load_brown(cache);
    size_t sents = 0, bytes = 0;
    std::map<std::string, int> genres;
    for (const auto& d : docs) {
      sents += d.sentences.size();
      genres[d.genre]++;
      for (const auto& s : d.sentences) bytes += s.size();
    }
    LmCorpus lm = build_lm_corpus(docs, 0);
    std::printf("%-14s %zu documents, %zu genres, %zu sentences, %zu text bytes; LM stream (seed 0): "
                "train %zu tokens / %zu docs, val %zu tokens / %zu docs\n",
                "brown", docs.size(), genres.size(), sents, bytes, lm.train.size(), lm.train_docs.size(),
                lm.val.size(), lm.val_docs.size());
  });
  report("wordnet", ok, [&] {
    auto nouns = load_wordnet(cache, "noun");
    auto verbs = load_wordnet(cache, "verb");
    auto adjs = load_wordnet(cache, "adj");
    std::map<int, size_t> per_cat;
    for (const auto& s : nouns) per_cat[s.lex_file]++;
    std::printf("%-14s %zu noun, %zu verb, %zu adj synsets; ID categories:", "wordnet", nouns.size(), verbs.size(),
                adjs.size());
    size_t id_total = 0;
    for (int c : id_noun_categories()) {
      std::printf(" %s %zu", noun_category(c).c_str(), per_cat[c]);
      id_total += per_cat[c];
    }
    std::printf(" (total %zu, other 22 categories %zu)\n", id_total, nouns.size() - id_total);
    McTask task = build_wordnet_nouns_task(nouns);
    std::printf("%-14s wordnet-nouns (seed 0): train %zu, val %zu, test %zu\n", "", task.train.size(),
                task.val.size(), task.test.size());
    OodOptions all;
    all.size = 0;
    auto ood = build_ood_sets(nouns, verbs, load_dict(cache, "devil"), load_dict(cache, "jargon"), all);
    std::printf("%-14s OOD sets (all, before subsampling):", "");
    for (const auto& [name, v] : ood) std::printf(" %s %zu", name.c_str(), v.size());
    std::printf("\n");
  });
  for (const char* name : {"devil", "jargon"})
    report(name, ok, [&] { std::printf("%-14s %zu entries\n", name, load_dict(cache, name).size()); });
  report("fashion-mnist", ok, [&] {
    ImageSet tr = load_fashion_mnist(cache, true), te = load_fashion_mnist(cache, false);
    std::printf("%-14s train %d, test %d images of %dx%d\n", "fashion-mnist", tr.n, te.n, tr.h, tr.w);
  });
  report("digits", ok, [&] {
    ImageSet d = load_digits(cache);
    std::printf("%-14s %d images of %dx%d (padded), %d per digit\n", "digits", d.n, d.h, d.w, d.n / 10);
  });
  return ok ? 0 : 1;
}

}  // namespace

void register_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Fetch and inspect the real data sets");
  data->require_subcommand(1);
  auto cache = std::make_shared<std::string>(data::default_cache_dir());

  CLI::App* fetch = data->add_subcommand("fetch", "Download, unpack and verify the data sets (scripts/fetch_data.sh)");
  fetch->add_option("--data-dir", *cache, "data folder ($VMOER_DATA or <repo>/.cache/data), as in every other command");
  add_runner(fetch, [cache] { return run_fetch(*cache); });

  CLI::App* info = data->add_subcommand("info", "Load every data set from the cache and print counts");
  info->add_option("--data-dir", *cache, "data folder ($VMOER_DATA or <repo>/.cache/data), as in every other command");
  add_runner(info, [cache] { return run_info(*cache); });
}

}  // namespace vm::cli
