// Tensor parallelism on the CPU over Gloo, several real processes with torchrun-style variables: the TP=2 forward
// and backward (vanilla and DMC layers, with and without activation recompute, with and without sequence
// parallelism) give the TP=1 logits, loss and
// gradients (reassembled from the shards) within fp32 tolerance.
#include <torch/torch.h>

#include <random>

#include "helpers.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "train_fixture.h"

#include <nlohmann/json.hpp>

using namespace dmc;
using namespace dmc::test;

namespace {
// Runs `n` worker processes of one group (n = 1: no distributed environment at all).
RunResult run_workers(int n, const std::string& args) {
  if (n == 1) return run(std::string(DMC_DIST_WORKER) + " " + args);
  std::random_device rd;
  const int port = 20000 + (int)(rd() % 20000);
  std::string cmd = "(";
  for (int r = 0; r < n; ++r)
    cmd += cat("RANK=", r, " LOCAL_RANK=", r, " WORLD_SIZE=", n, " MASTER_ADDR=127.0.0.1 MASTER_PORT=", port, " ",
               DMC_DIST_WORKER, " ", args, " & ");
  cmd += "wait)";
  return run(cmd);
}
// `dmc train` in n processes through scripts/launch.sh (n = 1: a plain single process)
RunResult train_ranks(int n, const std::string& out, const std::string& extra) {
  if (n == 1) return run(train_cmd(out, extra));
  const std::string cmd = train_cmd(out, extra);
  const std::string rest = cmd.substr(dmc_bin().size() + std::string(" train").size());
  return run("DMC_BIN=" + dmc_bin() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/launch.sh " + std::to_string(n) +
             " - " + rest);
}
// largest relative difference over the tensors of two model directories
double max_rel(const std::string& a, const std::string& b) {
  auto sa = io::TensorStore::open_dir(a), sb = io::TensorStore::open_dir(b);
  REQUIRE(sa.names() == sb.names());
  double worst = 0;
  for (const auto& n : sa.names()) worst = std::max(worst, rel_err(sb.get(n), sa.get(n)));
  return worst;
}
// the weights after training moved away from the initial ones (the comparison is not of two untouched models)
double moved(const std::string& run_dir) {
  auto s = io::TensorStore::open_dir(run_dir + "/final");
  return s.get("model.layers.0.self_attn.q_proj.weight").abs().sum().item<double>();
}
}  // namespace

TEST_CASE("tensor parallel over Gloo: TP=2 logits, loss and gradients equal TP=1, vanilla and DMC layers", "[dist]") {
#ifndef DMC_HAVE_GLOO
  SKIP("built without Gloo headers (libgloo-dev)");
#endif
  const auto work = tmp_dir("dist");
  for (std::string mode : {"vanilla", "dmc"}) {
    for (std::string rc : {"0", "1"}) {
      for (std::string sp : {"0", "1"}) {
        DYNAMIC_SECTION(mode << (rc == "1" ? " with recompute" : "") << (sp == "1" ? " sequence parallel" : "")) {
          auto r1 = run_workers(1, work + "/tp1.safetensors " + mode + " " + rc);
          INFO(r1.output);
          REQUIRE(r1.status == 0);
          auto r2 = run_workers(2, work + "/tp2.safetensors " + mode + " " + rc + " cpu " + sp);
          INFO(r2.output);
          REQUIRE(r2.status == 0);
          auto a = io::SafetensorsFile::open(work + "/tp1.safetensors");
          auto b = io::SafetensorsFile::open(work + "/tp2.safetensors");
          int64_t n = 0;
          for (const auto& name : a->names()) {
            at::Tensor x = a->get(name), y = b->get(name);
            INFO(name);
            REQUIRE(x.sizes() == y.sizes());
            CHECK(rel_err(y, x) < 1e-5);
            ++n;
          }
          CHECK(n >= 16);  // logits, loss and every parameter's gradient
          // the gradients are not trivially zero
          CHECK(a->get("grad.layers.0.wqkv").abs().max().item<double>() > 0);
          CHECK(a->get("grad.layers.1.mlp_norm").abs().max().item<double>() > 0);
        }
      }
    }
  }
}

