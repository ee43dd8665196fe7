#include "train/model_shape.h"

#include "tokenizer/tokenizer.h"

namespace dmc {

void ModelShapeOptions::add_to(OptionTable& t) {
  t.add("preset", &preset, "base shape for a new model: tiny, llama-1b, smollm2-135m, llama2-7b, llama2-13b")
      .one_of(LlamaConfig::preset_names());
  t.add("vocab_size", &vocab_size, "override (0 = preset or tokenizer)").min(0);
  t.add("hidden_size", &hidden_size, "override (0 = preset)").min(0);
  t.add("intermediate_size", &intermediate_size, "override (0 = preset)").min(0);
  t.add("num_hidden_layers", &num_hidden_layers, "override (0 = preset)").min(0);
  t.add("num_attention_heads", &num_attention_heads, "override (0 = preset)").min(0);
  t.add("num_key_value_heads", &num_key_value_heads, "override (0 = preset)").min(0);
  t.add("head_dim", &head_dim, "override (0 = hidden_size / num_attention_heads when either is overridden)").min(0);
  t.add("max_position_embeddings", &max_position_embeddings, "override (0 = preset)").min(0);
  t.add("tie_word_embeddings", &tie_word_embeddings, "share the embedding and output matrices");
}

LlamaConfig ModelShapeOptions::resolve(const std::string& tokenizer_path) const {
  LlamaConfig c = LlamaConfig::preset(preset);
  if (!tokenizer_path.empty()) {
    auto tok = Tokenizer::load(tokenizer_path);
    c.vocab_size = tok.vocab_size();
    c.bos_token_id = tok.bos_id();
    c.eos_token_ids = {tok.eos_id()};
  }
  if (vocab_size) c.vocab_size = vocab_size;
  if (hidden_size) c.hidden_size = hidden_size;
  if (intermediate_size) c.intermediate_size = intermediate_size;
  if (num_hidden_layers) c.num_hidden_layers = num_hidden_layers;
  if (num_attention_heads) c.num_attention_heads = num_attention_heads;
  if (num_key_value_heads) c.num_key_value_heads = num_key_value_heads;
  if (max_position_embeddings) c.max_position_embeddings = max_position_embeddings;
  if (hidden_size || num_attention_heads) c.head_dim = c.hidden_size / c.num_attention_heads;
  if (head_dim) c.head_dim = head_dim;
  c.tie_word_embeddings = tie_word_embeddings;
  c.validate("model shape");
  return c;
}

}  // namespace dmc
