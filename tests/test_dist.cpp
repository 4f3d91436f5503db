// tests/test_dist.cpp — multi-process runs (docs/SCALE.md): the fixed
// summation tree, then `vmoer` launched through `mpirun -np 2` like
// tests/test_pipeline.cpp launches it: data-parallel training at np = 2 equals
// np = 1 with the same batch shards bit for bit (every stage), and one process
// with the batch in one piece to a stated tolerance; a checkpoint of np = 2
// resumes with np = 1; `vmoer eval` at np = 2 equals np = 1; the bytes each
// step sends match docs/SCALE.md's formulae; a NaN on one rank, a killed rank
// and a hung rank stop the job with one line naming the rank and the last good
// checkpoint, within a bounded time. The mpirun cases need a build with MPI
// (VMOER_MPI, on when libopenmpi-dev is installed: `make test` installs it);
// without it they say so and pass nothing.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/dist.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif
#include "experiments/checkpoint_io.h"
#include "experiments/data_parallel.h"
#include "nn/checkpoint.h"
#include "nn/moe.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace vm;

namespace {

const std::string kBin = std::string(VMOER_BINARY_DIR) + "/vmoer";
const std::string kFix = std::string(VMOER_SOURCE_DIR) + "/tests/fixtures/data";
// Every mpirun here: two ranks on however many cores there are, as root if need be.
// Under AddressSanitizer (make sanitize) the ranks' leak check ignores what the
// MPI library keeps until exit (tests/lsan_mpi.supp). For the suppressions to
// see whose memory it is, every leak needs its whole stack: Open MPI's
// libraries have no frame pointers (so the slow unwinder, fast_unwind_on_malloc=0)
// and unload their components at MPI_Finalize (so they stay loaded:
// mca_base_component_disable_dlclose); otherwise a leak shows one frame in
// "<unknown module>" and no suppression can match it.
#if defined(__SANITIZE_ADDRESS__)
const std::string kMpirun = "mpirun -np 2 --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -x LSAN_OPTIONS=suppressions=" +
                            std::string(VMOER_SOURCE_DIR) +
                            "/tests/lsan_mpi.supp -x ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0 "
                            "-x OMPI_MCA_mca_base_component_disable_dlclose=1 ";
#else
const std::string kMpirun = "mpirun -np 2 --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 ";
#endif

struct Out {
  int rc = -1;
  std::string text;
  double seconds = 0;
};

Out sh(const std::string& cmd) {
  Out o;
  auto t0 = std::chrono::steady_clock::now();
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) o.text.append(buf, n);
  int rc = pclose(p);
  o.rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return o;
}
Out vmoer(const std::string& args, int ranks = 1) {
  std::string mp = kMpirun;
  mp.replace(mp.find("-np 2"), 5, "-np " + std::to_string(ranks));
  return sh((ranks > 1 ? mp : std::string()) + kBin + " " + args + " --threads 1");
}

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The per-step records of a log.jsonl without the wall-clock and the
// communication counters (the rest must match between runs).
std::vector<json> steps_of(const std::string& dir) {
  std::vector<json> out;
  std::ifstream f(dir + "/log.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    if (!j.contains("step") || j.contains("event")) continue;
    for (const char* k : {"seconds", "tokens_per_s", "comm_bytes", "comm_grad_bytes", "comm_seconds", "comm_ep_bytes",
                          "ep_rows", "comm_expert_grad_bytes", "adam_state_floats", "param_floats", "mem_live_bytes",
                          "mem_peak_live_bytes"})
      j.erase(k);
    out.push_back(j);
  }
  return out;
}

// Whether mpirun can run here (a build with MPI and the launcher installed).
bool mpi_ready() {
  static int ready = -1;
  if (ready < 0) {
    ready = dist::built_with_mpi() && sh("command -v mpirun").rc == 0;
    if (!ready)
      MESSAGE("SKIPPED: the multi-process tests need a build with MPI and mpirun (apt-get install libopenmpi-dev "
              "openmpi-bin; make test installs them)");
  }
  return ready == 1;
}

