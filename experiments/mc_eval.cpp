// experiments/mc_eval.cpp — see mc_eval.h.
#include "experiments/mc_eval.h"

#include <algorithm>
#include <cmath>

#include "core/dist.h"
#include "data/tokenizer.h"
#include "experiments/metrics.h"

namespace vm::exp {

const std::vector<int32_t>& answer_tokens() {
  static const std::vector<int32_t> t{'A', 'B', 'C', 'D'};
  return t;
}

McBatch make_mc_batch(const McSet& set, const std::vector<int64_t>& idx, int max_seq) {
  McBatch b;
  b.B = (int)idx.size();
  std::vector<std::vector<int32_t>> toks;
  for (int64_t i : idx) {
    std::vector<int32_t> t{data::kBos};
    auto enc = data::encode(set.prompts[(size_t)i]);
    t.insert(t.end(), enc.begin(), enc.end());
    // keep the end of the prompt (options and "Answer:") if it is too long
    if ((int)t.size() > max_seq) t.erase(t.begin() + 1, t.begin() + 1 + ((int)t.size() - max_seq));
    b.T = std::max(b.T, (int)t.size());
    toks.push_back(std::move(t));
    b.labels.push_back(set.labels[(size_t)i]);
  }
  b.ids.assign((size_t)b.B * b.T, data::kPad);
  b.mask.assign((size_t)b.B * b.T, 0);
  for (int r = 0; r < b.B; ++r) {
    for (size_t t = 0; t < toks[r].size(); ++t) {
      b.ids[(size_t)r * b.T + t] = toks[r][t];
      b.mask[(size_t)r * b.T + t] = 1;
    }
    b.last.push_back(r * b.T + (int)toks[r].size() - 1);
  }
  return b;
}

void host_diagnostics(nn::ForwardResult& res) {
  res.logits.value() = res.logits.value().to(Device::CPU);
  for (auto& a : res.moe)
    for (Var* v : {&a.route.probs, &a.route.gates})
      if (v->defined()) v->value() = v->value().to(Device::CPU);
}

// Append one example: its class distribution and the router diagnostics at `row`.
static void append_example(McEval& ev, std::vector<double> p, int32_t label, const nn::ForwardResult& res, int64_t row,
                           int E, const std::vector<int>& bayes) {
  ev.entropy.push_back(metrics::entropy(p.data(), p.size()));
  ev.probs.push_back(std::move(p));
  ev.labels.push_back(label);
  double ilv = 0, ge = 0, temp = 0;
  int nb = 0;
  for (auto& a : res.moe) {
    const Tensor& pr = a.route.probs.value();  // on the host (host_diagnostics)
    ge += metrics::entropy(std::vector<double>(pr.data() + row * E, pr.data() + (row + 1) * E).data(), (size_t)E);
    if (std::find(bayes.begin(), bayes.end(), a.layer) != bayes.end()) {
      if (!a.route.ilv.empty()) ilv += a.route.ilv[row];
      if (!a.route.temperature.empty()) temp += a.route.temperature[row];
      ++nb;
    }
  }
  ev.gate_entropy.push_back(res.moe.empty() ? 0 : ge / (double)res.moe.size());
  ev.ilv.push_back(nb ? ilv / nb : 0);
  ev.temperature.push_back(nb ? temp / nb : 0);
}

// Top-K of one row of a routing distribution p (E): the K largest, ties to
// the lower expert index (the order of ops::topk_gates).
static void topk_row(const float* p, int E, int K, std::vector<int32_t>& out) {
  std::vector<int32_t> ix((size_t)E);
  for (int e = 0; e < E; ++e) ix[(size_t)e] = e;
  std::partial_sort(ix.begin(), ix.begin() + K, ix.end(), [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  out.insert(out.end(), ix.begin(), ix.begin() + K);
}

static void append_trace(RoutingTrace* trace, const nn::ForwardResult& res, const std::vector<uint8_t>& mask, int K, int E) {
  if (!trace) return;
  if (trace->layers.empty())
    for (auto& a : res.moe) trace->layers.push_back(a.layer);
  trace->experts.resize(res.moe.size());
  trace->dist_experts.resize(res.moe.size());
  trace->temperature.resize(res.moe.size());
  for (size_t l = 0; l < res.moe.size(); ++l) {
    const nn::RouterOut& r = res.moe[l].route;
    const Tensor& pr = r.probs.value();  // (rows, E) on the host (host_diagnostics)
    for (int64_t row = 0; row < (int64_t)mask.size(); ++row) {
      if (!mask[row]) continue;
      for (int j = 0; j < K; ++j) trace->experts[l].push_back(r.experts[row * K + j]);
      topk_row(pr.data() + row * E, E, K, trace->dist_experts[l]);
      if (!r.temperature.empty()) trace->temperature[l].push_back(r.temperature[row]);
    }
  }
}

// softmax of one row of logits (double): the class / answer-letter distribution.
static std::vector<double> answer_distribution(std::vector<double> logits) {
  const size_t k = logits.size();
  return metrics::softmax(metrics::Matrix(1, k, std::move(logits))).data;
}

// Accuracy and NLL over the labelled examples (metrics.cpp's definitions; an
// OOD set has no labels and scores 0).
static void finish_eval(McEval& ev) {
  metrics::Matrix probs;
  std::vector<int> labels;
  for (size_t i = 0; i < ev.probs.size(); ++i) {
    if (ev.labels[i] < 0) continue;
    if (probs.cols == 0) probs.cols = ev.probs[i].size();
    probs.data.insert(probs.data.end(), ev.probs[i].begin(), ev.probs[i].end());
    ++probs.rows;
    labels.push_back(ev.labels[i]);
  }
  ev.nll = probs.rows ? metrics::nll(probs, labels) : 0;
  ev.accuracy = probs.rows ? metrics::accuracy(probs, labels) : 0;
}

// ---- several ranks: one evaluation pass split over them -------------------------------------
// Rank r of N evaluates batches [r·nb/N, (r+1)·nb/N) of the pass's nb batches
// (the same batches, with the same batch index keying their router draws, as
// one process); the per-example results and routing traces are then gathered
// in batch order, so every rank holds the McEval one process computes, bit
// for bit (raw doubles), and the metrics follow from it as in one process.
// Under expert parallelism (--expert-parallel P, dist::ep_size() > 1) every
// MoE layer of a forward exchanges rows with the other members of this rank's
// expert group (nn::MoELayer::forward_ep), so the members must make the same
// number of forwards — and so must every rank, since the exchanges of all
// groups draw their message tags from one sequence (core/dist.cpp): a rank
// with fewer than ⌈nb/N⌉ batches pads with forwards of one of its batches
// (batch 0 if it has none) whose results are discarded. Each member keeps
// its own batch's capacity (RouteCtx::ep_own_capacity), so the padding
// changes nothing and every batch gives the bits one process gives it.
struct PassBatches {
  int64_t first = 0, last = 0;  // this rank's batches [first, last)
  int64_t calls = 0;            // forwards to make: last - first, or ⌈nb/N⌉ under expert parallelism
  // the batch of call i, and whether it is padding
  std::pair<int64_t, bool> batch(int64_t i) const {
    if (first + i < last) return {first + i, false};
    return {last > first ? first : 0, true};
  }
};
static PassBatches my_batches(int64_t nb) {
  const int64_t N = dist::size(), r = dist::rank();
  PassBatches p{r * nb / N, (r + 1) * nb / N, 0};
  p.calls = dist::ep_size() > 1 ? (nb + N - 1) / N : p.last - p.first;  // the most any rank has
  return p;
}

static void gather_pass(McEval& ev, RoutingTrace* trace, const McEval& local, const RoutingTrace& ltrace) {
  dist::Pack p;
  p.put<uint64_t>(local.probs.size());
  for (size_t i = 0; i < local.probs.size(); ++i) {
    p.put_vec(local.probs[i]);
    p.put<int32_t>(local.labels[i]);
    for (double v : {local.entropy[i], local.ilv[i], local.gate_entropy[i], local.temperature[i], local.length[i]})
      p.put<double>(v);
  }
  p.put_vec(ltrace.layers);
  p.put<uint64_t>(ltrace.experts.size());
  for (size_t l = 0; l < ltrace.experts.size(); ++l) {
    p.put_vec(ltrace.experts[l]);
    p.put_vec(ltrace.dist_experts[l]);
    p.put_vec(ltrace.temperature[l]);
  }
  for (const std::string& b : dist::allgather(p.bytes(), "evaluation gather")) {
    dist::Unpack u(b);
    uint64_t n = u.get<uint64_t>();
    for (uint64_t i = 0; i < n; ++i) {
      ev.probs.push_back(u.get_vec<double>());
      ev.labels.push_back(u.get<int32_t>());
      ev.entropy.push_back(u.get<double>());
      ev.ilv.push_back(u.get<double>());
      ev.gate_entropy.push_back(u.get<double>());
      ev.temperature.push_back(u.get<double>());
      ev.length.push_back(u.get<double>());
    }
    std::vector<int> layers = u.get_vec<int>();
    uint64_t nl = u.get<uint64_t>();
    if (!trace || nl == 0) continue;  // (a rank with no batch has no trace)
    if (trace->layers.empty()) trace->layers = layers;
    trace->experts.resize(nl);
    trace->dist_experts.resize(nl);
    trace->temperature.resize(nl);
    for (uint64_t l = 0; l < nl; ++l) {
      for (auto* dst : {&trace->experts[l], &trace->dist_experts[l]}) {
        std::vector<int32_t> v = u.get_vec<int32_t>();
        dst->insert(dst->end(), v.begin(), v.end());
      }
      std::vector<float> t = u.get_vec<float>();
      trace->temperature[l].insert(trace->temperature[l].end(), t.begin(), t.end());
    }
  }
}

uint64_t eval_router_seed(uint64_t seed, const std::string& set, const std::string& draw) {
  return seed + nn::name_hash("eval/" + set + (draw.empty() ? "" : "/" + draw));
}

static nn::ForwardOptions eval_options(nn::Model& model, const RunConfig& cfg, const std::string& set,
                                       uint64_t batch_index, double noise, int samples, const std::string& draw) {
  nn::ForwardOptions fo;
  fo.training = false;
  fo.seed = eval_router_seed(cfg.seed, set, draw);
  fo.step = batch_index;
  fo.samples = samples > 0 ? samples : model.router_config().samples;
  fo.embed_noise = noise;
  fo.noise_seed = cfg.seed + 7919;  // the input noise: the same in every draw (keyed by batch)
  fo.expert_parallel = dist::ep_size() > 1;  // the experts sharded over the group (dp::resolve_expert_parallel)
  fo.ep_own_capacity = true;                 // each batch's own capacity, as in one process
  return fo;
}

// The predictive arm and the mutual information between the prediction and
// the router's randomness from M passes p_m (one router draw each):
//   p̂ = (1/M) Σ_m p_m,   I = H(p̂) − (1/M) Σ_m H(p_m)   (metrics::mutual_information)
static void add_routing_average(McEval& ev, const std::vector<McEval>& passes, int M) {
  ev.mutual_info.assign(ev.probs.size(), 0.0);
  ev.predictive_samples = M;
  if (M <= 0) return;
  if (passes.empty()) {  // no router randomness: every draw is the main pass
    ev.predictive = ev.probs;
    return;
  }
  std::vector<metrics::Matrix> samples;
  for (const McEval& p : passes) samples.push_back(metrics::Matrix::from_rows(p.probs));
  ev.mutual_info = metrics::mutual_information(samples);
  ev.predictive.assign(ev.probs.size(), std::vector<double>(ev.probs.empty() ? 0 : ev.probs[0].size(), 0.0));
  for (const McEval& p : passes)  // fixed order over m: the same bits at any thread count
    for (size_t i = 0; i < p.probs.size(); ++i)
      for (size_t c = 0; c < p.probs[i].size(); ++c) ev.predictive[i][c] += p.probs[i][c];
  for (auto& row : ev.predictive)
    for (double& q : row) q /= (double)passes.size();
}

static bool stochastic_router(nn::Model& model) {
  return model.router_config().name != nn::RouterKind::det && !model.bayes_layer_ids().empty();
}

static McEval mc_pass(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise, RoutingTrace* trace,
                      int samples, const std::string& draw);

static std::string mi_draw(int m) { return "mi/" + std::to_string(m); }

McEval mc_routing_draw(nn::Model& model, const McSet& set, const RunConfig& cfg, int m) {
  return mc_pass(model, set, cfg, 0.0, nullptr, 1, mi_draw(m));
}

// The main pass (with its trace, S = the router's samples) and, for a
// top-level call (no `draw`) on a stochastic router, the --mi-samples routing
// draws (S = 1 each) averaged into it. pass(trace, samples, draw) -> McEval.
template <class Pass>
static McEval with_routing_draws(nn::Model& model, const RunConfig& cfg, RoutingTrace* trace, const std::string& draw,
                                 Pass pass) {
  McEval ev = pass(trace, 0, draw);
  std::vector<McEval> passes;
  int M = draw.empty() ? cfg.mi_samples : 0;
  if (M > 0 && stochastic_router(model))
    for (int m = 1; m <= M; ++m) passes.push_back(pass(nullptr, 1, mi_draw(m)));
  add_routing_average(ev, passes, M);
  return ev;
}

McEval evaluate_mc(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise,
                   RoutingTrace* trace, const std::string& draw) {
  return with_routing_draws(model, cfg, trace, draw, [&](RoutingTrace* t, int samples, const std::string& d) {
    return mc_pass(model, set, cfg, embed_noise, t, samples, d);
  });
}

static McEval mc_pass(nn::Model& model, const McSet& set, const RunConfig& cfg, double embed_noise, RoutingTrace* trace,
                      int samples, const std::string& draw) {
  NoGradGuard ng;
  McEval ev;
  const auto& letters = answer_tokens();
  int64_t n = (int64_t)set.size();
  int E = model.config().n_experts, K = model.config().top_k;
  auto bayes = model.bayes_layer_ids();
  int B = std::max(1, cfg.batch);
  // several ranks: this rank's batches into `local`, then gathered (gather_pass)
  McEval local;
  RoutingTrace ltrace;
  McEval& out = dist::active() ? local : ev;
  RoutingTrace* tr = dist::active() ? (trace ? &ltrace : nullptr) : trace;
  const PassBatches pb = my_batches((n + B - 1) / B);
  for (int64_t call = 0; call < pb.calls; ++call) {
    const auto [b, padding] = pb.batch(call);
    const int64_t s = b * B;
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + B); ++i) idx.push_back(i);
    McBatch mb = make_mc_batch(set, idx, model.config().max_seq);
    auto res = model.forward_lm(mb.ids, mb.B, mb.T, mb.mask, mb.last,
                                eval_options(model, cfg, set.name, b, embed_noise, samples, draw));
    if (padding) continue;  // expert parallelism: a forward the group's exchanges needed
    host_diagnostics(res);
    const Tensor& lg = res.logits.value();  // (B, V)
    int64_t V = lg.size(1);
    for (int r = 0; r < mb.B; ++r) {
      // answer distribution: softmax over the four letter logits
      std::vector<double> z;
      for (int32_t t : letters) z.push_back((double)lg[r * V + t]);
      append_example(out, answer_distribution(std::move(z)), mb.labels[r], res, mb.last[r], E, bayes);  // diagnostics at the final token
      out.length.push_back((double)(mb.last[r] - (int64_t)r * mb.T + 1));
    }
    append_trace(tr, res, mb.mask, K, E);
  }
  if (dist::active()) gather_pass(ev, trace, local, ltrace);
  finish_eval(ev);
  return ev;
}

Tensor image_batch(const ImgSet& set, const std::vector<int64_t>& idx) {
  const data::ImageSet& src = *set.src;
  int64_t P = (int64_t)src.h * src.w;
  Tensor x({(int64_t)idx.size(), P});
  for (size_t i = 0; i < idx.size(); ++i) {
    const float* im = src.image(set.idx[(size_t)idx[i]]);
    std::copy(im, im + P, x.data() + (int64_t)i * P);
  }
  return x;
}

static McEval image_pass(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise,
                         RoutingTrace* trace, int samples, const std::string& draw);

McEval evaluate_images(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise,
                       RoutingTrace* trace, const std::string& draw) {
  return with_routing_draws(model, cfg, trace, draw, [&](RoutingTrace* t, int samples, const std::string& d) {
    return image_pass(model, set, cfg, embed_noise, t, samples, d);
  });
}

static McEval image_pass(nn::Model& model, const ImgSet& set, const RunConfig& cfg, double embed_noise,
                         RoutingTrace* trace, int samples, const std::string& draw) {
  NoGradGuard ng;
  McEval ev;
  int64_t n = (int64_t)set.size();
  int E = model.config().n_experts, K = model.config().top_k, C = model.config().n_classes;
  int T = model.config().seq_len_vit();
  auto bayes = model.bayes_layer_ids();
  int B = std::max(1, cfg.batch);
  McEval local;  // several ranks: as in mc_pass
  RoutingTrace ltrace;
  McEval& out = dist::active() ? local : ev;
  RoutingTrace* tr = dist::active() ? (trace ? &ltrace : nullptr) : trace;
  const PassBatches pb = my_batches((n + B - 1) / B);
  for (int64_t call = 0; call < pb.calls; ++call) {
    const auto [b, padding] = pb.batch(call);
    const int64_t s = b * B;
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + B); ++i) idx.push_back(i);
    auto res = model.forward_vit(image_batch(set, idx), eval_options(model, cfg, set.name, b, embed_noise, samples, draw));
    if (padding) continue;  // as in mc_pass
    host_diagnostics(res);
    const Tensor& lg = res.logits.value();  // (B, classes)
    for (size_t r = 0; r < idx.size(); ++r) {
      std::vector<double> z((size_t)C);
      for (int c = 0; c < C; ++c) z[(size_t)c] = (double)lg[(int64_t)r * C + c];
      append_example(out, answer_distribution(std::move(z)), set.labels[(size_t)idx[r]], res, (int64_t)r * T, E, bayes);  // class token
      out.length.push_back((double)T);
    }
    append_trace(tr, res, std::vector<uint8_t>(idx.size() * (size_t)T, 1), K, E);
  }
  if (dist::active()) gather_pass(ev, trace, local, ltrace);
  finish_eval(ev);
  return ev;
}

}  // namespace vm::exp
