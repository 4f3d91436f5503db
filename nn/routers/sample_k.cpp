// nn/routers/sample_k.cpp — fixed-temperature sample-K (baseline; method
// notes §3). The deterministic logits l = u W_r are scaled by a fixed T
// (--router-temp, default 0.3); K experts are drawn without replacement from
// softmax(l / T) (Gumbel-top-K); gates are the softmax over the K selected
// scaled logits. No parameters: nothing to train in stage 2.
//   T -> 0 recovers the deterministic top-K.
#include "nn/routers/common.h"
#include "nn/routers/selection.h"

namespace vm::nn {

class SampleKRouter : public Router {
 public:
  explicit SampleKRouter(const RouterConfig& cfg) : T_(cfg.temp), authors_(cfg.vtsr_sampler == VtsrSampler::authors) {}
  std::string name() const override { return "sample-k"; }
  RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>&, const RouteCtx& ctx) override {
    RouterOut out;
    out.logits = ops::matmul(u, w_router);
    int64_t N = out.logits.size(0);
    Var z = ops::mul_scalar(out.logits, 1.0 / T_);  // l / T
    out.probs = ops::softmax(z);                    // the selection distribution
    uint64_t stream = router_stream(ctx.seed, ctx.layer, ctx.step, "sample-k");
    out.experts = routers::select_k(z.value(), K, authors_, ctx.seed, stream, ctx.row0);  // on z's device
    out.gates = ops::softmax(ops::take_cols(z, out.experts, K));  // softmax over the selected l/T
    out.temperature = std::vector<float>((size_t)N, (float)T_);
    return out;
  }

 private:
  double T_;
  bool authors_;
};

std::unique_ptr<Router> make_sample_k_router(const RouterConfig& cfg) { return std::make_unique<SampleKRouter>(cfg); }

}  // namespace vm::nn