struct Scratch {
  fs::path path;
  Scratch() {
    static int counter = 0;
    fs::path base = ::access("/dev/shm", W_OK) == 0 ? fs::path("/dev/shm") : fs::temp_directory_path();
    path = base / ("vmoer_test_dist_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

// A tiny MoE LM on the Brown fixture (the reliability tests' model).
const std::string kPretrain = "train --stage pretrain --data-dir " + kFix +
                              " --max-seq 32 --seq 16 --batch 4 --eval-batches 2 --no-progress --layers 2 --heads 2 "
                              "--experts 4 --top-k 2 --d-expert 16 --d-model 16";
// The same size on the WordNet fixture's multiple-choice task.
const std::string kTask = " --data-dir " + kFix + " --d-model 16 --layers 2 --heads 2 --experts 4 --top-k 2 "
                          "--d-expert 16 --max-seq 160 --batch 4 --max-eval-examples 12 --no-progress";

}  // namespace

TEST_CASE("dist: TreeSum groups leaves as a binary counter; aligned power-of-two blocks are subtrees") {
  std::mt19937 g(7);
  std::uniform_real_distribution<float> u(-1e3f, 1e3f);
  auto leaf = [&] {
    std::vector<float> v(64);
    for (float& x : v) x = u(g);
    return v;
  };
  std::vector<std::vector<float>> L;
  for (int i = 0; i < 8; ++i) L.push_back(leaf());
  auto sum = [](std::vector<float> a, const std::vector<float>& b) {
    for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
    return a;
  };
  // 8 leaves: ((0+1)+(2+3))+((4+5)+(6+7))
  dist::TreeSum t8;
  for (auto& l : L) t8.add(l);
  CHECK(t8.leaves() == 8);
  std::vector<float> want = sum(sum(sum(L[0], L[1]), sum(L[2], L[3])), sum(sum(L[4], L[5]), sum(L[6], L[7])));
  CHECK(t8.take() == want);
  // 6 leaves: ((0+1)+(2+3))+(4+5); 3 leaves: (0+1)+2
  dist::TreeSum t6, t3;
  for (int i = 0; i < 6; ++i) t6.add(L[(size_t)i]);
  for (int i = 0; i < 3; ++i) t3.add(L[(size_t)i]);
  CHECK(t6.take() == sum(sum(sum(L[0], L[1]), sum(L[2], L[3])), sum(L[4], L[5])));
  CHECK(t3.take() == sum(sum(L[0], L[1]), L[2]));
  // What makes a data-parallel sum independent of the rank count: N ranks each
  // summing an aligned block of 2^k leaves, then the N partial sums in the
  // same tree, give the tree over all leaves — bit for bit.
  for (int per : {1, 2, 4}) {
    dist::TreeSum outer;
    for (int r = 0; r < 8 / per; ++r) {
      dist::TreeSum inner;
      for (int i = r * per; i < (r + 1) * per; ++i) inner.add(L[(size_t)i]);
      outer.add(inner.take());
    }
    CHECK(outer.take() == want);
  }
  // The sum is not associative in floats: a left fold over the leaves differs
  // somewhere (so the check above can fail).
  std::vector<float> fold = L[0];
  for (int i = 1; i < 8; ++i) fold = sum(fold, L[(size_t)i]);
  CHECK(fold != want);
  // The all-reduce's bytes (core/dist.h): rank r of N sends 4((L − L_r) + (N − 1) L_r) per bucket.
  CHECK(dist::allreduce_bytes(1000, 1000, 2, 0) == 4 * (500 + 500));
  CHECK(dist::allreduce_bytes(1001, 1000, 2, 0) == 4 * (500 + 500) + 4 * (1 + 0));
  CHECK(dist::allreduce_bytes(1001, 1000, 2, 1) == 4 * (500 + 500) + 4 * (0 + 1));
  CHECK(dist::allreduce_bytes(12, 12, 4, 0) == 4 * (9 + 3 * 3));
  CHECK(dist::allreduce_bytes(12, 12, 1, 0) == 0);
}

namespace {
// Relative L2 difference of two checkpoints, the worst tensor (AdamW moments included).
double max_rel_diff(const std::string& a, const std::string& b) {
  nn::SafeTensors A = nn::load_safetensors(a), B = nn::load_safetensors(b);
  REQUIRE(A.tensors.size() == B.tensors.size());
  double worst = 0;
  for (auto& [name, t] : A.tensors) {
    const Tensor* u = B.find(name);
    REQUIRE(u != nullptr);
    REQUIRE(u->numel() == t.numel());
    double d = 0, n = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      d += ((double)t[i] - (*u)[i]) * ((double)t[i] - (*u)[i]);
      n += (double)t[i] * t[i];
    }
    worst = std::max(worst, std::sqrt(d) / std::max(std::sqrt(n), 1e-30));
  }
  return worst;
}

// Runs `args` (a vmoer train command) three ways: mpirun -np 2; one process
// with the batch in the same 2 shards; one process with the batch in one
// piece. The first two must agree bit for bit (logs and checkpoints), the
// third to the stated tolerance (docs/SCALE.md): losses 1e-5 relative,
// parameters and AdamW moments 1e-4 relative L2 per tensor.
void check_np2_equals_np1(const Scratch& d, const std::string& args, const std::string& tag) {
  INFO(tag);
  Out two = vmoer(args + " --out " + d / (tag + "-np2"), 2);
  REQUIRE_MESSAGE(two.rc == 0, two.text);
  Out shards = vmoer(args + " --batch-shards 2 --out " + d / (tag + "-s2"));
  REQUIRE_MESSAGE(shards.rc == 0, shards.text);
  Out one = vmoer(args + " --out " + d / (tag + "-s1"));
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  auto l2 = steps_of(d / (tag + "-np2")), ls = steps_of(d / (tag + "-s2")), l1 = steps_of(d / (tag + "-s1"));
  REQUIRE(l2.size() >= 3);
  CHECK(l2 == ls);
  for (const char* f : {"last.safetensors", "best.safetensors"})
    CHECK_MESSAGE(slurp(d / (tag + "-np2/") + f) == slurp(d / (tag + "-s2/") + f), f);
  REQUIRE(l1.size() == l2.size());
  bool all_equal = true;
  for (size_t i = 0; i < l1.size(); ++i) {
    double a = l1[i]["loss"], b = l2[i]["loss"];
    CHECK(std::abs(a - b) <= 1e-5 * std::abs(a));
    all_equal = all_equal && a == b;
  }
  CHECK(max_rel_diff(d / (tag + "-s1/last.safetensors"), d / (tag + "-np2/last.safetensors")) < 1e-4);
  (void)all_equal;  // the one-piece run may or may not round the same way; the tolerance is the claim
}
}  // namespace

TEST_CASE("data parallel: mpirun -np 2 equals one process with 2 batch shards bit for bit, in every stage") {
  if (!mpi_ready()) return;
  Scratch d;
  // pretraining (LM), with gradient accumulation and router jitter (its
  // noise keyed by the row in the whole batch)
  check_np2_equals_np1(d, kPretrain + " --steps 5 --eval-every 2 --grad-accum 2 --router-jitter 0.1", "pretrain");
  // fine-tuning (MC task), then stage 2 with two Bayesian routers: mfvr
  // with 2 training samples, vtsr with a lognormal temperature (both draw
  // noise per row), on the fine-tuned model
  check_np2_equals_np1(d, "train --stage finetune --steps 4 --eval-every 2" + kTask, "finetune");
  const std::string ft = d / "finetune-s1/best.safetensors";
  check_np2_equals_np1(d, "train --stage router --router mfvr --bayes-layers 1 --train-samples 2 --steps 4 "
                          "--eval-every 2 --init " + ft + kTask, "router-mfvr");
  check_np2_equals_np1(d, "train --stage router --router vtsr --temp-posterior lognormal --bayes-layers 0,1 --steps 3 "
                          "--eval-every 3 --init " + ft + kTask, "router-vtsr");
  // The log says how the run was laid out; the checkpoint records the shards.
  std::ifstream f(d / "pretrain-np2/log.jsonl");
  std::string first;
  std::getline(f, first);
  CHECK(json::parse(first)["ranks"] == 2);
  CHECK(exp::read_checkpoint_state(d / "pretrain-np2/last.safetensors").batch_shards == 2);
  CHECK(exp::read_checkpoint_state(d / "pretrain-s1/last.safetensors").batch_shards == 1);
}

TEST_CASE("data parallel: a checkpoint of np = 2 resumes with np = 1 and gives the uninterrupted run's bytes") {
  if (!mpi_ready()) return;
  Scratch d;
  // A constant learning rate (--min-lr-ratio 1): the schedule does not depend on --steps.
  const std::string args = kPretrain + " --eval-every 3 --min-lr-ratio 1";
  REQUIRE(vmoer(args + " --steps 6 --out " + d / "full", 2).rc == 0);
  REQUIRE(vmoer(args + " --steps 3 --out " + d / "part", 2).rc == 0);
  Out r = vmoer(args + " --steps 6 --resume --out " + d / "part");
  REQUIRE_MESSAGE(r.rc == 0, r.text);
  CHECK_MESSAGE(r.text.find("--batch-shards 2 (the checkpoint's), continued by 1 rank") != std::string::npos, r.text);
  CHECK(slurp(d / "full/last.safetensors") == slurp(d / "part/last.safetensors"));
  CHECK(slurp(d / "full/best.safetensors") == slurp(d / "part/best.safetensors"));
  // Three ranks cannot split 2 shards: one line, before any work.
  Out bad = vmoer(args + " --steps 8 --resume --out " + d / "part", 3);
  CHECK(bad.rc != 0);
  CHECK_MESSAGE(bad.text.find("vmoer: --batch-shards 2 (the checkpoint's) is not a multiple of the 3 ranks") !=
                    std::string::npos, bad.text);
}

// A fine-tuned model (fine-tuning flags ft_flags) with an mfvr stage 2 on
// layer 1, in d; returns the `vmoer eval` command of its checkpoint with
// --batch B: S = 3 router samples, the predictive arm, stability and
// sensitivity, OOD sets of 10 (every kind of pass an evaluation makes).
static std::string mfvr_eval(const Scratch& d, const std::string& ft_flags, int B) {
  REQUIRE(vmoer("train --stage finetune --steps 2 --eval-every 2" + ft_flags + kTask + " --out " + d / "ft").rc == 0);
  REQUIRE(vmoer("train --stage router --router mfvr --bayes-layers 1 --steps 2 --eval-every 2 --init " +
                d / "ft/best.safetensors" + kTask + " --out " + d / "r").rc == 0);
  return "eval --ckpt " + d / "r/best.safetensors" + " --data-dir " + kFix +
         " --samples 3 --mi-samples 2 --stability --gammas 0.01 --ood-size 10 --batch " + std::to_string(B) +
         " --sensitivity";
}

TEST_CASE("data parallel: vmoer eval split over 2 ranks gives one process's predictions and metrics") {
  if (!mpi_ready()) return;
  Scratch d;
  // --batch 1: every prompt its own batch, so both ranks have batches of every
  // set (the fixture's test split is small): every pass is split
  const std::string e = mfvr_eval(d, "", 1);
  Out one = vmoer(e + " --out " + d / "e1");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  Out two = vmoer(e + " --out " + d / "e2", 2);
  REQUIRE_MESSAGE(two.rc == 0, two.text);
  CHECK(slurp(d / "e1/probs_test.csv") == slurp(d / "e2/probs_test.csv"));
  json a = json::parse(slurp(d / "e1/eval.json")), b = json::parse(slurp(d / "e2/eval.json"));
  CHECK(b["provenance"]["ranks"].get<std::string>().rfind("2 ranks", 0) == 0);
  a.erase("provenance");
  b.erase("provenance");
  CHECK(a == b);
  CHECK(a["ood"].size() >= 2);
  CHECK(a.contains("stability"));
  CHECK(a.contains("predictive"));
}

TEST_CASE("data parallel: bytes per step match docs/SCALE.md's formulae") {
  if (!mpi_ready()) return;
  Scratch d;
  // Small buckets (0.01 MiB = 2621 floats) so the gradient goes in several.
  const double bucket_mb = 0.01;
  Out r = vmoer(kPretrain + " --steps 4 --eval-every 100 --grad-accum 2 --bucket-mb 0.01 --out " + d / "b", 2);
  REQUIRE_MESSAGE(r.rc == 0, r.text);
  std::ifstream f(d / "b/log.jsonl");
  std::string line;
  std::getline(f, line);
  json start = json::parse(line);
  const int64_t P = start["trainable"];  // trainable floats
  nn::SafeTensors ck = nn::load_safetensors(d / "b/best.safetensors");
  const int64_t Tn = (int64_t)ck.tensors.size();  // trainable tensors (every one trains in pretraining)
  const int64_t N = 2, A = 2, Sr = 1, L = 2, E = 4, LT = 0;
  const int64_t bucket = (int64_t)(bucket_mb * (1 << 20) / 4);
  // per micro-batch: the expert-count exchange, the loss exchange, the gradient all-reduce; per step: 2 flags
  const uint64_t grad = A * dist::allreduce_bytes(P, bucket, N, 0);
  const uint64_t ex1 = 8 * (N - 1) + (N - 1) * Sr * L * (24 + 16 * E);
  const uint64_t ex2 = 8 * (N - 1) + (N - 1) * (8 + 8 + Tn + Sr * (56 + 8 + 32 * LT));
  const uint64_t want = grad + A * (ex1 + ex2) + 2 * 9 * (N - 1);
  int n = 0;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    if (!j.contains("step") || j.contains("event") || j["step"] == 4) continue;  // step 4 validates
    CHECK(j["comm_grad_bytes"].get<uint64_t>() == grad);
    CHECK(j["comm_bytes"].get<uint64_t>() == want);
    ++n;
  }
  CHECK(n == 3);
  CHECK(grad == A * 4 * (uint64_t)P);  // two ranks: each sends 4 bytes per gradient float per micro-batch
  CHECK(P > bucket);                    // several buckets
}

