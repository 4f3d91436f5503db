// tests/test_pipeline.cpp — the whole protocol end to end on a small synthetic
// cache in the real formats (tests/fixtures/pipeline/make_cache.py): every
// stage of `vmoer reproduce --smoke`, both tracks, then `vmoer eval`,
// `vmoer inspect --json` and `vmoer metrics` on what it wrote. The numbers mean
// nothing; the test checks that every stage runs, writes what it promises,
// and that a second run reuses the cached stages and reproduces the table.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <set>
#include <string>

#include "experiments/datasets.h"

namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int run(const std::string& cmd, std::string* out = nullptr) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  int rc = pclose(p);
  if (out) *out = text;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

struct PipelineDirs {
  std::string root, cache, out, bin;
  PipelineDirs() {
    root = (fs::temp_directory_path() / ("vmoer_pipeline_" + std::to_string(::getpid()))).string();
    cache = root + "/cache";
    out = root + "/results";
    bin = std::string(VMOER_BINARY_DIR) + "/vmoer";
    fs::create_directories(root);
  }
  ~PipelineDirs() { fs::remove_all(root); }
};

// The synthetic data cache of tests/fixtures/pipeline, written into d.cache.
void make_cache(const PipelineDirs& d) {
  std::string log;
  REQUIRE_MESSAGE(run("/usr/bin/python3 " + std::string(VMOER_SOURCE_DIR) + "/tests/fixtures/pipeline/make_cache.py " +
                          d.cache, &log) == 0, log);
}

// Stage directories under out/stages whose name starts with prefix.
int count_stages(const std::string& out, const std::string& prefix) {
  int n = 0;
  for (auto& e : fs::directory_iterator(out + "/stages")) n += e.path().filename().string().rfind(prefix, 0) == 0;
  return n;
}

// table.md without its wall-time line, which differs between identical runs.
std::string strip_time(const std::string& t) { return t.substr(0, t.find("Wall time")); }

}  // namespace

