#include "data/prepare.h"

#include <glob.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "common/files.h"
#include "common/util.h"
#include "data/decompress.h"
#include "tokenizer/tokenizer.h"

namespace dmc::data {
using json = nlohmann::json;

std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  for (const auto& p : patterns) {
    glob_t g{};
    int rc = ::glob(p.c_str(), 0, nullptr, &g);
    if (rc != 0) {
      globfree(&g);
      fail("input '", p, "': no file matches");
    }
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
    globfree(&g);
  }
  return out;
}

namespace {
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Whole (decompressed) content of an input file: .xz through liblzma, .gz through zlib, in process (no shell ever
// sees a path). Several concatenated streams are read as one, as xz -dc and gzip -dc do.
std::string read_input(const std::string& path) {
  if (!ends_with(path, ".xz") && !ends_with(path, ".gz")) return read_file(path, "input");
  const std::string packed = read_file(path, "input");
  return ends_with(path, ".xz") ? decompress_xz(packed, path) : decompress_gz(packed, path);
}

// Splits text into paragraphs at blank lines (lines holding only whitespace).
std::vector<std::string> paragraphs(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos + 1);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += line;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  for (auto& p : out)
    while (!p.empty() && (p.back() == '\n' || p.back() == '\r')) p.pop_back();
  return out;
}

void split_docs(const std::string& text, const PrepareOptions& o, std::vector<std::string>* docs) {
  if (o.doc_split == "file") {
    if (text.find_first_not_of(" \t\r\n") != std::string::npos) docs->push_back(text);
    return;
  }
  auto paras = paragraphs(text);
  if (o.doc_split == "blank") {
    for (auto& p : paras) docs->push_back(std::move(p));
    return;
  }
  std::string cur;
  for (auto& p : paras) {
    cur += (cur.empty() ? "" : "\n\n") + p;
    if ((int64_t)cur.size() >= o.chunk_chars) {
      docs->push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) docs->push_back(std::move(cur));
}

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct ShardWriter {
  ShardWriter(std::string d, std::string s, int64_t n, bool u)
      : dir(std::move(d)), split(std::move(s)), shard_tokens(n), u16(u) {}
  std::string dir, split;
  int64_t shard_tokens;
  bool u16;
  int shard = -1;
  std::unique_ptr<AtomicFile> bin;
  std::vector<uint64_t> idx;
  uint64_t in_shard = 0;
  std::vector<std::string> files;
  void open_next() {
    close();
    ++shard;
    char name[64];
    std::snprintf(name, sizeof name, "%s-%05d", split.c_str(), shard);
    files.push_back(name);
    bin = std::make_unique<AtomicFile>(dir + "/" + name + ".bin");
    in_shard = 0;
  }
  void add(const std::vector<int64_t>& doc) {
    if (shard < 0 || (in_shard > 0 && in_shard + doc.size() > (uint64_t)shard_tokens)) open_next();
    idx.push_back(in_shard);
    if (u16) {
      std::vector<uint16_t> v(doc.begin(), doc.end());
      bin->write(v.data(), v.size() * 2);
    } else {
      std::vector<uint32_t> v(doc.begin(), doc.end());
      bin->write(v.data(), v.size() * 4);
    }
    in_shard += doc.size();
  }
  void close() {
    if (shard < 0 || !bin) return;
    bin->commit();
    bin.reset();
    idx.push_back(in_shard);
    AtomicFile ix(dir + "/" + files.back() + ".idx");
    ix.write(idx.data(), idx.size() * 8);
    ix.commit();
    idx.clear();
  }
};
}  // namespace

PrepareStats prepare(const PrepareOptions& o) {
  auto t0 = std::chrono::steady_clock::now();
  DMC_CHECK(o.doc_split == "file" || o.doc_split == "blank" || o.doc_split == "chunk",
            "doc_split: expected file, blank or chunk, got '", o.doc_split, "'");
  DMC_CHECK(o.valid_fraction >= 0 && o.valid_fraction < 1, "valid_fraction: expected a value in [0, 1), got ",
            o.valid_fraction);
  auto tok = Tokenizer::load(o.tokenizer);
  const auto files = expand_inputs(o.inputs);
  std::vector<std::string> inputs = files;
  inputs.push_back(o.tokenizer);
  // checked before the (long) encoding; the staging directory beside the target is made here too
  OutputDir out(o.out, o.overwrite, inputs, "data prepare: --out");

  // 1. documents
  std::vector<std::string> docs;
  for (const auto& f : files) {
    const std::string text = read_input(f);
    if (ends_with(f, ".jsonl") || ends_with(f, ".jsonl.xz") || ends_with(f, ".jsonl.gz")) {
      size_t pos = 0;
      int64_t line_no = 0;
      while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        pos = nl == std::string::npos ? text.size() : nl + 1;
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j;
        try {
          j = json::parse(line);
        } catch (const std::exception& e) {
          fail(f, ":", line_no, ": not valid JSON (", e.what(), ")");
        }
        if (!j.is_object() || !j.contains(o.jsonl_field) || !j[o.jsonl_field].is_string())
          fail(f, ":", line_no, ": field '", o.jsonl_field, "' missing or not a string");
        docs.push_back(j[o.jsonl_field].get<std::string>());
      }
    } else {
      split_docs(text, o, &docs);
    }
  }
  if (docs.empty()) fail("data prepare: the inputs (", files.size(), " file(s)) hold no text");
  log::info(cat("data prepare: ", files.size(), " file(s), ", docs.size(), " documents; encoding"));

