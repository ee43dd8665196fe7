#include "model/llama_config.h"

#include <cmath>

#include "common/error.h"
#include "common/files.h"
#include "common/util.h"

namespace dmc {
using json = nlohmann::json;

namespace {
int64_t get_int(const json& j, const std::string& key, const std::string& file, const int64_t* def) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    fail(file, ": missing field '", key, "' (expected an integer)");
  }
  if (!j[key].is_number_integer()) fail(file, ": field '", key, "' must be an integer, got ", j[key].dump());
  return j[key].get<int64_t>();
}
double get_num(const json& j, const std::string& key, const std::string& file, double def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) fail(file, ": field '", key, "' must be a number, got ", j[key].dump());
  return j[key].get<double>();
}
bool get_bool(const json& j, const std::string& key, const std::string& file, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) fail(file, ": field '", key, "' must be true or false, got ", j[key].dump());
  return j[key].get<bool>();
}
}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& file) {
  if (!j.is_object()) fail(file, ": expected a JSON object");
  LlamaConfig c;
  if (j.contains("model_type")) {
    if (!j["model_type"].is_string()) fail(file, ": field 'model_type' must be a string");
    const auto mt = j["model_type"].get<std::string>();
    if (mt != "llama" && mt != "mistral")
      fail(file, ": field 'model_type' is '", mt, "', expected 'llama' (a Llama-architecture model)");
  }
  c.vocab_size = get_int(j, "vocab_size", file, nullptr);
  c.hidden_size = get_int(j, "hidden_size", file, nullptr);
  c.intermediate_size = get_int(j, "intermediate_size", file, nullptr);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", file, nullptr);
  c.num_attention_heads = get_int(j, "num_attention_heads", file, nullptr);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", file, &c.num_attention_heads);
  int64_t hd = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  c.head_dim = get_int(j, "head_dim", file, &hd);
  int64_t mpe = 2048;
  c.max_position_embeddings = get_int(j, "max_position_embeddings", file, &mpe);
  c.rope_theta = get_num(j, "rope_theta", file, 10000.0);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", file, 1e-6);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", file, false);
  int64_t bos = 1;
  c.bos_token_id = get_int(j, "bos_token_id", file, &bos);
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    c.eos_token_ids.clear();
    if (e.is_number_integer())
      c.eos_token_ids.push_back(e.get<int64_t>());
    else if (e.is_array()) {
      for (const auto& x : e) {
        if (!x.is_number_integer()) fail(file, ": field 'eos_token_id' must be an integer or a list of integers");
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else
      fail(file, ": field 'eos_token_id' must be an integer or a list of integers, got ", e.dump());
  }
  for (const char* k : {"torch_dtype", "dtype"})
    if (j.contains(k) && j[k].is_string()) c.torch_dtype = j[k].get<std::string>();
  if (get_bool(j, "attention_bias", file, false))
    fail(file, ": field 'attention_bias' is true; biases are not supported");
  if (get_bool(j, "mlp_bias", file, false)) fail(file, ": field 'mlp_bias' is true; biases are not supported");
  if (j.contains("hidden_act")) {
    if (!j["hidden_act"].is_string()) fail(file, ": field 'hidden_act' must be a string");
    const auto act = j["hidden_act"].get<std::string>();
    if (act != "silu" && act != "swish")
      fail(file, ": field 'hidden_act' is '", act, "', only 'silu' (SwiGLU) is supported");
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    if (!rs.is_object()) fail(file, ": field 'rope_scaling' must be an object or null");
    std::string type;
    for (const char* k : {"rope_type", "type"})
      if (rs.contains(k) && rs[k].is_string()) type = rs[k].get<std::string>();
    const std::string f = file + " (rope_scaling)";
    if (type == "default" || type.empty()) {
      c.rope_scaling.type = "none";
    } else if (type == "linear") {
      c.rope_scaling.type = "linear";
      c.rope_scaling.factor = get_num(rs, "factor", f, 1.0);
    } else if (type == "llama3") {
      c.rope_scaling.type = "llama3";
      c.rope_scaling.factor = get_num(rs, "factor", f, 8.0);
      c.rope_scaling.low_freq_factor = get_num(rs, "low_freq_factor", f, 1.0);
      c.rope_scaling.high_freq_factor = get_num(rs, "high_freq_factor", f, 4.0);
      int64_t d = 8192;
      c.rope_scaling.original_max_position_embeddings = get_int(rs, "original_max_position_embeddings", f, &d);
    } else {
      fail(file, ": field 'rope_scaling.rope_type' is '", type, "', supported: default, linear, llama3");
    }
  }
  if (j.contains("dmc") && !j["dmc"].is_null()) {
    const json& d = j["dmc"];
    if (!d.is_object()) fail(file, ": field 'dmc' must be an object");
    const std::string f = file + " (dmc)";
    c.dmc.enabled = get_bool(d, "enabled", f, false);
    if (d.contains("stage")) {
      if (!d["stage"].is_string()) fail(file, ": field 'dmc.stage' must be a string");
      c.dmc.stage = d["stage"].get<std::string>();
    }
    c.dmc.init_val = get_num(d, "init_val", f, 5.0);
    int64_t w = 12;
    c.dmc.window = get_int(d, "window", f, &w);
    c.dmc.target_cr = get_num(d, "target_cr", f, 1.0);
    if (c.dmc.window < 1) fail(file, ": field 'dmc.window' must be >= 1");
    if (d.contains("rope_pairs")) {
      const json& rp = d["rope_pairs"];
      if (!rp.is_array()) fail(file, ": field 'dmc.rope_pairs' must be an array of pair indices");
      for (const json& v : rp) {
        if (!v.is_number_integer()) fail(file, ": field 'dmc.rope_pairs' must hold integers, got ", v.dump());
        c.dmc.rope_pairs.push_back(v.get<int64_t>());
      }
    }
  }
  c.validate(file);
  return c;
}

