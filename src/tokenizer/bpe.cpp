// Byte-level BPE (see bpe.h): tokenizer.json and GGUF loading, PCRE2 pre-tokenization, ranked merges.
#include "tokenizer/bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <limits>
#include <unordered_map>
#include <mutex>

#include "common/error.h"
#include "common/utf8.h"

namespace dmc {
using json = nlohmann::json;

namespace {
// GPT-2's regex (the ByteLevel pre-tokenizer's use_regex), Llama 3's and Qwen2's Split patterns.
const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char* kLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
const char* kQwen2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += (char)cp;
  } else if (cp < 0x800) {
    s += (char)(0xC0 | (cp >> 6));
    s += (char)(0x80 | (cp & 0x3F));
  } else {
    s += (char)(0xE0 | (cp >> 12));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  }
  return s;
}

struct ByteMap {
  std::string fwd[256];
  std::unordered_map<std::string, uint8_t> back;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      fwd[b] = utf8(printable ? (uint32_t)b : 256u + (uint32_t)n++);
      back[fwd[b]] = (uint8_t)b;
    }
  }
};
const ByteMap& bytemap() {
  static const ByteMap m;
  return m;
}

// length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes)
int u8len(unsigned char c) { return utf8_step(c); }

BpeTokenizer::Step::Behavior parse_behavior(const json& s, const std::string& file) {
  const std::string b = s.value("behavior", std::string("Isolated"));
  if (b == "Isolated") return BpeTokenizer::Step::Isolated;
  if (b == "Removed") return BpeTokenizer::Step::Removed;
  if (b == "MergedWithPrevious") return BpeTokenizer::Step::MergedWithPrevious;
  if (b == "MergedWithNext") return BpeTokenizer::Step::MergedWithNext;
  fail(file, ": pre_tokenizer Split: behavior '", b,
       "' is not supported (expected Isolated, Removed, MergedWithPrevious or MergedWithNext)");
}

void parse_steps(const json& p, const std::string& file, std::vector<BpeTokenizer::Step>& steps) {
  if (p.is_null()) return;
  if (!p.is_object() || !p.contains("type") || !p["type"].is_string())
    fail(file, ": field 'pre_tokenizer' must be an object with a 'type'");
  const std::string type = p["type"];
  BpeTokenizer::Step s;
  s.source = p;
  if (type == "Sequence") {
    if (!p.contains("pretokenizers") || !p["pretokenizers"].is_array())
      fail(file, ": pre_tokenizer Sequence needs a 'pretokenizers' array");
    for (const auto& q : p["pretokenizers"]) parse_steps(q, file, steps);
    return;
  } else if (type == "Split") {
    if (!p.contains("pattern") || !p["pattern"].is_object())
      fail(file, ": pre_tokenizer Split needs a 'pattern' object ({\"Regex\": ...} or {\"String\": ...})");
    const json& pat = p["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      s.pattern = pat["Regex"];
    } else if (pat.contains("String") && pat["String"].is_string()) {  // a literal: quote it for PCRE2
      s.pattern = "\\Q" + pat["String"].get<std::string>() + "\\E";
    } else {
      fail(file, ": pre_tokenizer Split: 'pattern' must hold a string 'Regex' or 'String'");
    }
    s.kind = BpeTokenizer::Step::Split;
    s.behavior = parse_behavior(p, file);
    s.invert = p.value("invert", false);
  } else if (type == "Digits") {
    s.kind = BpeTokenizer::Step::Digits;
    s.individual_digits = p.value("individual_digits", false);
  } else if (type == "ByteLevel") {
    s.kind = BpeTokenizer::Step::ByteLevel;
    s.add_prefix_space = p.value("add_prefix_space", false);
    s.use_regex = p.value("use_regex", true);
  } else {
    fail(file, ": pre_tokenizer type '", type, "' is not supported (expected Sequence, Split, Digits or ByteLevel)");
  }
  if (!steps.empty() && steps.back().kind == BpeTokenizer::Step::ByteLevel)
    fail(file, ": pre_tokenizer: a ", type, " step after ByteLevel is not supported");
  steps.push_back(std::move(s));
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return bytemap().fwd[b]; }

struct BpeTokenizer::Regexes {
  std::vector<pcre2_code*> code;  // one per step (null where the step needs none)
  ~Regexes() {
    for (auto* c : code)
      if (c) pcre2_code_free(c);
  }
};

BpeTokenizer::BpeTokenizer() = default;
BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

BpeTokenizer BpeTokenizer::from_json(const json& j, const std::string& file) {
  try {
    return parse_json(j, file);
  } catch (const json::exception& e) {  // a field of the wrong JSON type, met by one of the typed reads
    fail(file, ": a field has the wrong type (", e.what(), ")");
  }
}

