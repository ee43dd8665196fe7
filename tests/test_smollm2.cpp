// SmolLM2-135M-Instruct, the real pretrained model, through dmc's GGUF import, against what no one here wrote:
// transformers' own GGUF loader (from_pretrained(dir, gguf_file=...)) and transformers loading dmc's converted
// directory, fp32 on the CPU. One test (it takes minutes); skipped when the GGUF is not fetched
// (scripts/get_smollm2.sh --fetch-only) or the Python oracle lacks transformers / gguf / accelerate.
#include <torch/torch.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/util.h"
#include "helpers.h"
#include "inference/tasks.h"
#include "model/llama.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
std::string dmc_binary() { return DMC_BINARY; }
at::Tensor read_f32(const std::string& path, std::vector<int64_t> shape) {
  const std::string b = read_file(path);
  at::Tensor t = at::empty(shape, at::kFloat);
  REQUIRE(b.size() == (size_t)t.numel() * 4);
  std::memcpy(t.data_ptr<float>(), b.data(), b.size());
  return t;
}
// stdout of the oracle (its stderr goes to a log shown when it fails)
std::string oracle_gguf(const std::string& args, const std::string& log) {
  auto r = run("{ " + python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/hf_gguf.py " + args + " 2>" +
               log + "; }");
  INFO(r.output << (fs::exists(log) ? read_file(log) : std::string()));
  REQUIRE(r.status == 0);
  return r.output;
}
}  // namespace