LlamaConfig LlamaConfig::load(const std::string& path) {
  const std::string text = read_file(path, "config");
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  return from_json(j, path);
}

void LlamaConfig::validate(const std::string& file) const {
  auto pos = [&](int64_t v, const char* name) {
    if (v <= 0) fail(file, ": field '", name, "' must be positive, got ", v);
  };
  pos(vocab_size, "vocab_size");
  pos(hidden_size, "hidden_size");
  pos(intermediate_size, "intermediate_size");
  pos(num_hidden_layers, "num_hidden_layers");
  pos(num_attention_heads, "num_attention_heads");
  pos(num_key_value_heads, "num_key_value_heads");
  pos(head_dim, "head_dim");
  pos(max_position_embeddings, "max_position_embeddings");
  if (head_dim % 2) fail(file, ": field 'head_dim' must be even for RoPE, got ", head_dim);
  if (num_attention_heads % num_key_value_heads)
    fail(file, ": field 'num_key_value_heads' (", num_key_value_heads, ") must divide num_attention_heads (",
         num_attention_heads, ")");
  if (!(rms_norm_eps > 0)) fail(file, ": field 'rms_norm_eps' must be positive");
  if (!(rope_theta > 0)) fail(file, ": field 'rope_theta' must be positive");
  if (rope_scaling.type != "none") {
    if (!(rope_scaling.factor > 0) || !std::isfinite(rope_scaling.factor))
      fail(file, ": field 'rope_scaling.factor' must be positive, got ", rope_scaling.factor);
    if (rope_scaling.type == "llama3") {
      if (!(rope_scaling.low_freq_factor > 0) || !(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor))
        fail(file, ": fields 'rope_scaling.low_freq_factor' (", rope_scaling.low_freq_factor, ") and ",
             "'rope_scaling.high_freq_factor' (", rope_scaling.high_freq_factor, ") must satisfy 0 < low < high");
      if (rope_scaling.original_max_position_embeddings <= 0)
        fail(file, ": field 'rope_scaling.original_max_position_embeddings' must be positive, got ",
             rope_scaling.original_max_position_embeddings);
    }
  }
  if (!dmc.rope_pairs.empty()) {
    const int64_t half = head_dim / 2;
    std::vector<bool> seen((size_t)half, false);
    bool ok = (int64_t)dmc.rope_pairs.size() == half;
    for (int64_t v : dmc.rope_pairs) {
      ok = ok && v >= 0 && v < half && !seen[(size_t)v];
      if (ok) seen[(size_t)v] = true;
    }
    if (!ok)
      fail(file, ": field 'dmc.rope_pairs' must be a permutation of 0..", half - 1, " (head_dim / 2 = ", half,
           " entries, each once), got ", dmc.rope_pairs.size(), " entries");
  }
  // the product that sizes the embedding must not overflow (a crafted config would pass as a small model)
  if (vocab_size > (int64_t(1) << 40) / hidden_size || num_hidden_layers > (int64_t(1) << 20) ||
      intermediate_size > (int64_t(1) << 40) / hidden_size || head_dim * num_attention_heads > (int64_t(1) << 24))
    fail(file, ": the model shape (vocab_size ", vocab_size, ", hidden_size ", hidden_size, ", intermediate_size ",
         intermediate_size, ", num_hidden_layers ", num_hidden_layers, ") is beyond any model dmc can hold");
}

