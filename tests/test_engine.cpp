// The decode engine beyond single-sequence decoding (CPU, reference ops): continuous batching with joins, exits
// and preemption; the eviction baselines (TOVA, H2O, window + sinks); the benchmark-only forced-ratio policy.
#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "helpers.h"
#include "inference/decoder.h"
#include "inference/generate.h"
#include "inference/perplexity.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "common/util.h"
#include "train_fixture.h"

#include <fstream>
#include <nlohmann/json.hpp>

using namespace dmc;
using namespace dmc::test;

namespace {
Llama engine_model(uint64_t seed, bool use_dmc) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 97;
  auto m = Llama::random(c, seed, at::kFloat, at::kCPU, 0.2);
  if (use_dmc) {
    m.config.dmc.enabled = true;
    m.config.dmc.init_val = 0.2;
    m.config.dmc.window = 4;
  }
  return m;
}
std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  at::Tensor t = at::randint(0, vocab, {n}, at::TensorOptions().dtype(at::kLong)).contiguous();
  (void)seed;
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}
}  // namespace

TEST_CASE("continuous batching: joins, exits and preemption give each prompt its own greedy tokens",
          "[inference][engine]") {
  for (bool use_dmc : {false, true}) {
    DYNAMIC_SECTION((use_dmc ? "dmc" : "vanilla")) {
      auto m = engine_model(31, use_dmc);
      torch::manual_seed(4);
      std::vector<std::vector<int64_t>> prompts;
      std::vector<int64_t> lens = {5, 17, 9, 30, 3, 12};
      for (int64_t n : lens) prompts.push_back(random_ids(n, 97, 0));
      GenerateOptions go;
      go.stop_at_eos = false;
      go.sampling.temperature = 0;
      go.max_new_tokens = 11;
      // each prompt alone
      std::vector<std::vector<int64_t>> alone;
      for (const auto& p : prompts) alone.push_back(generate(m, {p}, go).tokens[0]);
      // two at a time: sequences join as others finish
      go.max_batch = 2;
      auto two = generate(m, prompts, go);
      CHECK(two.tokens == alone);
      CHECK(two.max_active == 2);
      // all at once in a pool too small for all of them: preemption and recompute, same tokens
      go.max_batch = 6;
      go.cache.page_size = 4;
      // 22 pages per (layer, head) row set: about two of the longest sequences (30 + 11 slots = 11 pages each)
      go.cache.n_pages = m.config.num_hidden_layers * m.config.num_key_value_heads * 22;
      auto tight = generate(m, prompts, go);
      CHECK(tight.tokens == alone);
      INFO("preemptions " << tight.preemptions << " max batch " << tight.max_active);
      if (!use_dmc) CHECK(tight.preemptions > 0);
      CHECK(tight.max_active >= 2);
      // a pool that cannot hold a single prompt is a clear error
      go.cache.n_pages = 3;
      require_error([&] { generate(m, prompts, go); }, {"kv cache", "raise the memory budget"});
    }
  }
}

TEST_CASE("continuous batching of an eviction baseline: prompts join in groups while others decode, same tokens",
          "[inference][engine]") {
  auto m = engine_model(33, false);
  torch::manual_seed(8);
  std::vector<std::vector<int64_t>> prompts;
  std::vector<int64_t> news;
  for (int64_t i = 0; i < 24; ++i) {
    prompts.push_back(random_ids(10 + (i * 7) % 23, 97, 0));
    news.push_back(2 + (i * 5) % 9);  // sequences finish at scattered steps: slots free one or two at a time
  }
  GenerateOptions go;
  go.stop_at_eos = false;
  go.sampling.temperature = 0;
  go.max_new_tokens = 12;
  go.max_new_per_prompt = news;
  go.max_batch = 12;
  go.cache.page_size = 4;
  go.cache.budget = 8;
  go.cache.prefill_chunk = 4;
  go.cache.policy = CachePolicy::Tova;
  std::vector<std::vector<int64_t>> alone;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions one = go;
    one.max_new_per_prompt = {news[i]};
    alone.push_back(generate(m, {prompts[i]}, one).tokens[0]);
  }
  auto grouped = generate(m, prompts, go);
  CHECK(grouped.tokens == alone);
  // the full cache on the same schedule admits a prompt whenever a slot frees; TOVA waits for 12 / 4 = 3 at a time
  GenerateOptions full = go;
  full.cache.policy = CachePolicy::Vanilla;
  auto each = generate(m, prompts, full);
  INFO("prefill groups: tova " << grouped.prefill_groups << ", full cache " << each.prefill_groups);
  CHECK(grouped.prefill_groups < each.prefill_groups);
  CHECK(grouped.prefill_groups <= 1 + (24 - 12 + 2) / 3);  // the first 12, then groups of at least 3
}