TEST_CASE("pipeline: reproduce --smoke on both tracks, then eval, inspect and metrics") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  std::string cmd = d.bin + " reproduce --smoke --track both --data-dir " + d.cache + " --out " + d.out;
  int rc = run(cmd, &log);
  REQUIRE_MESSAGE(rc == 0, log);

  // table.md: both tracks, every method, the headline comparison.
  std::string table = slurp(d.out + "/table.md");
  CHECK(table.find("Text track") != std::string::npos);
  CHECK(table.find("Vision track") != std::string::npos);
  for (const char* m : {"| det |", "| det+ts |", "| sample-k |", "| mc-dropout |", "| mfvr |", "| fcvr |", "| vtsr |"})
    CHECK_MESSAGE(table.find(m) != std::string::npos, m);
  CHECK(table.find("Relative change against `det`") != std::string::npos);

  // results.json: 7 methods x 2 tracks, each with the paper's measurements.
  auto res = nlohmann::json::parse(slurp(d.out + "/results.json"));
  CHECK(res["provenance"]["build"]["commit"].get<std::string>().size() >= 7);
  CHECK(res["provenance"]["config"].contains("beta"));
  REQUIRE(res["runs"].size() == 14);
  for (auto& r : res["runs"]) {
    INFO(r["method"].get<std::string>());
    CHECK(r["id"].contains("ece"));
    CHECK(r["id"]["accuracy"].get<double>() >= 0.0);
    CHECK(r["val"]["n"].get<int>() > 0);  // the validation split: what a choice between configs may use
    CHECK(r["val"].contains("nll"));
    CHECK(r["ood"].size() >= 1);
    CHECK(r["stability"].size() == 1);  // the smoke γ grid
    CHECK(r["flops"]["per_token"].get<double>() > 0);
    std::string m = r["method"];
    if (m == "det") CHECK(r["flops"]["overhead_vs_det"].get<double>() == 0.0);
    if (m == "mfvr" || m == "fcvr" || m == "vtsr") CHECK(r["flops"]["overhead_vs_det"].get<double>() > 0.0);
  }
  for (const char* f : {"reliability.csv", "stability.csv", "roc.csv", "expert_load.csv"})
    CHECK_MESSAGE(fs::exists(d.out + "/" + f), f);
  // config.json in every output folder: the provenance block, with reproduce's own options
  auto rcfg = nlohmann::json::parse(slurp(d.out + "/config.json"));
  CHECK(rcfg == res["provenance"]);
  CHECK(rcfg["reproduce"]["track"] == "both");

  // A second run reuses every cached stage and gives the same table (same seed -> same numbers).
  std::string log2;
  REQUIRE(run(cmd, &log2) == 0);
  CHECK(log2.find("reusing") != std::string::npos);
  CHECK(log2.find("router done") == std::string::npos);  // nothing retrained
  std::string table2 = slurp(d.out + "/table.md");
  CHECK(strip_time(table2) == strip_time(table));

  // vmoer eval on the fcvr stage-2 checkpoint: JSON with ID, OOD, stability and FLOPs.
  std::string fcvr;
  for (auto& e : fs::directory_iterator(d.out + "/stages"))
    if (e.path().filename().string().rfind("router-fcvr", 0) == 0) fcvr = e.path().string() + "/best.safetensors";
  REQUIRE(!fcvr.empty());
  std::string ev;
  REQUIRE(run(d.bin + " eval --ckpt " + fcvr + " --data-dir " + d.cache + " --out " + d.root + "/eval --samples 3" +
              " --stability --gammas 0.01,0.05 --ood-size 10", &ev) == 0);
  auto ej = nlohmann::json::parse(slurp(d.root + "/eval/eval.json"));
  CHECK(ej["router"] == "fcvr");
  CHECK(nlohmann::json::parse(slurp(d.root + "/eval/config.json")) == ej["provenance"]);
  CHECK(ej["samples"] == 3);
  // Provenance: the resolved config, the command, the build and the machine.
  CHECK(ej["provenance"]["config"]["router"]["samples"] == 3);
  CHECK(ej["provenance"]["command"].get<std::string>().find(" eval --ckpt ") != std::string::npos);
  CHECK(ej["provenance"]["build"]["commit"].get<std::string>().size() >= 7);
  CHECK(ej["provenance"].contains("finished"));
  CHECK(ej["stability"].size() == 2);
  CHECK(ej["ood"].contains("far-devil"));
  CHECK(ej["ood"]["far-devil"]["scores"].contains("ilv"));  // the Bayesian router's own score
  // the model-free baseline score: the prompt's length in tokens
  CHECK(ej["ood"]["far-devil"]["scores"].contains("length"));
  {  // scores.csv: every example's scores, ID and each OOD set; its length column is the prompt's
    auto lines = std::vector<std::string>{};
    std::ifstream sf(d.root + "/eval/scores.csv");
    for (std::string l; std::getline(sf, l);) lines.push_back(l);
    REQUIRE(lines.size() > 1);
    CHECK(lines[0].rfind("set,kind,index,", 0) == 0);
    CHECK(lines[0].find(",length") != std::string::npos);
    size_t n = ej["id"]["n"].get<size_t>();
    for (auto& [name, o] : ej["ood"].items()) n += o["n"].get<size_t>();
    CHECK(lines.size() == n + 1);
    CHECK(lines[1].rfind("test,id,0,", 0) == 0);
  }

  // Issue 19: `vmoer eval` on a reproduce checkpoint with no flags but where
  // the data and output live repeats the table's ID and OOD numbers exactly:
  // the checkpoint carries the settings that change what the model sees and
  // the run's evaluation settings (test/OOD sizes, seed), and says so.
  for (const char* method : {"det", "fcvr", "vtsr"}) {
    INFO(method);
    nlohmann::json rec;
    for (auto& r : res["runs"])
      if (r["method"] == method && r["track"] == "text") rec = r;
    REQUIRE(rec.is_object());
    std::string evplain, dir = d.root + "/evalplain-" + method;
    REQUIRE_MESSAGE(run(d.bin + " eval --ckpt " + rec["checkpoint"].get<std::string>() + " --data-dir " + d.cache +
                            " --out " + dir, &evplain) == 0, evplain);
    CHECK(evplain.find("from the checkpoint (the evaluation of the `vmoer reproduce` run") != std::string::npos);
    auto ep = nlohmann::json::parse(slurp(dir + "/eval.json"));
    CHECK(ep["id"]["n"] == rec["id"]["n"]);
    CHECK(ep["id"]["nll"] == rec["id"]["nll"]);
    CHECK(ep["id"]["ece"] == rec["id"]["ece"]);
    CHECK(ep["id"]["accuracy"] == rec["id"]["accuracy"]);
    REQUIRE(ep["ood"].size() == rec["ood"].size());
    for (auto& [name, o] : rec["ood"].items()) {
      CHECK(ep["ood"][name]["n"] == o["n"]);
      CHECK(ep["ood"][name]["scores"]["entropy"]["auroc"] == o["scores"]["entropy"]["auroc"]);
    }
  }

  // The checkpoint carries its data settings: eval without --gloss-max-bytes
  // builds the prompts as in training (the plan's cap, 100, not the default
  // 160), says so, and equals an eval that gives the cap explicitly.
  CHECK(ev.find("note: --gloss-max-bytes 100.0 from the checkpoint") != std::string::npos);
  std::string ev100;
  REQUIRE(run(d.bin + " eval --ckpt " + fcvr + " --data-dir " + d.cache + " --out " + d.root + "/eval100 --samples 3" +
              " --no-ood --gloss-max-bytes 100", &ev100) == 0);
  auto e100 = nlohmann::json::parse(slurp(d.root + "/eval100/eval.json"));
  CHECK(e100["id"]["nll"] == ej["id"]["nll"]);
  CHECK(e100["id"]["accuracy"] == ej["id"]["accuracy"]);

  // A router without heads can be evaluated on the fcvr checkpoint: its heads go unused, said on stderr.
  std::string evsk;
  REQUIRE_MESSAGE(run(d.bin + " eval --ckpt " + fcvr + " --data-dir " + d.cache + " --out " + d.root +
                          "/evalsk --router sample-k --no-ood", &evsk) == 0, evsk);
  CHECK(evsk.find("note: --router sample-k on a fcvr checkpoint: its fcvr heads are not used") != std::string::npos);
  CHECK(nlohmann::json::parse(slurp(d.root + "/evalsk/eval.json"))["router"] == "sample-k");

  // The written predictions are valid input for `vmoer metrics`, and agree with eval.
  std::string mj;
  REQUIRE(run(d.bin + " metrics --probs " + d.root + "/eval/probs_test.csv", &mj) == 0);
  auto m = nlohmann::json::parse(mj);
  CHECK(m["accuracy"].get<double>() == doctest::Approx(ej["id"]["accuracy"].get<double>()));
  CHECK(m["nll"].get<double>() == doctest::Approx(ej["id"]["nll"].get<double>()).epsilon(1e-6));

  // vmoer inspect --json: per-token experts, gates summing to 1, posterior std on Bayesian layers.
  std::string ij;
  REQUIRE(run(d.bin + " inspect --ckpt " + fcvr + " --data-dir " + d.cache + " --index 0 --last 2 --json", &ij) == 0);
  // stderr (merged here) first says which settings came from the checkpoint
  CHECK(ij.find("note: --gloss-max-bytes 100.0 from the checkpoint") != std::string::npos);
  auto ins = nlohmann::json::parse(ij.substr(ij.find('{')));
  CHECK(ins["provenance"]["command"].get<std::string>().find(" inspect ") != std::string::npos);
  REQUIRE(ins["tokens"].size() == 2);
  for (auto& L : ins["tokens"][0]["layers"]) {
    double g = 0;
    for (auto& x : L["gates"]) g += x.get<double>();
    CHECK(g == doctest::Approx(1.0).epsilon(1e-5));
  }
  bool any_posterior = false;
  for (auto& L : ins["tokens"][1]["layers"]) any_posterior = any_posterior || L.contains("posterior_std");
  CHECK(any_posterior);
}