TEST_CASE("data parallel faults: a NaN on one rank, a killed rank, a hung rank: one line, bounded time") {
  if (!mpi_ready()) return;
  Scratch d;
  const std::string args = kPretrain + " --steps 8 --eval-every 2";
  auto one_line = [](const Out& o, const std::string& want) {
    int n = 0;
    std::istringstream in(o.text);
    std::string l;
    while (std::getline(in, l)) n += l.rfind("vmoer: ", 0) == 0;
    CHECK_MESSAGE(n == 1, o.text);
    CHECK_MESSAGE(o.text.find(want) != std::string::npos, o.text);
  };
  // A NaN in a router weight of rank 1 at step 3: every rank stops at step 3.
  Out nan = sh("VMOER_TEST_INJECT_NAN=3:param VMOER_TEST_INJECT_RANK=1 " + kMpirun +
               "-x VMOER_TEST_INJECT_NAN -x VMOER_TEST_INJECT_RANK " + kBin + " " + args + " --threads 1 --out " + d / "nan");
  CHECK(nan.rc == 1);
  one_line(nan, "vmoer: rank 1: step 3: loss is nan");
  CHECK(nan.text.find("last good checkpoint: " + d / "nan/last.safetensors (step 2)") != std::string::npos);
  // Rank 1 killed (SIGKILL) at the start of step 5: rank 0 names it within a
  // few seconds (mpirun's SIGTERM, then 0.3 s of grace) and the checkpoint of
  // step 4 is whole.
  Out kill = sh(kMpirun + "-x VMOER_TEST_RANK_FAULT=1:5:kill " + kBin + " " + args + " --threads 1 --out " + d / "kill");
  CHECK(kill.rc != 0);
  one_line(kill, "vmoer: step 5: rank 1 did not answer");
  CHECK(kill.text.find("last good checkpoint: " + d / "kill/last.safetensors (step 4)") != std::string::npos);
  CHECK(kill.seconds < 30);
  CHECK(exp::read_checkpoint_state(d / "kill/last.safetensors").step == 4);
  // Rank 1 hangs at step 5: rank 0 gives up after --dist-timeout 2 s.
  Out hang = sh(kMpirun + "-x VMOER_TEST_RANK_FAULT=1:5:hang " + kBin + " " + args + " --threads 1 --dist-timeout 2 " +
                "--out " + d / "hang");
  CHECK(hang.rc == 1);
  one_line(hang, "vmoer: step 5: rank 1 did not answer in the expert-count exchange (no message within 2 s");
  CHECK(hang.seconds < 30);
  CHECK(exp::read_checkpoint_state(d / "hang/last.safetensors").step == 4);
  for (const char* dir : {"nan", "kill", "hang"})
    for (auto& e : fs::directory_iterator(d / dir))  // a temp file at most, never a torn checkpoint
      CHECK_MESSAGE(e.path().filename().string().find(".safetensors.tmp") == std::string::npos, e.path());
}

