// Tokenizer: llama.cpp's test vectors for the Llama 2 vocabulary (when ../shared is present), a trained
// tokenizer's round trip and byte fallback, and the vocabulary cross-check against a model.
#include <sstream>

#include "common/utf8.h"
#include "common/util.h"
#include "helpers.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

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

// ---- byte-level BPE (tokenizer.json / GGUF) against Hugging Face `tokenizers` -----------------------------------
namespace {
bool have_hf_tokenizers() {
  static int ok = -1;
  if (ok < 0) ok = run(python() + " -c 'import tokenizers, gguf'").status == 0;
  return ok == 1;
}
std::string hf_tok(const std::string& args) {
  auto r = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/hf_tokenizers.py " + args);
  INFO(r.output);
  REQUIRE(r.status == 0);
  return r.output;
}
// Every line's ids from dmc equal HF's, and decode(encode(x)) == x (HF's decode too).
void compare_with_hf(const Tokenizer& tok, const std::string& tokenizer_json, const std::string& work) {
  hf_tok("lines " + work + "/lines.json");
  hf_tok("encode " + tokenizer_json + " " + work + "/lines.json " + work + "/hf.json");
  const auto lines = nlohmann::json::parse(read_file(work + "/lines.json"));
  const auto hf = nlohmann::json::parse(read_file(work + "/hf.json"));
  REQUIRE(lines.size() >= 2000);
  REQUIRE(lines.size() == hf.size());
  size_t same = 0, round = 0, shown = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string s = lines[i];
    const auto ids = tok.encode(s);
    const auto want = hf[i]["ids"].get<std::vector<int64_t>>();
    if (ids == want) {
      ++same;
    } else if (shown++ < 5) {  // the first few differences in full
      INFO("line " << i << ": " << s);
      CHECK(ids == want);
    }
    round += tok.decode(ids) == s && hf[i]["decoded"] == s;
  }
  CHECK(same == lines.size());
  CHECK(round == lines.size());
}
}  // namespace

TEST_CASE("byte-level BPE: a Llama-3-style tokenizer.json trained by HF tokenizers encodes 2000 lines as HF does",
          "[tokenizer][bpe]") {
  if (!have_hf_tokenizers()) SKIP("python packages tokenizers / gguf not available: " + python());
  const auto work = tmp_dir("bpe-l3");
  hf_tok("train_llama3 " + work + "/l3");
  auto tok = Tokenizer::load(work + "/l3");  // the directory: its tokenizer.json
  CHECK(tok.kind() == "bpe");
  CHECK(tok.bos_id() == -1);  // no tokenizer_config.json: no BOS, none added
  CHECK(tok.encode("hi", true) == tok.encode("hi"));
  compare_with_hf(tok, work + "/l3/tokenizer.json", work);
  // tokenizer_config.json beside it: BOS / EOS by name, add_bos_token, the chat template
  write_text(work + "/l3/tokenizer_config.json",
             R"({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": true,
                 "chat_template": "{{ x }}"})");
  auto t2 = Tokenizer::load(work + "/l3/tokenizer.json");
  CHECK(t2.bos_id() == t2.piece_id("<|im_start|>"));
  CHECK(t2.eos_id() == t2.piece_id("<|im_end|>"));
  CHECK(t2.encode("hi", true).front() == t2.bos_id());
  CHECK(t2.chat_template() == "{{ x }}");
}

TEST_CASE("byte-level BPE: SmolLM2's tokenizer rebuilt from its GGUF metadata encodes 2000 lines as HF does",
          "[tokenizer][bpe][smollm2]") {
  if (!have_hf_tokenizers()) SKIP("python packages tokenizers / gguf not available: " + python());
  const std::string gguf = smollm2_gguf();
  if (gguf.empty()) SKIP("SmolLM2 GGUF not fetched (scripts/get_smollm2.sh --fetch-only)");
  const auto work = tmp_dir("bpe-smol");
  hf_tok("from_gguf " + gguf + " " + work + "/hf");  // built with the tokenizers API from the gguf package's reading
  auto tok = Tokenizer::load(gguf);
  CHECK(tok.vocab_size() == 49152);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(!tok.adds_bos());
  CHECK(tok.piece(1) == "<|im_start|>");
  CHECK(tok.chat_template().find("<|im_start|>") != std::string::npos);
  compare_with_hf(tok, work + "/hf/tokenizer.json", work);
  // dmc's own tokenizer.json of it (what convert --from-gguf writes) loads in HF tokenizers with the same ids
  write_text(work + "/dmc.json", tok.bpe()->to_json().dump());
  compare_with_hf(Tokenizer::load(work + "/dmc.json"), work + "/dmc.json", work);
}

