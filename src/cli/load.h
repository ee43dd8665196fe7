// What several commands do first: a model (directory or .gguf) and its tokenizer (its own unless one is named),
// on the resolved device and dtype, with the vocabulary sizes checked against each other.
#pragma once
#include <string>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace dmc::cli {

struct LoadedModel {
  Tokenizer tok;
  Llama model;
};
// device: cpu | cuda | cuda:N | auto;  dtype: bf16 | fp16 | fp32 | auto
LoadedModel load_model_and_tokenizer(const std::string& model, const std::string& tokenizer, const std::string& device,
                                     const std::string& dtype);

}  // namespace dmc::cli
