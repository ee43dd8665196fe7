// Tokenizer: llama.cpp's test vectors for the Llama 2 vocabulary (when ../shared is present), a trained
// tokenizer's round trip and byte fallback, and the vocabulary cross-check against a model.
#include <sstream>

#include "common/util.h"
#include "helpers.h"
#include "tokenizer/tokenizer.h"

using namespace dmc;
using namespace dmc::test;

TEST_CASE("Llama 2 tokenizer matches llama.cpp's vectors exactly", "[tokenizer]") {
  const std::string shared = shared_dir();
  if (shared.empty()) SKIP("../shared not present: skipping the Llama 2 tokenizer vectors");
  const std::string dir = shared + "/tokenizers/llama2";
  auto tok = Tokenizer::load(dir + "/tokenizer.model");
  CHECK(tok.vocab_size() == 32000);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  const std::string inp = read_file(dir + "/vectors.inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0;;) {
    size_t next = inp.find(sep, pos);
    if (next == std::string::npos) break;
    inputs.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::istringstream out(read_file(dir + "/vectors.out"));
  std::vector<std::vector<int64_t>> expected;
  for (std::string line; std::getline(out, line);) {
    std::istringstream ls(line);
    std::vector<int64_t> ids;
    for (int64_t id; ls >> id;) ids.push_back(id);
    expected.push_back(ids);
  }
  REQUIRE(inputs.size() >= 40);
  REQUIRE(expected.size() >= inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("vector " << i << ": '" << inputs[i] << "'");
    CHECK(tok.encode(inputs[i]) == expected[i]);
  }
  // BOS/EOS and decode
  auto ids = tok.encode("Hello world", true, true);
  CHECK(ids.front() == 1);
  CHECK(ids.back() == 2);
  CHECK(tok.decode(tok.encode("Hello, world! 🦙")) == "Hello, world! 🦙");
}

TEST_CASE("trained tokenizer: round trip, byte fallback, vocabulary check", "[tokenizer]") {
  const auto work = tmp_dir("tok");
  write_text(work + "/t.txt", sample_text(200, 3));
  Tokenizer::train({{work + "/t.txt"}, work + "/tok", 400, 100000});
  auto tok = Tokenizer::load(work + "/tok.model");
  CHECK(tok.vocab_size() == 400);
  const std::string s = "The model merges keys; Ünïcödé ✓ survives via bytes.";
  auto ids = tok.encode(s);
  for (auto id : ids) CHECK((id >= 0 && id < 400));
  CHECK(tok.decode(ids) == s);
  tok.check_model_vocab(400, "config.json");
  require_error([&] { tok.check_model_vocab(32000, "m/config.json"); }, {"tok.model", "400", "m/config.json", "32000"});
  require_error([&] { tok.decode({400}); }, {"out of range"});
}

TEST_CASE("bad tokenizer files", "[tokenizer][bad]") {
  const auto work = tmp_dir("badtok");
  require_error([&] { Tokenizer::load(work + "/none.model"); }, {"none.model", "does not exist"});
  write_text(work + "/junk.model", "this is not a protobuf");
  require_error([&] { Tokenizer::load(work + "/junk.model"); }, {"junk.model", "not a SentencePiece model"});
}