TEST_CASE("bad tokenizer.json files: clear errors naming the file and the field", "[tokenizer][bad]") {
  const auto work = tmp_dir("badbpe");
  auto expect = [&](const std::string& text, const std::vector<std::string>& parts) {
    write_text(work + "/tokenizer.json", text);
    require_error([&] { Tokenizer::load(work + "/tokenizer.json"); }, parts);
  };
  const std::string vocab = R"("vocab": {"a": 0, "b": 1, "ab": 2})";
  expect("{not json", {"tokenizer.json", "not valid JSON"});
  expect(R"({"model": {"type": "WordPiece", )" + vocab + "}}", {"tokenizer.json", "model type 'WordPiece'", "BPE"});
  expect(R"({"model": {"type": "BPE", )" + vocab + R"(, "merges": ["a c"]}})",
         {"tokenizer.json", "merges[0]", "'c'", "not in the vocab"});
  expect(R"({"model": {"type": "BPE", )" + vocab + R"(, "merges": ["a b"]}, "pre_tokenizer": {"type": "Whitespace"}})",
         {"tokenizer.json", "pre_tokenizer type 'Whitespace'"});
  expect(
      R"({"model": {"type": "BPE", )" + vocab +
          R"(, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"}})",
      {"tokenizer.json", "regex", "does not compile"});
  expect(R"({"model": {"type": "BPE", )" + vocab + R"(, "merges": []}, "normalizer": {"type": "NFKC"}})",
         {"tokenizer.json", "normalizer 'NFKC'"});
  // found by the fuzzer: a sparse id sized the tables by the largest one; a field of the wrong JSON type
  expect(R"({"model": {"type": "BPE", "vocab": {"a": 4000000000}, "merges": []}})",
         {"tokenizer.json", "token id 4000000000", "beyond"});
  expect(R"({"model": {"type": 7, )" + vocab + R"(, "merges": []}})", {"tokenizer.json", "wrong type"});
  // a model whose vocabulary size differs from its tokenizer's
  write_text(work + "/tokenizer.json", R"({"model": {"type": "BPE", )" + vocab + R"(, "merges": ["a b"]}})");
  auto tok = Tokenizer::load(work + "/tokenizer.json");
  CHECK(tok.encode("abba") == std::vector<int64_t>{2, 1, 0});
  require_error([&] { tok.check_model_vocab(49152, "m/config.json"); },
                {"tokenizer.json", "3", "m/config.json", "49152"});
  CHECK(Tokenizer::load(work).vocab_size() == 3);  // a directory: its tokenizer.json
  require_error([&] { Tokenizer::load(work + "/empty-dir-" + std::to_string(1)); }, {"empty-dir-1"});
  fs::create_directories(work + "/nothing");
  require_error([&] { Tokenizer::load(work + "/nothing"); }, {"nothing", "no tokenizer.json or tokenizer.model"});
}

TEST_CASE("dmc tokenize: the id list, pieces, JSON, the model own tokenizer, bad input", "[tokenizer][cli]") {
  const auto work = tmp_dir("tokcli");
  write_text(work + "/tokenizer.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4},
                 "merges": ["a b", "\u0120 a"]}, "pre_tokenizer": {"type": "ByteLevel", "use_regex": true}})");
  const std::string bin = std::string(DMC_BINARY) + " tokenize ";
  auto r = run(bin + "--tokenizer " + work + "/tokenizer.json --text 'abba a' 2>/dev/null");
  CHECK(r.status == 0);
  CHECK(r.output == "[2, 1, 0, 4]\n");
  r = run(bin + "--model " + work + " --text 'ab a' --pieces 2>/dev/null");  // a directory: its tokenizer.json
  CHECK(r.output == "2 -> 'ab'\n4 -> ' a'\n");
  write_text(work + "/in.txt", "ba");
  r = run(bin + "--model " + work + " --file " + work + "/in.txt --json 2>/dev/null");
  CHECK(nlohmann::json::parse(r.output) == nlohmann::json{{"ids", {1, 0}}, {"pieces", {"b", "a"}}});
  r = run(bin + "--model " + work + " 2>&1");
  CHECK(r.status == 1);
  CHECK(r.output.find("give one of --text or --file") != std::string::npos);
  r = run(bin + "--model " + work + "/none --text x 2>&1");
  CHECK(r.status == 1);
  CHECK(r.output.find("none") != std::string::npos);
}

TEST_CASE("a SentencePiece tokenizer in GGUF metadata (tokenizer.ggml.model llama) encodes as the model itself",
          "[tokenizer][gguf]") {
  if (!have_hf_tokenizers()) SKIP("python packages tokenizers / gguf not available: " + python());
  const auto work = tmp_dir("spgguf");
  write_text(work + "/t.txt", sample_text(300, 5));
  Tokenizer::train({{work + "/t.txt"}, work + "/tok", 500, 100000});
  auto r = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/gguf_oracle.py sp_gguf " + work +
               "/tok.model " + work + "/tok.gguf");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto sp = Tokenizer::load(work + "/tok.model");
  auto gg = Tokenizer::load(work + "/tok.gguf");
  CHECK(gg.kind() == "sentencepiece");
  CHECK(gg.vocab_size() == sp.vocab_size());
  CHECK((gg.bos_id() == sp.bos_id() && gg.eos_id() == sp.eos_id()));
  std::istringstream lines(sample_text(120, 9) + "\n  leading spaces\nUnicode ✓ ünïcödé 🦙 bytes\n1234567\n");
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    INFO(line);
    CHECK(gg.encode(line, true) == sp.encode(line, true));
    CHECK(gg.decode(gg.encode(line)) == line);
  }
  CHECK(n > 100);
}

TEST_CASE("UTF-8 sequence lengths and the scan step past any byte", "[tokenizer]") {
  // every lead byte class: ASCII, 2-, 3-, 4-byte leads, continuation bytes and 0xF8.. (no sequence)
  const std::string s = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";  // a, é, €, 😀
  std::vector<int> lens;
  for (size_t i = 0; i < s.size(); i += (size_t)utf8_step((unsigned char)s[i]))
    lens.push_back(utf8_sequence_length((unsigned char)s[i]));
  CHECK(lens == std::vector<int>{1, 2, 3, 4});
  for (int b : {0x80, 0xBF, 0xF8, 0xFF}) {
    CHECK(utf8_sequence_length((unsigned char)b) == 0);
    CHECK(utf8_step((unsigned char)b) == 1);  // stands alone
  }
}