json LlamaConfig::to_json() const {
  json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1)
    j["eos_token_id"] = eos_token_ids[0];
  else
    j["eos_token_id"] = eos_token_ids;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["torch_dtype"] = torch_dtype;
  if (rope_scaling.type == "none") {
    j["rope_scaling"] = nullptr;
  } else if (rope_scaling.type == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
  } else {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rope_scaling.factor},
                         {"low_freq_factor", rope_scaling.low_freq_factor},
                         {"high_freq_factor", rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  }
  if (dmc.enabled || !dmc.stage.empty() || !dmc.rope_pairs.empty()) {
    j["dmc"] = {{"enabled", dmc.enabled},
                {"stage", dmc.stage},
                {"init_val", dmc.init_val},
                {"window", dmc.window},
                {"target_cr", dmc.target_cr}};
    if (!dmc.rope_pairs.empty()) j["dmc"]["rope_pairs"] = dmc.rope_pairs;
  }
  return j;
}

void LlamaConfig::save(const std::string& path) const { write_file_atomic(path, to_json().dump(2) + "\n"); }

int64_t LlamaConfig::num_parameters() const {
  const int64_t attn = hidden_size * (q_size() + 2 * kv_size()) + q_size() * hidden_size;
  const int64_t mlp = 3 * hidden_size * intermediate_size;
  const int64_t per_layer = attn + mlp + 2 * hidden_size;
  const int64_t emb = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return num_hidden_layers * per_layer + emb + hidden_size;
}

LlamaConfig LlamaConfig::preset(const std::string& name) {
  LlamaConfig c;
  if (name == "llama2-7b") return c;
  if (name == "llama2-13b") {
    c.hidden_size = 5120;
    c.intermediate_size = 13824;
    c.num_hidden_layers = 40;
    c.num_attention_heads = c.num_key_value_heads = 40;
    return c;
  }
  if (name == "llama-1b") {
    c.hidden_size = 2048;
    c.intermediate_size = 5632;
    c.num_hidden_layers = 16;
    c.num_attention_heads = c.num_key_value_heads = 16;
    return c;
  }
  if (name == "smollm2-135m") {  // SmolLM2-135M's shape (random weights here): head_dim 64, GQA groups of 3
    c.vocab_size = 49152;
    c.hidden_size = 576;
    c.intermediate_size = 1536;
    c.num_hidden_layers = 30;
    c.num_attention_heads = 9;
    c.num_key_value_heads = 3;
    c.head_dim = 64;
    c.max_position_embeddings = 8192;
    c.rope_theta = 100000.0;
    c.tie_word_embeddings = true;
    return c;
  }
  if (name == "tiny") {
    c.vocab_size = 512;
    c.hidden_size = 128;
    c.intermediate_size = 344;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.max_position_embeddings = 1024;
    return c;
  }
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  fail("preset: unknown model preset '", name, "', expected one of ", names);
}

