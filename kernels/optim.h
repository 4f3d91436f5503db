// kernels/optim.h — the optimiser's kernels over all parameters at once
// (nn/optim.cpp): a table with one row per parameter, and one call per
// device. On the CPU the rows run one after another (kernels/cpu/rowwise.cpp:
// the per-parameter loop it replaces, bit for bit); on the GPU the table is
// uploaded (through the staging ring: no wait) and one launch updates every
// parameter (kernels/cuda/rowwise.cu), where there was one launch — two when
// clipping — per parameter.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace vm::kernels {

// One parameter of an AdamW step: its buffers (all on one device), their
// length and its decoupled weight decay (0 for norms and biases).
struct AdamWTensor {
  float* param;
  float* grad;
  float* m;
  float* v;
  int64_t n;
  float weight_decay;
};
struct AdamWHyper {
  float lr, beta1, beta2, eps;
  int64_t step;       // 1-based: the bias corrections 1 − β^step
  float grad_scale;   // != 1: grad *= grad_scale first, in place (global-norm clipping)
};
// For each row in order: the clipping scale (when != 1), then adamw_step.
void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWHyper& h);

}  // namespace vm::kernels

namespace vm::kernels::cuda {
void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWHyper& h);
// Σ over the tensors of Σ_i g_i², each square and sum in double, in a fixed
// order (deterministic for given sizes); the one value comes to the host
// (a download: the clipping needs it there).
struct GradSpan {
  const float* data;
  int64_t n;
};
double sum_squares(const std::vector<GradSpan>& ts);
}  // namespace vm::kernels::cuda
