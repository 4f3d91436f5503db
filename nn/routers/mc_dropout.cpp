// nn/routers/mc_dropout.cpp — MC-dropout router (baseline; method notes §3).
// Dropout with rate p (--router-dropout, default 0.05) on the router input u,
// S samples, logits averaged:
//   l̄ = (1/S) Σ_s dropout_s(u) W_r,   p = softmax(l̄),   top-K,  renormalised gates.
// In training one sample (S = train_samples). No parameters of its own.
#include "nn/routers/common.h"

namespace vm::nn {

class McDropoutRouter : public Router {
 public:
  explicit McDropoutRouter(const RouterConfig& cfg) : p_(cfg.dropout) {}
  std::string name() const override { return "mc-dropout"; }
  RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>&, const RouteCtx& ctx) override {
    RouterOut out;
    out.logits = ops::matmul(u, w_router);  // l_det (for the auxiliary losses)
    int64_t N = u.size(0), C = u.size(1);
    int S = std::max(1, ctx.samples);
    uint64_t stream = router_stream(ctx.seed, ctx.layer, ctx.step, "mc-dropout");
    Var us = routers::tile_rows(u, S);                                  // (S*N, C)
    // independent masks per sample; sample s of row n at row s·R + row0 + n of the batch (RouteCtx::row0)
    Var ud;
    if (ctx.whole(N)) {
      ud = ops::dropout(us, p_, ctx.seed, stream, 0);
    } else {
      std::vector<Var> parts;
      for (int s = 0; s < S; ++s)
        parts.push_back(ops::dropout(u, p_, ctx.seed, stream, (uint64_t)(((int64_t)s * ctx.rows_or(N) + ctx.row0) * C)));
      ud = S == 1 ? parts[0] : ops::concat(parts, 0);
    }
    Var lbar = routers::mean_over_samples(ops::matmul(ud, w_router), S, N);  // l̄: (N, E)
    out.probs = ops::softmax(lbar);
    auto tk = topk_renormalised(out.probs, K);
    out.experts = std::move(tk.experts);
    out.gates = tk.gates;
    (void)C;
    return out;
  }

 private:
  double p_;
};

std::unique_ptr<Router> make_mc_dropout_router(const RouterConfig& cfg) { return std::make_unique<McDropoutRouter>(cfg); }

}  // namespace vm::nn
