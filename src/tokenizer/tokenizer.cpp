#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <cstring>
#include <sstream>
#include <unordered_map>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/util.h"
#include "common/utf8.h"
#include "io/gguf.h"
#include "tokenizer/bpe.h"

namespace dmc {

std::string fnv1a_hex(const std::string& bytes) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : bytes) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}

namespace {
// SentencePiece's status text without its source location ("trainer_interface.cc(661) [cond] message" -> message)
std::string sp_status_text(const sentencepiece::util::Status& st) {
  std::string m = st.message();
  const size_t cc = m.find(".cc(");
  const size_t br = m.find("] ");
  if (cc != std::string::npos && br != std::string::npos && br > cc) m = m.substr(br + 2);
  return m.empty() ? st.ToString() : m;
}
}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

namespace {
using json = nlohmann::json;
namespace fs = std::filesystem;
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = (unsigned char)s[i];
    const int n = utf8_sequence_length(c);
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; ++k)
      if (((unsigned char)s[i + k] >> 6) != 2) return false;
    i += n;
  }
  return true;
}
// tokenizer_config.json's bos_token / eos_token: a string or {"content": string}
std::string token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}
}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* f : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / f)) return load((fs::path(path) / f).string());
    fail(path, ": the directory has no tokenizer.json or tokenizer.model");
  }
  if (io::is_gguf_path(path)) return from_gguf(*io::GgufFile::open(path));
  const std::string bytes = read_file(path, "tokenizer");
  Tokenizer t;
  t.path_ = path;
  t.fingerprint_ = fnv1a_hex(bytes);
  if (ends_with(path, ".json")) {
    json j;
    try {
      j = json::parse(bytes);
    } catch (const std::exception& e) {
      fail(path, ": not valid JSON (", e.what(), ")");
    }
    t.bpe_ = std::make_unique<BpeTokenizer>(BpeTokenizer::from_json(j, path));
    t.adds_bos_ = false;
    const fs::path cfg = fs::path(path).parent_path() / "tokenizer_config.json";
    if (fs::exists(cfg)) {
      json c;
      try {
        c = json::parse(read_file(cfg.string(), "tokenizer config"));
      } catch (const dmc::Error&) {
        throw;
      } catch (const std::exception& e) {
        fail(cfg.string(), ": not valid JSON (", e.what(), ")");
      }
      if (c.contains("bos_token")) t.bos_ = t.bpe_->token_id(token_text(c["bos_token"]));
      if (c.contains("eos_token")) t.eos_ = t.bpe_->token_id(token_text(c["eos_token"]));
      if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) t.adds_bos_ = c["add_bos_token"];
      if (c.contains("chat_template") && c["chat_template"].is_string()) t.chat_template_ = c["chat_template"];
    }
    return t;
  }
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t.sp_->LoadFromSerializedProto(bytes);
  if (!st.ok()) fail(path, ": not a SentencePiece model (", sp_status_text(st), ")");
  t.bos_ = t.sp_->bos_id();
  t.eos_ = t.sp_->eos_id();
  return t;
}