TEST_CASE(
    "eviction baselines: window keeps sinks + recent, H2O keeps the recent half, TOVA stays in budget, pages come back",
    "[inference][engine]") {
  auto m = engine_model(32, false);
  const auto& c = m.config;
  torch::manual_seed(6);
  std::vector<int64_t> ids = random_ids(60, 97, 0);
  // a budget above the sequence length: every baseline is exactly vanilla
  for (std::string pol : {"tova", "h2o", "window"}) {
    DecoderOptions o;
    o.policy = parse_cache_policy(pol);
    o.budget = 100;
    o.page_size = 4;
    DecoderOptions ov;
    ov.page_size = 4;
    Decoder a(m, o), v(m, ov);
    for (int64_t t = 0; t < 30; ++t) {
      at::Tensor la = a.step({0}, {ids[t]}), lv = v.step({0}, {ids[t]});
      REQUIRE((la - lv).abs().max().item<double>() < 1e-5);
    }
  }
  const int64_t B = 8;
  for (std::string pol : {"tova", "h2o", "window"}) {
    DYNAMIC_SECTION(pol) {
      DecoderOptions o;
      o.policy = parse_cache_policy(pol);
      o.budget = B;
      o.sinks = 2;
      o.page_size = 4;  // budget % page_size == 0: the row crosses a page at every eviction
      o.max_seqs = 2;
      Decoder d(m, o);
      const int64_t full = d.cache().free_pages();
      for (int64_t t = 0; t < 60; ++t) d.step({0}, {ids[t]});
      for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
          auto pos = d.slot_positions(l, 0, h);
          REQUIRE((int64_t)pos.size() == B);
          std::set<int64_t> held(pos.begin(), pos.end());
          CHECK((int64_t)held.size() == B);
          CHECK(held.count(59) + (pol == "tova" ? 1 : 0) >= 1);  // the newest is kept (TOVA may drop it)
          if (pol == "window") CHECK(held == std::set<int64_t>({0, 1, 54, 55, 56, 57, 58, 59}));
          if (pol == "h2o")
            for (int64_t p = 60 - B / 2; p < 60; ++p) CHECK(held.count(p) == 1);
        }
      // rows never hold more than budget + 1 slots: 3 pages of 4, and exactly 2 once back at the budget
      CHECK(full - d.cache().free_pages() == c.num_hidden_layers * c.num_key_value_heads * 2);
      d.free(0);
      CHECK(d.cache().free_pages() == full);
    }
  }
  // on a model with structure (a tiny random one), a small window loses more than TOVA and H2O at the same budget
  PplOptions po;
  po.seq_len = 60;
  po.mode = "incremental";
  po.progress = false;
  auto van = perplexity(m, ids, po);
  po.cache = "window";
  po.budget = 6;
  auto win = perplexity(m, ids, po);
  CHECK(win.tokens_scored == van.tokens_scored);
  CHECK(std::abs(win.ppl() - van.ppl()) > 1e-6);  // eviction changed something
  CHECK(win.cr() > 5.0);                          // 59 tokens in 6 slots per head
  // windows decoded together (a group of 3 windows, then 1) score the same as one at a time, for each baseline
  for (const char* pol : {"tova", "h2o", "window"}) {
    po.cache = pol;
    po.seq_len = 30;
    po.stride = 10;  // 60 tokens: windows at 0, 10, 20, 30
    po.batch = 3;
    auto together = perplexity(m, ids, po);
    po.batch = 1;
    auto alone = perplexity(m, ids, po);
    INFO(pol << ": batch 3 " << together.ppl() << ", batch 1 " << alone.ppl());
    CHECK(together.windows >= 4);
    CHECK(std::abs(together.ppl() - alone.ppl()) / alone.ppl() < 1e-5);
    CHECK(together.head_slots == alone.head_slots);
  }
  po.seq_len = 60;
  po.stride = 0;
  po.cache = "window";
  po.mode = "parallel";
  require_error([&] { perplexity(m, ids, po); }, {"--cache window", "incremental"});
  po.mode = "incremental";
  po.budget = 0;
  require_error([&] { perplexity(m, ids, po); }, {"--budget", "--cr"});
  po.cache = "lru";
  po.budget = 4;
  require_error([&] { perplexity(m, ids, po); }, {"cache policy", "tova"});
}