  // 2. encode on several threads
  std::vector<std::vector<int64_t>> enc(docs.size());
  Progress prog("data prepare (documents encoded)", (int64_t)docs.size(), 5.0);
  parallel_for(
      (int64_t)docs.size(), o.threads,
      [&](int64_t i) { enc[i] = tok.encode(docs[i], /*add_bos=*/true, /*add_eos=*/true); },
      [&](int64_t done) { prog.update(done); });
  prog.update((int64_t)docs.size());

  // 3. split by document and write
  const std::string& tmp = out.staging();
  const bool u16 = tok.vocab_size() <= 65536;
  ShardWriter w[2] = {{tmp, "train", o.shard_tokens, u16}, {tmp, "valid", o.shard_tokens, u16}};
  PrepareStats st;
  const uint64_t thresh = (uint64_t)(o.valid_fraction * 1e6);
  std::vector<int> which(docs.size());
  int64_t n_valid = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    which[i] = (mix(i ^ ((uint64_t)o.seed << 32)) % 1000000) < thresh ? 1 : 0;
    n_valid += which[i];
  }
  if (o.valid_fraction > 0 && n_valid == 0 && docs.size() >= 2) which[docs.size() - 1] = 1;  // at least one
  for (size_t i = 0; i < docs.size(); ++i) {
    w[which[i]].add(enc[i]);
    st.documents[which[i]] += 1;
    st.tokens[which[i]] += (int64_t)enc[i].size();
  }
  json meta;
  meta["format"] = "dmc-tokens-v1";
  meta["tokenizer"] = o.tokenizer;
  meta["tokenizer_fingerprint"] = tok.fingerprint();
  meta["vocab_size"] = tok.vocab_size();
  meta["bos_id"] = tok.bos_id();
  meta["eos_id"] = tok.eos_id();
  meta["dtype"] = u16 ? "uint16" : "uint32";
  meta["doc_split"] = o.doc_split;
  meta["sources"] = files;
  for (int s = 0; s < 2; ++s) {
    w[s].close();
    meta["splits"][s == 0 ? "train" : "valid"] = {
        {"documents", st.documents[s]}, {"tokens", st.tokens[s]}, {"shards", w[s].files}};
  }
  write_file_atomic(tmp + "/meta.json", meta.dump(2) + "\n");
  out.commit();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log::info(cat("data prepare: wrote ", o.out, ": train ", st.documents[0], " docs / ", st.tokens[0], " tokens, valid ",
                st.documents[1], " docs / ", st.tokens[1], " tokens, in ", st.seconds, " s"));
  return st;
}

}  // namespace dmc::data
