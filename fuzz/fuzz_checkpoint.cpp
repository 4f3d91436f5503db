// fuzz/fuzz_checkpoint.cpp — the trainer's checkpoint path on arbitrary bytes:
// exp::read_checkpoint_configs (safetensors + format + model/router JSON),
// config validation, then exp::load_checkpoint into a model built from that
// config (small configs only, to bound memory) with an AdamW state.
// Contract: a value or a vm::Error. Any other exception (a json::exception
// that escaped, std::bad_alloc, ...) is a finding: the user would get a
// message without the file name, so it is not caught here.
#include "core/tensor.h"
#include "experiments/trainer.h"
#include "fuzz/fuzz_common.h"
#include "nn/optim.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("checkpoint");
  fuzz::write_bytes(path, data, size);
  try {
    vm::nn::ModelConfig mc;
    vm::nn::RouterConfig rc;
    vm::exp::read_checkpoint_configs(path, mc, rc);
    mc.validate();
    rc.validate(mc.n_layers, mc.n_experts, mc.top_k);
    bool small = mc.d_model <= 64 && mc.n_layers <= 4 && mc.n_heads <= 8 && mc.n_experts <= 8 &&
                 mc.d_expert <= 64 && mc.max_seq <= 64 && mc.vocab <= 512 && mc.image_size <= 32 &&
                 mc.n_classes <= 16 && mc.patch >= 2;
    if (!small) return 0;
    vm::nn::Model model(mc, rc, 1);
    vm::nn::AdamW opt(vm::nn::AdamWConfig{});
    vm::exp::TrainState st = vm::exp::load_checkpoint(path, model, &opt);
    if (st.step < 0) __builtin_trap();
  } catch (const vm::Error&) {
  }
  return 0;
}
