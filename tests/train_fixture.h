// Shared by the trainer and distributed tests: a tokenizer and two prepared datasets made once per test binary,
// and the command line of a tiny `dmc train` run on them.
#pragma once
#include <torch/torch.h>

#include "data/prepare.h"
#include "helpers.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace dmc::test {

// A tokenizer and a prepared dataset, made once per test binary run.
struct Fixture {
  std::string dir, tok, data, data2;
  Fixture() {
    dir = tmp_dir("train");
    write_text(dir + "/a.txt", sample_text(400, 21));
    write_text(dir + "/b.txt", sample_text(200, 22));
    Tokenizer::train({{dir + "/a.txt"}, dir + "/tok", 400, 100000});
    tok = dir + "/tok.model";
    data::PrepareOptions p;
    p.inputs = {dir + "/a.txt"};
    p.tokenizer = tok;
    p.out = dir + "/data";
    p.chunk_chars = 2000;
    p.threads = 2;
    data::prepare(p);
    data = p.out;
    p.inputs = {dir + "/b.txt"};
    p.out = dir + "/data2";
    data::prepare(p);
    data2 = p.out;
  }
};
inline Fixture& fx() {
  static Fixture f;
  return f;
}
inline bool same_weights(const std::string& a, const std::string& b) {
  auto sa = io::TensorStore::open_dir(a), sb = io::TensorStore::open_dir(b);
  if (sa.names() != sb.names()) return false;
  for (const auto& n : sa.names())
    if (!torch::equal(sa.get(n), sb.get(n))) return false;
  return true;
}
inline std::string dmc_bin() { return DMC_BINARY; }
inline std::string train_cmd(const std::string& out, const std::string& extra) {
  return dmc_bin() + " train --tokenizer " + fx().tok + " --data " + fx().data + " --out " + out +
         " --num-hidden-layers 2 --hidden-size 64 --num-attention-heads 4 --num-key-value-heads 2 --intermediate-size "
         "96"
         " --seq-len 32 --micro-batch 2 --global-batch 4 --device cpu --log-every 1 " +
         extra;
}

}  // namespace dmc::test
