// experiments/data_parallel.cpp — see data_parallel.h.
#include "experiments/data_parallel.h"

#include <cmath>
#include <cstring>

#include "autodiff/ops.h"
#include "kernels/cpu/rowwise.h"
#include "nn/moe.h"
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#endif

namespace vm::exp::dp {

ShardRange shard_range(int S, int ranks, int rank) {
  return {(int)((int64_t)rank * S / ranks), (int)((int64_t)(rank + 1) * S / ranks)};
}

GradLayout grad_layout(nn::ParamStore& ps) {
  GradLayout L;
  for (auto& [name, v] : ps.all()) {
    if (!v.requires_grad()) continue;
    L.names.push_back(name);
    L.offset.push_back(L.total);
    L.numel.push_back(v.numel());
    L.total += v.numel();
  }
  return L;
}

// n floats from src to dst, both on `dev`.
static void copy_floats(float* dst, const float* src, int64_t n, Device dev) {
#ifdef VMOER_HAVE_CUDA
  if (dev == Device::CUDA) {
    kernels::cuda::copy_d2d(dst, src, (size_t)n * sizeof(float));
    return;
  }
#endif
  std::copy(src, src + n, dst);
}

Tensor take_grads(nn::ParamStore& ps, const GradLayout& L, std::vector<uint8_t>& defined) {
  const Device dev = ps.device();
  Tensor g({L.total}, dev);  // zeros
  defined.resize(L.names.size(), 0);
  for (size_t k = 0; k < L.names.size(); ++k) {
    Var& v = ps.get(L.names[k]);
    if (!v.grad().defined()) continue;
    defined[k] = 1;
    copy_floats(g.data() + L.offset[k], v.grad().data(), L.numel[k], dev);
    v.zero_grad();
  }
  return g;
}

void put_grads(nn::ParamStore& ps, const GradLayout& L, const Tensor& g, const std::vector<uint8_t>& defined) {
  for (size_t k = 0; k < L.names.size(); ++k) {
    Var& v = ps.get(L.names[k]);
    if (!defined[k]) {
      v.zero_grad();
      continue;
    }
    Tensor t(v.shape(), g.device(), false);
    copy_floats(t.data(), g.data() + L.offset[k], L.numel[k], g.device());
    v.grad() = t;
  }
}

std::string first_nonfinite(const GradLayout& L, const Tensor& g) {
  if (g.is_cuda()) {  // a finite sum means every element is finite: one scalar leaves the GPU
    NoGradGuard ng;
    if (std::isfinite(ops::sum_all(Var(g)).item())) return "";
  }
  const Tensor h = g.to(Device::CPU);
  for (size_t k = 0; k < L.names.size(); ++k)
    for (int64_t i = L.offset[k]; i < L.offset[k] + L.numel[k]; ++i)
      if (!std::isfinite(h[i])) return L.names[k];
  return "";
}

void add_into(Tensor& a, const Tensor& b) {
  NoGradGuard ng;
  a = ops::add(Var(a), Var(b)).value();
}

void allreduce_grads(Tensor& g, int64_t bucket) {
  if (!dist::active()) return;
  if (!g.is_cuda()) {
    dist::allreduce_sum(g.data(), g.numel(), bucket, "gradient all-reduce");
    return;
  }
  if (dist::nccl_usable()) {
    dist::device_allreduce_sum(g.data(), g.numel(), "gradient all-reduce");
    return;
  }
  Tensor h = g.to(Device::CPU);
  dist::allreduce_sum(h.data(), h.numel(), bucket, "gradient all-reduce");
  g = h.to(g.device());
}

void resolve_expert_parallel(int P, int E) {
  const int N = dist::size();
  if (P == 1) {
    dist::set_expert_parallel(1);
    return;
  }
  const std::string f = "--expert-parallel " + std::to_string(P);
  if (N % P != 0)
    dist::fail_all(f + " does not divide the " + std::to_string(N) + " rank" + (N == 1 ? "" : "s") +
                   " (mpirun -np N with N a multiple of P: N/P data-parallel groups of P expert shards)");
  if (E % P != 0) dist::fail_all(f + " does not divide the " + std::to_string(E) + " experts of each MoE layer");
  dist::set_expert_parallel(P);
}

bool is_expert_tensor(const std::string& name) {
  for (const char* t : nn::kExpertTensors) {
    const size_t n = std::strlen(t);
    if (name.size() >= n && name.compare(name.size() - n, n, t) == 0 &&
        (name.size() == n || name[name.size() - n - 1] == '.'))
      return true;
  }
  return false;
}

ExpertShard expert_shard(const GradLayout& L, int E, int P, int q) {
  VM_CHECK(E >= 1 && P >= 1 && E % P == 0 && q >= 0 && q < P,
           "expert_shard: " + std::to_string(P) + " members for " + std::to_string(E) + " experts");
  ExpertShard x;
  x.P = P, x.q = q, x.E = E;
  x.expert.assign(L.names.size(), 0);
  const int held = P > 1 ? E / P : E;  // the experts an entry holds (sharded: this member's)
  for (size_t k = 0; k < L.names.size(); ++k) {
    x.expert[k] = is_expert_tensor(L.names[k]);
    VM_CHECK(!x.expert[k] || L.numel[k] % held == 0, "expert_shard: '" + L.names[k] + "' is not " +
                                                         std::to_string(held) + " experts' blocks");
    if (x.expert[k]) x.owned += P > 1 ? L.numel[k] : 0;
    else x.dense += L.numel[k];
  }
  return x;
}

std::map<std::string, nn::OwnedSlice> owned_slices(nn::ParamStore& ps, int E, int P, int q) {
  std::map<std::string, nn::OwnedSlice> out;
  if (P <= 1) return out;
  for (auto& [name, v] : ps.all()) {
    if (!is_expert_tensor(name)) continue;
    VM_CHECK(v.value().ndim() >= 1 && v.value().size(0) == E, "owned_slices: '" + name + "' does not hold " +
                                                                  std::to_string(E) + " experts");
    nn::OwnedSlice o;
    o.full = v.numel();
    o.count = v.numel() / P;  // E/P experts of numel/E floats
    o.first = (int64_t)q * o.count;
    o.shape = v.shape();
    o.shape[0] = E / P;
    out[name] = o;
  }
  return out;
}

void shard_expert_weights(nn::ParamStore& ps, int E, int P, int q) {
  if (P <= 1) return;
  const int El = E / P;
  for (auto& [name, v] : ps.all()) {
    if (!is_expert_tensor(name) || v.value().size(0) != E) continue;
    const Tensor h = v.value().to(Device::CPU);
    const int64_t c = h.numel() / P;
    Shape s = h.shape();
    s[0] = El;
    Tensor mine(s);  // experts [q·El, (q+1)·El): floats [q·c, (q+1)·c)
    std::copy(h.data() + q * c, h.data() + (q + 1) * c, mine.data());
    v.value() = mine.to(v.value().device());  // the full tensor is freed here
  }
}

bool expert_weights_sharded(nn::ParamStore& ps, int E) {
  for (auto& [name, v] : ps.all())
    if (is_expert_tensor(name) && v.value().size(0) != E) return true;
  return false;
}

void allreduce_grads_sharded(Tensor& g, const GradLayout& L, const ExpertShard& x, int64_t bucket,
                             uint64_t& expert_bytes) {
  if (!dist::active()) return;
  Tensor h = g.to(Device::CPU);  // the host tensor itself on the CPU
  std::vector<float> dense((size_t)x.dense), own((size_t)x.owned);
  // pack: the non-expert entries in layout order; this rank's slice of every expert entry in layout order
  int64_t at_d = 0, at_o = 0;
  for (size_t k = 0; k < L.names.size(); ++k) {
    const float* src = h.data() + L.offset[k];
    if (!x.expert[k]) {
      std::copy(src, src + L.numel[k], dense.data() + at_d);
      at_d += L.numel[k];
    } else {
      std::copy(src, src + L.numel[k], own.data() + at_o);  // sharded weights: the entry is this rank's slice
      at_o += L.numel[k];
    }
  }
  dist::allreduce_sum(dense.data(), x.dense, bucket, "gradient all-reduce");
  std::vector<int> replicas;  // {q, q + P, q + 2P, ...}
  for (int r = x.q; r < dist::size(); r += x.P) replicas.push_back(r);
  const uint64_t b0 = dist::bytes_sent();
  dist::allreduce_sum_among(own.data(), x.owned, bucket, replicas, "expert gradient all-reduce");
  expert_bytes += dist::bytes_sent() - b0;
  at_d = 0, at_o = 0;
  for (size_t k = 0; k < L.names.size(); ++k) {
    float* dst = h.data() + L.offset[k];
    if (!x.expert[k]) {
      std::copy(dense.data() + at_d, dense.data() + at_d + L.numel[k], dst);
      at_d += L.numel[k];
    } else {
      std::copy(own.data() + at_o, own.data() + at_o + L.numel[k], dst);
      at_o += L.numel[k];
    }
  }
  if (g.is_cuda()) g = h.to(g.device());
}

double grad_norm(const Tensor& g, const GradLayout& L, const std::vector<uint8_t>& defined, const ExpertShard& x) {
  const Tensor h = g.to(Device::CPU);
  auto sq = [&](int64_t from, int64_t n) { return kernels::sum_squares(h.data() + from, n); };
  // s_k,b for every entry and block (the others' experts: 0 until exchanged);
  // a sharded entry holds this member's El experts, global e = q·El + i
  const int El = x.E / x.P;
  std::vector<std::vector<double>> blocks(L.names.size());
  std::vector<int64_t> mine;  // this rank's experts' block sums, as raw bits, for the exchange
  for (size_t k = 0; k < L.names.size(); ++k) {
    if (!x.expert[k]) {
      blocks[k] = {sq(L.offset[k], L.numel[k])};
      continue;
    }
    const int64_t blk = L.numel[k] / (x.on() ? El : x.E);
    blocks[k].assign((size_t)x.E, 0.0);
    for (int e = 0; e < x.E; ++e) {
      if (x.on() && e / El != x.q) continue;
      const int64_t local = x.on() ? e - x.q * El : e;
      blocks[k][(size_t)e] = sq(L.offset[k] + local * blk, blk);
      if (x.on()) {
        int64_t bits;
        std::memcpy(&bits, &blocks[k][(size_t)e], 8);
        mine.push_back(bits);
      }
    }
  }
  if (x.on()) {  // every member's block sums to every member of the group
    const int n = (int)mine.size();
    std::vector<int64_t> send;
    for (int q = 0; q < x.P; ++q) send.insert(send.end(), mine.begin(), mine.end());
    const std::vector<int64_t> got = dist::ep_alltoall_ints(send, n, "gradient norm exchange");
    std::vector<int> at((size_t)x.P, 0);  // next value of member q
    for (size_t k = 0; k < L.names.size(); ++k) {
      if (!x.expert[k]) continue;
      for (int e = 0; e < x.E; ++e) {
        const int q = e / El;
        std::memcpy(&blocks[k][(size_t)e], &got[(size_t)q * n + (size_t)at[(size_t)q]++], 8);
      }
    }
  }
  double s = 0;
  for (size_t k = 0; k < L.names.size(); ++k) {
    if (!defined[k]) continue;
    for (double b : blocks[k]) s += b;
  }
  return std::sqrt(s);
}

void gather_expert_weights(nn::ParamStore& ps, const ExpertShard& x) {
  if (!x.on()) return;
  const int El = x.E / x.P;
  for (auto& [name, v] : ps.all()) {
    if (!is_expert_tensor(name) || v.value().size(0) != El) continue;  // sharded ones only
    const Tensor mine = v.value().to(Device::CPU);  // (El, a, b)
    const int64_t c = mine.numel();                 // one member's slice
    Shape s = mine.shape();
    s[0] = x.E;
    Tensor full(s, Device::CPU, false);  // (E, a, b): member q's slice at [q·c, (q+1)·c)
    std::vector<float> send((size_t)(c * x.P));
    for (int q = 0; q < x.P; ++q) std::copy(mine.data(), mine.data() + c, send.data() + q * c);
    const std::vector<int64_t> rows((size_t)x.P, c);
    dist::ep_alltoallv(send.data(), rows, full.data(), rows, 1, "expert weight gather");
    v.value() = full.to(v.value().device());
  }
}

std::map<std::string, std::pair<Tensor, Tensor>> full_optimizer_state(nn::AdamW& opt, const ExpertShard& x) {
  std::map<std::string, std::pair<Tensor, Tensor>> out;
  const bool root = dist::rank() == 0, group0 = dist::rank() < x.P;
  for (auto& [name, mv] : opt.state()) {
    auto o = opt.owned().find(name);
    if (o == opt.owned().end()) {
      if (root) out[name] = mv;
      continue;
    }
    const int64_t c = o->second.count;
    Shape full = o->second.shape;
    full[0] *= x.P;
    std::pair<Tensor, Tensor> got{Tensor(root ? full : Shape{0}), Tensor(root ? full : Shape{0})};
    for (int i = 0; i < 2; ++i) {
      const Tensor mine = (i == 0 ? mv.first : mv.second).to(Device::CPU);
      std::vector<int64_t> send_rows((size_t)x.P, 0), recv_rows((size_t)x.P, 0);
      if (group0) send_rows[0] = c;  // group 0's members send their slices to rank 0
      if (root) std::fill(recv_rows.begin(), recv_rows.end(), c);
      dist::ep_alltoallv(mine.data(), send_rows, (i == 0 ? got.first : got.second).data(), recv_rows, 1,
                         "optimizer state gather");
    }
    if (root) out[name] = got;
  }
  return out;
}

uint64_t state_hash(nn::ParamStore& ps) {
  uint64_t h = 1469598103934665603ULL;
  for (auto& [name, v] : ps.all()) {
    const Tensor t = v.value().to(Device::CPU);
    const unsigned char* b = reinterpret_cast<const unsigned char*>(t.data());
    for (int64_t i = 0; i < t.numel() * (int64_t)sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
  return h;
}

}  // namespace vm::exp::dp
