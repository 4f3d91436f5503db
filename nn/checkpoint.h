// nn/checkpoint.h — safetensors files (the format PyTorch / Hugging Face users
// load): 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw data. Our metadata ("__metadata__",
// string values only) holds the model config, router config and training state
// as JSON strings.
//
// Writes are atomic: write to "<path>.tmp.<pid>", fsync, rename over <path>.
// Reads verify every offset, shape and size and fail with the file's name.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace vm::nn {

struct SafeTensors {
  std::map<std::string, std::string> metadata;
  std::vector<std::pair<std::string, Tensor>> tensors;  // F32 only, in file order
  const Tensor* find(const std::string& name) const;
};

void save_safetensors(const std::string& path, const SafeTensors& st);
SafeTensors load_safetensors(const std::string& path);

// Write `bytes` to `path` atomically (temp file + fsync + rename).
void atomic_write(const std::string& path, const std::string& bytes);

}  // namespace vm::nn