// --stages: one stage cache for several output folders; the keys do not
// depend on where the cache or the output lives.
TEST_CASE("pipeline: reproduce --stages shares one stage cache between output folders") {
  PipelineDirs d;
  std::string log1, log2;
  make_cache(d);
  std::string base = d.bin + " reproduce --smoke --seeds 1 --methods det,mfvr --data-dir " + d.cache +
                     " --stages " + d.root + "/cache";
  REQUIRE_MESSAGE(run(base + " --out " + d.root + "/a", &log1) == 0, log1);
  CHECK(log1.find("finetune done") != std::string::npos);
  CHECK(!fs::exists(d.root + "/a/stages"));
  REQUIRE_MESSAGE(run(base + " --out " + d.root + "/b", &log2) == 0, log2);
  CHECK(log2.find("reusing") != std::string::npos);
  CHECK(log2.find(" done: step") == std::string::npos);  // no stage trained again
  auto ra = nlohmann::json::parse(slurp(d.root + "/a/results.json"));
  auto rb = nlohmann::json::parse(slurp(d.root + "/b/results.json"));
  CHECK(rb["stages"] == d.root + "/cache");
  REQUIRE(ra["runs"].size() == rb["runs"].size());
  for (size_t i = 0; i < ra["runs"].size(); ++i) CHECK(ra["runs"][i]["id"] == rb["runs"][i]["id"]);

  // A stage that stopped at its time cap is continued when the run is given
  // no cap (--no-time-caps; the smoke plan has none): mark the router stage
  // capped, rerun, and it is resumed (here at its last step: nothing changes).
  std::string router_dir;
  for (auto& e : fs::directory_iterator(d.root + "/cache"))
    if (e.path().filename().string().rfind("router-mfvr", 0) == 0) router_dir = e.path().string();
  REQUIRE(!router_dir.empty());
  auto dj = nlohmann::json::parse(slurp(router_dir + "/done.json"));
  CHECK(dj["time_capped"] == false);
  dj["time_capped"] = true;
  dj["time_limit_s"] = 1.0;
  { std::ofstream(router_dir + "/done.json") << dj.dump(2); }
  std::string log3;
  REQUIRE_MESSAGE(run(base + " --no-time-caps --out " + d.root + "/c", &log3) == 0, log3);
  CHECK(log3.find("router-mfvr-seed1 stopped at its time cap before; continuing it") != std::string::npos);
  CHECK(nlohmann::json::parse(slurp(router_dir + "/done.json"))["time_capped"] == false);
  auto rc = nlohmann::json::parse(slurp(d.root + "/c/results.json"));
  for (size_t i = 0; i < ra["runs"].size(); ++i) CHECK(ra["runs"][i]["id"] == rc["runs"][i]["id"]);
}