TEST_CASE("forced-ratio policy (benchmarks with random weights): prefill equals token by token, ratio as asked",
          "[inference][engine]") {
  auto m = engine_model(33, false);
  const auto& c = m.config;
  torch::manual_seed(8);
  std::vector<int64_t> ids = random_ids(41, 97, 0);
  DecoderOptions o;
  o.policy = CachePolicy::Dmc;
  o.force_cr = 4;
  o.page_size = 2;
  Decoder a(m, o), b(m, o);
  at::Tensor la;
  for (int64_t id : ids) la = a.step({0}, {id})[0];
  at::Tensor lb = b.prefill(0, ids);
  CHECK((la - lb).abs().max().item<double>() < 1e-4);
  CHECK(at::equal(a.slot_counts(0), b.slot_counts(0)));
  // head h appends at t = 0 and wherever (t + h) % 4 == 0
  at::Tensor slots = a.slot_counts(0);
  for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
    int64_t expect = 1;
    for (int64_t t = 1; t < 41; ++t) expect += (t + h) % 4 == 0;
    CHECK(slots[0][h].item<int64_t>() == expect);
  }
  for (int s = 0; s < 5; ++s) {
    const int64_t next = la.argmax().item<int64_t>();
    la = a.step({0}, {next})[0];
    lb = b.step({0}, {next})[0];
    CHECK((la - lb).abs().max().item<double>() < 1e-4);
  }
  // policy dmc on a model without DMC needs the forced policy
  o.force_cr = 0;
  require_error([&] { Decoder x(m, o); }, {"no DMC stanza"});
}

TEST_CASE("decoder: bad input is refused before anything changes", "[inference][engine]") {
  auto m = engine_model(34, true);
  DecoderOptions o;
  o.max_seqs = 2;
  o.page_size = 4;
  o.n_pages = m.config.num_hidden_layers * m.config.num_key_value_heads * 2;  // 8 slots per row
  Decoder d(m, o);
  require_error([&] { d.step({0}, {97}); }, {"token id 97", "out of range"});
  require_error([&] { d.step({0, 0}, {1, 2}); }, {"listed twice"});
  require_error([&] { d.step({2}, {1}); }, {"sequence 2 out of range"});
  std::vector<int64_t> long_prompt(m.config.max_position_embeddings + 1, 3);
  require_error([&] { d.prefill(1, long_prompt); }, {"prompt of", "max"});
  // exhaustion: 8 slots per row fit, the pool then refuses and leaves the sequence as it was
  o.policy = CachePolicy::Vanilla;
  Decoder v(m, o);
  for (int t = 0; t < 8; ++t) v.step({0}, {t + 1});
  const int64_t free = v.cache().free_pages();
  require_error([&] { v.step({0}, {5}); }, {"kv cache exhausted"});
  CHECK(v.position(0) == 8);
  CHECK(v.cache().free_pages() == free);
  CHECK(!v.can_step({0}));
}

