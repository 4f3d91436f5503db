// fuzz/fuzz_safetensors.cpp — nn::load_safetensors on arbitrary bytes, then the
// checkpoint metadata the trainer reads (model config JSON -> ModelConfig).
// Contract: either a value or a vm::Error; never a crash, a hang or UB.
#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "fuzz/fuzz_common.h"
#include "nn/checkpoint.h"
#include "nn/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path("safetensors");
  fuzz::write_bytes(path, data, size);
  try {
    vm::nn::SafeTensors st = vm::nn::load_safetensors(path);
    for (auto& [name, t] : st.tensors) {
      volatile float sink = 0;
      for (int64_t i = 0; i < t.numel(); ++i) sink = sink + t[i];  // touch every element
      (void)sink;
    }
    auto it = st.metadata.find("model");
    if (it != st.metadata.end()) {
      try {
        vm::nn::ModelConfig mc = nlohmann::json::parse(it->second).get<vm::nn::ModelConfig>();
        mc.validate();
      } catch (const nlohmann::json::exception&) {
      }
    }
  } catch (const vm::Error&) {
  }
  return 0;
}