// --reseed-from decides which stages each seed re-runs; the rest are trained
// once with the first seed and shared (their stage directories say which).
TEST_CASE("pipeline: reproduce --seeds 2 shares the stages before --reseed-from") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  std::string base = d.bin + " reproduce --smoke --seeds 2 --methods det,sample-k --data-dir " + d.cache;
  struct Case {
    const char* from;
    int pretrain, finetune;
  };
  for (Case c : {Case{"pretrain", 2, 2}, Case{"finetune", 1, 2}, Case{"router", 1, 1}}) {
    INFO("--reseed-from " << c.from);
    std::string out = d.root + "/reseed-" + c.from;
    REQUIRE_MESSAGE(run(base + " --reseed-from " + c.from + " --out " + out, &log) == 0, log);
    CHECK(count_stages(out, "pretrain-seed") == c.pretrain);
    CHECK(count_stages(out, "finetune-seed") == c.finetune);
    auto res = nlohmann::json::parse(slurp(out + "/results.json"));
    CHECK(res["reseed_from"] == c.from);
    CHECK(res["runs"].size() == 4);  // 2 methods x 2 seeds
    std::string table = slurp(out + "/table.md");
    CHECK((table.find("Shared across seeds") != std::string::npos) == (std::string(c.from) != "pretrain"));
  }
  // The default: every seed fine-tunes its own model from one pretrained model.
  REQUIRE_MESSAGE(run(base + " --out " + d.root + "/reseed-default", &log) == 0, log);
  CHECK(nlohmann::json::parse(slurp(d.root + "/reseed-default/results.json"))["reseed_from"] == "finetune");
  CHECK(count_stages(d.root + "/reseed-default", "finetune-seed") == 2);
  // A stage without done.json (stopped part-way) is resumed from its last checkpoint, not restarted.
  std::string out = d.root + "/reseed-router";
  std::string table = slurp(out + "/table.md");
  for (auto& e : fs::directory_iterator(out + "/stages"))
    if (e.path().filename().string().rfind("finetune-seed", 0) == 0) fs::remove(e.path() / "done.json");
  REQUIRE_MESSAGE(run(base + " --reseed-from router --out " + out, &log) == 0, log);
  CHECK(log.find("finetune-seed1 resuming in") != std::string::npos);
  CHECK(strip_time(slurp(out + "/table.md")) == strip_time(table));

  CHECK(run(base + " --reseed-from stage2 --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--reseed-from") != std::string::npos);
}

