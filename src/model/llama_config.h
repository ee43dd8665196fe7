// LlamaConfig: the architecture hyperparameters, read from and written to HF config.json (model_type
// "llama", LlamaForCausalLM). Fields and defaults follow transformers' LlamaConfig; unsupported variants
// (attention/MLP biases, activations other than SiLU, unknown RoPE scaling) are refused with an error naming
// the file and field.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dmc {

struct RopeScaling {
  std::string type = "none";  // none | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;       // llama3
};

// DMC settings a retrofitted checkpoint carries in config.json under "dmc" (transformers ignores the key).
struct DmcConfig {
  bool enabled = false;  // true once stage 1 has zeroed the decision rows
  std::string stage;     // last stage completed: zero_out | retrofit | finetune
  double init_val = 5.0;
  int64_t window = 12;
  double target_cr = 1.0;
  // The rotary pairs in the order the q/k weights hold them (empty = the natural order 0 .. D/2-1): pair p, dims
  // (p, p + D/2) of every q and k head, rotates at the frequency of index rope_pairs[p]. A retrofit may move a pair
  // into the last position (Llama::swap_rope_pairs, dmc_decision_pair) so that the decision neuron, dim D-1, is the
  // partner of a pair the model leans on little: the reference's D-1 is the partner of the lowest frequency.
  // transformers ignores the key: such a checkpoint is dmc's alone (as every DMC checkpoint is).
  std::vector<int64_t> rope_pairs;
};

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;
  int64_t max_position_embeddings = 4096;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  std::string torch_dtype = "float32";
  RopeScaling rope_scaling;
  DmcConfig dmc;

  // Reads config.json; every missing required field or wrong type raises dmc::Error naming `file` and field.
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& file);
  static LlamaConfig load(const std::string& path);
  // The shape of a GGUF file's "llama" architecture metadata (io/gguf.h); `path` names it in errors.
  static LlamaConfig from_gguf_metadata(const nlohmann::json& meta, const std::string& path, bool has_output_weight);
  nlohmann::json to_json() const;
  void save(const std::string& path) const;
  // Consistency checks (positive sizes, heads divide, ...): dmc::Error naming `file`.
  void validate(const std::string& file) const;

  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  int64_t num_parameters() const;

  // Named shapes: "tiny" (CPU tests and demo), "llama2-7b", "llama2-13b", "llama-1b" (16 x 2048),
  // "smollm2-135m" (SmolLM2-135M's shape: 30 x 576, 9 query / 3 KV heads of 64, tied embeddings).
  static LlamaConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();
};

}  // namespace dmc