TEST_CASE("data parallel on GPUs: --device cuda at np = 2 equals np = 1 with 2 shards (NCCL with a GPU per rank)") {
  if (!mpi_ready()) return;
#ifndef VMOER_HAVE_CUDA
  MESSAGE("SKIPPED: data parallelism on GPUs: this build has no CUDA backend");
#else
  if (!kernels::cuda::cuda_device_available()) {
    MESSAGE("SKIPPED (no CUDA device): data parallelism on GPUs — the NCCL all-reduce is compiled (VMOER_NCCL "
            << std::string(dist::nccl_built() ? "on" : "off") << ") but was not run");
    return;
  }
  Scratch d;
  // A GPU per rank: NCCL (2 ranks: a + b = b + a, the same bits as the one-process tree); one GPU for both
  // ranks: the device gradients go through the host's all-reduce. Either way the bits of one process.
  MESSAGE("GPUs: " << kernels::cuda::cuda_device_count()
                   << std::string(kernels::cuda::cuda_device_count() >= 2 && dist::nccl_built() ? " (NCCL)"
                                                                                              : " (host all-reduce)"));
  const std::string args = kPretrain + " --device cuda --steps 4 --eval-every 2";
  Out two = vmoer(args + " --out " + d / "np2", 2);
  REQUIRE_MESSAGE(two.rc == 0, two.text);
  Out one = vmoer(args + " --batch-shards 2 --out " + d / "s2");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  CHECK(steps_of(d / "np2") == steps_of(d / "s2"));
  CHECK(slurp(d / "np2/last.safetensors") == slurp(d / "s2/last.safetensors"));
#endif
}

TEST_CASE("data parallel: vmoer reproduce under mpirun runs every stage on both ranks; rank 0 writes what one process does") {
  if (!mpi_ready()) return;
  Scratch d;
  const std::string r = "reproduce --smoke --track text --methods det,mfvr --data-dir " + kFix;
  Out one = vmoer(r + " --batch-shards 2 --out " + d / "one");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  Out two = vmoer(r + " --out " + d / "two", 2);
  REQUIRE_MESSAGE(two.rc == 0, two.text);
  // The same stage keys (the shards, not the rank count, are in them) and the same checkpoints.
  int stages = 0;
  for (auto& e : fs::directory_iterator(d / "one/stages")) {
    std::string name = e.path().filename().string();
    CHECK_MESSAGE(slurp(e.path().string() + "/best.safetensors") == slurp(d / "two/stages/" + name + "/best.safetensors"),
                  name);
    ++stages;
  }
  CHECK(stages == 3);
  // The same table but for its command line and wall time.
  auto body = [](const std::string& t) { return t.substr(0, t.find("Built as:")); };
  CHECK(body(slurp(d / "one/table.md")) == body(slurp(d / "two/table.md")));
  CHECK(json::parse(slurp(d / "two/results.json"))["provenance"]["ranks"].get<std::string>().rfind("2 ranks", 0) == 0);
  // With the experts sharded over the 2 ranks (every stage, and the
  // evaluations): the same table again.
  Out ep = vmoer(r + " --expert-parallel 2 --out " + d / "ep", 2);
  REQUIRE_MESSAGE(ep.rc == 0, ep.text);
  CHECK(body(slurp(d / "one/table.md")) == body(slurp(d / "ep/table.md")));
}

// ---- expert parallelism (--expert-parallel P; docs/SCALE.md §8) --------------------------------------

TEST_CASE("expert parallel: the global capacity keeps each expert's first C assignments in (member, token) order") {
  // two members, E = 2, K = 1: member 0 wants (3, 1), member 1 wants (2, 2); 4 + 4 real tokens
  const std::vector<std::vector<int64_t>> wanted{{3, 1}, {2, 2}};
  // dropless: everything
  CHECK(nn::ep_kept_counts(wanted, {4, 4}, 1, 2, 0.0) == std::vector<int64_t>{3, 1, 2, 2});
  // cf 1: C = ⌈1 · 8 · 1 / 2⌉ = 4 per expert: expert 0 keeps member 0's 3, then 1 of member 1's 2
  CHECK(nn::ep_kept_counts(wanted, {4, 4}, 1, 2, 1.0) == std::vector<int64_t>{3, 1, 1, 2});
  // cf 0.5: C = 2: expert 0 keeps 2 of member 0's, none of member 1's; expert 1 keeps member 0's 1, then 1
  CHECK(nn::ep_kept_counts(wanted, {4, 4}, 1, 2, 0.5) == std::vector<int64_t>{2, 1, 0, 1});
  // one member: the single-process plan's capacity (plan_dispatch)
  std::vector<int32_t> experts{0, 0, 0, 1, 1, 0};  // N = 6, K = 1
  std::vector<uint8_t> mask(6, 1);
  nn::DispatchPlan p = nn::plan_dispatch(experts, 6, 1, 2, mask, 0.5);
  CHECK(nn::ep_kept_counts({p.wanted}, {6}, 1, 2, 0.5) == p.counts);
  nn::DispatchPlan q = nn::plan_dispatch_capped(experts, 6, 1, 2, mask, {2, 5});
  CHECK(q.counts == std::vector<int64_t>{2, 2});
  CHECK(q.dropped == 2);
  CHECK(q.token == std::vector<int32_t>{0, 1, 3, 4});  // expert 0's first two, then expert 1's
}

