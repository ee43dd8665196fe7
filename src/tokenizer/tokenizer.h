// Tokenizer: SentencePiece (the Llama 2 model: BPE with byte fallback, bos=1, eos=2, unk=0).
//   auto tok = dmc::Tokenizer::load("tokenizer.model");
//   std::vector<int64_t> ids = tok.encode("Hello", /*add_bos=*/true);
//   std::string text = tok.decode(ids);
// train() builds a small SentencePiece BPE model (byte fallback on) from text files, so that a fresh machine
// without the Llama 2 tokenizer can still run the whole chain.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace dmc {

class Tokenizer {
 public:
  // dmc::Error naming the file if it is missing, unreadable or not a SentencePiece model.
  static Tokenizer load(const std::string& path);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int64_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const;
  std::string decode(const std::vector<int64_t>& ids) const;
  // The text one token adds when appended to `prev` (for streaming output).
  std::string decode_piece(int64_t id) const;
  int64_t vocab_size() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  const std::string& path() const { return path_; }
  // SHA-256-free content fingerprint (FNV-1a 64 of the model bytes), hex.
  const std::string& fingerprint() const { return fingerprint_; }

  // Fails with an error naming both files when the model's vocabulary differs from the tokenizer's.
  void check_model_vocab(int64_t model_vocab, const std::string& model_file) const;

  struct TrainOptions {
    std::vector<std::string> inputs;
    std::string model_prefix;  // writes PREFIX.model and PREFIX.vocab
    int64_t vocab_size = 512;
    int64_t max_sentences = 200000;
    bool overwrite = false;  // replace an existing PREFIX.model / PREFIX.vocab
  };
  // Trains in memory and writes both files atomically (common/files.h); refuses existing files without overwrite
  // and a prefix whose files would be one of the inputs.
  static void train(const TrainOptions& o);

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_, fingerprint_;
};

// Streaming detokenization, as llama.cpp and HF's TextStreamer do it: the running sequence (prompt + generated ids)
// is decoded and the text past what was already shown is returned. Decoding the generated ids alone would lose the
// space of the first piece (SentencePiece drops the leading space of a sequence) and split UTF-8 sequences that
// span tokens; text that does not yet extend what was shown waits for the next token.
//   StreamDecoder s(tok, prompt_ids);  for each new id: std::cout << s.push(id);
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, std::vector<int64_t> prompt);
  std::string push(int64_t id);
  const std::string& text() const { return shown_; }  // decode(prompt + pushed ids), as far as shown

 private:
  const Tokenizer& tok_;
  std::vector<int64_t> ids_;
  std::string shown_;
};

std::string fnv1a_hex(const std::string& bytes);

}  // namespace dmc