namespace {
// A minimal protobuf writer for SentencePiece's ModelProto (sentencepiece_model.proto), enough to rebuild a
// SentencePiece BPE model from a GGUF's tokens, scores and types: field numbers as in that file.
struct Proto {
  std::string b;
  void varint(uint64_t v) {
    while (v >= 0x80) {
      b += (char)(0x80 | (v & 0x7F));
      v >>= 7;
    }
    b += (char)v;
  }
  void tag(int field, int wire) { varint((uint64_t)(field << 3 | wire)); }
  void int_field(int field, int64_t v) {
    tag(field, 0);
    varint((uint64_t)v);  // negative int32: ten bytes, sign-extended, as protobuf writes them
  }
  void bytes_field(int field, const std::string& s) {
    tag(field, 2);
    varint(s.size());
    b += s;
  }
  void float_field(int field, float f) {
    tag(field, 5);
    char c[4];
    std::memcpy(c, &f, 4);
    b.append(c, 4);
  }
};

// ModelProto of a Llama-style SentencePiece BPE model (byte fallback, "▁" for spaces, a dummy prefix)
std::string sentencepiece_proto(const std::vector<std::string>& tokens, const std::vector<double>& scores,
                                const std::vector<int64_t>& types, int64_t unk, int64_t bos, int64_t eos, int64_t pad,
                                bool add_space_prefix) {
  Proto m;
  for (size_t i = 0; i < tokens.size(); ++i) {
    Proto p;
    p.bytes_field(1, tokens[i]);
    p.float_field(2, i < scores.size() ? (float)scores[i] : 0.f);
    // GGUF token types are SentencePiece's: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    const int64_t ty = i < types.size() ? types[i] : 1;
    if (ty != 1) p.int_field(3, ty);
    m.bytes_field(1, p.b);
  }
  Proto t;            // TrainerSpec
  t.int_field(3, 2);  // model_type BPE
  t.int_field(4, (int64_t)tokens.size());
  t.int_field(35, 1);  // byte_fallback
  t.int_field(40, unk);
  t.int_field(41, bos);
  t.int_field(42, eos);
  t.int_field(43, pad);
  m.bytes_field(2, t.b);
  Proto n;  // NormalizerSpec: identity, the dummy prefix as the GGUF says, whitespace kept and escaped
  n.bytes_field(1, "identity");
  n.int_field(3, add_space_prefix ? 1 : 0);
  n.int_field(4, 0);
  n.int_field(5, 1);
  m.bytes_field(3, n.b);
  return m.b;
}
}  // namespace

