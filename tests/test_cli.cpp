// The dmc binary: options (YAML + overrides + suggestions), and bad input giving a clear message and exit
// status 1 rather than a crash.
#include <nlohmann/json.hpp>

#include "config/options.h"
#include "helpers.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

using namespace dmc;
using namespace dmc::test;

namespace {
std::string dmc_bin() { return DMC_BINARY; }
}  // namespace

TEST_CASE("options: YAML, overrides in order, types, unknown keys with a suggestion", "[cli]") {
  const auto work = tmp_dir("opt");
  int64_t seq_len = 1024;
  double temp = 0.8;
  bool flag = false;
  std::string name = "x";
  std::vector<std::string> inputs;
  OptionTable t("test", "usage");
  t.add("seq_len", &seq_len, "window");
  t.add("temperature", &temp, "temp");
  t.add("use_flag", &flag, "flag");
  t.add("name", &name, "name");
  t.add("inputs", &inputs, "files");
  write_text(work + "/c.yaml", "seq_len: 256\ntemperature: 0.5\ninputs: [a.txt, b.txt]\nname: from_yaml\n");
  t.parse({"--config", work + "/c.yaml", "--seq-len", "512", "use_flag=true", "--name=cli"});
  CHECK(seq_len == 512);
  CHECK(temp == 0.5);
  CHECK(flag);
  CHECK(name == "cli");
  CHECK(inputs == std::vector<std::string>{"a.txt", "b.txt"});
  CHECK(t.to_yaml().find("seq_len: 512") != std::string::npos);
  t.parse({"--no-use-flag"});
  CHECK_FALSE(flag);

  write_text(work + "/bad.yaml", "seq_lenn: 3\n");
  require_error(
      [&] {
        t.parse({"--config", work + "/bad.yaml"});
      },
      {"bad.yaml", "unknown key 'seq_lenn'", "did you mean 'seq_len'"});
  write_text(work + "/type.yaml", "seq_len: abc\n");
  require_error(
      [&] {
        t.parse({"--config", work + "/type.yaml"});
      },
      {"type.yaml", "'seq_len'", "expected an integer", "abc"});
  write_text(work + "/list.yaml", "seq_len: [1, 2]\n");
  require_error([&] { t.parse({"--config", work + "/list.yaml"}); }, {"list.yaml", "'seq_len'", "single value"});
  require_error(
      [&] {
        t.parse({"--temprature", "1"});
      },
      {"command line", "'temprature'", "did you mean 'temperature'"});
  require_error([&] { t.parse({"--use-flag", "maybe"}); }, {"command line", "unexpected argument 'maybe'"});
  require_error([&] { t.parse({"--seq-len", "x1"}); }, {"command line", "'seq_len'", "x1"});
  require_error([&] { t.parse({"--config", work + "/missing.yaml"}); }, {"missing.yaml", "does not exist"});
}