// --seed varies training and sampling, never the data: the WordNet split comes
// from --split-seed (default 1). A checkpoint remembers its split; eval takes
// it from there and warns when told to score on another split's test set.
TEST_CASE("pipeline: the test set depends on --split-seed only, and eval follows the checkpoint's split") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  std::string arch = " --data-dir " + d.cache + " --layers 2 --heads 2 --experts 4 --top-k 2 --d-expert 16 "
                     "--d-model 16 --max-seq 160 --batch 4 --no-progress";
  REQUIRE_MESSAGE(run(d.bin + " train --stage finetune --steps 2 --eval-every 0 --seed 3 --split-seed 2" + arch +
                          " --out " + d.root + "/ft", &log) == 0, log);
  std::string ckpt = d.root + "/ft/last.safetensors";
  auto labels = [&](const std::string& dir) {  // the label column of probs_test.csv
    std::ifstream f(dir + "/probs_test.csv");
    std::string line, out;
    std::getline(f, line);
    while (std::getline(f, line)) out += line.substr(0, line.find(',')) + " ";
    return out;
  };
  std::string ev = d.bin + " eval --no-progress --ood-size 4 --max-eval-examples 40 --data-dir " + d.cache +
                   " --ckpt " + ckpt;
  // No --split-seed: the checkpoint's (2), whatever --seed says.
  REQUIRE_MESSAGE(run(ev + " --seed 1 --out " + d.root + "/e1", &log) == 0, log);
  CHECK(log.find("warning") == std::string::npos);
  REQUIRE_MESSAGE(run(ev + " --seed 5 --out " + d.root + "/e5", &log) == 0, log);
  auto e1 = nlohmann::json::parse(slurp(d.root + "/e1/eval.json"));
  CHECK(e1["split_seed"] == 2);
  CHECK(e1["seed"] == 1);
  CHECK(!labels(d.root + "/e1").empty());
  CHECK(labels(d.root + "/e1") == labels(d.root + "/e5"));
  // Another split: a one-line warning, and (on this fixture) other test items.
  REQUIRE_MESSAGE(run(ev + " --seed 1 --split-seed 1 --out " + d.root + "/s1", &log) == 0, log);
  CHECK(log.find("warning: " + ckpt + " was trained on the split of --split-seed 2") != std::string::npos);
  CHECK(nlohmann::json::parse(slurp(d.root + "/s1/eval.json"))["split_seed"] == 1);
  CHECK(labels(d.root + "/s1") != labels(d.root + "/e1"));

  // Router flags override the checkpoint's router: the det model evaluated with
  // sample-k on layer 1; --seed changes its samples (so the seeds of reproduce
  // mean something); a router with trained heads is refused with one line.
  for (const char* seed : {"1", "2"})
    REQUIRE_MESSAGE(run(ev + " --router sample-k --router-temp 2 --bayes-layers 1 --seed " + seed + " --out " + d.root +
                            "/sk" + seed, &log) == 0, log);
  auto sk = nlohmann::json::parse(slurp(d.root + "/sk1/eval.json"));
  CHECK(sk["router"] == "sample-k");
  CHECK(sk["bayes_layers"] == nlohmann::json::array({1}));
  CHECK(slurp(d.root + "/sk1/probs_test.csv") != slurp(d.root + "/sk2/probs_test.csv"));
  CHECK(slurp(d.root + "/sk1/probs_test.csv") != slurp(d.root + "/e1/probs_test.csv"));
  CHECK(run(ev + " --router fcvr --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--router fcvr: its heads are trained in stage 2") != std::string::npos);
  CHECK(run(ev + " --router sample-k --bayes-layers auto:1 --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--bayes-layers") != std::string::npos);
}

// Two runs sharing one stage cache at the same time (the study's queues did):
// each stage is trained once, by whichever run locks it first; the other
// waits and reuses it (StageLock in experiments/reproduce.cpp).
TEST_CASE("pipeline: two reproduce runs sharing --stages at once train each stage once") {
  PipelineDirs d;
  make_cache(d);
  const std::string base = d.bin + " reproduce --smoke --seeds 1 --methods det,mfvr --data-dir " + d.cache +
                           " --stages " + d.root + "/stages";
  const std::string la = d.root + "/a.log", lb = d.root + "/b.log";
  std::string log;
  REQUIRE_MESSAGE(run("sh -c '" + base + " --out " + d.root + "/a > " + la + " 2>&1 & p=$!; " + base + " --out " +
                          d.root + "/b > " + lb + " 2>&1; r=$?; wait $p; exit $(( $? | r ))'", &log) == 0,
                  std::string(log + slurp(la) + slurp(lb)));
  const std::string both = slurp(la) + slurp(lb);
  int trained = 0, stages = 0;
  for (size_t at = both.find(" done: step"); at != std::string::npos; at = both.find(" done: step", at + 1)) ++trained;
  for (auto& e : fs::directory_iterator(d.root + "/stages")) {
    if (!e.is_directory()) continue;
    ++stages;
    // one writer: every line of its log is one JSON record, no step twice
    std::ifstream f(e.path() / "log.jsonl");
    std::string line;
    std::set<int64_t> steps;
    int records = 0;
    while (std::getline(f, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      REQUIRE_MESSAGE(!j.is_discarded(), std::string(e.path().string() + ": " + line));
      if (j.contains("step") && !j.contains("event") && j.contains("loss")) {
        steps.insert(j["step"].get<int64_t>());
        ++records;
      }
    }
    CHECK_MESSAGE((int)steps.size() == records, e.path().string());
  }
  CHECK(stages == 3);  // pretrain, finetune, router-mfvr
  CHECK_MESSAGE(trained == stages, both);
  auto ra = nlohmann::json::parse(slurp(d.root + "/a/results.json"));
  auto rb = nlohmann::json::parse(slurp(d.root + "/b/results.json"));
  REQUIRE(ra["runs"].size() == rb["runs"].size());
  for (size_t i = 0; i < ra["runs"].size(); ++i) CHECK(ra["runs"][i]["id"] == rb["runs"][i]["id"]);
}

// --ablate key=v1,v2: a full run of the methods per value, one table each, and
// separate stage-2 trainings (the value is part of each stage's inputs).
TEST_CASE("pipeline: reproduce --ablate sweeps one knob") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  std::string base = d.bin + " reproduce --smoke --seeds 1 --methods det,mfvr --data-dir " + d.cache;
  REQUIRE_MESSAGE(run(base + " --ablate beta=0,0.5 --out " + d.out, &log) == 0, log);
  std::string table = slurp(d.out + "/table.md");
  CHECK(table.find("ablation beta = 0\n") != std::string::npos);
  CHECK(table.find("ablation beta = 0.5\n") != std::string::npos);
  auto res = nlohmann::json::parse(slurp(d.out + "/results.json"));
  REQUIRE(res["runs"].size() == 4);  // 2 values x 2 methods
  std::set<std::string> values;
  for (auto& r : res["runs"]) values.insert(r["ablation"]["beta"].get<std::string>());
  CHECK(values == std::set<std::string>{"0", "0.5"});
  CHECK(count_stages(d.out, "router-mfvr") == 2);
  // β is read by stage 2 alone: one pretraining and one fine-tuning for both values
  CHECK(count_stages(d.out, "pretrain") == 1);
  CHECK(count_stages(d.out, "finetune") == 1);
  CHECK(run(base + " --ablate gamma=1 --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--ablate: unknown key 'gamma'") != std::string::npos);
  CHECK(run(base + " --ablate beta=x --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--ablate: value 'x' for beta is not a number") != std::string::npos);
}