Tokenizer Tokenizer::from_gguf(const io::GgufFile& g) {
  const std::string& path = g.path();
  const std::string model = g.get_string("tokenizer.ggml.model");
  if (model != "gpt2" && model != "llama")
    fail(path, ": metadata 'tokenizer.ggml.model' = '", model,
         "' is not supported (expected gpt2: byte-level BPE, or llama: SentencePiece)");
  auto strings = [&](const std::string& key, bool required) {
    std::vector<std::string> v;
    if (!g.has(key)) {
      if (required) fail(path, ": metadata key '", key, "' is missing");
      return v;
    }
    const json& a = g.metadata()[key];
    if (!a.is_array()) fail(path, ": metadata '", key, "' must be an array of strings");
    for (const auto& x : a) {
      if (!x.is_string()) fail(path, ": metadata '", key, "' must be an array of strings");
      v.push_back(x.get<std::string>());
      if (!valid_utf8(v.back())) fail(path, ": metadata '", key, "'[", v.size() - 1, "] is not valid UTF-8");
    }
    return v;
  };
  std::vector<int64_t> types;
  if (g.has("tokenizer.ggml.token_type"))
    for (const auto& x : g.metadata()["tokenizer.ggml.token_type"]) {
      if (!x.is_number_integer()) fail(path, ": metadata 'tokenizer.ggml.token_type' must be integers");
      types.push_back(x.get<int64_t>());
    }
  Tokenizer t;
  t.path_ = path;
  if (model == "llama") {
    const auto tokens = strings("tokenizer.ggml.tokens", true);
    std::vector<double> scores;
    if (g.has("tokenizer.ggml.scores"))
      for (const auto& x : g.metadata()["tokenizer.ggml.scores"]) {
        if (!x.is_number()) fail(path, ": metadata 'tokenizer.ggml.scores' must be numbers");
        scores.push_back(x.get<double>());
      }
    if (!scores.empty() && scores.size() != tokens.size())
      fail(path, ": metadata 'tokenizer.ggml.scores' has ", scores.size(), " entries, tokens has ", tokens.size());
    if (!types.empty() && types.size() != tokens.size())
      fail(path, ": metadata 'tokenizer.ggml.token_type' has ", types.size(), " entries, tokens has ", tokens.size());
    const bool prefix =
        !g.has("tokenizer.ggml.add_space_prefix") || g.metadata()["tokenizer.ggml.add_space_prefix"] == true;
    const std::string proto =
        sentencepiece_proto(tokens, scores, types, g.get_int("tokenizer.ggml.unknown_token_id", 0),
                            g.get_int("tokenizer.ggml.bos_token_id", 1), g.get_int("tokenizer.ggml.eos_token_id", 2),
                            g.get_int("tokenizer.ggml.padding_token_id", -1), prefix);
    t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    auto st = t.sp_->LoadFromSerializedProto(proto);
    if (!st.ok())
      fail(path, ": the SentencePiece model rebuilt from the metadata does not load (", sp_status_text(st), ")");
    t.bos_ = t.sp_->bos_id();
    t.eos_ = t.sp_->eos_id();
    t.adds_bos_ = !g.has("tokenizer.ggml.add_bos_token") || g.metadata()["tokenizer.ggml.add_bos_token"] == true;
    t.chat_template_ = g.get_string("tokenizer.chat_template", "");
    t.fingerprint_ = fnv1a_hex(proto);
    return t;
  }
  t.bpe_ = std::make_unique<BpeTokenizer>(BpeTokenizer::from_gguf(strings("tokenizer.ggml.tokens", true),
                                                                  strings("tokenizer.ggml.merges", true), types,
                                                                  g.get_string("tokenizer.ggml.pre", "default"), path));
  t.bos_ = g.get_int("tokenizer.ggml.bos_token_id", -1);
  t.eos_ = g.get_int("tokenizer.ggml.eos_token_id", -1);
  for (int64_t id : {t.bos_, t.eos_})
    if (id >= t.bpe_->vocab_size()) fail(path, ": BOS/EOS id ", id, " is outside the vocabulary");
  t.adds_bos_ = g.has("tokenizer.ggml.add_bos_token") && g.metadata()["tokenizer.ggml.add_bos_token"] == true;
  t.chat_template_ = g.get_string("tokenizer.chat_template", "");
  t.fingerprint_ = fnv1a_hex(t.bpe_->to_json().dump());
  return t;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int64_t> out;
  if (add_bos && adds_bos_ && bos_ >= 0) out.push_back(bos_);
  if (bpe_) {
    const auto ids = bpe_->encode(text);
    out.insert(out.end(), ids.begin(), ids.end());
  } else {
    std::vector<int> ids;
    auto st = sp_->Encode(text, &ids);
    if (!st.ok()) fail(path_, ": encode failed (", st.ToString(), ")");
    out.insert(out.end(), ids.begin(), ids.end());
  }
  if (add_eos && eos_ >= 0) out.push_back(eos_);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  if (bpe_) return bpe_->decode(ids);
  std::vector<int> v;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) fail(path_, ": token id ", id, " out of range [0, ", vocab_size(), ")");
    v.push_back((int)id);
  }
  std::string out;
  auto st = sp_->Decode(v, &out);
  if (!st.ok()) fail(path_, ": decode failed (", st.ToString(), ")");
  return out;
}

std::string Tokenizer::decode_piece(int64_t id) const { return decode({id}); }
int64_t Tokenizer::vocab_size() const { return bpe_ ? bpe_->vocab_size() : sp_->GetPieceSize(); }
int64_t Tokenizer::bos_id() const { return bos_; }
int64_t Tokenizer::eos_id() const { return eos_; }
std::string Tokenizer::piece(int64_t id) const {
  if (id < 0 || id >= vocab_size()) fail(path_, ": token id ", id, " out of range [0, ", vocab_size(), ")");
  return bpe_ ? bpe_->token(id) : sp_->IdToPiece((int)id);
}
int64_t Tokenizer::piece_id(const std::string& p) const {
  if (bpe_) return bpe_->token_id(p);
  const int id = sp_->PieceToId(p);
  return id == sp_->unk_id() && p != sp_->IdToPiece(id) ? -1 : id;
}

StreamDecoder::StreamDecoder(const Tokenizer& tok, std::vector<int64_t> prompt)
    : tok_(tok), ids_(std::move(prompt)) {
  read_ = ids_.size();
  prefix_ = read_ > 5 ? read_ - 5 : 0;  // a few prompt ids as context: the first piece's space, merged bytes
}

