// The Llama forward against HF transformers (LlamaForCausalLM, fp32, CPU): logits, the KV-cache path,
// perplexity, and a dmc-written checkpoint loading in transformers. Skipped (with a message) when the Python
// oracle is unavailable.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common/util.h"
#include "dist/dist.h"
#include "helpers.h"
#include "inference/generate.h"
#include "inference/perplexity.h"
#include "io/safetensors.h"
#include "inference/decoder.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
at::Tensor random_ids(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, V, {B, T}, at::kLong);
}
void write_ids(const std::string& path, const at::Tensor& ids) {
  json j = json::array();
  for (int64_t b = 0; b < ids.size(0); ++b) {
    json row = json::array();
    for (int64_t t = 0; t < ids.size(1); ++t) row.push_back(ids[b][t].item<int64_t>());
    j.push_back(row);
  }
  std::ofstream(path) << j.dump();
}
at::Tensor hf_logits(const std::string& model_dir, const at::Tensor& ids, const std::string& work) {
  write_ids(work + "/ids.json", ids);
  auto r = run(oracle() + " logits " + model_dir + " " + work + "/ids.json " + work + "/logits.safetensors");
  INFO(r.output);
  REQUIRE(r.status == 0);
  return io::SafetensorsFile::open(work + "/logits.safetensors")->get("logits").clone();
}
}  // namespace

TEST_CASE("logits equal HF LlamaForCausalLM (GQA, odd FFN, fp32)", "[model][hf]") {
  if (!have_oracle()) SKIP("python oracle (torch, transformers, sentencepiece) not available: " + python());
  const auto work = tmp_dir("hf");
  for (bool tie : {false, true}) {
    const std::string dir = work + (tie ? "/tied" : "/untied");
    auto r =
        run(oracle() + " make-model " + dir + " --vocab 97 --layers 2 --heads 4 --kv-heads 2 --hidden 64 --ffn 88" +
            (tie ? " --tie --seed 2" : " --seed 1"));
    INFO(r.output);
    REQUIRE(r.status == 0);
    auto model = Llama::load(dir, at::kFloat, at::kCPU);
    CHECK(model.config.num_key_value_heads == 2);
    CHECK(model.config.tie_word_embeddings == tie);
    at::Tensor ids = random_ids(2, 37, 97, 5);
    at::Tensor ref = hf_logits(dir, ids, work);
    at::Tensor ours;
    {
      at::NoGradGuard ng;
      ours = model.forward(ids);
    }
    REQUIRE(ours.sizes() == ref.sizes());
    const double diff = (ours - ref).abs().max().item<double>();
    INFO("max abs diff " << diff << ", logit scale " << ref.abs().max().item<double>());
    CHECK(diff < 1e-4);
    CHECK(ref.abs().max().item<double>() > 0.5);  // the comparison is not between near-zero logits
  }
}

TEST_CASE("a checkpoint written by dmc loads in transformers with the same logits", "[model][hf]") {
  if (!have_oracle()) SKIP("python oracle not available: " + python());
  const auto work = tmp_dir("hfload");
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 101;
  c.intermediate_size = 150;
  auto m = Llama::random(c, 9, at::kFloat, at::kCPU, 0.1);
  for (auto& L : m.layers) L.attn_norm = L.attn_norm + 0.1 * torch::randn_like(L.attn_norm);
  m.save(work + "/sharded", at::kFloat, /*max_shard_bytes=*/300000);
  REQUIRE(fs::exists(work + "/sharded/model.safetensors.index.json"));
  at::Tensor ids = random_ids(1, 20, 101, 3);
  at::Tensor ref = hf_logits(work + "/sharded", ids, work);
  at::NoGradGuard ng;
  CHECK((m.forward(ids) - ref).abs().max().item<double>() < 1e-4);
  // bf16 on disk: transformers reads it too
  m.save(work + "/bf16", at::kBFloat16);
  auto mb = Llama::load(work + "/bf16", at::kFloat, at::kCPU);
  at::Tensor ref_b = hf_logits(work + "/bf16", ids, work);
  CHECK((mb.forward(ids) - ref_b).abs().max().item<double>() < 1e-4);
}

TEST_CASE("paged-cache decode (prefill, then token by token) equals the full forward", "[model]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  auto m = Llama::random(c, 4, at::kFloat, at::kCPU, 0.1);
  at::Tensor ids = random_ids(3, 24, c.vocab_size, 8);
  at::NoGradGuard ng;
  at::Tensor full = m.forward(ids);  // [3, 24, vocab]
  DecoderOptions o;
  o.max_seqs = 3;
  o.policy = CachePolicy::Vanilla;
  Decoder d(m, o);
  double worst = 0;
  for (int64_t s = 0; s < 3; ++s) {  // prefills of different lengths: the sequences sit at different positions
    const int64_t P = 8 + s;
    std::vector<int64_t> prompt(ids[s].data_ptr<int64_t>(), ids[s].data_ptr<int64_t>() + P);
    worst = std::max(worst, (d.prefill(s, prompt) - full[s][P - 1]).abs().max().item<double>());
  }
  for (int64_t t = 8; t < 24; ++t) {
    std::vector<int64_t> seqs, next, pos;
    for (int64_t s = 0; s < 3; ++s)
      if (t + s < 24) {
        seqs.push_back(s);
        next.push_back(ids[s][t + s].item<int64_t>());
        pos.push_back(t + s);
      }
    at::Tensor lg = d.step(seqs, next);
    for (size_t i = 0; i < seqs.size(); ++i)
      worst = std::max(worst, (lg[(int64_t)i] - full[seqs[i]][pos[i]]).abs().max().item<double>());
  }
  INFO("max |decode - full| " << worst);
  CHECK(worst < 1e-4);
  CHECK(d.position(0) == 24);
}