// Issue 16 §1 and §3 end to end: reproduce resolves --bayes-layers
// auto-sensitive:N and prints the measurement columns; `vmoer eval` writes
// the stability definitions, the predictive arm, head movement, vtsr's
// temperature and the routing sensitivity; train --stage router resolves
// auto-sensitive:N; a bad N is one line naming the flag.
TEST_CASE("pipeline: measurement columns, eval's new keys and --bayes-layers auto-sensitive:N") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  REQUIRE_MESSAGE(run(d.bin + " reproduce --smoke --track text --methods det,vtsr --bayes-layers auto-sensitive:1" +
                          " --data-dir " + d.cache + " --out " + d.out, &log) == 0, log);
  CHECK(log.find("--bayes-layers auto-sensitive:1 -> ") != std::string::npos);
  std::string table = slurp(d.out + "/table.md");
  for (const char* col : {"J shared", "J indep.", "J dist.", "FPR95 ours", "FPR95 OpenOOD", "p̂ ECE", "MI AUROC near",
                          "T per layer", "heads moved"})
    CHECK_MESSAGE(table.find(col) != std::string::npos, col);
  auto res = nlohmann::json::parse(slurp(d.out + "/results.json"));
  REQUIRE(res["runs"].size() == 2);
  for (auto& r : res["runs"]) {
    CHECK(r["ood"]["far-devil"]["scores"]["entropy"].contains("fpr95_id_tpr"));
    CHECK(r["ood"]["far-devil"]["scores"]["entropy"].contains("fpr95_ood_recall"));
    CHECK(r["stability"][0]["jaccard"].contains("independent"));
    if (r["method"] == "vtsr") {
      CHECK(r["bayes_layers"].size() == 1);
      CHECK(r["temperature"].size() == 1);  // the one Bayesian layer's learned T
      CHECK(r["head_movement"][0]["heads"].size() >= 2);
      CHECK(r["predictive"]["samples"] == 2);
    }
  }
  std::string vtsr;
  for (auto& e : fs::directory_iterator(d.out + "/stages"))
    if (e.path().filename().string().rfind("router-vtsr", 0) == 0) vtsr = e.path().string() + "/best.safetensors";
  REQUIRE(!vtsr.empty());
  std::string ev;
  REQUIRE_MESSAGE(run(d.bin + " eval --ckpt " + vtsr + " --data-dir " + d.cache + " --out " + d.root + "/eval" +
                          " --stability --gammas 0.01 --stability-draws 2 --mi-samples 2 --sensitivity --ood-size 10 --max-eval-examples 16",
                      &ev) == 0, ev);
  auto ej = nlohmann::json::parse(slurp(d.root + "/eval/eval.json"));
  CHECK(ej["stability"][0]["draws"] == 2);
  CHECK(ej["predictive"]["samples"] == 2);
  CHECK(ej["ood"]["far-devil"]["scores"].contains("mutual_info"));
  CHECK(ej["temperature"][0]["mean"].get<double>() > 0);
  CHECK(ej["head_movement"][0]["heads"][0]["norm_moved"].get<double>() > 0);  // stage 2 moved its heads
  CHECK(ej["sensitivity"]["per_layer"].size() == 2);
  // without the flags: no sensitivity; no predictive arm with --mi-samples 0
  // (a reproduce checkpoint carries its run's --mi-samples, here 2)
  REQUIRE(run(d.bin + " eval --ckpt " + vtsr + " --data-dir " + d.cache + " --out " + d.root +
                  "/eval2 --no-ood --max-eval-examples 16 --mi-samples 0", &ev) == 0);
  auto ej2 = nlohmann::json::parse(slurp(d.root + "/eval2/eval.json"));
  CHECK_FALSE(ej2.contains("predictive"));
  CHECK_FALSE(ej2.contains("sensitivity"));
  // train --stage router resolves auto-sensitive:N on the fine-tuned model
  std::string fin;
  for (auto& e : fs::directory_iterator(d.out + "/stages"))
    if (e.path().filename().string().rfind("finetune", 0) == 0) fin = e.path().string() + "/best.safetensors";
  REQUIRE(!fin.empty());
  std::string tr;
  REQUIRE_MESSAGE(run(d.bin + " train --stage router --router mfvr --init " + fin + " --bayes-layers auto-sensitive:2" +
                          " --steps 2 --eval-every 2 --batch 4 --max-eval-examples 8 --no-progress --data-dir " +
                          d.cache + " --out " + d.root + "/s2", &tr) == 0, tr);
  CHECK(tr.find("--bayes-layers auto-sensitive:2 -> 0,1") != std::string::npos);
  // a bad N: one line naming the flag, non-zero exit
  for (const char* bad : {"auto-sensitive:0", "auto-sensitive:3"}) {
    std::string out;
    CHECK(run(d.bin + " train --stage router --router mfvr --init " + fin + " --bayes-layers " + bad +
                  " --steps 1 --no-progress --data-dir " + d.cache + " --out " + d.root + "/s3", &out) != 0);
    CHECK_MESSAGE(out.find("--bayes-layers") != std::string::npos, out);
    CHECK_MESSAGE(out.find("auto-sensitive:") != std::string::npos, out);
  }
}

