// OptionTable: the settings of one command, declared by binding fields of its Options struct, filled from
// YAML files and from the command line, printed back as the fully resolved config.
//
//   struct GenerateOptions { std::string model; int64_t max_new_tokens = 64; };
//   GenerateOptions o;
//   OptionTable t("generate", "dmc generate --model DIR --tokenizer FILE --prompt TEXT [options]");
//   t.add("model", &o.model, "model directory (HF safetensors + config.json)", /*required=*/true);
//   t.add("max_new_tokens", &o.max_new_tokens, "tokens to generate");
//   t.parse(args);          // --config FILE (YAML), --key value, --key=value, key=value, --flag, --no-flag
//
// Keys are snake_case; on the command line '-' and '_' are interchangeable (--max-new-tokens). Nested YAML maps
// are flattened with '.' (model: {hidden_size: 64} -> model.hidden_size). Later sources override earlier ones,
// in the order given. Unknown keys and values of the wrong type raise dmc::Error naming the source (file or
// "command line"), the key, what was expected and the closest valid key.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace dmc {

struct HelpRequested {
  std::string text;
};

class OptionTable {
 public:
  OptionTable(std::string command, std::string usage);

  void add(const std::string& key, int64_t* field, const std::string& help, bool required = false);
  void add(const std::string& key, double* field, const std::string& help, bool required = false);
  void add(const std::string& key, bool* field, const std::string& help, bool required = false);
  void add(const std::string& key, std::string* field, const std::string& help, bool required = false);
  void add(const std::string& key, std::vector<std::string>* field, const std::string& help, bool required = false);
  // Bare arguments fill these keys in order (e.g. `dmc info DIR` -> model).
  void positional(const std::vector<std::string>& keys) { positional_ = keys; }

  // Throws HelpRequested for -h/--help, dmc::Error for bad input.
  void parse(const std::vector<std::string>& args);
  void load_yaml(const std::string& path);
  void set(const std::string& key, const std::string& value, const std::string& source);
  bool is_set(const std::string& key) const;

  std::string to_yaml() const;  // resolved values, in declaration order
  std::string help() const;
  std::vector<std::string> keys() const;

 private:
  enum class Type { Int, Float, Bool, String, List };
  struct Entry {
    std::string key, help;
    Type type;
    bool required = false, set = false;
    std::function<void(const std::string&, const std::string&)> assign;  // (value, source)
    std::function<std::string()> show;
  };
  Entry& find(const std::string& key, const std::string& source);
  void add_entry(Entry e);

  std::string command_, usage_;
  std::vector<Entry> entries_;
  std::vector<std::string> positional_;
};

}  // namespace dmc