TEST_CASE("greedy generation is the argmax chain of the full forward", "[model]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  auto m = Llama::random(c, 6, at::kFloat, at::kCPU, 0.2);
  std::vector<int64_t> prompt = {1, 17, 33, 250, 9};
  GenerateOptions go;
  go.max_new_tokens = 12;
  go.stop_at_eos = false;
  go.sampling.temperature = 0;
  auto res = generate(m, {prompt, prompt}, go);
  REQUIRE(res.tokens[0].size() == 12);
  CHECK(res.tokens[0] == res.tokens[1]);
  std::vector<int64_t> seq = prompt;
  at::NoGradGuard ng;
  for (int i = 0; i < 12; ++i) {
    at::Tensor logits = m.forward(at::tensor(seq, at::kLong).unsqueeze(0));
    seq.push_back(logits[0][-1].argmax().item<int64_t>());
  }
  CHECK(std::vector<int64_t>(seq.begin() + 5, seq.end()) == res.tokens[0]);
  // seeded sampling is reproducible, and different seeds differ
  go.sampling = {1.0, 50, 0.9, 7};
  auto s1 = generate(m, {prompt}, go), s2 = generate(m, {prompt}, go);
  go.sampling.seed = 8;
  auto s3 = generate(m, {prompt}, go);
  CHECK(s1.tokens == s2.tokens);
  CHECK(s1.tokens != s3.tokens);
}

TEST_CASE("perplexity equals the transformers recipe for the same text and window", "[model][hf]") {
  if (!have_oracle()) SKIP("python oracle not available: " + python());
  const auto work = tmp_dir("ppl");
  write_text(work + "/train.txt", sample_text(300, 11));
  Tokenizer::train({{work + "/train.txt"}, work + "/tok", 400, 100000});
  auto tok = Tokenizer::load(work + "/tok.model");
  REQUIRE(tok.vocab_size() == 400);
  auto r = run(oracle() + " make-model " + work +
               "/m --vocab 400 --layers 2 --heads 4 --kv-heads 2 --hidden 64 --ffn 88 --seed 3");
  INFO(r.output);
  REQUIRE(r.status == 0);
  write_text(work + "/eval.txt", sample_text(12, 99));
  auto model = Llama::load(work + "/m", at::kFloat, at::kCPU);
  auto ids = tok.encode(read_file(work + "/eval.txt"), true);
  REQUIRE(ids.size() > 300);
  for (auto [S, stride] : std::vector<std::pair<int64_t, int64_t>>{{128, 128}, {128, 48}, {100, 100}}) {
    PplOptions po;
    po.seq_len = S;
    po.stride = stride;
    po.progress = false;
    auto ours = perplexity(model, ids, po);
    auto hr = run(oracle() + " ppl " + work + "/m " + work + "/tok.model " + work + "/eval.txt --seq-len " +
                  std::to_string(S) + " --stride " + std::to_string(stride));
    INFO(hr.output);
    REQUIRE(hr.status == 0);
    auto j = json::parse(hr.output.substr(hr.output.rfind('{')));
    CHECK(j["n_ids"].get<int64_t>() == (int64_t)ids.size());  // same tokenization
    CHECK(j["tokens"].get<int64_t>() == ours.tokens_scored);
    const double ref = j["ppl"].get<double>();
    INFO("S=" << S << " stride=" << stride << " ours " << ours.ppl() << " hf " << ref);
    CHECK(std::abs(ours.ppl() - ref) / ref < 1e-5);
  }
}

TEST_CASE("RoPE scaling variants change only what they should", "[model]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  at::Tensor base = rope_inv_freq(c, at::kCPU);
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4;
  CHECK(torch::allclose(rope_inv_freq(c, at::kCPU), base / 4));
  c.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 64};
  at::Tensor l3 = rope_inv_freq(c, at::kCPU);
  // high frequencies (short wavelengths) unchanged, the lowest divided by the factor
  CHECK(l3[0].item<float>() == base[0].item<float>());
  CHECK(l3[-1].item<float>() == Approx(base[-1].item<float>() / 8).epsilon(1e-6));
}

TEST_CASE("tensor parallel: a size that does not divide the KV heads (SmolLM2's 3) is refused, naming the field",
          "[model][tp]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.hidden_size = 192;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.head_dim = 32;
  auto m = Llama::random(c, 1, at::kFloat, at::kCPU);
  Group g;
  g.rank = 0;
  g.size = 2;
  require_error([&] { m.shard_tensor_parallel(g); },
                {"tensor_parallel 2", "num_key_value_heads (3)", "must divide evenly"});
  CHECK(m.tp.size == 1);  // nothing was sharded
}

TEST_CASE("an unknown model preset is refused with every preset's name", "[model]") {
  for (const auto& n : LlamaConfig::preset_names()) CHECK(LlamaConfig::preset(n).num_hidden_layers > 0);
  std::vector<std::string> parts = {"preset: unknown model preset 'llama-3b'"};
  for (const auto& n : LlamaConfig::preset_names()) parts.push_back(n);
  require_error([] { LlamaConfig::preset("llama-3b"); }, parts);
}