TEST_CASE("data: --router-data heldout is disjoint from fine-tuning, validation and test; --train-size subsets") {
  PipelineDirs d;
  make_cache(d);
  vm::exp::RunConfig c;
  c.data_dir = d.cache;
  vm::exp::McTaskData base = vm::exp::load_mc_task(c);  // defaults: today's sets
  REQUIRE(base.train.size() > 40);
  CHECK(base.heldout.size() == 0);
  auto as_set = [](const vm::exp::McSet& s) { return std::set<std::string>(s.prompts.begin(), s.prompts.end()); };
  c.router_data = vm::exp::RouterData::heldout;
  c.train_size = 30;
  vm::exp::McTaskData h = vm::exp::load_mc_task(c);
  CHECK(h.heldout.size() == base.train.size() / 5);  // default --heldout-size: a fifth of the split
  CHECK(h.train.size() == 30);
  CHECK(h.val.prompts == base.val.prompts);
  CHECK(h.test.prompts == base.test.prompts);
  auto held = as_set(h.heldout), tr = as_set(h.train), all_train = as_set(base.train);
  auto val = as_set(h.val), test = as_set(h.test);
  CHECK(!held.empty());
  for (auto* other : {&tr, &val, &test})
    for (auto& p : held) CHECK(other->count(p) == 0);
  for (auto& p : held) CHECK(all_train.count(p) == 1);  // carved from the ID train split
  for (auto& p : tr) CHECK(all_train.count(p) == 1);
  // with --train-size, fine-tuning gets the same prompts whatever --router-data says
  vm::exp::RunConfig same = c;
  same.router_data = vm::exp::RouterData::train;
  CHECK(vm::exp::load_mc_task(same).train.prompts == h.train.prompts);
  // deterministic in --split-seed, and a different seed carves a different part
  CHECK(vm::exp::load_mc_task(c).heldout.prompts == h.heldout.prompts);
  c.split_seed = 2;
  CHECK(vm::exp::load_mc_task(c).heldout.prompts != h.heldout.prompts);
  c.split_seed = 1;
  c.heldout_size = 7;
  CHECK(vm::exp::load_mc_task(c).heldout.size() == 7);
  c.train_size = 100000;
  CHECK_THROWS_WITH_AS(vm::exp::load_mc_task(c), doctest::Contains("--train-size 100000 exceeds"), vm::Error);
}

