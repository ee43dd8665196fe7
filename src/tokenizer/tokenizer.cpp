#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>

#include "common/error.h"
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

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string bytes = read_file(path, "tokenizer");
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t.sp_->LoadFromSerializedProto(bytes);
  if (!st.ok()) fail(path, ": not a SentencePiece model (", st.ToString(), ")");
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

void Tokenizer::check_model_vocab(int64_t model_vocab, const std::string& model_file) const {
  if (model_vocab != vocab_size())
    fail(path_, ": tokenizer has ", vocab_size(), " pieces but ", model_file, " field 'vocab_size' is ", model_vocab,
         " (wrong tokenizer for this model?)");
}

void Tokenizer::train(const TrainOptions& o) {
  DMC_CHECK(!o.inputs.empty(), "tokenizer train: no input files");
  std::string inputs;
  for (const auto& f : o.inputs) {
    if (!file_exists(f)) fail("tokenizer train: input '", f, "' does not exist");
    if (f.find_first_of(", ") != std::string::npos) fail("tokenizer train: input path '", f, "' has a comma or space");
    inputs += (inputs.empty() ? "" : ",") + f;
  }
  const std::string args = cat("--input=", inputs, " --model_prefix=", o.model_prefix, " --vocab_size=", o.vocab_size,
                               " --model_type=bpe --byte_fallback=true --character_coverage=1.0",
                               " --split_digits=true --allow_whitespace_only_pieces=true --remove_extra_whitespaces=false",
                               " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --input_sentence_size=", o.max_sentences,
                               " --shuffle_input_sentence=true --num_threads=2 --minloglevel=2");
  auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) fail("tokenizer train: ", st.ToString());
}

}  // namespace dmc
