// nn/routers/det.cpp — deterministic top-K routing (Mixtral/Granite style).
//   l = u W_r,  p = softmax(l),  S = top-K(p),  g_k = p_k / Σ_{j∈S} p_j
#include "nn/router.h"

namespace vm::nn {

class DetRouter : public Router {
 public:
  std::string name() const override { return "det"; }
  RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>&, const RouteCtx&) override {
    RouterOut out;
    out.logits = ops::matmul(u, w_router);  // (N, E)
    out.probs = ops::softmax(out.logits);
    auto tk = topk_renormalised(out.probs, K);
    out.experts = std::move(tk.experts);
    out.gates = tk.gates;
    return out;
  }
};

std::unique_ptr<Router> make_det_router() { return std::make_unique<DetRouter>(); }

}  // namespace vm::nn
