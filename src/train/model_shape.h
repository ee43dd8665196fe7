// Model-shape settings shared by `dmc init` and `dmc train`: a preset plus per-field overrides.
#pragma once
#include <string>

#include "config/options.h"
#include "model/llama_config.h"

namespace dmc {

struct ModelShapeOptions {
  std::string preset = "tiny";
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0, num_attention_heads = 0,
          num_key_value_heads = 0, head_dim = 0, max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  void add_to(OptionTable& t);
  // The preset with overrides applied; vocab/bos/eos from the tokenizer when given (vocab_size still wins).
  LlamaConfig resolve(const std::string& tokenizer_path) const;
};

}  // namespace dmc