TEST_CASE("expert parallel: --expert-parallel 2 at np = 2 equals one process with 2 batch shards bit for bit") {
  if (!mpi_ready()) return;
  Scratch d;
  // Every rank computes its shard's router; the rows of experts 2, 3 (0, 1)
  // go to rank 1 (0), each source's rows through their own products, and
  // come back to be combined in one process's order: the same bits as one
  // process with the batch in the same 2 shards (dropless).
  auto same = [&](const std::string& args, const std::string& tag) {
    INFO(tag);
    Out two = vmoer(args + " --expert-parallel 2 --out " + d / (tag + "-ep2"), 2);
    REQUIRE_MESSAGE(two.rc == 0, two.text);
    Out one = vmoer(args + " --batch-shards 2 --out " + d / (tag + "-s2"));
    REQUIRE_MESSAGE(one.rc == 0, one.text);
    auto a = steps_of(d / (tag + "-ep2")), b = steps_of(d / (tag + "-s2"));
    REQUIRE(a.size() >= 3);
    CHECK(a == b);
    for (const char* f : {"last.safetensors", "best.safetensors"})
      CHECK_MESSAGE(slurp(d / (tag + "-ep2/") + f) == slurp(d / (tag + "-s2/") + f), f);
    std::ifstream f(d / (tag + "-ep2/log.jsonl"));
    std::string first;
    std::getline(f, first);
    CHECK(json::parse(first)["expert_parallel"] == 2);
  };
  // pretraining with gradient accumulation and router jitter; fine-tuning
  // (MC task); stage 2 with mfvr and 2 training samples (routing before
  // dispatch: the Bayesian router is unchanged)
  same(kPretrain + " --steps 3 --eval-every 2 --grad-accum 2 --router-jitter 0.1", "pretrain");
  same("train --stage finetune --steps 3 --eval-every 3" + kTask, "finetune");
  same("train --stage router --router mfvr --bayes-layers 1 --train-samples 2 --steps 3 --eval-every 3 --init " +
           d / "finetune-s2/best.safetensors" + kTask,
       "router-mfvr");
}

TEST_CASE("expert parallel: an --expert-parallel 2 checkpoint resumes in one process; the capacity is global") {
  if (!mpi_ready()) return;
  Scratch d;
  const std::string args = kPretrain + " --eval-every 3 --min-lr-ratio 1";
  // 3 steps with 2 expert shards, then 3 more in one process (the
  // checkpoint holds every expert; it keeps its 2 batch shards): the bytes
  // of 6 steps in one process with 2 shards
  REQUIRE(vmoer(args + " --steps 3 --expert-parallel 2 --out " + d / "part", 2).rc == 0);
  Out r = vmoer(args + " --steps 6 --resume --out " + d / "part");
  REQUIRE_MESSAGE(r.rc == 0, r.text);
  REQUIRE(vmoer(args + " --steps 6 --batch-shards 2 --out " + d / "full").rc == 0);
  CHECK(slurp(d / "full/last.safetensors") == slurp(d / "part/last.safetensors"));
  CHECK(slurp(d / "full/best.safetensors") == slurp(d / "part/best.safetensors"));
  // With a capacity the two ranks' tokens share it, kept in one process's
  // order: the expert load (kept and dropped per expert and layer) of every
  // step is that of one process with the batch in one piece, the losses
  // equal to rounding (the shards' sums are grouped differently).
  const std::string cap = kPretrain + " --steps 3 --eval-every 3 --capacity-factor 0.75";
  Out two = vmoer(cap + " --expert-parallel 2 --out " + d / "cap-ep2", 2);
  REQUIRE_MESSAGE(two.rc == 0, two.text);
  REQUIRE(vmoer(cap + " --out " + d / "cap-s1").rc == 0);
  auto a = steps_of(d / "cap-ep2"), b = steps_of(d / "cap-s1");
  REQUIRE(a.size() == b.size());
  REQUIRE(a.size() >= 3);
  int64_t dropped = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i]["layers"] == b[i]["layers"]);
    for (auto& l : a[i]["layers"]) dropped += l.value("dropped", 0);
    CHECK(std::abs(a[i]["loss"].get<double>() - b[i]["loss"].get<double>()) <= 1e-5 * std::abs(b[i]["loss"].get<double>()));
  }
  CHECK(dropped > 0);  // the capacity bit
}

TEST_CASE("expert parallel: vmoer eval with the experts sharded over 2 and 4 ranks gives one process's predictions and metrics") {
  if (!mpi_ready()) return;
  Scratch d;
  // A capacity (0.75) that drops assignments: each batch keeps its own, as in
  // one process (RouteCtx::ep_own_capacity), however the group's batches differ.
  // --batch 5: the fixture's 3 test prompts are one batch and each OOD set of
  // 10 two, so most ranks have fewer batches than others and pad; every pass
  // goes through the sharded experts
  const std::string e = mfvr_eval(d, " --capacity-factor 0.75", 5);
  Out one = vmoer(e + " --out " + d / "e1");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  json a = json::parse(slurp(d / "e1/eval.json"));
  a.erase("provenance");
  CHECK(a["ood"].size() >= 2);
  CHECK(a.contains("stability"));
  CHECK(a.contains("predictive"));
  // np = 2 with P = 2; np = 4 with P = 4 (one expert per rank) and with P = 2 (2 groups)
  for (auto [np, P] : {std::pair{2, 2}, std::pair{4, 4}, std::pair{4, 2}}) {
    const std::string tag = "np" + std::to_string(np) + "-ep" + std::to_string(P);
    INFO(tag);
    Out r = vmoer(e + " --expert-parallel " + std::to_string(P) + " --out " + d / tag, np);
    REQUIRE_MESSAGE(r.rc == 0, r.text);
    CHECK(r.text.find("eval: experts sharded over " + std::to_string(P) + " ranks per group (" + std::to_string(4 / P) +
                      " of 4 per MoE layer on this rank)") != std::string::npos);
    CHECK(slurp(d / "e1/probs_test.csv") == slurp(d / (tag + "/probs_test.csv")));
    CHECK(slurp(d / "e1/scores.csv") == slurp(d / (tag + "/scores.csv")));
    json b = json::parse(slurp(d / (tag + "/eval.json")));
    CHECK(b["provenance"]["expert_parallel"]["ranks_per_group"] == P);
    CHECK(b["provenance"]["expert_parallel"]["bytes_sent_rank0"].get<uint64_t>() > 0);
    b.erase("provenance");
    CHECK(a == b);
  }
}

