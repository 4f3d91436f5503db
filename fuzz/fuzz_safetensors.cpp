// fuzz/fuzz_safetensors.cpp — nn::load_safetensors on arbitrary bytes (header
// JSON, offsets, shapes, dtype, the data CRC), touching every tensor element.
// The checkpoint metadata (model/router/train_state JSON) is fuzzed through
// the trainer's own path in fuzz_checkpoint.cpp.
// Contract: either a value or a vm::Error; never a crash, a hang or UB.
#include "core/tensor.h"
#include "fuzz/fuzz_common.h"
#include "nn/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("safetensors");
  fuzz::write_bytes(path, data, size);
  try {
    vm::nn::SafeTensors st = vm::nn::load_safetensors(path);
    for (auto& [name, t] : st.tensors) {
      if (t.numel() < 0) __builtin_trap();
      volatile float sink = 0;
      for (int64_t i = 0; i < t.numel(); ++i) sink = sink + t[i];  // touch every element
      (void)sink;
    }
  } catch (const vm::Error&) {
  }
  return 0;
}
