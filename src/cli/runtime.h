// Helpers shared by the commands that run a model: device/dtype resolution and loading with the tokenizer
// cross-check.
#pragma once
#include <string>
#include <utility>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace dmc::cli {
// device "auto|cpu|cuda[:N]", dtype "auto|bf16|fp16|fp32" -> resolved pair ("auto" dtype: bf16 on CUDA, fp32 on CPU).
std::pair<at::Device, at::ScalarType> resolve_runtime(const std::string& device, const std::string& dtype);
}  // namespace dmc::cli