TEST_CASE("expert parallel: bad layouts stop in one line with exit code 2") {
  Scratch d;
  Out one = vmoer(kPretrain + " --steps 2 --expert-parallel 2 --out " + d / "a");
  CHECK(one.rc == 2);
  CHECK_MESSAGE(one.text.find("vmoer: --expert-parallel 2 does not divide the 1 rank ") != std::string::npos, one.text);
  if (!mpi_ready()) return;
  std::string three = kPretrain;
  three.replace(three.find("--experts 4"), 11, "--experts 3");
  Out e3 = vmoer(three + " --steps 2 --expert-parallel 2 --out " + d / "b", 2);
  CHECK(e3.rc == 2);
  CHECK_MESSAGE(e3.text.find("vmoer: --expert-parallel 2 does not divide the 3 experts of each MoE layer") !=
                    std::string::npos, e3.text);
  int lines = 0;
  for (size_t at = e3.text.find("vmoer:"); at != std::string::npos; at = e3.text.find("vmoer:", at + 1)) ++lines;
  CHECK_MESSAGE(lines == 1, e3.text);
}

TEST_CASE("expert parallel: bytes per step match docs/SCALE.md's formulae") {
  if (!mpi_ready()) return;
  Scratch d;
  Out r = vmoer(kPretrain + " --steps 3 --eval-every 100 --grad-accum 2 --expert-parallel 2 --out " + d / "b", 2);
  REQUIRE_MESSAGE(r.rc == 0, r.text);
  std::ifstream f(d / "b/log.jsonl");
  std::string line;
  std::getline(f, line);
  json start = json::parse(line);
  const int64_t P = start["trainable"];
  nn::SafeTensors ck = nn::load_safetensors(d / "b/best.safetensors");
  const int64_t Tn = (int64_t)ck.tensors.size();
  const int64_t N = 2, A = 2, Sr = 1, L = 2, E = 4, LT = 0, C = 16, EP = 2, Tx = 2 * L;  // GELU: w1, w2 per layer
  const int64_t bucket = 4 << 20 >> 2;
  // the non-expert floats D over both ranks; the experts' slices over their
  // replica sets of N/P = 1 rank: nothing (docs/SCALE.md §8)
  int64_t D = 0;
  for (auto& [name, t] : ck.tensors)
    if (!exp::dp::is_expert_tensor(name)) D += t.numel();
  REQUIRE(D < P);
  const uint64_t grad = A * dist::allreduce_bytes(D, bucket, N, 0);
  const uint64_t ex1 = 8 * (N - 1) + (N - 1) * Sr * L * (24 + 16 * E);
  const uint64_t ex2 = 8 * (N - 1) + (N - 1) * (8 + 8 + Tn + Sr * (56 + 8 + 32 * LT));
  int n = 0;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    if (!j.contains("step") || j.contains("event") || j["step"] == 3) continue;  // the last step validates
    const uint64_t rows = j["ep_rows"];
    // per micro-batch, shard and MoE layer: E + 1 counts to each other member;
    // per routed row that crosses: 4 C bytes in the dispatch, the combine,
    // and the two backward exchanges, counted once each way; per step the
    // gradient norm's block sums of the owned experts (8 bytes each) to each other member
    const uint64_t ep = A * Sr * L * 8 * (E + 1) * (EP - 1) + 8 * C * rows + 8 * (EP - 1) * Tx * (E / EP);
    CHECK(j["comm_ep_bytes"].get<uint64_t>() == ep);
    CHECK(j["comm_grad_bytes"].get<uint64_t>() == grad);
    CHECK(j["comm_bytes"].get<uint64_t>() == grad + A * (ex1 + ex2) + 2 * 9 * (N - 1) + ep);
    // rank 0 sends its tokens' assignments to experts 2, 3 and receives rank
    // 1's to experts 0, 1: at most every assignment of the micro-batch (4
    // examples x 16 positions x K = 2), per layer and micro-batch
    CHECK(rows > 0);
    CHECK(rows <= (uint64_t)(A * L * 4 * 16 * 2));
    ++n;
  }
  CHECK(n == 2);
}

TEST_CASE("expert parallel on GPUs: --device cuda --expert-parallel 2 at np = 2 equals np = 1 with 2 shards") {
  if (!mpi_ready()) return;
#ifndef VMOER_HAVE_CUDA
  MESSAGE("SKIPPED: expert parallelism on GPUs: this build has no CUDA backend");
#else
  if (!kernels::cuda::cuda_device_available()) {
    MESSAGE("SKIPPED (no CUDA device): expert parallelism on GPUs — the NCCL all-to-all (ncclSend/ncclRecv) is "
            "compiled (VMOER_NCCL " << std::string(dist::nccl_built() ? "on" : "off") << ") but was not run");
    return;
  }
  Scratch d;
  const std::string args = kPretrain + " --device cuda --steps 3 --eval-every 3";
  Out two = vmoer(args + " --expert-parallel 2 --out " + d / "ep2", 2);
  REQUIRE_MESSAGE(two.rc == 0, two.text);
  Out one = vmoer(args + " --batch-shards 2 --out " + d / "s2");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  CHECK(steps_of(d / "ep2") == steps_of(d / "s2"));
  CHECK(slurp(d / "ep2/last.safetensors") == slurp(d / "s2/last.safetensors"));
#endif
}