TEST_CASE("dmc bench decode on the CPU: equal-memory batches, forced ratio labelled, bad input refused",
          "[inference][engine][cli]") {
  const auto w = tmp_dir("benchdec");
  const std::string base = std::string(DMC_BINARY) +
                           " bench decode --preset tiny --num-hidden-layers 2 --prompt-len 40 --new-tokens 8 --steps 4"
                           " --memory-gib 0.004 --prefill-check 0 --device cpu";
  auto r = run(base + " --policy vanilla,dmc --force-cr 4 --json " + w + "/out.jsonl");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto rows = read_jsonl(w + "/out.jsonl");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["policy"] == "vanilla");
  CHECK(rows[1]["decisions"].get<std::string>().find("FORCED cr 4") != std::string::npos);
  CHECK(std::abs(rows[0]["achieved_cr"].get<double>() - 1.0) < 1e-9);
  CHECK(rows[1]["achieved_cr"].get<double>() > 3.5);
  // the same memory budget holds more compressed sequences
  CHECK(rows[1]["batch"].get<int64_t>() > 2 * rows[0]["batch"].get<int64_t>());
  CHECK(rows[1]["memory_budget_bytes"] == rows[0]["memory_budget_bytes"]);
  r = run(base + " --policy dmc");
  CHECK(r.status != 0);
  CHECK(r.output.find("--force-cr") != std::string::npos);
  r = run(base + " --policy vanilla --memory-gib 0.00001");
  CHECK(r.status != 0);
  CHECK(r.output.find("holds no sequence") != std::string::npos);
}

TEST_CASE("trained DMC checkpoints: bench decode sizes the batch by calibration, eval ppl scores a prepared split",
          "[inference][engine][cli]") {
  // a DMC model (random weights, its own decisions: ~half the tokens merge) saved as a checkpoint, with the
  // fixture tokenizer's vocabulary, and the fixture's prepared validation split as the text
  const auto w = tmp_dir("trained_dmc");
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = Tokenizer::load(fx().tok).vocab_size();
  auto m = Llama::random(c, 5, at::kFloat, at::kCPU, 0.2);
  m.config.dmc.enabled = true;
  m.config.dmc.init_val = 0.2;
  m.config.dmc.window = 4;
  m.save(w + "/model", at::kFloat);
  const std::string bench = std::string(DMC_BINARY) + " bench decode --model " + w +
                            "/model --prompt-len 200 --new-tokens 8 --page-size 4"
                            " --steps 4 --memory-gib 0.01 --prefill-check 0 --device cpu --calibrate 3";
  auto r = run(bench + " --policy vanilla,dmc --data " + fx().data + " --tokenizer " + fx().tok + " --json " + w +
               "/b.jsonl");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto rows = read_jsonl(w + "/b.jsonl");
  REQUIRE(rows.size() == 2);
  CHECK(rows[1]["decisions"] == "trained");
  CHECK(rows[1]["fill"] == "prefill");  // its slot counts come from its own decisions
  CHECK(rows[1]["prompts"] == fx().data);
  const double cal = rows[1]["calibrated_cr"].get<double>();
  CHECK(cal > 1.3);
  CHECK(rows[1]["achieved_cr"].get<double>() > 1.2);
  // the calibrated batch is larger than vanilla's at the same budget, but no larger than the ratio allows
  const double ratio = rows[1]["batch"].get<double>() / rows[0]["batch"].get<double>();
  CHECK(ratio > 1.15);
  CHECK(ratio < cal * 1.1);
  r = run(bench + " --policy dmc --text " + w + "/missing.txt");
  CHECK(r.status != 0);
  CHECK(r.output.find("--tokenizer") != std::string::npos);
  // eval ppl over the prepared validation split: parallel == incremental, and a tokenizer mismatch is refused
  const std::string ppl = std::string(DMC_BINARY) + " eval ppl --model " + w + "/model --tokenizer " + fx().tok +
                          " --data " + fx().data + " --seq-len 24 --max-tokens 200 --device cpu";
  r = run(ppl + " --json " + w + "/p.json");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(ppl + " --mode incremental --batch 3 --json " + w + "/i.json");
  REQUIRE(r.status == 0);
  auto par = nlohmann::json::parse(dmc::read_file(w + "/p.json")),
       inc = nlohmann::json::parse(dmc::read_file(w + "/i.json"));
  CHECK(par["tokens_scored"] == inc["tokens_scored"]);
  CHECK(std::abs(par["ppl"].get<double>() - inc["ppl"].get<double>()) / par["ppl"].get<double>() < 1e-4);
  CHECK(par["dmc_cr"].get<double>() > 1.2);
  r = run(ppl + " --text " + w + "/p.json");
  CHECK(r.status != 0);
  CHECK(r.output.find("one of --text") != std::string::npos);
}