BpeTokenizer BpeTokenizer::parse_json(const json& j, const std::string& file) {
  if (!j.is_object()) fail(file, ": a tokenizer.json must be a JSON object");
  if (!j.contains("model") || !j["model"].is_object()) fail(file, ": field 'model' is missing");
  const json& m = j["model"];
  const std::string type = m.value("type", std::string(""));
  if (type != "BPE") fail(file, ": model type '", type, "' is not supported (expected BPE)");
  if (j.contains("normalizer") && !j["normalizer"].is_null())
    fail(file, ": normalizer '", j["normalizer"].value("type", std::string("?")),
         "' is not supported (byte-level BPE files have none)");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && m[k] != "") fail(file, ": model.", k, " is not supported");
  if (m.value("byte_fallback", false)) fail(file, ": model.byte_fallback is not supported (byte-level BPE only)");
  BpeTokenizer t;
  t.file_ = file;
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail(file, ": field 'model.vocab' must be an object");
  int64_t n = 0;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
      fail(file, ": model.vocab['", it.key(), "'] must be a non-negative integer id");
    n = std::max(n, it.value().get<int64_t>() + 1);
  }
  int64_t entries = (int64_t)m["vocab"].size();
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    entries += (int64_t)j["added_tokens"].size();
    for (const auto& a : j["added_tokens"]) n = std::max(n, a.value("id", (int64_t)-1) + 1);
  }
  if (n > entries)  // ids are 0 .. size-1 (a sparse id would size the tables by the largest one)
    fail(file, ": token id ", n - 1, " is beyond the ", entries, " entries of model.vocab and added_tokens");
  t.id_to_token_.assign(n, "");
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    const int64_t id = it.value();
    if (!t.id_to_token_[id].empty()) fail(file, ": model.vocab: id ", id, " is given twice");
    t.id_to_token_[id] = it.key();
    t.token_to_id_[it.key()] = id;
  }
  if (!m.contains("merges") || !m["merges"].is_array()) fail(file, ": field 'model.merges' must be an array");
  for (const auto& mg : m["merges"]) {
    if (mg.is_string()) {
      const std::string s = mg;
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) fail(file, ": model.merges: '", s, "' is not two tokens separated by a space");
      t.merges_.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
      t.merges_.emplace_back(mg[0], mg[1]);
    } else {
      fail(file, ": model.merges: each item must be \"a b\" or [\"a\", \"b\"]");
    }
  }
  t.ignore_merges_ = m.value("ignore_merges", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) t.unk_id_ = t.token_id(m["unk_token"]);
  if (j.contains("added_tokens")) {
    if (!j["added_tokens"].is_array()) fail(file, ": field 'added_tokens' must be an array");
    for (const auto& a : j["added_tokens"]) {
      if (!a.contains("id") || !a.contains("content") || !a["content"].is_string() || !a["id"].is_number_integer())
        fail(file, ": added_tokens: each needs an integer 'id' and a string 'content'");
      Added x{a["id"], a["content"], a.value("special", true), a.value("lstrip", false), a.value("rstrip", false)};
      if (x.content.empty()) fail(file, ": added_tokens: id ", x.id, " has empty content");
      if (x.id < 0 || x.id >= (int64_t)t.id_to_token_.size())
        fail(file, ": added_tokens: id ", x.id, " is out of range");
      t.id_to_token_[x.id] = x.content;
      t.token_to_id_[x.content] = x.id;
      t.added_.push_back(x);
    }
  }
  parse_steps(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), file, t.steps_);
  t.build(file);
  return t;
}

BpeTokenizer BpeTokenizer::from_gguf(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                                     const std::vector<int64_t>& token_types, const std::string& pre,
                                     const std::string& file) {
  json steps;
  auto bytelevel = [](bool regex) {
    return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", regex}};
  };
  auto split = [](const char* re) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2")
    steps = bytelevel(true);
  else if (pre == "smollm")
    steps = {{"type", "Sequence"},
             {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, bytelevel(true)}}};
  else if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3")
    steps = {{"type", "Sequence"}, {"pretokenizers", {split(kLlama3), bytelevel(false)}}};
  else if (pre == "qwen2")
    steps = {{"type", "Sequence"}, {"pretokenizers", {split(kQwen2), bytelevel(false)}}};
  else
    fail(file, ": metadata 'tokenizer.ggml.pre' = '", pre,
         "' is not known to dmc (known: default, gpt-2, smollm, llama3 / llama-bpe, qwen2)");
  if (!token_types.empty() && token_types.size() != tokens.size())
    fail(file, ": metadata 'tokenizer.ggml.token_type' has ", token_types.size(), " entries, tokens has ",
         tokens.size());
  json j;
  j["model"] = {{"type", "BPE"}, {"ignore_merges", false}};
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t ty = token_types.empty() ? 1 : token_types[i];
    if (ty == 3 || ty == 4)
      added.push_back({{"id", (int64_t)i},
                       {"content", tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", ty == 4},
                       {"special", ty == 3}});
    vocab[tokens[i]] = (int64_t)i;
  }
  j["model"]["vocab"] = vocab;
  j["model"]["merges"] = merges;
  j["added_tokens"] = added;
  j["pre_tokenizer"] = steps;
  return from_json(j, file);
}

