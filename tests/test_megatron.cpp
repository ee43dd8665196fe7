// Megatron-LM legacy checkpoints in and out (`dmc convert --from-megatron / --to-megatron`, tools/megatron.py).
// Checkpoints come from tests/reference/megatron_writer.py, which writes the layout of ../shared/megatron-format.md
// independently of the code under test, from random HF Llamas made by transformers: MHA and GQA, tensor parallel
// 1 / 2 / 4 (4 pads the vocabulary), with and without dmc_* args, the iter_*, release and bare-root layouts.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common/util.h"
#include "helpers.h"
#include "inference/perplexity.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train_fixture.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
std::string writer() { return python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/megatron_writer.py"; }
// every parameter bit-equal
void check_same_weights(Llama& a, Llama& b) {
  auto pa = a.parameters(), pb = b.parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].first);
    REQUIRE(pa[i].first == pb[i].first);
    CHECK(at::equal(*pa[i].second, *pb[i].second));
  }
}
}  // namespace

TEST_CASE("convert --from-megatron: TP 1 / 2 / 4, MHA and GQA, every layout: HF's weights and logits, DMC args",
          "[megatron]") {
  if (!have_oracle()) SKIP("python oracle (torch, transformers) not available: " + python());
  const auto w = tmp_dir("megatron");
  const auto tok = Tokenizer::load(fx().tok);
  const int64_t V = tok.vocab_size();
  struct Case {
    const char* name;
    int kv_heads, tp;
    const char* layout;
    bool dmc_args;
  };
  for (Case k : {Case{"mha-tp1-root", 4, 1, "root", false}, Case{"gqa-tp2-iter", 2, 2, "iter", true},
                 Case{"mha-tp4-release", 4, 4, "release", false}}) {
    DYNAMIC_SECTION(k.name) {
      const std::string hf = w + "/" + k.name + "-hf", meg = w + "/" + k.name + "-meg", imp = w + "/" + k.name + "-imp";
      auto r = run(oracle() + " make-model " + hf + " --vocab " + std::to_string(V) +
                   " --layers 2 --heads 4 --kv-heads " + std::to_string(k.kv_heads) + " --hidden 64 --ffn 88 --seed 3");
      REQUIRE(r.status == 0);
      r = run(writer() + " " + hf + " " + meg + " --tp " + std::to_string(k.tp) + " --layout " + k.layout +
              (k.dmc_args ? " --dmc-args" : ""));
      INFO(r.output);
      REQUIRE(r.status == 0);
      r = run(std::string(DMC_BINARY) + " convert --from-megatron " + meg + " --out " + imp + " --dtype fp32 --tokenizer " +
              fx().tok);
      INFO(r.output);
      REQUIRE(r.status == 0);
      auto src = Llama::load(hf, at::kFloat, at::kCPU);
      auto got = Llama::load(imp, at::kFloat, at::kCPU);
      CHECK(got.config.vocab_size == V);  // the padding rows (TP 4: 512 rows for a vocabulary of 400) dropped
      CHECK(got.config.num_key_value_heads == k.kv_heads);
      check_same_weights(src, got);
      CHECK(got.config.dmc.enabled == k.dmc_args);
      if (k.dmc_args) {  // the writer's dmc_* args: init 3.0, window 6, cr 8
        CHECK(got.config.dmc.init_val == 3.0);
        CHECK(got.config.dmc.window == 6);
        CHECK(got.config.dmc.target_cr == 8.0);
      }
      CHECK(fs::exists(imp + "/tokenizer.model"));
      // logits: dmc on the import against transformers on the source
      if (!k.dmc_args) {
        std::vector<std::vector<int64_t>> rows(2, std::vector<int64_t>(29));
        for (auto& row : rows)
          for (auto& id : row) id = 3 + (int64_t)(std::rand() % (V - 3));
        write_text(w + "/ids.json", json(rows).dump());
        const at::Tensor ids = at::tensor(rows[0], at::kLong).view({1, -1}).repeat({2, 1}).clone();
        ids[1].copy_(at::tensor(rows[1], at::kLong));
        r = run(oracle() + " logits " + hf + " " + w + "/ids.json " + w + "/l.safetensors");
        REQUIRE(r.status == 0);
        const at::Tensor ref = io::SafetensorsFile::open(w + "/l.safetensors")->get("logits").clone();
        at::NoGradGuard ng;
        const at::Tensor ours = got.forward(ids);
        REQUIRE(ours.sizes() == ref.sizes());
        const double rel = ((ours - ref).abs().max() / ref.abs().max()).item<double>();
        INFO("relative difference " << rel);
        CHECK(rel < 1e-5);
      }
      // HF -> Megatron -> HF: bit-exact; the export is what the writer makes for that TP (keys, shapes, values,
      // extra-state kinds) and loads with weights_only=True and the allow-list
      const std::string exp = w + "/" + k.name + "-exp", back = w + "/" + k.name + "-back";
      r = run(std::string(DMC_BINARY) + " convert --to-megatron " + imp + " --out " + exp + " --tensor-parallel " +
              std::to_string(k.tp) + " --iteration 2000");
      INFO(r.output);
      REQUIRE(r.status == 0);
      r = run(std::string(DMC_BINARY) + " convert --from-megatron " + exp + " --out " + back + " --dtype fp32");
      INFO(r.output);
      REQUIRE(r.status == 0);
      auto again = Llama::load(back, at::kFloat, at::kCPU);
      check_same_weights(got, again);
      CHECK(again.config.dmc.enabled == k.dmc_args);
      const std::string sub = std::string(k.layout) == "release" ? "release" : std::string(k.layout) == "root" ? "" : "iter_0002000";
      for (int rank = 0; rank < k.tp; ++rank) {
        const std::string rk = "mp_rank_0" + std::to_string(rank) + "/model_optim_rng.pt";
        auto c = run("{ " + writer() + " --compare " + meg + "/" + sub + "/" + rk + " " + exp + "/iter_0002000/" + rk +
                     " 2>&1; }");
        INFO(c.output);
        REQUIRE(c.status == 0);
        const json cj = json::parse(c.output);
        CHECK(cj["same_keys"] == true);
        CHECK(cj["same_values"] == true);
        CHECK(cj["same_extra_state_kinds"] == true);
        CHECK(cj["b_checkpoint_version"] == 3.0);
        CHECK(cj["b_iteration"] == 2000);
        CHECK(cj["b_args"]["tensor_model_parallel_size"] == k.tp);
        CHECK(cj["b_args"]["rotary_percent"] == 1.0);
        CHECK(cj["b_args"]["swiglu"] == true);
        CHECK(cj["b_args"]["group_query_attention"] == (k.kv_heads != 4));
      }
      CHECK(read_file(exp + "/latest_checkpointed_iteration.txt") == "2000");
    }
  }
}