TEST_CASE(
    "SmolLM2 from GGUF: logits and perplexity equal transformers', the converted directory loads in "
    "transformers, greedy chat answers Paris",
    "[model][smollm2]") {
  const std::string gguf = smollm2_gguf();
  if (gguf.empty()) SKIP("SmolLM2 GGUF not fetched (scripts/get_smollm2.sh --fetch-only)");
  if (run(python() + " -c 'import transformers, gguf, accelerate'").status != 0)
    SKIP("python oracle lacks transformers / gguf / accelerate: " + python());
  const std::string w = tmp_dir("smollm2");
  // convert: an HF directory (safetensors, config.json, tokenizer files)
  auto conv = run(dmc_binary() + " convert --from-gguf " + gguf + " --out " + w + "/m --dtype fp32 2>&1");
  INFO(conv.output);
  REQUIRE(conv.status == 0);
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    CHECK(fs::exists(w + "/m/" + f));
  auto info = run("{ " + dmc_binary() + " info " + gguf + " --json 2>/dev/null; }");
  REQUIRE(info.status == 0);
  const json ij = json::parse(info.output);
  CHECK(ij["tensor_types"]["Q4_1"] == 210);
  CHECK(ij["tensor_types"]["Q8_0"] == 1);
  CHECK(ij["tokenizer"]["vocab"] == 49152);
  auto model = Llama::load(w + "/m", at::kFloat, at::kCPU);
  const auto& c = model.config;
  CHECK((c.num_hidden_layers == 30 && c.hidden_size == 576 && c.num_attention_heads == 9 &&
         c.num_key_value_heads == 3 && c.head_dim == 64 && c.intermediate_size == 1536 && c.vocab_size == 49152));
  CHECK(c.tie_word_embeddings);
  CHECK(c.rope_theta == 100000.0);
  auto tok = Tokenizer::load(w + "/m");  // the directory's tokenizer.json + tokenizer_config.json
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  // text: the license texts every Debian/Ubuntu system ships
  std::string text;
  for (const auto& e : fs::directory_iterator("/usr/share/common-licenses"))
    if (e.is_regular_file()) text += read_file(e.path().string()) + "\n";
  std::vector<int64_t> ids = tok.encode(text);
  REQUIRE(ids.size() > 8192);
  ids.resize(8192);  // what eval ppl --max-tokens 8192 scores of the same text
  write_text(w + "/text.txt", text);
  // 1. logits of 512 tokens: dmc (converted directory) vs transformers on the GGUF and on dmc's directory
  std::vector<int64_t> head(ids.begin(), ids.begin() + 512);
  write_text(w + "/ids512.json", json(head).dump());
  at::Tensor mine;
  {
    at::NoGradGuard ng;
    mine = model.forward(at::tensor(head, at::kLong).unsqueeze(0))[0];
  }
  oracle_gguf("logits " + gguf + " " + w + "/ids512.json " + w + "/hf_gguf.f32", w + "/o1.log");
  oracle_gguf("logits " + w + "/m " + w + "/ids512.json " + w + "/hf_dir.f32", w + "/o2.log");
  const at::Tensor hf_gguf = read_f32(w + "/hf_gguf.f32", {512, 49152});
  const at::Tensor hf_dir = read_f32(w + "/hf_dir.f32", {512, 49152});
  INFO("rel err vs transformers(gguf) " << rel_err(mine, hf_gguf) << ", vs transformers(dmc dir) "
                                        << rel_err(mine, hf_dir));
  CHECK(rel_err(mine, hf_gguf) < 1e-4);
  CHECK(rel_err(hf_dir, hf_gguf) < 1e-4);
  CHECK(at::equal(mine.argmax(-1), hf_gguf.argmax(-1)));
  // 2. perplexity at 4096-token windows: dmc eval ppl (from the GGUF directly) vs transformers
  write_text(w + "/ids.json", json(ids).dump());
  const json hf = json::parse(oracle_gguf("ppl " + gguf + " " + w + "/ids.json 4096", w + "/o3.log"));
  auto r = run(dmc_binary() + " eval ppl --model " + gguf + " --text " + w +
               "/text.txt --max-tokens 8192 --seq-len 4096 --device cpu --dtype fp32 --json " + w + "/ppl.json 2>&1");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const json mine_ppl = json::parse(read_file(w + "/ppl.json"));
  INFO(mine_ppl.dump() << " vs " << hf.dump());
  CHECK(mine_ppl["tokens_scored"].get<int64_t>() == hf["tokens"].get<int64_t>());
  const double ppl_hf = std::exp(hf["nll_sum"].get<double>() / hf["tokens"].get<double>());
  CHECK(std::abs(mine_ppl["ppl"].get<double>() / ppl_hf - 1) < 1e-5);
  // 3. the rest of the chain, unchanged on this shape (GQA 9/3): incremental perplexity through the paged cache
  //    equals the parallel forward; data prepared with the model's own tokenizer; the DMC stages with a decision
  //    per KV head
  auto ppl_of = [&](const std::string& extra) {
    auto p = run("{ " + dmc_binary() + " eval ppl --model " + w + "/m --text " + w +
                 "/text.txt --max-tokens 192 --seq-len 96 --device cpu --dtype fp32 --json " + w + "/p.json " + extra +
                 " 2>/dev/null; }");
    REQUIRE(p.status == 0);
    return json::parse(read_file(w + "/p.json"))["ppl"].get<double>();
  };
  const double par = ppl_of("--mode parallel"), inc = ppl_of("--mode incremental --cache vanilla");
  CHECK(std::abs(inc / par - 1) < 1e-5);
  CHECK(ppl_of("--mode incremental --cache window --cr 4") > par);  // a quarter of the cache costs something
  auto step = [&](const std::string& args) {
    auto p = run(dmc_binary() + " " + args + " 2>&1");
    INFO(p.output);
    REQUIRE(p.status == 0);
  };
  step("data prepare --input " + w + "/text.txt --tokenizer " + w + "/m --out " + w + "/data --valid-fraction 0.2");
  const std::string common = " --tokenizer " + w + "/m --data " + w +
                             "/data --seq-len 64 --micro-batch 1 --global-batch 1 --train-steps 2 --lr 1e-5 "
                             "--min-lr 1e-6 --warmup-steps 1 --eval-every 0 --save-every 0 --device cpu --dtype fp32";
  step("retrofit --stage zero_out --init-from " + w + "/m --out " + w + "/r1" + common);
  step("retrofit --stage retrofit --target-cr 2 --init-from " + w + "/r1/final --out " + w + "/r2" + common);
  json last;
  for (const auto& row : read_jsonl(w + "/r2/metrics.jsonl"))
    if (row.contains("cr_per_head")) last = row;
  INFO(last.dump());
  REQUIRE(last.contains("cr_per_head"));
  CHECK(last["cr_per_head"].size() == 30);
  CHECK(last["cr_per_head"][0].size() == 3);  // one decision stream per KV head
  // 4. long-context tasks through the engine: the real model finds the pass key and the RULER needle at 512 tokens
  auto tasks =
      run("{ " + dmc_binary() + " eval tasks --model " + w + "/m --tasks passkey,niah_single_1 --lengths 512 " +
          "--samples 3 --cache vanilla --device cpu --dtype fp32 --json " + w + "/tasks.json 2>/dev/null; }");
  INFO(tasks.output);
  REQUIRE(tasks.status == 0);
  const json tj = json::parse(read_file(w + "/tasks.json"));
  CHECK(tj["runs"][0]["accuracy"]["passkey"]["512"].get<double>() == 100.0);
  CHECK(tj["runs"][0]["accuracy"]["niah_single_1"]["512"].get<double>() == 100.0);
  // --chat: the input inside transformers' chat template (the oracle's text around a placeholder user message),
  // the answer prefix after the assistant header; the instruct model still finds pass keys
  {
    const std::string around = oracle_gguf("chat " + w + "/m 'XYZZY'", w + "/o5.log");
    const size_t at = around.find("XYZZY");
    REQUIRE(at != std::string::npos);
    const std::string pre = around.substr(0, at), post = around.substr(at + 5);
    auto tok = Tokenizer::load(w + "/m");
    TaskOptions to;
    to.tasks = {"passkey", "niah_single_1"};
    to.lengths = {512};
    to.samples = 2;
    to.chat = true;
    for (const auto& s : make_task_samples(tok, to)) {
      INFO(s.task << ": " << s.prompt);
      CHECK(s.prompt.rfind(pre, 0) == 0);
      const std::string tail = post + (s.task == "passkey" ? "The pass key is" : "The special magic number for");
      CHECK(s.prompt.find(tail) != std::string::npos);
      CHECK(s.prompt.find(s.expected[0]) < s.prompt.find(post));  // the needle is inside the user message
      CHECK(s.prompt_tokens + s.max_new_tokens <= 512);
    }
    auto chat = run("{ " + dmc_binary() + " eval tasks --model " + w + "/m --tasks passkey --lengths 512 " +
                    "--samples 3 --chat --cache vanilla --device cpu --dtype fp32 --json " + w + "/chat.json 2>/dev/null; }");
    INFO(chat.output);
    REQUIRE(chat.status == 0);
    // (fp32 greedy: 2 of 3 found; the third, with the key at the very end, is answered wrongly by the model)
    CHECK(json::parse(read_file(w + "/chat.json"))["runs"][0]["accuracy"]["passkey"]["512"].get<double>() >= 60.0);
  }
  // 5. the chat prompt equals transformers' apply_chat_template; greedy chat answers with Paris
  const std::string q = "What is the capital of France?";
  const std::string hf_chat = oracle_gguf("chat " + w + "/m '" + q + "'", w + "/o4.log");
  // a multi-turn conversation, with and without a system message: transformers' text and ids
  for (bool sys : {true, false}) {
    std::vector<ChatMessage> conv = {{"user", "Hi!"}, {"assistant", "Hello, how can I help?"}, {"user", q}};
    if (sys) conv.insert(conv.begin(), {"system", "You answer in one word."});
    json msgs = json::array();
    for (const auto& m : conv) msgs.push_back({{"role", m.role}, {"content", m.content}});
    write_text(w + "/conv.json", msgs.dump());
    const std::string hf_conv = oracle_gguf("chat " + w + "/m " + w + "/conv.json", w + "/o6.log");
    auto ctok = Tokenizer::load(w + "/m");
    const ChatPrompt cp = apply_chat(ctok, ChatFormat::Auto, conv);
    CHECK(cp.text == hf_conv);
    CHECK(cp.ids(ctok) == ctok.encode(hf_conv, false));
  }
  auto g = run("{ " + dmc_binary() + " generate --model " + w + "/m --chat --prompt '" + q +
               "' --temperature 0 --max-new-tokens 24 --device cpu --dtype fp32 2>/dev/null; }");
  INFO(g.output);
  REQUIRE(g.status == 0);
  CHECK(g.output.rfind(hf_chat, 0) == 0);  // the printed prompt is the template's text
  CHECK(g.output.find("Paris") != std::string::npos);
}
