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
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dmc {

struct HelpRequested {
  std::string text;
};

class OptionTable;

// The valid values of one option, declared where it is added and checked whenever it is set (YAML or command line):
//   t.add("lr", &o.lr, "peak learning rate").above(0);
//   t.add("beta1", &o.beta1, "AdamW beta1").min(0).below(1);
//   t.add("lr_schedule", &o.lr_schedule, "...").one_of({"constant", "cosine", "linear"});
// A value outside is a dmc::Error naming the source, the key, the value and the range, e.g.
//   command line: key 'lr': -0.001 is out of range, expected a value > 0
class Option {
 public:
  Option(OptionTable* t, size_t i) : t_(t), i_(i) {}
  Option& min(double v);                                   // value >= v
  Option& above(double v);                                 // value > v
  Option& max(double v);                                   // value <= v
  Option& below(double v);                                 // value < v
  Option& one_of(const std::vector<std::string>& values);  // strings, and every item of a list

 private:
  Option& bound(double v, bool upper, bool open);
  OptionTable* t_;
  size_t i_;
};

class OptionTable {
 public:
  OptionTable(std::string command, std::string usage);

  Option add(const std::string& key, int64_t* field, const std::string& help, bool required = false);
  Option add(const std::string& key, double* field, const std::string& help, bool required = false);
  Option add(const std::string& key, bool* field, const std::string& help, bool required = false);
  Option add(const std::string& key, std::string* field, const std::string& help, bool required = false);
  Option add(const std::string& key, std::vector<std::string>* field, const std::string& help, bool required = false);
  // An enum setting, named in text by the pairs `names` (e.g. {{"flash", DmcAttnImpl::Flash}, ...}): the text is
  // checked against the names (the same error as one_of) and parsed into the field once, where it is set.
  template <typename E>
  Option add(const std::string& key, E* field, const std::string& help,
             const std::vector<std::pair<std::string, E>>& names, bool required = false) {
    std::vector<std::string> text;
    for (const auto& n : names) text.push_back(n.first);
    return add_named(
        key, help, required, text,
        [field, names](const std::string& v) {
          for (const auto& n : names)
            if (n.first == v) *field = n.second;
        },
        [field, names] {
          for (const auto& n : names)
            if (n.second == *field) return n.first;
          return std::string("?");
        });
  }
  // A check across options (e.g. min_lr <= lr), run once at the end of parse(); it throws dmc::Error itself.
  void check(std::function<void()> fn) { checks_.push_back(std::move(fn)); }
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
  friend class Option;
  enum class Type { Int, Float, Bool, String, List };
  struct Entry {
    Entry(std::string k, std::string h, Type t, bool req, bool was_set,
          std::function<void(const std::string&, const std::string&)> a, std::function<std::string()> sh,
          std::function<double()> num = {})
        : key(std::move(k)),
          help(std::move(h)),
          type(t),
          required(req),
          set(was_set),
          assign(std::move(a)),
          show(std::move(sh)),
          number(std::move(num)) {}
    std::string key, help;
    Type type;
    bool required = false, set = false;
    std::function<void(const std::string&, const std::string&)> assign;  // (value, source)
    std::function<std::string()> show;
    std::function<double()> number;  // Int / Float: the current value
    double lo = -HUGE_VAL, hi = HUGE_VAL;
    bool lo_open = false, hi_open = false;
    std::vector<std::string> choices;
  };
  Entry& find(const std::string& key, const std::string& source);
  Option add_entry(Entry e);
  Option add_named(const std::string& key, const std::string& help, bool required, std::vector<std::string> names,
                   std::function<void(const std::string&)> assign, std::function<std::string()> show);
  void check_value(const Entry& e, const std::string& value, const std::string& source) const;
  static std::string range_text(const Entry& e);

  std::string command_, usage_;
  std::vector<Entry> entries_;
  std::vector<std::string> positional_;
  std::vector<std::function<void()>> checks_;
};

}  // namespace dmc