TEST_CASE("expert sharding: AdamW updates and keeps moments for the owned experts' slice only") {
  // Two experts of (2, 3) in one tensor; member 1 of 2 owns expert 1: floats [6, 12).
  nn::ParamStore full_ps, shard_ps;
  for (nn::ParamStore* ps : {&full_ps, &shard_ps}) {
    ps->normal("layers.0.moe.experts.w1", {2, 2, 3}, 1.0, 7);
    ps->normal("layers.0.norm1.g", {3}, 1.0, 8);
  }
  CHECK(exp::dp::is_expert_tensor("layers.0.moe.experts.w1"));
  CHECK(exp::dp::is_expert_tensor("layers.3.moe.experts.w_up"));
  CHECK(!exp::dp::is_expert_tensor("layers.0.moe.shared.w1"));
  CHECK(!exp::dp::is_expert_tensor("layers.0.moe.w_router"));
  const std::map<std::string, nn::OwnedSlice> owned = exp::dp::owned_slices(shard_ps, 2, 2, 1);
  REQUIRE(owned.size() == 1);
  const nn::OwnedSlice& o = owned.at("layers.0.moe.experts.w1");
  CHECK(o.first == 6);
  CHECK(o.count == 6);
  CHECK(o.shape == Shape{1, 2, 3});
  const Tensor before = shard_ps.get("layers.0.moe.experts.w1").value().clone();
  nn::AdamWConfig c;
  c.clip = 0;
  nn::AdamW full(c), shard(c);
  shard.set_owned(owned);
  for (int step = 0; step < 3; ++step) {
    for (nn::ParamStore* ps : {&full_ps, &shard_ps})
      for (auto& [name, v] : ps->all()) {
        Tensor g(v.shape());
        for (int64_t i = 0; i < g.numel(); ++i) g[i] = 0.1f * (float)(i + 1) * (step % 2 ? -1.0f : 1.0f);
        v.grad() = g;
      }
    full.step(full_ps);
    shard.step(shard_ps);
  }
  CHECK(full.state_floats() == 2 * (12 + 3));
  CHECK(shard.state_floats() == 2 * (6 + 3));
  const Tensor a = full_ps.get("layers.0.moe.experts.w1").value(), b = shard_ps.get("layers.0.moe.experts.w1").value();
  for (int64_t i = 0; i < 12; ++i) {
    INFO(i);
    if (i >= 6) CHECK(a[i] == b[i]);  // the owned expert: the full update's bits
    else CHECK(b[i] == before[i]);    // the other expert: untouched (its owner updates it)
  }
  const Tensor& ms = shard.state().at("layers.0.moe.experts.w1").first;
  const Tensor& mf = full.state().at("layers.0.moe.experts.w1").first;
  CHECK(ms.shape() == Shape{1, 2, 3});
  for (int64_t i = 0; i < 6; ++i) CHECK(ms[i] == mf[6 + i]);
  // a loaded full state is cut to the slice; a state of another size is refused in one line
  nn::AdamW loaded(c);
  loaded.state()["layers.0.moe.experts.w1"] = {mf.clone(), mf.clone()};
  loaded.set_owned(owned);
  CHECK(loaded.state().at("layers.0.moe.experts.w1").first.numel() == 6);
  CHECK(loaded.state().at("layers.0.moe.experts.w1").first[0] == mf[6]);
  nn::AdamW bad(c);
  bad.state()["layers.0.moe.experts.w1"] = {Tensor({5}), Tensor({5})};
  CHECK_THROWS_WITH_AS(bad.set_owned(owned), doctest::Contains("has 5 floats, the parameter 12"), Error);
}

TEST_CASE("expert sharding: weights and optimizer state per rank halve for the experts; no expert all-reduce at N = P") {
  if (!mpi_ready()) return;
  Scratch d;
  const std::string args = kPretrain + " --steps 3 --eval-every 100 --grad-accum 2";
  Out ep = vmoer(args + " --expert-parallel 2 --out " + d / "ep", 2);
  REQUIRE_MESSAGE(ep.rc == 0, ep.text);
  Out dp2 = vmoer(args + " --out " + d / "dp", 2);
  REQUIRE_MESSAGE(dp2.rc == 0, dp2.text);
  // the parameters by kind, from the checkpoint (every one trains in pretraining)
  int64_t dense = 0, experts = 0;
  nn::SafeTensors ck = nn::load_safetensors(d / "ep/best.safetensors");
  for (auto& [name, t] : ck.tensors) (exp::dp::is_expert_tensor(name) ? experts : dense) += t.numel();
  REQUIRE(experts > 0);
  // last.safetensors holds every expert's moments at full size (rank 0 gathered them)
  nn::SafeTensors last = nn::load_safetensors(d / "ep/last.safetensors");
  const Tensor* m = last.find("__adam_m__.layers.1.moe.experts.w2");
  REQUIRE(m != nullptr);
  CHECK(m->shape() == Shape{4, 16, 16});
  auto records = [&](const std::string& dir) {
    std::vector<json> out;
    std::ifstream f(dir + "/log.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      json j = json::parse(line);
      if (j.contains("step") && !j.contains("event")) out.push_back(j);
    }
    return out;
  };
  const int64_t A = 2, bucket = 4 << 20 >> 2;
  int n = 0;
  for (const json& j : records(d / "ep")) {
    // rank 0 holds the weights and (m, v) of the non-expert parameters and of experts 0, 1 of 4
    CHECK(j["param_floats"].get<int64_t>() == dense + experts / 2);
    CHECK(j["adam_state_floats"].get<int64_t>() == 2 * (dense + experts / 2));
    CHECK(j["comm_expert_grad_bytes"].get<uint64_t>() == 0);  // N = P: one owner per expert, nothing to sum
    CHECK(j["comm_grad_bytes"].get<uint64_t>() == A * dist::allreduce_bytes(dense, bucket, 2, 0));
    ++n;
  }
  CHECK(n == 3);
  for (const json& j : records(d / "dp")) {
    CHECK(j["param_floats"].get<int64_t>() == dense + experts);
    CHECK(j["adam_state_floats"].get<int64_t>() == 2 * (dense + experts));
  }
}