TEST_CASE("convert --from-megatron: bad checkpoints are refused with the file and field named, nothing executed",
          "[megatron][bad]") {
  if (!have_oracle()) SKIP("python oracle (torch, transformers) not available: " + python());
  const auto w = tmp_dir("megbad");
  auto r = run(oracle() + " make-model " + w + "/hf --vocab 97 --layers 1 --heads 4 --kv-heads 2 --hidden 32 --ffn 40");
  REQUIRE(r.status == 0);
  const std::string marker = w + "/EXECUTED";
  for (const auto& [bad, want] : std::vector<std::pair<std::string, std::string>>{
           {"missing-shard", "missing shards: mp_rank_01"},
           {"mixed-tp", "tensor_model_parallel_size is 3 but the checkpoint has 2"},
           {"no-iteration", "field 'iteration' is missing"},
           {"unexpected-key", "unexpected key 'decoder.layers.0.self_attention.q_layernorm.weight'"},
           {"bad-shape", "'decoder.final_layernorm.weight' has shape [33], args say [32]"},
           {"evil-global:" + marker, "refused by the safe loader"}}) {
    INFO(bad);
    const std::string meg = w + "/meg-" + std::to_string(std::hash<std::string>{}(bad));
    r = run(writer() + " " + w + "/hf " + meg + " --tp 2 --bad " + bad);
    REQUIRE(r.status == 0);
    auto c = run(std::string(DMC_BINARY) + " convert --from-megatron " + meg + " --out " + w + "/out");
    INFO(c.output);
    CHECK(c.status == 1);
    CHECK(c.output.find(want) != std::string::npos);
    CHECK(c.output.find("model_optim_rng.pt") != std::string::npos);
    CHECK(!fs::exists(w + "/out"));
    CHECK(!fs::exists(marker));
  }
  // not a checkpoint at all; a helper usage error
  auto c = run(std::string(DMC_BINARY) + " convert --from-megatron " + w + "/hf --out " + w + "/out");
  CHECK(c.status == 1);
  CHECK(c.output.find("no mp_rank_* folders and no latest_checkpointed_iteration.txt") != std::string::npos);
  c = run(std::string(DMC_BINARY) + " convert --to-megatron " + w + "/hf --out " + w + "/out --tensor-parallel 3");
  CHECK(c.status == 1);
  CHECK(c.output.find("--tensor-parallel 3: must divide") != std::string::npos);
  CHECK(!fs::exists(w + "/out"));
}

TEST_CASE("a DMC model exported to Megatron and imported again: same eval-mode perplexity and achieved ratio",
          "[megatron]") {
  if (!have_oracle()) SKIP("python oracle (torch, safetensors) not available: " + python());
  const auto w = tmp_dir("megdmc");
  const auto tok = Tokenizer::load(fx().tok);
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = tok.vocab_size();
  c.max_position_embeddings = 256;
  c.dmc.enabled = true;  // decisions that merge: the ratio is well above 1
  c.dmc.init_val = 0.2;
  c.dmc.window = 4;
  c.dmc.target_cr = 4;
  auto m = Llama::random(c, 5, at::kFloat, at::kCPU, 0.3);
  m.save(w + "/dmc", at::kFloat);
  auto r = run(std::string(DMC_BINARY) + " convert --to-megatron " + w + "/dmc --out " + w + "/meg --tensor-parallel 2");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(std::string(DMC_BINARY) + " convert --from-megatron " + w + "/meg --out " + w + "/back --dtype fp32");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto back = Llama::load(w + "/back", at::kFloat, at::kCPU);
  CHECK(back.config.dmc.enabled);
  CHECK(back.config.dmc.init_val == c.dmc.init_val);
  CHECK(back.config.dmc.window == c.dmc.window);
  CHECK(back.config.dmc.target_cr == c.dmc.target_cr);
  const std::vector<int64_t> ids = tok.encode(
      "The model keeps a cache of keys and values for every token it has seen, and the cache grows with the text.",
      true);
  PplOptions po;
  po.seq_len = (int64_t)ids.size();
  po.progress = false;
  const PplResult a = perplexity(m, ids, po), b = perplexity(back, ids, po);
  CHECK(a.cr() > 1.5);
  CHECK(b.nll_sum == a.nll_sum);
  CHECK(b.cr() == a.cr());
}
