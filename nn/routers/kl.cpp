// nn/routers/kl.cpp — the closed-form KL divergences of the variational
// routers, per token (docs/vmoer.md §2-3):
//   MF / lognormal   KL = ½ (Σ_e (exp(lv_e) + d_e²)/s² − lv_e + E (log s² − 1))
//   FC               KL = ½ ((Σ_ij L_ij² + Σ_e d_e²)/s² − 2 Σ_e log L_ee + E (log s² − 1))
// (d = Δμ or m, lv = log σ² or ρ; tr(L Lᵀ) = Σ_ij L_ij²). On the CPU they are
// composed of ops (each term differentiable on the tape); for device tensors
// one fused kernel per direction (kernels/cuda/moe.h kl_mf_* / kl_fc_*).
#include <cmath>

#include "nn/routers/common.h"
#ifdef VMOER_HAVE_CUDA
#include "kernels/cuda/moe.h"
#endif

namespace vm::nn::routers {

Var kl_mf(const Var& d, const Var& lv, double s2) {
  VM_CHECK(d.ndim() == 2 && lv.shape() == d.shape() && lv.value().device() == d.value().device(),
           "kl_mf: d " + shape_str(d.shape()) + " and lv " + shape_str(lv.shape()) +
               " must be the same (N, E) shape on one device");
  int64_t N = d.size(0);
  int E = (int)d.size(1);
#ifdef VMOER_HAVE_CUDA
  if (d.value().is_cuda()) {
    Tensor kl({N}, Device::CUDA, false);
    kernels::cuda::kl_mf_fwd(d.value().data(), lv.value().data(), kl.data(), N, E, s2);
    return make_result<float>(std::move(kl), "kl_mf", {d, lv}, [N, E, s2](Node<float>& self) {
      auto &pd = self.parents[0], &pl = self.parents[1];
      float* gd = pd->requires_grad ? pd->grad_buffer().data() : nullptr;
      float* gl = pl->requires_grad ? pl->grad_buffer().data() : nullptr;
      if (gd || gl) kernels::cuda::kl_mf_bwd(pd->value.data(), pl->value.data(), self.grad.data(), gd, gl, N, E, s2);
    });
  }
#endif
  Var t = ops::add(ops::mul_scalar(ops::add(ops::exp(lv), ops::square(d)), 1.0 / s2), ops::neg(lv));
  return ops::mul_scalar(ops::add_scalar(ops::sum(t, 1), (double)E * (std::log(s2) - 1.0)), 0.5);
}

Var kl_fc(const Var& d, const Var& L, double s2) {
  VM_CHECK(d.ndim() == 2 && L.shape() == Shape({d.size(0), d.size(1), d.size(1)}) &&
               L.value().device() == d.value().device(),
           "kl_fc: d " + shape_str(d.shape()) + " and L " + shape_str(L.shape()) +
               " must be (N, E) and (N, E, E) on one device");
  int64_t N = d.size(0);
  int E = (int)d.size(1);
#ifdef VMOER_HAVE_CUDA
  if (d.value().is_cuda()) {
    Tensor kl({N}, Device::CUDA, false);
    kernels::cuda::kl_fc_fwd(d.value().data(), L.value().data(), kl.data(), N, E, s2);
    return make_result<float>(std::move(kl), "kl_fc", {d, L}, [N, E, s2](Node<float>& self) {
      auto &pd = self.parents[0], &pL = self.parents[1];
      float* gd = pd->requires_grad ? pd->grad_buffer().data() : nullptr;
      float* gL = pL->requires_grad ? pL->grad_buffer().data() : nullptr;
      if (gd || gL) kernels::cuda::kl_fc_bwd(pd->value.data(), pL->value.data(), self.grad.data(), gd, gL, N, E, s2);
    });
  }
#endif
  Var trace = ops::sum(ops::reshape(ops::square(L), {N, (int64_t)E * E}), 1);  // tr(LLᵀ) = Σ_ij L_ij²
  Var t = ops::mul_scalar(ops::add(trace, ops::sum(ops::square(d), 1)), 1.0 / s2);
  t = ops::sub(t, ops::mul_scalar(ops::sum_log_diag(L), 2.0));
  return ops::mul_scalar(ops::add_scalar(t, (double)E * (std::log(s2) - 1.0)), 0.5);
}

}  // namespace vm::nn::routers