TEST_CASE("expert sharding: np = 4 with 2 expert shards sums expert gradients over the 2-rank replica set") {
  if (!mpi_ready()) return;
  Scratch d;
  // --batch 4: one example per shard; the replica sets {0, 2} and {1, 3}
  const std::string args = kPretrain + " --steps 3 --eval-every 2 --grad-accum 2 --router-jitter 0.1";
  Out four = vmoer(args + " --expert-parallel 2 --out " + d / "ep4", 4);
  REQUIRE_MESSAGE(four.rc == 0, four.text);
  Out one = vmoer(args + " --batch-shards 4 --out " + d / "s4");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  // the one-process bits: the expert gradient of group g's owner is its two
  // shards' sum, the replica all-reduce adds the groups' in the tree
  CHECK(steps_of(d / "ep4") == steps_of(d / "s4"));
  CHECK(slurp(d / "ep4/last.safetensors") == slurp(d / "s4/last.safetensors"));
  CHECK(slurp(d / "ep4/best.safetensors") == slurp(d / "s4/best.safetensors"));
  int64_t dense = 0, experts = 0;
  nn::SafeTensors ck = nn::load_safetensors(d / "ep4/best.safetensors");
  for (auto& [name, t] : ck.tensors) (exp::dp::is_expert_tensor(name) ? experts : dense) += t.numel();
  const int64_t A = 2, bucket = 4 << 20 >> 2;
  std::ifstream f(d / "ep4/log.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    if (!j.contains("step") || j.contains("event") || j["step"] != 1) continue;
    // docs/SCALE.md §8: rank 0 sends A · allreduce_bytes(X/P, bucket, N/P, 0) for the experts
    // (its slice, over the replica set of N/P = 2) and A · allreduce_bytes(D, bucket, N, 0) for the rest
    const uint64_t xb = A * dist::allreduce_bytes(experts / 2, bucket, 2, 0);
    CHECK(j["comm_expert_grad_bytes"].get<uint64_t>() == xb);
    CHECK(xb == A * 4 * (uint64_t)(experts / 2));  // two replicas: 4 bytes per owned float per micro-batch
    CHECK(j["comm_grad_bytes"].get<uint64_t>() == xb + A * dist::allreduce_bytes(dense, bucket, 4, 0));
    CHECK(j["adam_state_floats"].get<int64_t>() == 2 * (dense + experts / 2));
    CHECK(j["param_floats"].get<int64_t>() == dense + experts / 2);
    ++n;
  }
  CHECK(n == 1);
}

TEST_CASE("expert sharding: P = 4 (one expert per rank) is deterministic run to run and one process with 4 shards to rounding") {
  if (!mpi_ready()) return;
  Scratch d;
  // At P > 2 an owner adds its P sources' weight gradients in the tape's
  // order, not the summation tree's (docs/SCALE.md §8): the same bits run to
  // run, one process's to rounding.
  const std::string args = kPretrain + " --steps 3 --eval-every 3 --grad-accum 2 --router-jitter 0.1";
  Out a = vmoer(args + " --expert-parallel 4 --out " + d / "a", 4);
  REQUIRE_MESSAGE(a.rc == 0, a.text);
  Out b = vmoer(args + " --expert-parallel 4 --out " + d / "b", 4);
  REQUIRE_MESSAGE(b.rc == 0, b.text);
  CHECK(steps_of(d / "a") == steps_of(d / "b"));
  CHECK(slurp(d / "a/last.safetensors") == slurp(d / "b/last.safetensors"));
  Out one = vmoer(args + " --batch-shards 4 --out " + d / "s4");
  REQUIRE_MESSAGE(one.rc == 0, one.text);
  auto x = steps_of(d / "a"), y = steps_of(d / "s4");
  REQUIRE(x.size() == y.size());
  REQUIRE(x.size() >= 3);
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i].contains("loss"))
      CHECK(std::abs(x[i]["loss"].get<double>() - y[i]["loss"].get<double>()) <= 1e-5 * std::abs(y[i]["loss"].get<double>()));
  CHECK(max_rel_diff(d / "a/last.safetensors", d / "s4/last.safetensors") < 1e-4);
  const std::string log = slurp(d / "a/log.jsonl");
  json first = json::parse(log.substr(0, log.find('\n')));
  CHECK(first["expert_parallel"] == 4);
}

TEST_CASE("expert sharding: a one-process checkpoint resumes under --expert-parallel 2 with the uninterrupted bytes") {
  if (!mpi_ready()) return;
  Scratch d;
  const std::string args = kPretrain + " --eval-every 3 --min-lr-ratio 1";
  // 3 steps in one process with 2 shards, then 3 more at np = 2 with 2
  // expert shards (each rank keeps its experts' moments of the file): the
  // bytes of 6 steps in one process
  REQUIRE(vmoer(args + " --steps 3 --batch-shards 2 --out " + d / "part").rc == 0);
  Out r = vmoer(args + " --steps 6 --resume --expert-parallel 2 --out " + d / "part", 2);
  REQUIRE_MESSAGE(r.rc == 0, r.text);
  REQUIRE(vmoer(args + " --steps 6 --batch-shards 2 --out " + d / "full").rc == 0);
  CHECK(slurp(d / "full/last.safetensors") == slurp(d / "part/last.safetensors"));
  CHECK(slurp(d / "full/best.safetensors") == slurp(d / "part/best.safetensors"));
}

TEST_CASE("expert sharding: sharded weights are this member's experts; a full forward refuses them in one line") {
  nn::ModelConfig cfg;
  cfg.d_model = 8, cfg.n_experts = 4, cfg.top_k = 2, cfg.d_expert = 6;
  nn::RouterConfig rc;
  nn::ParamStore ps;
  nn::MoELayer moe(cfg, rc, false, ps, "layers.0.moe.", 3);
  const Tensor full = ps.get("layers.0.moe.experts.w2").value().clone();  // (4, 6, 8)
  exp::dp::shard_expert_weights(ps, 4, 2, 1);                             // member 1 of 2: experts 2, 3
  CHECK(exp::dp::expert_weights_sharded(ps, 4));
  const Tensor& mine = ps.get("layers.0.moe.experts.w2").value();
  REQUIRE(mine.shape() == Shape{2, 6, 8});
  for (int64_t i = 0; i < mine.numel(); ++i) REQUIRE(mine[i] == full[2 * 6 * 8 + i]);
  CHECK(ps.get("layers.0.moe.w_router").value().shape() == Shape{8, 4});  // the router stays whole
  // AdamW on a parameter that holds only its slice: the whole of it, state of the slice's shape
  nn::AdamWConfig c;
  nn::AdamW opt(c);
  opt.set_owned({{"layers.0.moe.experts.w2", nn::OwnedSlice{96, 96, 192, Shape{2, 6, 8}}}});
  for (auto& [name, v] : ps.all()) v.grad() = Tensor::full(v.shape(), 0.5f);
  opt.step(ps);
  CHECK(opt.state().at("layers.0.moe.experts.w2").first.shape() == Shape{2, 6, 8});
  CHECK(ps.get("layers.0.moe.experts.w2").value()[0] != full[96]);  // updated
  // a forward of the whole layer (evaluation) needs every expert
  Tensor xt({5, 8});
  for (int64_t i = 0; i < xt.numel(); ++i) xt[i] = 0.1f * (float)(i % 7);
  std::vector<uint8_t> mask(5, 1);
  nn::RouteCtx ctx;
  nn::MoEAux aux;
  CHECK_THROWS_WITH_AS(moe.forward(Var(xt), mask, ctx, aux),
                       doctest::Contains("the expert weights hold 2 of the 4 experts (sharded: gather them"), Error);
}