void BpeTokenizer::build(const std::string& file) {
  for (size_t r = 0; r < merges_.size(); ++r) {
    const auto& [a, b] = merges_[r];
    for (const std::string* s : {&a, &b})
      if (!token_to_id_.count(*s)) fail(file, ": model.merges[", r, "] names '", *s, "', which is not in the vocab");
    if (!token_to_id_.count(a + b))
      fail(file, ": model.merges[", r, "]: the merged token '", a + b, "' is not in the vocab");
    merge_rank_.emplace(a + " " + b, (int64_t)r);  // the first rank wins, as in HF
  }
  auto re = std::make_shared<Regexes>();
  for (const auto& s : steps_) {
    std::string pat;
    if (s.kind == Step::Split) pat = s.pattern;
    if (s.kind == Step::Digits) pat = s.individual_digits ? "\\p{N}" : "\\p{N}+";
    if (s.kind == Step::ByteLevel && s.use_regex) pat = kGpt2;
    pcre2_code* c = nullptr;
    if (!pat.empty()) {
      int err = 0;
      PCRE2_SIZE off = 0;
      c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.c_str()), pat.size(), PCRE2_UTF | PCRE2_UCP, &err, &off,
                        nullptr);
      if (!c) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail(file, ": pre_tokenizer regex '", pat, "' does not compile at offset ", off, ": ",
             reinterpret_cast<const char*>(msg));
      }
      pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // optional: the interpreter runs where the JIT is unavailable
    }
    re->code.push_back(c);
  }
  re_ = re;
}

int64_t BpeTokenizer::token_id(const std::string& token) const {
  auto it = token_to_id_.find(token);
  return it == token_to_id_.end() ? -1 : it->second;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(const std::string& text) const {
  std::vector<std::string> pieces{text};
  pcre2_match_data* md = nullptr;
  for (size_t si = 0; si < steps_.size(); ++si) {
    const Step& s = steps_[si];
    pcre2_code* re = re_->code[si];
    std::vector<std::string> next;
    for (std::string p : pieces) {
      if (s.kind == Step::ByteLevel && s.add_prefix_space && (p.empty() || p[0] != ' ')) p = " " + p;
      if (!re) {
        next.push_back(p);
        continue;
      }
      if (!md) md = pcre2_match_data_create(8, nullptr);
      // segments with a flag: true = matched by the pattern
      std::vector<std::pair<std::string, bool>> segs;
      size_t pos = 0, prev = 0;
      while (pos <= p.size()) {
        // the subject's UTF-8 is checked on the first match only: checking it on every call (PCRE2's default)
        // makes a long piece quadratic
        const int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), pos,
                                   pos == 0 ? 0 : PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          PCRE2_UCHAR msg[256];
          pcre2_get_error_message(rc, msg, sizeof msg);
          pcre2_match_data_free(md);
          fail(file_, ": pre-tokenizing text: ", reinterpret_cast<const char*>(msg), " (is the text valid UTF-8?)");
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t b = ov[0], e = ov[1];
        if (e == b) {  // an empty match: step over one character
          pos = b + (b < p.size() ? u8len((unsigned char)p[b]) : 1);
          continue;
        }
        if (b > prev) segs.emplace_back(p.substr(prev, b - prev), false);
        segs.emplace_back(p.substr(b, e - b), true);
        prev = pos = e;
      }
      if (prev < p.size()) segs.emplace_back(p.substr(prev), false);
      const bool invert = s.kind == Step::Split && s.invert;
      const auto behavior = s.kind == Step::Split ? s.behavior : Step::Isolated;
      std::string carry;
      std::vector<std::string> out;
      for (auto& [seg, matched] : segs) {
        const bool delim = matched != invert;
        if (!delim || behavior == Step::Isolated) {
          out.push_back(carry + seg);
          carry.clear();
        } else if (behavior == Step::MergedWithPrevious) {
          if (out.empty())
            out.push_back(seg);
          else
            out.back() += seg;
        } else if (behavior == Step::MergedWithNext) {
          carry += seg;
        }  // Removed: dropped
      }
      if (!carry.empty()) out.push_back(carry);
      for (auto& o : out)
        if (!o.empty()) next.push_back(std::move(o));
    }
    pieces = std::move(next);
  }
  if (md) pcre2_match_data_free(md);
  return pieces;
}

