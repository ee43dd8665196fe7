#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <sstream>
#include <unordered_map>

#include "common/error.h"
#include "common/files.h"
#include "common/util.h"

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

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string bytes = read_file(path, "tokenizer");
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t.sp_->LoadFromSerializedProto(bytes);
  if (!st.ok()) fail(path, ": not a SentencePiece model (", sp_status_text(st), ")");
  t.path_ = path;
  t.fingerprint_ = fnv1a_hex(bytes);
  return t;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int> ids;
  auto st = sp_->Encode(text, &ids);
  if (!st.ok()) fail(path_, ": encode failed (", st.ToString(), ")");
  std::vector<int64_t> out;
  out.reserve(ids.size() + 2);
  if (add_bos) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_eos) out.push_back(eos_id());
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
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
int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int64_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int64_t Tokenizer::eos_id() const { return sp_->eos_id(); }

StreamDecoder::StreamDecoder(const Tokenizer& tok, std::vector<int64_t> prompt)
    : tok_(tok), ids_(std::move(prompt)), shown_(tok.decode(ids_)) {}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  const std::string text = tok_.decode(ids_);
  static const std::string replacement = "\xEF\xBF\xBD";  // U+FFFD: a byte sequence still incomplete
  if (text.size() >= 3 && text.compare(text.size() - 3, 3, replacement) == 0) return "";
  if (text.size() < shown_.size() || text.compare(0, shown_.size(), shown_) != 0) {
    shown_ = text;  // what was shown changed meaning (rare): carry on from the new text, never repeat it
    return "";
  }
  std::string add = text.substr(shown_.size());
  shown_ = text;
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
