// Token datasets made by `dmc data prepare`, memory-mapped, and the training loader.
//
// TokenSplit: one split ("train" / "valid") of a prepared directory seen as one concatenated token stream.
// Loader: samples of seq_len + 1 tokens (input = first seq_len, target = last seq_len) cut at multiples of
// seq_len from each dataset's stream, visited in a seeded random order per epoch; several datasets are blended
// by weight with a deterministic interleave (sample k goes to the dataset furthest below its share).
// Everything is a function of (seed, position), so saving `position()` in a checkpoint restores the stream.
//
// Batch layout: input, target [batch, seq_len] int64; doc_start [batch, seq_len] bool, true where a document
//   begins at that input position (its BOS), for models that must not mix documents.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dmc::data {

class TokenSplit {
 public:
  // Checks meta.json, shard sizes against their indexes, and (when non-empty) the tokenizer fingerprint and
  // vocabulary size. dmc::Error naming the file and field on any mismatch.
  static std::shared_ptr<TokenSplit> open(const std::string& dir, const std::string& split,
                                          const std::string& tokenizer_fingerprint = "", int64_t vocab_size = 0);
  ~TokenSplit();
  int64_t num_tokens() const { return total_; }
  int64_t num_documents() const { return (int64_t)doc_starts_.size(); }
  const std::string& dir() const { return dir_; }
  // tokens [start, start + n) -> out
  void read(int64_t start, int64_t n, int64_t* out) const;
  // global positions p in [start, start + n) where a document starts
  std::vector<int64_t> doc_starts_in(int64_t start, int64_t n) const;

 private:
  struct Shard {
    void* map = nullptr;
    size_t bytes = 0;
    int64_t begin = 0, tokens = 0;  // global offset, token count
    std::string path;               // the .bin file, for errors
  };
  std::string dir_;
  int64_t vocab_size_ = 0;  // > 0: every token read is checked against it
  int elem_ = 2;
  std::vector<Shard> shards_;
  std::vector<int64_t> doc_starts_;  // global, sorted
  int64_t total_ = 0;
};

// The first max_tokens (0 = all) tokens of one split of a prepared directory, its documents concatenated as
// prepared (each begins with its BOS): the input of evaluation tools (`dmc eval ppl --data`, `dmc bench decode`).
std::vector<int64_t> read_split_tokens(const std::string& dir, const std::string& split,
                                       const std::string& tokenizer_fingerprint, int64_t vocab_size,
                                       int64_t max_tokens = 0);

struct Batch {
  at::Tensor input;      // [B, T] int64
  at::Tensor target;     // [B, T] int64
  at::Tensor doc_start;  // [B, T] bool
};

struct LoaderOptions {
  std::vector<std::string> datasets;  // prepared directories
  std::vector<double> weights;        // blend weights (empty = equal)
  std::string split = "train";
  int64_t seq_len = 1024;
  int64_t seed = 1234;
  bool shuffle = true;
  std::string tokenizer_fingerprint;  // refuse datasets made with another tokenizer (empty = no check)
  int64_t vocab_size = 0;
};

class Loader {
 public:
  explicit Loader(const LoaderOptions& o);
  // The next `batch` samples of the stream.
  Batch next(int64_t batch);
  // Sample k of the stream: tokens [seq_len + 1] and doc-start flags [seq_len].
  void sample(int64_t k, int64_t* tokens, bool* doc_start);
  int64_t position() const { return position_; }
  void set_position(int64_t p) { position_ = p; }
  // Which dataset sample k comes from (the blend).
  int64_t dataset_of(int64_t k);
  int64_t samples_per_epoch(int64_t d) const { return per_epoch_[d]; }

 private:
  int64_t local_index(int64_t k, int64_t d);  // how many samples of dataset d precede global sample k
  LoaderOptions o_;
  std::vector<std::shared_ptr<TokenSplit>> splits_;
  std::vector<int64_t> per_epoch_;
  std::vector<double> w_;
  // blend bookkeeping, extended lazily: owner_[k] = dataset of sample k, local_[k] = its index in that dataset
  std::vector<int32_t> owner_;
  std::vector<int64_t> local_, counts_;
  std::vector<std::pair<int64_t, std::vector<int64_t>>> perm_;  // per dataset: (epoch, permutation)
  int64_t position_ = 0;
};

}  // namespace dmc::data
