// experiments/train_guards.h — what stops a training run cleanly instead of
// letting it crash or corrupt its outputs (docs/RELIABILITY.md §3): locating a
// non-finite value, claiming checkpoint space before any work, and the NaN
// injection hook the reliability tests use.
#pragma once
#include <cstdint>
#include <string>

#include "nn/params.h"
#include "nn/transformer.h"

namespace vm::exp {

// "'layers.2.moe.w_router' (layer 2)": a parameter name and the block it lives in.
std::string tensor_and_layer(const std::string& name);
// The first parameter whose gradient (value) holds a NaN or Inf, "" if none.
// Device tensors are checked on a host copy (one transfer per parameter).
std::string first_nonfinite_grad(nn::ParamStore& ps);
// The same, searched only when grad_norm — nn::global_grad_norm(ps), which a
// NaN or Inf in any trainable gradient makes non-finite — is not finite: a
// finite norm costs nothing more (on the GPU the norm was one read; the
// search downloads every gradient). Σg² is summed in double on both devices,
// so finite float gradients give a finite norm; should one not, the search
// finds no culprit and returns "", as before.
std::string nonfinite_grad_given_norm(nn::ParamStore& ps, double grad_norm);
std::string first_nonfinite_param(nn::ParamStore& ps);
// Where a non-finite loss comes from: a parameter, else the first MoE layer
// whose router probabilities are non-finite, else the forward pass at large.
std::string locate_nonfinite(nn::ParamStore& ps, const nn::ForwardResult& res);

// Test hook, documented in docs/RELIABILITY.md (not a user feature):
//   VMOER_TEST_INJECT_NAN=STEP[:param|:grad][:NAME]
// poisons element 0 of parameter NAME (default: the first trainable router
// weight, else the first trainable parameter) with NaN at the start of step
// STEP (param), or its gradient after the backward pass of step STEP (grad).
struct NanInjection {
  int64_t step = -1;
  bool grad = false;
  std::string param;
};
NanInjection nan_injection(nn::ParamStore& ps);
// Test hook for multi-process runs (docs/RELIABILITY.md, docs/SCALE.md):
//   VMOER_TEST_RANK_FAULT=R:STEP:kill|hang
// rank R, at the start of step STEP, kills itself with SIGKILL (a crashed
// node) or stops answering (sleeps: a hung one). VMOER_TEST_INJECT_RANK=R
// makes VMOER_TEST_INJECT_NAN act on rank R only.
struct RankFault {
  int rank = -1;
  int64_t step = -1;
  bool hang = false;
};
RankFault rank_fault();
// Acts out the fault when this is its rank and step.
void maybe_fault(const RankFault& f, int rank, int64_t step);

// Free space for the checkpoints, claimed up front (posix_fallocate of a
// probe file the size of last + best) so that a full disk or a file-size
// limit stops the run before any training, not at its first checkpoint.
void reserve_checkpoint_space(const std::string& out, nn::ParamStore& ps);
// --out: created if missing and checked writable before any work.
void prepare_out_dir(const std::string& out);
// The same check without creating anything: --out is a writable directory,
// or its nearest existing parent is one (so prepare_out_dir will succeed).
// Runs before the setup, so a rejected input leaves no folder behind.
void check_out_dir(const std::string& out);

}  // namespace vm::exp
