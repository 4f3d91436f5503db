// experiments/train_guards.cpp — see train_guards.h.
#include "experiments/train_guards.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <stdexcept>
#include <vector>

#include "core/tensor.h"

namespace vm::exp {
namespace fs = std::filesystem;

std::string tensor_and_layer(const std::string& name) {
  static const std::regex layer_re("(^|\\.)layers\\.([0-9]+)\\.");
  std::smatch m;
  std::string where = std::regex_search(name, m, layer_re) ? " (layer " + m[2].str() + ")" : " (not in a layer)";
  return "'" + name + "'" + where;
}

std::string first_nonfinite_grad(nn::ParamStore& ps) {
  for (auto& [name, v] : ps.all()) {
    if (!v.grad().defined()) continue;
    const Tensor g = v.grad().to(Device::CPU);
    for (int64_t i = 0; i < g.numel(); ++i)
      if (!std::isfinite(g[i])) return name;
  }
  return "";
}

std::string nonfinite_grad_given_norm(nn::ParamStore& ps, double grad_norm) {
  return std::isfinite(grad_norm) ? std::string() : first_nonfinite_grad(ps);
}

std::string first_nonfinite_param(nn::ParamStore& ps) {
  for (auto& [name, v] : ps.all()) {
    const Tensor t = v.value().to(Device::CPU);
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(t[i])) return name;
  }
  return "";
}

std::string locate_nonfinite(nn::ParamStore& ps, const nn::ForwardResult& res) {
  std::string p = first_nonfinite_param(ps);
  if (!p.empty()) return "parameter " + tensor_and_layer(p) + " holds a non-finite value";
  for (auto& a : res.moe) {
    const Tensor pr = a.route.probs.value().to(Device::CPU);
    for (int64_t i = 0; i < pr.numel(); ++i)
      if (!std::isfinite(pr[i]))
        return "router probabilities of layer " + std::to_string(a.layer) + " are non-finite (parameters are finite)";
  }
  return "parameters and router probabilities are finite (the overflow is in the forward pass)";
}

NanInjection nan_injection(nn::ParamStore& ps) {
  NanInjection inj;
  const char* env = std::getenv("VMOER_TEST_INJECT_NAN");
  if (!env || !*env) return inj;
  std::string s = env;
  std::vector<std::string> parts;
  for (size_t i = 0, j; i <= s.size(); i = j + 1) {
    j = s.find(':', i);
    if (j == std::string::npos) j = s.size();
    parts.push_back(s.substr(i, j - i));
  }
  try {
    size_t pos = 0;
    inj.step = std::stoll(parts[0], &pos);
    if (pos != parts[0].size() || inj.step < 1) throw std::invalid_argument(s);
  } catch (const std::exception&) {
    fail("VMOER_TEST_INJECT_NAN: '" + s + "' is not STEP[:param|:grad][:NAME] with STEP >= 1");
  }
  if (parts.size() > 1) {
    if (parts[1] != "param" && parts[1] != "grad")
      fail("VMOER_TEST_INJECT_NAN: '" + parts[1] + "' is not param or grad");
    inj.grad = parts[1] == "grad";
  }
  if (parts.size() > 2) {
    inj.param = parts[2];
    if (!ps.has(inj.param)) fail("VMOER_TEST_INJECT_NAN: the model has no parameter '" + inj.param + "'");
  } else {
    for (auto& [name, v] : ps.all())
      if (v.requires_grad() && inj.param.empty()) inj.param = name;
    for (auto& [name, v] : ps.all())
      if (v.requires_grad() && name.find("w_router") != std::string::npos) {
        inj.param = name;
        break;
      }
  }
  std::fprintf(stderr, "VMOER_TEST_INJECT_NAN: NaN into the %s of '%s' at step %lld\n", inj.grad ? "gradient" : "value",
               inj.param.c_str(), (long long)inj.step);
  return inj;
}

RankFault rank_fault() {
  RankFault f;
  const char* env = std::getenv("VMOER_TEST_RANK_FAULT");
  if (!env || !*env) return f;
  std::string s = env;
  size_t a = s.find(':'), b = a == std::string::npos ? a : s.find(':', a + 1);
  std::string what = b == std::string::npos ? "" : s.substr(b + 1);
  try {
    if (b == std::string::npos || (what != "kill" && what != "hang")) throw std::invalid_argument(s);
    f.rank = std::stoi(s.substr(0, a));
    f.step = std::stoll(s.substr(a + 1, b - a - 1));
  } catch (const std::exception&) {
    fail("VMOER_TEST_RANK_FAULT: '" + s + "' is not RANK:STEP:kill or RANK:STEP:hang");
  }
  f.hang = what == "hang";
  return f;
}

void maybe_fault(const RankFault& f, int rank, int64_t step) {
  if (f.rank != rank || f.step != step) return;
  if (!f.hang) ::raise(SIGKILL);
  for (;;) ::sleep(1);  // until the job is torn down
}

void reserve_checkpoint_space(const std::string& out, nn::ParamStore& ps) {
  int64_t all = ps.count(), trainable = ps.count(true);
  // last = parameters + AdamW m and v of the trainable ones; best = parameters; + headers.
  int64_t bytes = 4 * (all + 2 * trainable) + 4 * all + (int64_t)ps.all().size() * 400 + (1 << 16);
  std::string probe = out + "/.space_probe." + std::to_string(::getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("--out: cannot create files in '" + out + "' (" + std::strerror(errno) + ")");
  int rc = ::posix_fallocate(fd, 0, (off_t)bytes);
  ::close(fd);
  ::unlink(probe.c_str());
  if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
    fail("--out: cannot reserve " + std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB for checkpoints in '" +
         out + "' (" + std::strerror(rc) + "); free some space or choose another --out");
}

void check_out_dir(const std::string& out) {
  fs::path p = fs::absolute(fs::path(out.empty() ? "." : out));
  while (!fs::exists(p) && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
  // the messages of prepare_out_dir (the errno text of the call that would fail)
  if (!fs::is_directory(p))
    fail("--out: cannot create directory '" + out + "' (" +
         (p == fs::absolute(fs::path(out)) ? "exists and is not a directory" : std::strerror(ENOTDIR)) + ")");
  if (::access(p.c_str(), W_OK | X_OK) != 0)
    fail("--out: cannot create directory '" + out + "' (" + std::strerror(errno) + ")");
}

void prepare_out_dir(const std::string& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out))
    fail("--out: cannot create directory '" + out + "' (" +
         (ec ? ec.message() : std::string("exists and is not a directory")) + ")");
  std::string probe = out + "/.write_test";  // fail early, before any work, if --out is not writable
  std::ofstream t(probe);
  if (!t) fail("--out: directory '" + out + "' is not writable (" + std::strerror(errno) + ")");
  t.close();
  fs::remove(probe);
}

}  // namespace vm::exp