TEST_CASE("decode CUDA-graph batch buckets: powers of two below the step, then its multiples, capped", "[inference]") {
  const std::vector<std::pair<int64_t, int64_t>> with8 = {
      {1, 1}, {2, 2}, {3, 4}, {4, 4}, {5, 8}, {8, 8}, {9, 16}, {111, 112}, {216, 216}, {217, 224}, {512, 512}};
  for (auto [n, b] : with8) {
    INFO("n " << n);
    CHECK(graph_bucket(n, 8, 512) == b);
  }
  CHECK(graph_bucket(497, 8, 500) == 500);  // capped by graph_max_batch, never below n
  CHECK(graph_bucket(500, 8, 500) == 500);
  CHECK(graph_bucket(3, 1, 512) == 3);  // step 1: exact sizes
  CHECK(graph_bucket(17, 16, 512) == 32);
  CHECK(graph_bucket(9, 16, 512) == 16);
}

// The one per-row state formula (what bench decode sizes equal-memory batches with) against what a Decoder
// actually allocates, for every policy.
TEST_CASE("decoder state bytes: rows x state_bytes_per_row + the free-page stack, every policy",
          "[inference][engine]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.max_position_embeddings = 100;
  c.dmc.window = 5;
  auto m = Llama::random(c, 1, at::kFloat, at::kCPU);
  for (const std::string pol : {"vanilla", "dmc", "tova", "h2o", "window"}) {
    for (int64_t page_size : {1, 16}) {
      DecoderOptions o;
      o.policy = parse_cache_policy(pol);
      o.max_seqs = 3;
      o.page_size = page_size;
      o.budget = 7;
      o.force_cr = pol == "dmc" ? 2 : 0;
      o.n_pages = 40;
      Decoder d(m, o);
      const int64_t rows = c.num_hidden_layers * o.max_seqs * c.num_key_value_heads;
      INFO(pol << " page_size " << page_size);
      // the free-page stack and its scratch entry; the eviction baselines' scratch row of slot metadata
      const int64_t scratch = evicts(o.policy) ? (o.budget + 1) * (8 + 4) : 0;
      CHECK(d.state_bytes() ==
            rows * Decoder::state_bytes_per_row(c, parse_cache_policy(pol), o.budget, page_size, m.dtype()) +
                (o.n_pages + 1) * 4 + scratch);
    }
  }
}