void BpeTokenizer::bpe_word(const std::string& mapped, std::vector<int64_t>& out) const {
  if (ignore_merges_) {
    const int64_t id = token_id(mapped);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<std::string> sym;
  for (size_t i = 0; i < mapped.size();) {
    const int n = u8len((unsigned char)mapped[i]);
    sym.push_back(mapped.substr(i, n));
    i += n;
  }
  while (sym.size() > 1) {
    int64_t best = std::numeric_limits<int64_t>::max();
    size_t bi = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = merge_rank_.find(sym[i] + " " + sym[i + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        bi = i;
      }
    }
    if (best == std::numeric_limits<int64_t>::max()) break;
    sym[bi] += sym[bi + 1];
    sym.erase(sym.begin() + (long)bi + 1);
  }
  for (const auto& s : sym) {
    const int64_t id = token_id(s);
    if (id >= 0)
      out.push_back(id);
    else if (unk_id_ >= 0)
      out.push_back(unk_id_);
    else
      fail(file_, ": the piece '", s, "' is not in the vocabulary and the model has no unk_token");
  }
}

std::vector<int64_t> BpeTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> out;
  const ByteMap& bm = bytemap();
  // the merges of each distinct piece are worked out once a call (text repeats its words)
  std::unordered_map<std::string, std::pair<size_t, size_t>> seen;  // piece -> its ids' [begin, end) in out
  auto encode_plain = [&](const std::string& seg) {
    if (seg.empty()) return;
    for (const std::string& piece : pre_tokenize(seg)) {
      auto it = seen.find(piece);
      if (it != seen.end()) {
        const auto [b, e] = it->second;
        for (size_t i = b; i < e; ++i) {
          const int64_t id = out[i];
          out.push_back(id);
        }
        continue;
      }
      std::string mapped;
      for (unsigned char c : piece) mapped += bm.fwd[c];
      const size_t b = out.size();
      bpe_word(mapped, out);
      if (piece.size() <= 64) seen.emplace(piece, std::make_pair(b, out.size()));
    }
  };
  // added tokens first: the leftmost occurrence of any, the longest at one position
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string::npos, len = 0;
    const Added* hit = nullptr;
    for (const auto& a : added_) {
      const size_t at = text.find(a.content, pos);
      if (at != std::string::npos && (at < best || (at == best && a.content.size() > len))) {
        best = at;
        len = a.content.size();
        hit = &a;
      }
    }
    if (!hit) break;
    size_t b = best, e = best + len;
    if (hit->lstrip)
      while (b > pos && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\n')) --b;
    if (hit->rstrip)
      while (e < text.size() && (text[e] == ' ' || text[e] == '\t' || text[e] == '\n')) ++e;
    encode_plain(text.substr(pos, b - pos));
    out.push_back(hit->id);
    pos = e;
  }
  encode_plain(text.substr(pos));
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  const ByteMap& bm = bytemap();
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) fail(file_, ": token id ", id, " out of range [0, ", vocab_size(), ")");
    const std::string& t = id_to_token_[id];
    bool special = false;
    for (const auto& a : added_) special = special || a.id == id;
    if (special) {
      out += t;
      continue;
    }
    std::string bytes;
    bool ok = true;
    for (size_t i = 0; i < t.size() && ok;) {
      const int n = u8len((unsigned char)t[i]);
      auto it = bm.back.find(t.substr(i, n));
      if (it == bm.back.end())
        ok = false;
      else
        bytes += (char)it->second;
      i += n;
    }
    out += ok ? bytes : t;  // a token outside the byte alphabet stands for itself (as HF's ByteLevel decoder)
  }
  return out;
}

json BpeTokenizer::to_json() const {
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  json added = json::array();
  for (const auto& a : added_)
    added.push_back({{"id", a.id},
                     {"content", a.content},
                     {"single_word", false},
                     {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip},
                     {"normalized", !a.special},
                     {"special", a.special}});
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  json pre;
  if (steps_.size() == 1) {
    pre = steps_[0].source;
  } else if (!steps_.empty()) {
    pre = {{"type", "Sequence"}, {"pretokenizers", json::array()}};
    for (const auto& s : steps_) pre["pretokenizers"].push_back(s.source);
  }
  j["pre_tokenizer"] = pre;
  j["post_processor"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  json vocab = json::object();
  for (size_t i = 0; i < id_to_token_.size(); ++i) {
    bool is_added = false;
    for (const auto& a : added_) is_added = is_added || a.id == (int64_t)i;
    if (!is_added || token_to_id_.count(id_to_token_[i])) vocab[id_to_token_[i]] = (int64_t)i;
  }
  json merges = json::array();
  for (const auto& [a, b] : merges_) merges.push_back(json::array({a, b}));
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", ignore_merges_},
                {"vocab", vocab},
                {"merges", merges}};
  return j;
}

}  // namespace dmc