std::string StreamDecoder::pending_text() {
  const std::vector<int64_t> ctx(ids_.begin() + (std::ptrdiff_t)prefix_, ids_.begin() + (std::ptrdiff_t)read_);
  const std::vector<int64_t> all(ids_.begin() + (std::ptrdiff_t)prefix_, ids_.end());
  const std::string before = tok_.decode(ctx), text = tok_.decode(all);
  if (text.size() <= before.size() || text.compare(0, before.size(), before) != 0) return "";
  return text.substr(before.size());
}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  std::string add = pending_text();
  static const std::string replacement = "\xEF\xBF\xBD";  // U+FFFD: a byte sequence still incomplete
  if (add.empty() || (add.size() >= 3 && add.compare(add.size() - 3, 3, replacement) == 0)) return "";
  return show(std::move(add));
}

std::string StreamDecoder::flush() { return show(pending_text()); }

std::string StreamDecoder::show(std::string add) {
  prefix_ = read_;
  read_ = ids_.size();
  shown_ += add;
  return add;
}

void Tokenizer::check_model_vocab(int64_t model_vocab, const std::string& model_file) const {
  if (model_vocab != vocab_size())
    fail(path_, ": tokenizer has ", vocab_size(), " pieces but ", model_file, " field 'vocab_size' is ", model_vocab,
         " (wrong tokenizer for this model?)");
}

void Tokenizer::train(const TrainOptions& o) {
  DMC_CHECK(!o.inputs.empty(), "tokenizer train: --input: no input files");
  DMC_CHECK(!o.model_prefix.empty(), "tokenizer train: --out: empty prefix");
  std::string inputs;
  for (const auto& f : o.inputs) {
    if (!file_exists(f)) fail("tokenizer train: --input: '", f, "' does not exist");
    if (f.find(',') != std::string::npos)
      fail("tokenizer train: --input: path '", f, "' has a comma (SentencePiece splits its input list at commas)");
    inputs += (inputs.empty() ? "" : ",") + f;
  }
  const std::string model_path = o.model_prefix + ".model", vocab_path = o.model_prefix + ".vocab";
  check_output_target(model_path, o.overwrite, o.inputs, "tokenizer train: --out");
  check_output_target(vocab_path, o.overwrite, o.inputs, "tokenizer train: --out");
  const std::unordered_map<std::string, std::string> args = {{"input", inputs},
                                                             {"vocab_size", std::to_string(o.vocab_size)},
                                                             {"model_type", "bpe"},
                                                             {"byte_fallback", "true"},
                                                             {"character_coverage", "1.0"},
                                                             {"split_digits", "true"},
                                                             {"allow_whitespace_only_pieces", "true"},
                                                             {"remove_extra_whitespaces", "false"},
                                                             {"unk_id", "0"},
                                                             {"bos_id", "1"},
                                                             {"eos_id", "2"},
                                                             {"pad_id", "-1"},
                                                             {"input_sentence_size", std::to_string(o.max_sentences)},
                                                             {"shuffle_input_sentence", "true"},
                                                             {"num_threads", "2"},
                                                             {"minloglevel", "2"}};
  std::string proto;  // trained in memory: SentencePiece writes no file itself
  auto st = sentencepiece::SentencePieceTrainer::Train(args, nullptr, &proto);
  if (!st.ok()) fail("tokenizer train: SentencePiece could not train on ", inputs, ": ", sp_status_text(st));
  sentencepiece::SentencePieceProcessor sp;
  st = sp.LoadFromSerializedProto(proto);
  if (!st.ok()) fail("tokenizer train: the trained model does not load: ", sp_status_text(st));
  std::ostringstream vocab;  // PREFIX.vocab as SentencePiece writes it: piece TAB score
  for (int i = 0; i < sp.GetPieceSize(); ++i) vocab << sp.IdToPiece(i) << "\t" << sp.GetScore(i) << "\n";
  write_file_atomic(model_path, proto);
  write_file_atomic(vocab_path, vocab.str());
}

}  // namespace dmc