TEST_CASE("batched prefill: each padded row equals its prompt alone, every policy and chunk, and decodes on alike",
          "[inference][engine]") {
  torch::manual_seed(11);
  const std::vector<std::vector<int64_t>> prompts = {random_ids(23, 97, 0), random_ids(31, 97, 0),
                                                     random_ids(9, 97, 0)};
  struct Case {
    bool dmc_model;
    const char* policy;
    int64_t chunk;
    int64_t sinks = 2;
  };
  // window + sinks takes chunks of budget - sinks (6; from position 8 on, its banded form), or with no sinks at least
  // the budget (the masked form throughout)
  for (Case k : {Case{false, "vanilla", 0}, Case{true, "dmc", 0}, Case{false, "tova", 1}, Case{false, "tova", 7},
                 Case{false, "h2o", 1}, Case{false, "h2o", 64}, Case{false, "window", 5}, Case{false, "window", 12, 0},
                 Case{false, "window", 5, 0}}) {
    DYNAMIC_SECTION(k.policy << " chunk " << k.chunk << " sinks " << k.sinks) {
      auto m = engine_model(41, k.dmc_model);
      const auto& c = m.config;
      DecoderOptions o;
      o.policy = parse_cache_policy(k.policy);
      o.budget = 8;
      o.sinks = k.sinks;
      o.page_size = 4;
      o.prefill_chunk = std::max<int64_t>(1, k.chunk);
      o.max_seqs = 4;
      Decoder together(m, o);
      // a prompt's share of a batched prefill's working set: all of it, or for eviction a chunk plus the budget
      // (window + sinks, exact at any chunk, takes chunks of budget - sinks, or with no sinks of at least the budget)
      const int64_t chunk = o.policy != CachePolicy::Window ? o.prefill_chunk
                            : o.sinks > 0                  ? o.budget - o.sinks
                                                           : std::max(o.prefill_chunk, o.budget);
      CHECK(together.prefill_tokens_for(100) == (evicts(o.policy) ? chunk + o.budget : 100));
      CHECK(together.prefill_tokens_for(3) == 3);
      const std::vector<int64_t> slots = {2, 0, 3};  // not in order
      at::Tensor lt = together.prefill(slots, prompts);
      REQUIRE(lt.size(0) == 3);
      int64_t merged = 0;
      for (size_t i = 0; i < prompts.size(); ++i) {
        Decoder alone(m, o);
        at::Tensor la = alone.prefill(0, prompts[i]);
        INFO("row " << i);
        CHECK((la - lt[(int64_t)i]).abs().max().item<double>() < 1e-4);
        const int64_t T = (int64_t)prompts[i].size();
        for (int64_t l = 0; l < c.num_hidden_layers; ++l)
          for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
            CHECK(together.slots(l, slots[i], h) == alone.slots(l, 0, h));
            if (evicts(o.policy)) {
              CHECK(alone.slots(l, 0, h) == std::min(T, o.budget));
              auto a = alone.slot_positions(l, 0, h), b = together.slot_positions(l, slots[i], h);
              CHECK(std::set<int64_t>(a.begin(), a.end()) == std::set<int64_t>(b.begin(), b.end()));
            }
            merged += T - alone.slots(l, 0, h);
          }
        // decoding goes on alike (the decode state a prefill leaves is the row's own)
        int64_t next = la.argmax().item<int64_t>();
        for (int s = 0; s < 4; ++s) {
          at::Tensor a = alone.step({0}, {next})[0], b = together.step({slots[i]}, {next})[0];
          CHECK((a - b).abs().max().item<double>() < 1e-4);
          next = a.argmax().item<int64_t>();
        }
      }
      if (k.dmc_model) CHECK(merged > 0);
      // chunk 1 (every baseline) and window at any chunk: the same as decoding the prompt token by token
      if (evicts(o.policy) && (k.chunk == 1 || o.policy == CachePolicy::Window)) {
        Decoder stepped(m, o), filled(m, o);
        at::Tensor ls;
        for (int64_t id : prompts[1]) ls = stepped.step({0}, {id})[0];
        at::Tensor lf = filled.prefill(0, prompts[1]);
        CHECK((ls - lf).abs().max().item<double>() < 1e-4);
        for (int64_t l = 0; l < c.num_hidden_layers; ++l)
          for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
            auto a = stepped.slot_positions(l, 0, h), b = filled.slot_positions(l, 0, h);
            CHECK(std::set<int64_t>(a.begin(), a.end()) == std::set<int64_t>(b.begin(), b.end()));
          }
        int64_t next = ls.argmax().item<int64_t>();
        for (int s = 0; s < 6; ++s) {
          at::Tensor a = stepped.step({0}, {next})[0], b = filled.step({0}, {next})[0];
          CHECK((a - b).abs().max().item<double>() < 1e-4);
          next = a.argmax().item<int64_t>();
        }
      }
    }
  }
}

