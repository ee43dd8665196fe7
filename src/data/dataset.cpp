#include "data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "common/util.h"

namespace dmc::data {
using json = nlohmann::json;

std::shared_ptr<TokenSplit> TokenSplit::open(const std::string& dir, const std::string& split,
                                             const std::string& fingerprint, int64_t vocab_size) {
  auto s = std::make_shared<TokenSplit>();
  s->dir_ = dir;
  s->vocab_size_ = vocab_size;
  const std::string mpath = dir + "/meta.json";
  json meta;
  try {
    meta = json::parse(read_file(mpath, "dataset metadata"));
  } catch (const json::exception& e) {
    fail(mpath, ": not valid JSON (", e.what(), ")");
  }
  if (meta.value("format", "") != "dmc-tokens-v1") fail(mpath, ": field 'format' is not 'dmc-tokens-v1'");
  if (!fingerprint.empty() && meta.value("tokenizer_fingerprint", "") != fingerprint)
    fail(mpath, ": field 'tokenizer_fingerprint' is ", meta.value("tokenizer_fingerprint", "?"),
         " but the configured tokenizer's is ", fingerprint, " (the data was prepared with another tokenizer)");
  if (vocab_size > 0 && meta.value("vocab_size", (int64_t)0) > vocab_size)
    fail(mpath, ": field 'vocab_size' ", meta.value("vocab_size", (int64_t)0), " exceeds the model's ", vocab_size);
  const std::string dtype = meta.value("dtype", "");
  if (dtype != "uint16" && dtype != "uint32") fail(mpath, ": field 'dtype' must be uint16 or uint32");
  s->elem_ = dtype == "uint16" ? 2 : 4;
  if (!meta.contains("splits") || !meta["splits"].contains(split))
    fail(mpath, ": no split '", split, "' (field 'splits')");
  for (const auto& name : meta["splits"][split]["shards"]) {
    const std::string base = dir + "/" + name.get<std::string>();
    Shard sh;
    sh.begin = s->total_;
    // index
    const std::string idx_bytes = read_file(base + ".idx", "shard index");
    if (idx_bytes.size() % 8 || idx_bytes.size() < 16) fail(base, ".idx: corrupt index (", idx_bytes.size(), " bytes)");
    std::vector<uint64_t> idx(idx_bytes.size() / 8);
    std::memcpy(idx.data(), idx_bytes.data(), idx_bytes.size());
    // tokens
    struct stat st {};
    const std::string bin = base + ".bin";
    if (::stat(bin.c_str(), &st) != 0) fail(bin, ": shard does not exist");
    sh.bytes = (size_t)st.st_size;
    sh.path = bin;
    if (sh.bytes % s->elem_) fail(bin, ": corrupt shard (size ", sh.bytes, " is not a multiple of ", s->elem_, ")");
    sh.tokens = (int64_t)(sh.bytes / s->elem_);
    if ((int64_t)idx.back() != sh.tokens)
      fail(base, ".idx: corrupt index: it ends at token ", idx.back(), " but ", bin, " holds ", sh.tokens, " tokens");
    for (size_t i = 0; i + 1 < idx.size(); ++i) {
      if (idx[i] >= idx[i + 1]) fail(base, ".idx: corrupt index: document offsets not increasing at entry ", i);
      s->doc_starts_.push_back(sh.begin + (int64_t)idx[i]);
    }
    if (sh.bytes > 0) {
      int fd = ::open(bin.c_str(), O_RDONLY);
      if (fd < 0) fail(bin, ": cannot be read");
      sh.map = ::mmap(nullptr, sh.bytes, PROT_READ, MAP_SHARED, fd, 0);
      ::close(fd);
      if (sh.map == MAP_FAILED) fail(bin, ": mmap failed");
    }
    s->total_ += sh.tokens;
    s->shards_.push_back(sh);
  }
  // token ids beyond the vocabulary would index out of the embedding: read() checks every token it hands out
  return s;
}

TokenSplit::~TokenSplit() {
  for (auto& sh : shards_)
    if (sh.map) ::munmap(sh.map, sh.bytes);
}

void TokenSplit::read(int64_t start, int64_t n, int64_t* out) const {
  DMC_CHECK(start >= 0 && start + n <= total_, dir_, ": read [", start, ", ", start + n, ") beyond ", total_,
            " tokens");
  auto it =
      std::upper_bound(shards_.begin(), shards_.end(), start, [](int64_t v, const Shard& s) { return v < s.begin; });
  size_t si = (size_t)(it - shards_.begin()) - 1;
  while (n > 0) {
    const Shard& sh = shards_[si];
    const int64_t off = start - sh.begin, take = std::min(n, sh.tokens - off);
    if (elem_ == 2) {
      const uint16_t* p = static_cast<const uint16_t*>(sh.map) + off;
      for (int64_t i = 0; i < take; ++i) out[i] = p[i];
    } else {
      const uint32_t* p = static_cast<const uint32_t*>(sh.map) + off;
      for (int64_t i = 0; i < take; ++i) out[i] = p[i];
    }
    if (vocab_size_ > 0)
      for (int64_t i = 0; i < take; ++i)
        if (out[i] >= vocab_size_)
          fail(sh.path, ": token ", off + i, " has id ", out[i], ", beyond the model's vocabulary (", vocab_size_,
               " ids): a corrupt shard, or data prepared with another tokenizer");
    out += take;
    start += take;
    n -= take;
    ++si;
  }
}

std::vector<int64_t> TokenSplit::doc_starts_in(int64_t start, int64_t n) const {
  auto lo = std::lower_bound(doc_starts_.begin(), doc_starts_.end(), start);
  auto hi = std::lower_bound(doc_starts_.begin(), doc_starts_.end(), start + n);
  return std::vector<int64_t>(lo, hi);
}

Loader::Loader(const LoaderOptions& o) : o_(o) {
  DMC_CHECK(!o.datasets.empty(), "data: no datasets configured (key 'data')");
  DMC_CHECK(o.seq_len >= 1, "seq_len: must be positive");
  DMC_CHECK(o.weights.empty() || o.weights.size() == o.datasets.size(), "data_weights: ", o.weights.size(),
            " weights for ", o.datasets.size(), " datasets");
  double wsum = 0;
  for (size_t d = 0; d < o.datasets.size(); ++d) {
    auto s = TokenSplit::open(o.datasets[d], o.split, o.tokenizer_fingerprint, o.vocab_size);
    const int64_t n = s->num_tokens() > 0 ? (s->num_tokens() - 1) / o.seq_len : 0;
    if (n == 0)
      fail(o.datasets[d], ": split '", o.split, "' has ", s->num_tokens(),
           " tokens, too few for one sample of seq_len + 1 = ", o.seq_len + 1, " tokens (lower seq_len or add data)");
    splits_.push_back(s);
    per_epoch_.push_back(n);
    const double w = o.weights.empty() ? 1.0 : o.weights[d];
    DMC_CHECK(w >= 0, "data_weights: negative weight ", w);
    w_.push_back(w);
    wsum += w;
  }
  DMC_CHECK(wsum > 0, "data_weights: all zero");
  for (auto& w : w_) w /= wsum;
  counts_.assign(splits_.size(), 0);
  perm_.assign(splits_.size(), {-1, {}});
}

int64_t Loader::dataset_of(int64_t k) {
  while ((int64_t)owner_.size() <= k) {
    const int64_t n = (int64_t)owner_.size() + 1;
    size_t best = 0;
    double best_gap = -1e300;
    for (size_t d = 0; d < w_.size(); ++d) {
      const double gap = w_[d] * n - counts_[d];
      if (gap > best_gap + 1e-12) {
        best_gap = gap;
        best = d;
      }
    }
    owner_.push_back((int32_t)best);
    local_.push_back(counts_[best]++);
  }
  return owner_[k];
}

int64_t Loader::local_index(int64_t k, int64_t d) {
  dataset_of(k);
  (void)d;
  return local_[k];
}

void Loader::sample(int64_t k, int64_t* tokens, bool* doc_start) {
  const int64_t d = dataset_of(k);
  const int64_t j = local_index(k, d), n = per_epoch_[d];
  const int64_t epoch = j / n, r = j % n;
  int64_t idx = r;
  if (o_.shuffle) {
    auto& [e, perm] = perm_[d];
    if (e != epoch) {
      perm.resize(n);
      for (int64_t i = 0; i < n; ++i) perm[i] = i;
      std::mt19937_64 rng((uint64_t)o_.seed * 1000003ULL + (uint64_t)d * 7919ULL + (uint64_t)epoch);
      for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[(int64_t)(rng() % (uint64_t)(i + 1))]);
      e = epoch;
    }
    idx = perm[r];
  }
  const int64_t start = idx * o_.seq_len;
  splits_[d]->read(start, o_.seq_len + 1, tokens);
  std::fill(doc_start, doc_start + o_.seq_len, false);
  for (int64_t p : splits_[d]->doc_starts_in(start, o_.seq_len)) doc_start[p - start] = true;
}

Batch Loader::next(int64_t batch) {
  const int64_t T = o_.seq_len;
  at::Tensor tok = at::empty({batch, T + 1}, at::kLong);
  at::Tensor ds = at::empty({batch, T}, at::kBool);
  for (int64_t b = 0; b < batch; ++b) sample(position_ + b, tok[b].data_ptr<int64_t>(), ds[b].data_ptr<bool>());
  position_ += batch;
  return {tok.narrow(1, 0, T).contiguous(), tok.narrow(1, 1, T).contiguous(), ds};
}

std::vector<int64_t> read_split_tokens(const std::string& dir, const std::string& split,
                                       const std::string& tokenizer_fingerprint, int64_t vocab_size,
                                       int64_t max_tokens) {
  auto sp = TokenSplit::open(dir, split, tokenizer_fingerprint, vocab_size);
  const int64_t n = max_tokens > 0 ? std::min(max_tokens, sp->num_tokens()) : sp->num_tokens();
  DMC_CHECK(n > 0, dir, ": split '", split, "' holds no tokens");
  std::vector<int64_t> out((size_t)n);
  sp->read(0, n, out.data());
  return out;
}

}  // namespace dmc::data