TEST_CASE("dmc CLI: bad input exits 1 with a message naming the file", "[cli][bad]") {
  const auto work = tmp_dir("cli");
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 1;
  c.vocab_size = 400;
  Llama::random(c, 1, at::kFloat, at::kCPU).save(work + "/m", at::kFloat);
  write_text(work + "/t.txt", sample_text(100, 5));
  Tokenizer::train({{work + "/t.txt"}, work + "/tok", 400, 100000});
  Tokenizer::train({{work + "/t.txt"}, work + "/tok2", 360, 100000});
  write_text(work + "/typo.yaml", "max_new_tokenz: 3\n");
  fs::create_directories(work + "/empty");
  struct Case {
    std::string args;
    std::vector<std::string> expect;
  };
  std::vector<Case> cases = {
      {"info " + work + "/nope", {"nope", "does not exist"}},
      {"info " + work + "/empty", {"empty/config.json", "does not exist"}},
      {"generate --model " + work + "/m --tokenizer " + work + "/tok2.model --prompt hi",
       {"tok2.model", "360", "config.json", "400"}},
      {"generate --model " + work + "/m --tokenizer " + work + "/tok.model --prompt hi --config " + work + "/typo.yaml",
       {"typo.yaml", "max_new_tokenz", "did you mean 'max_new_tokens'"}},
      {"generate --model " + work + "/m --tokenizer " + work + "/tok.model", {"give one of --prompt TEXT or --prompt-file F"}},
      {"eval ppl --model " + work + "/m --tokenizer " + work + "/tok.model --text " + work + "/missing.txt",
       {"missing.txt", "does not exist"}},
      {"eval ppl --model " + work + "/m --tokenizer " + work + "/tok.model --text " + work + "/t.txt --seq-len 1",
       {"seq_len", ">= 2"}},
      {"eval ppl --model " + work + "/m --tokenizer " + work + "/tok.model --text " + work + "/t.txt --dtype fp8",
       {"dtype", "fp8"}},
      {"convert --model " + work + "/m --out " + work + "/m", {"is the input"}},
      {"convert --model " + work + "/m --out " + work + "/t.txt", {"already exists"}},
      {"convert --model " + work + "/m --out " + work + "/c --max-shard-size 5XB", {"max_shard_size", "XB"}},
  };
  for (const auto& cs : cases) {
    auto r = run(dmc_bin() + " " + cs.args);
    INFO("dmc " << cs.args << "\n" << r.output);
    CHECK(r.status == 1);
    for (const auto& e : cs.expect) CHECK(r.output.find(e) != std::string::npos);
  }
  {  // a log level that spdlog would silently read as "off"
    auto r = run("DMC_LOG_LEVEL=loud " + dmc_bin() + " info " + work + "/m");
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("DMC_LOG_LEVEL") != std::string::npos);
    CHECK(r.output.find("loud") != std::string::npos);
  }
  // corrupt the weights of a copy: truncated file
  fs::copy(work + "/m", work + "/trunc", fs::copy_options::recursive);
  fs::resize_file(work + "/trunc/model.safetensors", 1000);
  auto r = run(dmc_bin() + " info " + work + "/trunc");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("trunc/model.safetensors") != std::string::npos);
}

TEST_CASE("dmc CLI: info, convert, generate and eval ppl run end to end", "[cli]") {
  const auto work = tmp_dir("cli2");
  write_text(work + "/t.txt", sample_text(150, 8));
  auto r = run(dmc_bin() + " tokenizer train --input " + work + "/t.txt --out " + work + "/tok --vocab-size 320");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(dmc_bin() + " init --out " + work + "/m --preset tiny --tokenizer " + work +
          "/tok.model --num-hidden-layers 2");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(dmc_bin() + " info " + work + "/m --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  CHECK(j["parameters"] == j["parameters_expected"]);
  CHECK(j["config"]["vocab_size"] == 320);
  r = run(dmc_bin() + " convert --model " + work + "/m --out " + work + "/mb --dtype bf16 --max-shard-size 300KB");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(fs::exists(work + "/mb/model.safetensors.index.json"));
  r = run(dmc_bin() + " info " + work + "/mb");
  CHECK(r.output.find("dtype BF16") != std::string::npos);
  r = run(dmc_bin() + " generate --model " + work + "/mb --tokenizer " + work + "/tok.model --prompt 'The model' " +
          "--max-new-tokens 8 --temperature 0 --device cpu");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("max_new_tokens: 8") != std::string::npos);  // the resolved config is printed
  r = run(dmc_bin() + " eval ppl --model " + work + "/m --tokenizer " + work + "/tok.model --text " + work +
          "/t.txt --seq-len 64 --stride 32 --max-tokens 400 --json " + work + "/ppl.json");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto pj = nlohmann::json::parse(std::ifstream(work + "/ppl.json"));
  CHECK(pj["tokens_scored"] == 399);
  CHECK(pj["ppl"].get<double>() > 1.0);
  CHECK(r.output.find("perplexity:") != std::string::npos);
}