TEST_CASE("data and tensor parallel training over Gloo equal the single process, and checkpoints resume across layouts",
          "[dist][train]") {
#ifndef DMC_HAVE_GLOO
  SKIP("built without Gloo headers (libgloo-dev)");
#endif
  const auto w = tmp_dir("disttrain");
  const std::string steps = "--train-steps 4 --lr 3e-3 --warmup-steps 1 --eval-every 0 ";
  auto one = train_ranks(1, w + "/one", steps);
  INFO(one.output);
  REQUIRE(one.status == 0);
  SECTION("DP=2: each rank one micro-batch of 2, the single process two") {
    auto r = train_ranks(2, w + "/dp2", steps);
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(max_rel(w + "/one/final", w + "/dp2/final") < 1e-5);
    CHECK(moved(w + "/dp2") > 0);
  }
  SECTION("DP=2 with two micro-batches of 1 per rank (gradients accumulate in the bucket buffers)") {
    auto r = train_ranks(2, w + "/dp2acc", steps + "--micro-batch 1");
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(max_rel(w + "/one/final", w + "/dp2acc/final") < 1e-5);
  }
  SECTION("TP=2") {
    auto r = train_ranks(2, w + "/tp2", steps + "--tensor-parallel 2");
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(max_rel(w + "/one/final", w + "/tp2/final") < 1e-5);
  }
  SECTION("TP=2 x DP=2 stops at step 2, TP=1 resumes to 4; and the reverse") {
    auto a = train_ranks(4, w + "/x", steps + "--tensor-parallel 2 --exit-after-steps 2");
    INFO(a.output);
    REQUIRE(a.status == 0);
    REQUIRE(fs::exists(w + "/x/checkpoints/step-00000002/COMPLETE"));
    auto b = train_ranks(1, w + "/x", steps);
    INFO(b.output);
    REQUIRE(b.status == 0);
    CHECK(max_rel(w + "/one/final", w + "/x/final") < 1e-5);
    auto c = train_ranks(1, w + "/y", steps + "--exit-after-steps 2");
    REQUIRE(c.status == 0);
    auto d = train_ranks(4, w + "/y", steps + "--tensor-parallel 2");
    INFO(d.output);
    REQUIRE(d.status == 0);
    CHECK(max_rel(w + "/one/final", w + "/y/final") < 1e-5);
  }
  SECTION("a layout that does not divide the model is refused clearly") {
    auto r = train_ranks(2, w + "/bad", steps + "--tensor-parallel 2 --num-key-value-heads 1");
    CHECK(r.status != 0);
    CHECK(r.output.find("num_key_value_heads") != std::string::npos);
    // sequence parallelism splits micro_batch x seq_len tokens over the TP ranks: 1 x 31 does not split in two
    auto sp = train_ranks(2, w + "/badsp", steps + "--tensor-parallel 2 --seq-len 31 --micro-batch 1 --global-batch 2");
    CHECK(sp.status != 0);
    CHECK(sp.output.find("sequence_parallel") != std::string::npos);
  }
}

TEST_CASE("DMC retrofit stages under TP=2 x DP=2: rows zeroed on every shard, ratios logged for every head",
          "[dist][dmc]") {
#ifndef DMC_HAVE_GLOO
  SKIP("built without Gloo headers (libgloo-dev)");
#endif
  const auto w = tmp_dir("distdmc");
  auto base = train_ranks(1, w + "/base", "--train-steps 2");
  REQUIRE(base.status == 0);
  auto retro = [&](const std::string& args) {
    const std::string cmd = train_cmd(w + "/unused", "");
    std::string rest = cmd.substr(dmc_bin().size() + std::string(" train").size());
    rest = rest.substr(0, rest.find(" --out ")) + rest.substr(rest.find(" --num-hidden-layers"));
    return run("DMC_COMMAND=retrofit DMC_BIN=" + dmc_bin() + " " + std::string(DMC_SOURCE_DIR) +
               "/scripts/launch.sh 4 - " + rest + " --tensor-parallel 2 " + args);
  };
  auto s1 = retro("--stage zero_out --init-from " + w + "/base/final --out " + w + "/s1 --train-steps 4");
  INFO(s1.output);
  REQUIRE(s1.status == 0);
  auto m = Llama::load(w + "/s1/final", at::kFloat, at::kCPU);
  const int64_t D = m.config.head_dim;
  for (auto& L : m.layers) {
    for (int64_t h = 0; h < 4; ++h) CHECK(L.wqkv[h * D + D - 1].abs().max().item<double>() == 0);
    for (int64_t g = 0; g < 2; ++g) CHECK(L.wqkv[4 * D + g * D + D - 1].abs().max().item<double>() == 0);
  }
  auto s2 = retro("--stage retrofit --target-cr 2 --init-from " + w + "/s1/final --out " + w +
                  "/s2 --train-steps 4 "
                  "--head-stats-every 2 --dmc-loss-scope global");
  INFO(s2.output);
  REQUIRE(s2.status == 0);
  // the last per-head ratios (in the metrics) cover both KV heads of both layers: the shards' counts were summed
  nlohmann::json last;
  for (const auto& j : read_jsonl(w + "/s2/metrics.jsonl"))
    if (j.contains("cr_per_head")) last = j["cr_per_head"];
  REQUIRE(last.is_array());
  REQUIRE(last.size() == 2);
  for (auto& layer : last) {
    REQUIRE(layer.size() == 2);
    for (auto& x : layer) CHECK(x.get<double>() >= 1.0);
  }
}

TEST_CASE("inference with TP=2 over Gloo: each rank its own page pool, the same greedy tokens as TP=1",
          "[dist][inference]") {
#ifndef DMC_HAVE_GLOO
  SKIP("built without Gloo headers (libgloo-dev)");
#endif
  const auto work = tmp_dir("distgen");
  for (std::string mode : {"generate-vanilla", "generate-dmc"}) {
    DYNAMIC_SECTION(mode) {
      auto r1 = run_workers(1, work + "/g1.safetensors " + mode);
      INFO(r1.output);
      REQUIRE(r1.status == 0);
      auto r2 = run_workers(2, work + "/g2.safetensors " + mode);
      INFO(r2.output);
      REQUIRE(r2.status == 0);
      auto a = io::SafetensorsFile::open(work + "/g1.safetensors");
      auto b = io::SafetensorsFile::open(work + "/g2.safetensors");
      CHECK(at::equal(a->get("tokens"), b->get("tokens")));
      CHECK(rel_err(b->get("prefill_logits"), a->get("prefill_logits")) < 1e-5);
    }
  }
}