std::vector<std::string> LlamaConfig::preset_names() { return {"tiny", "llama-1b", "smollm2-135m", "llama2-7b", "llama2-13b"}; }

}  // namespace dmc

namespace dmc {

LlamaConfig LlamaConfig::from_gguf_metadata(const json& meta, const std::string& path, bool has_output_weight) {
  auto str = [&](const std::string& k) -> std::string {
    if (!meta.contains(k)) fail(path, ": metadata key '", k, "' is missing");
    if (!meta[k].is_string()) fail(path, ": metadata '", k, "' must be a string");
    return meta[k];
  };
  const std::string arch = str("general.architecture");
  if (arch != "llama") fail(path, ": metadata 'general.architecture' = '", arch, "', expected llama");
  auto num = [&](const std::string& k, bool required, double fallback) -> double {
    const std::string key = "llama." + k;
    if (!meta.contains(key)) {
      if (required) fail(path, ": metadata key '", key, "' is missing");
      return fallback;
    }
    if (!meta[key].is_number()) fail(path, ": metadata '", key, "' must be a number, got ", meta[key].dump());
    return meta[key].get<double>();
  };
  LlamaConfig c;
  c.num_hidden_layers = (int64_t)num("block_count", true, 0);
  c.hidden_size = (int64_t)num("embedding_length", true, 0);
  c.intermediate_size = (int64_t)num("feed_forward_length", true, 0);
  c.num_attention_heads = (int64_t)num("attention.head_count", true, 0);
  c.num_key_value_heads = (int64_t)num("attention.head_count_kv", false, (double)c.num_attention_heads);
  c.max_position_embeddings = (int64_t)num("context_length", true, 0);
  c.rope_theta = num("rope.freq_base", false, 10000.0);
  c.rms_norm_eps = num("attention.layer_norm_rms_epsilon", true, 0);
  DMC_CHECK(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, path,
            ": metadata 'llama.embedding_length' (", c.hidden_size,
            ") is not a multiple of 'llama.attention.head_count' (", c.num_attention_heads, ")");
  c.head_dim = c.hidden_size / c.num_attention_heads;
  const int64_t rot = (int64_t)num("rope.dimension_count", false, (double)c.head_dim);
  if (rot != c.head_dim)
    fail(path, ": metadata 'llama.rope.dimension_count' = ", rot, ", dmc supports rotary over the whole head (",
         c.head_dim, ")");
  if (meta.contains("llama.rope.scaling.type") && meta["llama.rope.scaling.type"] != "none")
    fail(path, ": metadata 'llama.rope.scaling.type' = ", meta["llama.rope.scaling.type"].dump(),
         " is not supported from GGUF");
  if (meta.contains("llama.vocab_size")) {
    c.vocab_size = (int64_t)num("vocab_size", true, 0);
  } else if (meta.contains("tokenizer.ggml.tokens") && meta["tokenizer.ggml.tokens"].is_array()) {
    c.vocab_size = (int64_t)meta["tokenizer.ggml.tokens"].size();
  } else {
    fail(path, ": metadata has neither 'llama.vocab_size' nor 'tokenizer.ggml.tokens'");
  }
  c.tie_word_embeddings = !has_output_weight;
  auto token_id = [&](const std::string& k, int64_t fallback) -> int64_t {
    if (!meta.contains(k)) return fallback;
    if (!meta[k].is_number_integer()) fail(path, ": metadata '", k, "' must be an integer, got ", meta[k].dump());
    return meta[k].get<int64_t>();
  };
  c.bos_token_id = token_id("tokenizer.ggml.bos_token_id", 1);
  c.eos_token_ids = {token_id("tokenizer.ggml.eos_token_id", 2)};
  c.torch_dtype = "float32";
  c.validate(path);
  return c;
}

}  // namespace dmc