// A CUDA graph replays a step padded to its batch bucket (sequence -1 rows) at a fixed attention bound; pad_steps runs
// that padded step eagerly, so the reference ops' handling of padding rows (which the eviction baselines' graphs
// capture: their attention and eviction are ATen ops) is checked here on the CPU.
TEST_CASE("padded decode steps (the CUDA graphs' form) equal plain steps and leave other rows alone, every policy",
          "[inference][engine]") {
  torch::manual_seed(5);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t len : {3, 12, 7, 20, 9}) prompts.push_back(random_ids(len, 97, 0));
  for (const char* pol : {"vanilla", "dmc", "tova", "h2o", "window"}) {
    DYNAMIC_SECTION(pol) {
      auto m = engine_model(43, std::string(pol) == "dmc");
      const auto& c = m.config;
      DecoderOptions o;
      o.policy = parse_cache_policy(pol);
      o.budget = 8;
      o.sinks = 2;
      o.page_size = 4;
      o.max_seqs = 6;  // sequence 5 is never used: padding must not write to it either
      o.graph_batch_step = 4;
      DecoderOptions op = o;
      op.pad_steps = true;
      Decoder a(m, o), b(m, op);
      std::vector<int64_t> next;
      for (int64_t s = 0; s < 5; ++s) {
        at::Tensor la = a.prefill(s, prompts[s]), lb = b.prefill(s, prompts[s]);
        CHECK((la - lb).abs().max().item<double>() == 0);
        next.push_back(la.argmax().item<int64_t>());
      }
      // 3 sequences (bucket 4: one padding row), 5 (bucket 8: three), 2 (none), 1; the eviction rows cross the
      // budget on the way
      const std::vector<std::vector<int64_t>> phases = {{0, 1, 2}, {4, 0, 3, 1, 2}, {1, 3}, {2}};
      double worst = 0;
      for (int step = 0; step < 24; ++step) {
        const auto& seqs = phases[step / 6];
        std::vector<int64_t> ids;
        for (int64_t s : seqs) ids.push_back(next[s]);
        at::Tensor la = a.step(seqs, ids), lb = b.step(seqs, ids);
        REQUIRE(lb.size(0) == (int64_t)seqs.size());
        worst = std::max(worst, (la - lb).abs().max().item<double>());
        at::Tensor am = la.argmax(-1);
        for (size_t i = 0; i < seqs.size(); ++i) next[seqs[i]] = am[(int64_t)i].item<int64_t>();
      }
      CHECK(worst < 1e-4);
      for (int64_t s = 0; s < 6; ++s) {
        INFO("sequence " << s);
        CHECK(at::equal(a.slot_counts(s), b.slot_counts(s)));
        if (evicts(o.policy))
          for (int64_t l = 0; l < c.num_hidden_layers; ++l)
            for (int64_t h = 0; h < c.num_key_value_heads; ++h) CHECK(a.slot_positions(l, s, h) == b.slot_positions(l, s, h));
      }
      CHECK(b.slot_counts(5).sum().item<int64_t>() == 0);
      CHECK(a.cache().free_pages() == b.cache().free_pages());
      if (evicts(o.policy)) CHECK(a.slots(0, 3, 0) == o.budget);  // the longest row evicted
    }
  }
}

TEST_CASE("generate: stop ids end a sequence only after a token outside leading_ids", "[inference][engine]") {
  auto m = engine_model(33, false);
  torch::manual_seed(9);
  const std::vector<int64_t> prompt = random_ids(7, 97, 0);
  GenerateOptions go;
  go.stop_at_eos = false;
  go.sampling.temperature = 0;
  go.max_new_tokens = 24;
  const std::vector<int64_t> g = generate(m, {prompt}, go).tokens[0];  // no stops
  REQUIRE(g.size() == 24);
  // stop at the first greedy token: without leading ids that is one token
  go.stop_ids = {g[0], g[2]};
  go.stop_ids_for = {true};
  CHECK(generate(m, {prompt}, go).tokens[0] == std::vector<int64_t>{g[0]});
  // with g[0] a leading id, the first stop id after another token ends it
  go.leading_ids = {g[0]};
  size_t end = g.size();
  bool text = false;
  for (size_t i = 0; i < g.size() && end == g.size(); ++i) {
    if (g[i] != g[0]) text = true;
    if (text && (g[i] == g[0] || g[i] == g[2])) end = i + 1;
  }
  INFO("greedy tokens end at " << end);
  CHECK(end > 1);
  CHECK(generate(m, {prompt}, go).tokens[0] == std::vector<int64_t>(g.begin(), g.begin() + (long)end));
}
