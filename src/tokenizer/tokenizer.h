// Tokenizer: one interface over SentencePiece (the Llama 2 model: BPE with byte fallback, bos=1, eos=2, unk=0) and
// Hugging Face byte-level BPE (tokenizer.json: Llama 3, SmolLM2, Qwen2; see bpe.h), loaded from whichever the
// user has:
//   a SentencePiece .model | a tokenizer.json (BOS / EOS / add_bos_token / chat template from the
//   tokenizer_config.json beside it) | a GGUF file (the tokenizer in its metadata) | a model directory (its
//   tokenizer.json, else its tokenizer.model).
//   auto tok = dmc::Tokenizer::load("models/smollm2-135m-instruct");
//   std::vector<int64_t> ids = tok.encode("Hello", /*add_bos=*/true);   // BOS only where the tokenizer uses one
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
namespace io {
class GgufFile;
}
class BpeTokenizer;

class Tokenizer {
 public:
  // dmc::Error naming the file if it is missing, unreadable or not a tokenizer of a supported kind.
  static Tokenizer load(const std::string& path);
  // The tokenizer of a GGUF file's metadata (tokenizer.ggml.model gpt2: byte-level BPE).
  static Tokenizer from_gguf(const io::GgufFile& g);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // add_bos: prepend BOS where this tokenizer's model uses one (SentencePiece: always; tokenizer.json: its
  // tokenizer_config.json's add_bos_token; GGUF: tokenizer.ggml.add_bos_token), as HF's add_special_tokens does.
  std::vector<int64_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const;
  std::string decode(const std::vector<int64_t>& ids) const;
  // The text one token adds when appended to `prev` (for streaming output).
  std::string decode_piece(int64_t id) const;
  int64_t vocab_size() const;
  int64_t bos_id() const;  // -1: none
  int64_t eos_id() const;  // -1: none
  bool adds_bos() const { return adds_bos_; }
  // The vocabulary's spelling of a token (SentencePiece piece, byte-level BPE string).
  std::string piece(int64_t id) const;
  // -1 when `piece` is not one token of the vocabulary
  int64_t piece_id(const std::string& piece) const;
  std::string kind() const { return bpe_ ? "bpe" : "sentencepiece"; }
  const BpeTokenizer* bpe() const { return bpe_.get(); }
  // The model's chat template (Jinja text from tokenizer_config.json or the GGUF), "" when it has none.
  const std::string& chat_template() const { return chat_template_; }
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
  std::unique_ptr<BpeTokenizer> bpe_;
  std::string path_, fingerprint_, chat_template_;
  int64_t bos_ = -1, eos_ = -1;
  bool adds_bos_ = true;
};

// Streaming detokenization, as vLLM and HF's TextStreamer do it: each new id is decoded together with a few ids
// before it and the text past what those few decode to is returned. Decoding the generated ids alone would lose the
// space of the first piece (SentencePiece drops the leading space of a sequence) and split UTF-8 sequences that
// span tokens; text that does not yet extend the window's (an incomplete UTF-8 sequence) waits for the next token.
// A push decodes only the window (the ids since the last text was returned, plus the ones before that), so a long
// output costs linear time, not quadratic.
//   StreamDecoder s(tok, prompt_ids);  for each new id: std::cout << s.push(id);  at the end: s.flush()
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, std::vector<int64_t> prompt);
  std::string push(int64_t id);
  // what a final push held back (bytes of an incomplete UTF-8 sequence, shown as U+FFFD like decode() does)
  std::string flush();
  const std::string& text() const { return shown_; }  // the generated text returned so far

 private:
  std::string pending_text();  // decode(window) past decode(ids_[prefix_, read_)), "" while it does not extend it
  std::string show(std::string add);  // add becomes shown: the window moves past it
  const Tokenizer& tok_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0, read_ = 0;  // ids_[prefix_, read_): context already shown; ids_[read_, end): not yet shown
  std::string shown_;
};

std::string fnv1a_hex(const std::string& bytes);

}  // namespace dmc
