// tests/test_reference.cpp — parity of our model with its PyTorch twin
// (reference/vmoer_twin.py). A small Model is built here, run forward and
// backward on a fixed batch, and written to a scratch directory as a real
// checkpoint (vm::exp::save_checkpoint) plus the batch and our results;
// reference/parity.py recomputes everything in the twin in float64 and float32
// and we compare logits, loss terms, routing and every parameter gradient.
//
// If /usr/bin/python3 cannot import torch the parity test says so loudly and
// fails under CI (which installs python3-torch); elsewhere it is skipped.
// Set VMOER_PARITY_VERBOSE=1 to print the error table of every case, and
// VMOER_KEEP_PARITY=1 to keep the scratch directory.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "autodiff/ops.h"
#include "core/philox.h"
#include "experiments/trainer.h"
#include "nn/checkpoint.h"
#include "nn/transformer.h"

namespace fs = std::filesystem;
using namespace vm;

namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kParity = std::string(VMOER_SOURCE_DIR) + "/reference/parity.py";
constexpr int kThreads = 2;  // torch threads = ours (make test runs with OMP_NUM_THREADS=2)
constexpr double kLbCoef = 0.01, kZCoef = 0.001;

struct Cmd {
  int status = -1;
  std::string out;
};
Cmd run_cmd(const std::string& cmd) {
  Cmd r;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE_MESSAGE(p != nullptr, "popen failed: ", cmd);
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, got);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// True when the twin can run. Otherwise says so loudly and fails under CI
// (which installs python3-torch); elsewhere the caller skips.
bool torch_available() {
  Cmd r = run_cmd(kPython + " -c 'import torch, numpy' 2>&1");
  if (r.status == 0) return true;
  MESSAGE("PyTorch parity NOT RUN: ", kPython, " cannot import torch/numpy (apt-get install python3-torch): ", r.out);
  if (std::getenv("CI")) FAIL("CI is set but PyTorch is unavailable");
  return false;
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("vmoer_test_reference_" + tag + "_" + std::to_string((long)::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    if (!std::getenv("VMOER_KEEP_PARITY")) fs::remove_all(path, ec);
  }
};

nn::ModelConfig small_config() {
  nn::ModelConfig c;
  c.kind = "lm";
  c.vocab = 259;
  c.max_seq = 16;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_experts = 4;
  c.top_k = 2;
  c.d_expert = 48;
  return c;
}

// Random init leaves the norms at g = 1, b = 0, the router near uniform and
// every pre-activation tiny (std 0.02 weights), where many mistakes vanish
// (GELU tanh vs erf differ by 1e-6 there). Perturb: random gains and biases,
// a decisive router (away from ties), O(1) attention scores, expert
// pre-activations and logits.
void perturb(nn::Model& m, uint64_t seed) {
  for (auto& [name, v] : m.params().all()) {
    Tensor& t = v.value();
    uint64_t s = nn::name_hash("perturb/" + name);
    bool gain = name.size() > 2 && name.compare(name.size() - 2, 2, ".g") == 0;
    bool bias = name.size() > 2 && name.compare(name.size() - 2, 2, ".b") == 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      float z = philox_normal(seed, s, (uint64_t)i);
      if (gain) t[i] = 1.0f + 0.3f * z;
      else if (bias) t[i] = 0.1f * z;
      else if (name.find("w_router") != std::string::npos) t[i] *= 25.0f;  // std 0.5
      else if (name.find("w_noise") != std::string::npos) t[i] = 0.3f * z;
      else if (name.find("w_qkv") != std::string::npos) t[i] *= 10.0f;     // std 0.2
      else if (name.find(".w1") != std::string::npos || name.find(".w_up") != std::string::npos)
        t[i] *= 15.0f;                                                        // std 0.3: pre-activations ~1.7
      else if (name == "tok_emb" || name == "head.w") t[i] *= 10.0f;         // logits ~1
    }
  }
}

