// `dmc data prepare`: text or JSONL files -> SentencePiece token shards with a document index, split into
// train and validation by whole documents.
//
// Output directory layout:
//   meta.json                    format, tokenizer fingerprint and vocab size, token dtype, per-split counts
//   train-00000.bin ...          tokens, little-endian uint16 (vocab <= 65536) or uint32, documents back to back
//   train-00000.idx ...          uint64 document start offsets within the shard, then the shard's token count
//   valid-00000.bin / .idx       the same for the validation split
// Each document is stored as [BOS] tokens [EOS]; documents never cross shards.
//
// Documents: `doc_split` = file (one document per file), blank (paragraphs separated by blank lines) or chunk
// (blank-line-separated paragraphs gathered into documents of at least `chunk_chars` characters). JSONL inputs
// give one document per line, from the string field `jsonl_field`. Inputs ending in .xz / .gz are decompressed
// on the fly (xz / gzip must be installed).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dmc::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or glob patterns
  std::string tokenizer;
  std::string out;
  std::string doc_split = "chunk";  // file | blank | chunk
  int64_t chunk_chars = 16000;
  std::string jsonl_field = "text";
  double valid_fraction = 0.05;
  int64_t seed = 1234;
  int64_t threads = 0;  // 0 = hardware concurrency
  int64_t shard_tokens = int64_t(1) << 28;
  bool overwrite = false;
};

struct PrepareStats {
  int64_t documents[2] = {0, 0};  // train, valid
  int64_t tokens[2] = {0, 0};
  double seconds = 0;
};

PrepareStats prepare(const PrepareOptions& o);

// Expands globs; dmc::Error naming the pattern when it matches nothing.
std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns);

}  // namespace dmc::data
