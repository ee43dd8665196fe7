// Byte-level BPE as Hugging Face `tokenizers` runs it from a tokenizer.json (Llama 3, SmolLM2, Qwen2, GPT-2), and
// as llama.cpp rebuilds it from a GGUF's metadata (tokenizer.ggml.model = gpt2).
//
// Encoding a text:
//   1. added tokens (tokenizer.json "added_tokens": specials like <|im_start|>) are cut out of the raw text first,
//      leftmost-longest, and map to their ids directly;
//   2. each remaining segment is pre-tokenized by the steps of "pre_tokenizer": Split (a regex, behaviour
//      Isolated / Removed / MergedWithPrevious / MergedWithNext, invert), Digits (each digit alone, or digit runs),
//      ByteLevel (the GPT-2 regex when use_regex, an optional prefix space), in a Sequence in order; the regexes run
//      in PCRE2 with UTF and Unicode properties (\p{L}, \p{N} from the Unicode tables of the library);
//   3. each piece's UTF-8 bytes are mapped to GPT-2's printable byte alphabet, and merged by the rank of "merges"
//      (lowest first, leftmost among equals); with ignore_merges a piece that is itself in the vocabulary is
//      taken whole (Llama 3).
// Decoding maps token strings back to bytes (added tokens as their text).
//
//   BpeTokenizer t = BpeTokenizer::from_json(nlohmann::json::parse(text), "tokenizer.json");
//   std::vector<int64_t> ids = t.encode("Hello world");  // no BOS/EOS: the caller adds them
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

namespace dmc {

class BpeTokenizer {
 public:
  // A tokenizer.json object; `file` names it in errors (unknown model / pre-tokenizer types, merges naming tokens
  // not in the vocabulary, ...).
  static BpeTokenizer from_json(const nlohmann::json& j, const std::string& file);
  // From GGUF metadata: tokens (byte-level strings), merges ("a b"), token types (3 control and 4 user-defined
  // become added tokens), and llama.cpp's pre-tokenizer name (tokenizer.ggml.pre).
  static BpeTokenizer from_gguf(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                                const std::vector<int64_t>& token_types, const std::string& pre,
                                const std::string& file);
  BpeTokenizer();
  ~BpeTokenizer();
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;

  std::vector<int64_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int64_t>& ids) const;
  int64_t vocab_size() const { return (int64_t)id_to_token_.size(); }
  // -1 when absent
  int64_t token_id(const std::string& token) const;
  const std::string& token(int64_t id) const { return id_to_token_.at(id); }
  // The HF tokenizer.json this tokenizer is (what `convert --from-gguf` writes).
  nlohmann::json to_json() const;

  struct Step {  // one pre-tokenizer step
    enum Kind { Split, Digits, ByteLevel } kind = Split;
    std::string pattern;  // Split: the regex
    enum Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext } behavior = Isolated;
    bool invert = false;
    bool individual_digits = false;                   // Digits
    bool add_prefix_space = false, use_regex = true;  // ByteLevel
    nlohmann::json source;                            // the step as tokenizer.json spells it
  };
  struct Added {
    int64_t id;
    std::string content;
    bool special = true, lstrip = false, rstrip = false;
  };

 private:
  static BpeTokenizer parse_json(const nlohmann::json& j, const std::string& file);
  void build(const std::string& file);
  std::vector<std::string> pre_tokenize(const std::string& text) const;
  void bpe_word(const std::string& mapped, std::vector<int64_t>& out) const;

  std::string file_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int64_t> token_to_id_;
  std::unordered_map<std::string, int64_t> merge_rank_;  // "a b" -> rank
  std::vector<std::pair<std::string, std::string>> merges_;
  std::vector<Step> steps_;
  std::vector<Added> added_;
  bool ignore_merges_ = false;
  int64_t unk_id_ = -1;
  struct Regexes;
  std::shared_ptr<const Regexes> re_;  // compiled step patterns (immutable; shared by copies)
};

// GPT-2's byte <-> printable-character map (each byte one code point, UTF-8 encoded).
const std::string& byte_to_unicode(uint8_t b);

}  // namespace dmc
