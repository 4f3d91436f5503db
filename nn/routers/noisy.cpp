// nn/routers/noisy.cpp — noisy top-K gating (Shazeer et al. 2017), noise in
// training only:
//   H(u) = u W_r + ε ⊙ softplus(u W_noise),  ε ~ N(0, I)   (training)
//   H(u) = u W_r                                            (evaluation)
//   p = softmax(H), top-K, gates renormalised over the K (= softmax over the K kept).
#include "core/philox.h"
#include "nn/noise.h"
#include "nn/router.h"

namespace vm::nn {

class NoisyRouter : public Router {
 public:
  NoisyRouter(ParamStore& params, const std::string& prefix, int C, int E, uint64_t seed)
      : w_noise_(params.constant(prefix + "w_noise", {C, E}, 0.0f)) {}
  std::string name() const override { return "noisy"; }
  RouterOut route(const Var& u, const Var& w_router, int K, const std::vector<uint8_t>&,
                  const RouteCtx& ctx) override {
    RouterOut out;
    out.logits = ops::matmul(u, w_router);
    Var h = out.logits;
    if (ctx.training) {
      uint64_t stream = router_stream(ctx.seed, ctx.layer, ctx.step, "noisy");
      const uint64_t first = (uint64_t)ctx.row0 * (uint64_t)out.logits.value().size(1);  // row n draws at its row of the batch
      Tensor eps;
      if (u.value().is_cuda()) {
        eps = device_normals(out.logits.shape(), ctx.seed, stream, 1.0f, first);  // drawn on the GPU (nn/noise.h)
      } else {
        eps = Tensor(out.logits.shape());
        for (int64_t i = 0; i < eps.numel(); ++i) eps[i] = philox_normal(ctx.seed, stream, first + (uint64_t)i);
      }
      h = ops::add(h, ops::mul(ops::constant(eps), ops::softplus(ops::matmul(u, w_noise_))));
    }
    out.probs = ops::softmax(h);
    auto tk = topk_renormalised(out.probs, K);
    out.experts = std::move(tk.experts);
    out.gates = tk.gates;
    return out;
  }

 private:
  Var w_noise_;
};

std::unique_ptr<Router> make_noisy_router(ParamStore& params, const std::string& prefix, int C, int E, uint64_t seed) {
  return std::make_unique<NoisyRouter>(params, prefix, C, E, seed);
}

}  // namespace vm::nn