// B = 2 sequences of T = 9 tokens; the last two positions of sequence 1 are
// padding (mask 0, target ignored); targets are the next token, the last
// position of each sequence ignored.
// For kind "vit": 2 images of 8x8 pixels in [0, 1] with class labels.
struct Batch {
  int B = 2, T = 9;
  std::vector<int32_t> ids, targets;
  std::vector<uint8_t> mask;
  Tensor pixels;
  std::vector<int32_t> labels;
};
Batch make_batch() {
  Batch b;
  int n = b.B * b.T;
  b.ids.resize(n);
  b.mask.assign(n, 1);
  for (int i = 0; i < n; ++i) b.ids[i] = (int32_t)(philox_u32(7, 11, (uint64_t)i) % 259);
  b.mask[b.T + 7] = b.mask[b.T + 8] = 0;
  b.ids[b.T + 7] = b.ids[b.T + 8] = 258;  // PAD
  b.targets.assign(n, -100);
  for (int s = 0; s < b.B; ++s)
    for (int t = 0; t + 1 < b.T; ++t)
      if (b.mask[s * b.T + t + 1]) b.targets[s * b.T + t] = b.ids[s * b.T + t + 1];
  b.pixels = Tensor({b.B, 64});
  for (int64_t i = 0; i < b.pixels.numel(); ++i) b.pixels[i] = philox_uniform(7, 12, (uint64_t)i);
  b.labels = {3, 8};
  return b;
}

struct Ours {
  Tensor logits;
  double loss = 0, ce = 0, lb = 0, z = 0;
  std::vector<std::vector<int32_t>> experts;  // per MoE layer (N, K)
};

// Forward + loss + backward, as the trainer does (loss = ce + 0.01 lb + 0.001 z).
Ours forward_backward(nn::Model& m, const Batch& b, bool training) {
  m.params().zero_grad();
  nn::ForwardOptions opt;
  opt.training = training;
  opt.seed = 5;
  bool vit = m.config().kind == "vit";
  auto res = vit ? m.forward_vit(b.pixels, opt) : m.forward_lm(b.ids, b.B, b.T, b.mask, {}, opt);
  Var ce = ops::cross_entropy(res.logits, vit ? b.labels : b.targets);
  Var loss = ops::add(ops::add(ce, ops::mul_scalar(res.lb_loss, kLbCoef)), ops::mul_scalar(res.z_loss, kZCoef));
  backward(loss);
  Ours o;
  o.logits = res.logits.value().clone();
  o.loss = loss.item();
  o.ce = ce.item();
  o.lb = res.lb_loss.item();
  o.z = res.z_loss.item();
  for (auto& a : res.moe) o.experts.push_back(a.route.experts);
  return o;
}

struct Case {
  std::string name;
  nn::ModelConfig mc;
  nn::RouterConfig rc;
};

std::vector<Case> parity_cases() {
  std::vector<Case> cs;
  {
    Case c{"rms-gelu-moe-all", small_config(), {}};
    cs.push_back(c);
  }
  {
    Case c{"layer-swiglu-shared-dense0-untied", small_config(), {}};
    c.mc.norm = "layer";
    c.mc.act = "swiglu";
    c.mc.shared_expert = true;
    c.mc.moe_layers = {1};  // layer 0 is a dense FFN
    c.mc.tied_head = false;
    cs.push_back(c);
  }
  {
    Case c{"rms-gelu-shared-capacity1", small_config(), {}};
    c.mc.shared_expert = true;
    c.mc.capacity_factor = 1.0;  // cap = ceil(16*2/4) = 8 per expert: some assignments are dropped
    cs.push_back(c);
  }
  {
    Case c{"layer-gelu-noisy-eval", small_config(), {}};
    c.mc.norm = "layer";
    c.rc.name = "noisy";  // evaluation mode: no noise, equals det
    cs.push_back(c);
  }
  {
    Case c{"rms-swiglu-shared-dense1", small_config(), {}};
    c.mc.act = "swiglu";
    c.mc.shared_expert = true;
    c.mc.moe_layers = {0};
    cs.push_back(c);
  }
  {
    Case c{"vit-layer-gelu-shared", small_config(), {}};
    c.mc.kind = "vit";
    c.mc.image_size = 8;  // 2x2 patches of 4x4 + class token: T = 5, bidirectional
    c.mc.patch = 4;
    c.mc.n_classes = 10;
    c.mc.norm = "layer";
    c.mc.shared_expert = true;
    cs.push_back(c);
  }
  return cs;
}

Tensor scalar1(double v) { return Tensor::from({(float)v}, {1}); }

double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, (double)std::abs(t[i]));
  return m;
}
// max |a − ref| / max(max |ref|, floor): error relative to the tensor's scale.
double rel_err(const Tensor& a, const Tensor& ref, double floor = 1e-30) {
  REQUIRE(a.numel() == ref.numel());
  double e = 0;
  for (int64_t i = 0; i < a.numel(); ++i) e = std::max(e, (double)std::abs((double)a[i] - (double)ref[i]));
  return e / std::max(max_abs(ref), floor);
}
double rel_scalar(double a, double ref) { return std::abs(a - ref) / std::max(std::abs(ref), 1e-30); }

