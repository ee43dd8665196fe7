// Test helpers: temporary directories, running commands, the Python oracle, and checking that a call fails
// with a dmc::Error whose message names the right file and field.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "catch.h"
#include "common/error.h"
#include "common/util.h"

namespace dmc::test {
namespace fs = std::filesystem;

// The temporary directories of this test process, removed when it exits (a SmolLM2 case writes half a gigabyte);
// DMC_KEEP_TEST_DIRS=1 keeps them, to look at what a failing case left.
struct TmpDirs {
  std::vector<std::string> dirs;
  ~TmpDirs() {
    const char* keep = std::getenv("DMC_KEEP_TEST_DIRS");
    if (keep && std::string(keep) == "1") return;
    for (const auto& d : dirs) dmc::remove_tree(d);
  }
};
inline TmpDirs& tmp_dirs() {
  static TmpDirs t;
  return t;
}
inline std::string tmp_dir(const std::string& tag) {
  std::string tmpl = (fs::temp_directory_path() / ("dmc-test-" + tag + "-XXXXXX")).string();
  char* p = ::mkdtemp(tmpl.data());
  REQUIRE(p != nullptr);
  tmp_dirs().dirs.push_back(tmpl);
  return tmpl;
}

// |a - b| / |b| in fp32 (|a - b| when b is zero).
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const double d = (a.to(at::kFloat) - b.to(at::kFloat)).norm().item<double>();
  const double s = b.to(at::kFloat).norm().item<double>();
  return s > 0 ? d / s : d;
}

// The JSON objects of a JSON-lines file (metrics.jsonl, `--json` outputs), in order.
inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

struct RunResult {
  int status = -1;     // exit status, or -signal when killed by a signal
  std::string output;  // stdout + stderr
};

inline RunResult run(const std::string& cmd) {
  RunResult r;
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(f != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) r.output.append(buf, n);
  int st = ::pclose(f);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
  return r;
}

inline std::string python() { return DMC_PYTHON; }
inline std::string oracle() { return python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/hf_llama.py"; }

// True when the Python oracle (torch + transformers + sentencepiece) can run; otherwise the caller SKIPs.
inline bool have_oracle() {
  static int ok = -1;
  if (ok < 0) ok = run(python() + " -c 'import torch, transformers, safetensors, sentencepiece'").status == 0;
  return ok == 1;
}

// ../shared beside the checkout (CI and developers have it; a user's machine may not), or $DMC_SHARED.
inline std::string shared_dir() {
  if (const char* env = std::getenv("DMC_SHARED")) return fs::exists(env) ? std::string(env) : "";
  fs::path p = fs::path(DMC_SOURCE_DIR).parent_path() / "shared";
  return fs::exists(p) ? p.string() : "";
}

// SmolLM2-135M-Instruct's GGUF where scripts/get_smollm2.sh --fetch-only puts it ($DMC_SMOLLM2_GGUF overrides); ""
// when absent (the caller SKIPs).
inline std::string smollm2_gguf() {
  if (const char* env = std::getenv("DMC_SMOLLM2_GGUF")) return fs::exists(env) ? std::string(env) : "";
  const char* cache = std::getenv("DMC_CACHE");
  const char* home = std::getenv("HOME");
  fs::path base = cache ? fs::path(cache) : fs::path(home ? home : "/nonexistent") / ".cache" / "dmc";
  fs::path p = base / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  return fs::exists(p) ? p.string() : "";
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// fn() must throw dmc::Error and the message must contain every string in `parts`.
inline void require_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  bool threw = false;
  try {
    fn();
  } catch (const dmc::Error& e) {
    threw = true;
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const auto& p : parts) {
      INFO("expected to contain: " << p);
      CHECK(msg.find(p) != std::string::npos);
    }
  }
  CHECK(threw);
}

// A deterministic English-like text (for tokenizer training and perplexity runs without ../shared).
inline std::string sample_text(int paragraphs, unsigned seed = 1) {
  static const char* words[] = {
      "the",   "model",  "cache",    "memory", "compression", "token", "attention", "head", "layer", "dynamic",
      "merge", "append", "window",   "weight", "query",       "key",   "value",     "of",   "and",   "to",
      "in",    "is",     "a",        "we",     "it",          "that",  "for",       "with", "on",    "as",
      "Llama", "GPU",    "training", "decode", "prefill",     "page",  "ratio",     "4096", "2x",    "8x"};
  const int nw = sizeof(words) / sizeof(words[0]);
  unsigned s = seed;
  auto rnd = [&] {
    s = s * 1103515245u + 12345u;
    return (s >> 16) & 0x7fff;
  };
  std::string out;
  for (int p = 0; p < paragraphs; ++p) {
    int sentences = 3 + rnd() % 4;
    for (int k = 0; k < sentences; ++k) {
      int len = 5 + rnd() % 10;
      for (int w = 0; w < len; ++w) {
        std::string word = words[rnd() % nw];
        if (w == 0) word[0] = (char)toupper(word[0]);
        out += word;
        out += (w + 1 < len) ? " " : (rnd() % 5 == 0 ? "? " : ". ");
      }
    }
    out += "\n\n";
  }
  return out;
}

}  // namespace dmc::test