TEST_CASE("pipeline: reproduce --plan overconfident runs at smoke scale (train size, epochs, last checkpoint)") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  std::string cmd = d.bin + " reproduce --smoke --plan overconfident --methods det,mfvr,vtsr --router-data heldout "
                    "--heldout-size 16 --kl-norm sequence-sum --router-loss all --train-samples 2 --data-dir " +
                    d.cache + " --out " + d.out;
  REQUIRE_MESSAGE(run(cmd, &log) == 0, log);
  std::string table = slurp(d.out + "/table.md");
  CHECK(table.find("--plan overconfident") != std::string::npos);
  CHECK(table.find("LAST fine-tuning checkpoint") != std::string::npos);
  auto res = nlohmann::json::parse(slurp(d.out + "/results.json"));
  REQUIRE(res["runs"].size() == 3);
  for (auto& r : res["runs"]) CHECK(r["checkpoint"].get<std::string>().find("safetensors") != std::string::npos);
  CHECK(res["runs"][0]["checkpoint"].get<std::string>().find("/last.safetensors") != std::string::npos);  // det
  // the stages: fine-tuning on 24 prompts for 1 epoch of batch 8 = 3 steps; stage 2 on the 16 held-out prompts = 2
  int seen = 0;
  for (auto& e : fs::directory_iterator(d.out + "/stages")) {
    std::string name = e.path().filename().string();
    auto done = nlohmann::json::parse(slurp(e.path().string() + "/done.json"))["inputs"];
    std::string lastline, line;
    std::ifstream lf(e.path().string() + "/log.jsonl");
    while (std::getline(lf, line)) lastline = line;
    auto last = nlohmann::json::parse(lastline);
    INFO(name);
    if (name.rfind("finetune", 0) == 0) {
      ++seen;
      CHECK(done["train_size"] == 24);
      CHECK(done["epochs"] == 1);
      CHECK(done["router_data"] == "train");  // with --train-size the fine-tuning set is the same either way
      CHECK(last["step"] == 3);
      CHECK(last.contains("val_nll"));  // validated at the end of the epoch
    } else if (name.rfind("router-", 0) == 0) {
      ++seen;
      CHECK(done["router_data"] == "heldout");
      CHECK(done["router_loss"] == "all");
      CHECK(last["step"] == 2);
      CHECK(last.contains("val_nll"));
      // The logged objective terms: elbo (β = 1) and the β-weighted ELBO;
      // stage 2 adds no L_lb/L_z, so loss = −elbo_beta + penalty.
      double task = last["task_loss"], kl = last["kl"], beta = done["beta"];
      CHECK(last["elbo"].get<double>() == doctest::Approx(-(task + kl)));
      CHECK(last["elbo_beta"].get<double>() == doctest::Approx(-(task + beta * kl)));
      CHECK(last["loss"].get<double>() ==
            doctest::Approx(-last["elbo_beta"].get<double>() + last["penalty"].get<double>()));
      if (name.rfind("router-mfvr", 0) == 0) CHECK(kl > 0);
      if (name.rfind("router-vtsr", 0) == 0) {
        REQUIRE(last.contains("temperature"));  // the learned T per Bayesian layer
        CHECK(last["temperature"][0]["mean"].get<double>() > 0);
      }
    } else if (name.rfind("pretrain", 0) == 0) {
      CHECK(done["train_size"] == 0);  // the pretraining stage is shared with --smoke
      CHECK(done["router_data"] == "train");
    }
  }
  CHECK(seen == 3);
  CHECK(run(d.bin + " reproduce --smoke --plan overconfident --track vision --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--plan overconfident: the text track only") != std::string::npos);
}

TEST_CASE("train: --epochs sets the steps from the training set and validates once per epoch") {
  PipelineDirs d;
  std::string log;
  make_cache(d);
  std::string out = d.root + "/ft";
  std::string cmd = d.bin + " train --stage finetune --d-model 16 --layers 2 --heads 2 --experts 4 --d-expert 16 "
                    "--max-seq 160 --gloss-max-bytes 60 --batch 8 --train-size 20 --epochs 3 --steps 999 "
                    "--eval-every 1 --max-eval-examples 8 --no-progress --data-dir " + d.cache + " --out " + out;
  REQUIRE_MESSAGE(run(cmd, &log) == 0, log);
  CHECK(log.find("--epochs 3: 20 training examples, 3 steps per epoch, 9 steps") != std::string::npos);
  std::vector<int> evals;
  int last = 0;
  std::ifstream lf(out + "/log.jsonl");
  for (std::string line; std::getline(lf, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("step")) continue;
    last = j["step"];
    if (j.contains("val_nll")) evals.push_back(last);
  }
  CHECK(last == 9);                                // 3 epochs of ⌈20 / 8⌉ steps, --steps ignored
  CHECK(evals == std::vector<int>{3, 6, 9});       // --eval-every replaced by the epoch
  CHECK(run(d.bin + " train --stage pretrain --epochs 2 --data-dir " + d.cache + " --out " + d.root + "/bad", &log) != 0);
  CHECK(log.find("--epochs: pretraining samples token windows and has no epochs") != std::string::npos);
}