std::string group_of(const std::string& name) {
  for (const char* tag : {"norm", "attn", "moe.w_router", "moe.experts", "moe.shared", "ffn", "emb", "head", "patch",
                          "cls_token"})
    if (name.find(tag) != std::string::npos) return tag;
  return "other";
}

}  // namespace

TEST_CASE("reference: the noisy router in evaluation mode equals det (bitwise); training adds noise") {
  nn::ModelConfig mc = small_config();
  nn::RouterConfig det, noisy;
  noisy.name = "noisy";
  nn::Model a(mc, det, 3), b(mc, noisy, 3);  // init is keyed by parameter name: identical shared weights
  perturb(a, 9);
  perturb(b, 9);                             // also makes w_noise non-zero
  REQUIRE(b.params().has("layers.0.moe.router.w_noise"));
  Batch batch = make_batch();
  Ours oa = forward_backward(a, batch, false), ob = forward_backward(b, batch, false);
  REQUIRE(oa.logits.numel() == ob.logits.numel());
  for (int64_t i = 0; i < oa.logits.numel(); ++i) REQUIRE(oa.logits[i] == ob.logits[i]);
  CHECK(oa.loss == ob.loss);
  CHECK(oa.experts == ob.experts);
  for (auto& [name, v] : a.params().all()) {
    const Var& w = b.params().get(name);
    REQUIRE(v.grad().defined());
    for (int64_t i = 0; i < v.numel(); ++i) REQUIRE(v.grad()[i] == w.grad()[i]);
  }
  CHECK(!b.params().get("layers.0.moe.router.w_noise").grad().defined());  // no path in evaluation
  Ours ot = forward_backward(b, batch, true);
  double diff = 0;
  for (int64_t i = 0; i < oa.logits.numel(); ++i) diff = std::max(diff, (double)std::abs(oa.logits[i] - ot.logits[i]));
  CHECK(diff > 0);  // training mode perturbs the router logits
}

TEST_CASE("reference: logits, losses, routing and gradients match the PyTorch twin (float64 and float32)") {
  if (!torch_available()) return;
  TempDir root("parity");
  Batch batch = make_batch();
  std::vector<Case> cases = parity_cases();
  std::vector<std::unique_ptr<nn::Model>> models;
  std::vector<Ours> ours;
  std::string dirs;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    fs::path dir = root.path / c.name;
    fs::create_directories(dir);
    models.push_back(std::make_unique<nn::Model>(c.mc, c.rc, 1234 + ci));
    nn::Model& m = *models.back();
    perturb(m, 77 + ci);
    ours.push_back(forward_backward(m, batch, false));
    exp::save_checkpoint((dir / "model.safetensors").string(), m, nullptr, exp::TrainState{});
    nn::SafeTensors bt;
    bt.metadata = {{"lb_coef", std::to_string(kLbCoef)}, {"z_coef", std::to_string(kZCoef)}, {"training", "0"}};
    Tensor ids({batch.B, batch.T}), tg({batch.B * batch.T}), mk({batch.B, batch.T});
    for (int i = 0; i < batch.B * batch.T; ++i) {
      ids[i] = (float)batch.ids[i];
      tg[i] = (float)batch.targets[i];
      mk[i] = batch.mask[i] ? 1.0f : 0.0f;
    }
    bt.tensors = {{"ids", ids}, {"targets", tg}, {"mask", mk}};
    if (c.mc.kind == "vit") {
      Tensor lab({batch.B});
      for (int i = 0; i < batch.B; ++i) lab[i] = (float)batch.labels[i];
      bt.tensors = {{"pixels", batch.pixels}, {"targets", lab}};
    }
    nn::save_safetensors((dir / "batch.safetensors").string(), bt);
    const Ours& o = ours.back();
    nn::SafeTensors os;
    os.tensors = {{"logits", o.logits}, {"loss", scalar1(o.loss)}, {"ce", scalar1(o.ce)},
                  {"lb", scalar1(o.lb)}, {"z", scalar1(o.z)}};
    for (auto& [name, v] : m.params().all())
      if (v.grad().defined()) os.tensors.push_back({"grad." + name, v.grad()});
    nn::save_safetensors((dir / "ours.safetensors").string(), os);
    dirs += " '" + dir.string() + "'";
  }
  Cmd r = run_cmd(kPython + " '" + kParity + "' --threads " + std::to_string(kThreads) + dirs + " 2>&1");
  REQUIRE_MESSAGE(r.status == 0, "parity.py failed:\n", r.out);
  bool verbose = std::getenv("VMOER_PARITY_VERBOSE") != nullptr;
  if (verbose) MESSAGE("parity.py (ours and twin-f32 vs twin-f64, rel. to max-abs, per group):\n", r.out);

  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    INFO("case ", c.name);
    nn::SafeTensors tw = nn::load_safetensors((root.path / c.name / "twin.safetensors").string());
    auto T = [&](const std::string& k) -> const Tensor& {
      const Tensor* t = tw.find(k);
      REQUIRE_MESSAGE(t != nullptr, "twin output lacks ", k);
      return *t;
    };
    const Ours& o = ours[ci];
    nn::Model& m = *models[ci];
    std::map<std::string, double> worst;  // per group: ours vs twin f64
    for (const char* tag : {"f64", "f32"}) {
      std::string p = std::string(tag) + ".";
      INFO("twin ", tag);
      // Routing: identical expert choices in every MoE layer (perturb() keeps the
      // router decisive, so no near-ties can flip between precisions).
      REQUIRE(o.experts.size() == (size_t)m.n_moe_layers());
      for (size_t l = 0; l < o.experts.size(); ++l) {
        const Tensor& te = T(p + "experts." + std::to_string(l));
        REQUIRE(te.numel() == (int64_t)o.experts[l].size());
        for (int64_t i = 0; i < te.numel(); ++i) CHECK_MESSAGE((int)te[i] == o.experts[l][i], "layer ", l, " slot ", i);
      }
      // Logits: float32 forward through 2 blocks. Relative to max |logit| the
      // rounding of ours (and of the float32 twin) against float64 is ~2e-7;
      // 1e-5 leaves 50x margin and still catches a changed norm epsilon, a
      // missing 1/sqrt(D) or a mis-sliced q/k/v (errors of 1e-2 and more).
      double el = rel_err(o.logits, T(p + "logits"));
      CHECK_MESSAGE(el < 1e-5, "logits rel err ", el);
      // Loss terms (loss, ce, lb, z): relative error; observed ~1e-7, bound 1e-5.
      double e_loss = rel_scalar(o.loss, T(p + "loss")[0]), e_ce = rel_scalar(o.ce, T(p + "ce")[0]);
      double e_lb = rel_scalar(o.lb, T(p + "lb")[0]), e_z = rel_scalar(o.z, T(p + "z")[0]);
      CHECK_MESSAGE(e_loss < 1e-5, "loss ", o.loss, " vs ", T(p + "loss")[0]);
      CHECK_MESSAGE(e_ce < 1e-5, "ce ", o.ce, " vs ", T(p + "ce")[0]);
      CHECK_MESSAGE(e_lb < 1e-5, "lb ", o.lb, " vs ", T(p + "lb")[0]);
      CHECK_MESSAGE(e_z < 1e-5, "z ", o.z, " vs ", T(p + "z")[0]);
      if (std::string(tag) == "f64") {
        worst["logits"] = el;
        worst["loss terms"] = std::max({e_loss, e_ce, e_lb, e_z});
      }
      // Gradients: the same set of parameters has a gradient on both sides; each
      // gradient within 1e-4 of its tensor's max-abs (float32 backward through
      // softmax/attention/norm chains: observed <= 1e-6 for ours and for the
      // float32 twin alike, so 1e-4 leaves 100x margin).
      for (auto& [name, v] : m.params().all()) {
        const Tensor* g = tw.find(p + "grad." + name);
        CHECK_MESSAGE(v.grad().defined() == (g != nullptr), name, ": gradient present in ours ",
                      v.grad().defined(), ", in the twin ", g != nullptr);
        if (!v.grad().defined() || !g) continue;
        double eg = rel_err(v.grad(), *g);
        CHECK_MESSAGE(eg < 1e-4, name, ": grad rel err ", eg, " (max |g| ", max_abs(*g), ")");
        if (std::string(tag) == "f64") {
          double& w = worst["grad " + group_of(name)];
          w = std::max(w, eg);
        }
      }
    }
    if (verbose) {
      std::string s;
      char buf[96];
      for (auto& [k, v] : worst) {
        std::snprintf(buf, sizeof buf, "  %-18s %.2e\n", (k + ":").c_str(), v);
        s += buf;
      }
      MESSAGE("case ", c.name, ": ours vs twin f64, max error relative to each tensor's max-abs:\n", s);
    }
  }
}
