// safetensors and config.json: round trips, memory mapping, and every malformed-input case named in the
// foundation issue, each expected to fail with a message naming the file and the field.
#include <torch/torch.h>

#include <atomic>
#include <thread>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/util.h"
#include "helpers.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/llama_config.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
// Raw file: [u64 n][header][data].
void write_raw(const std::string& path, const std::string& header, const std::string& data, int64_t claimed_n = -1) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = claimed_n >= 0 ? (uint64_t)claimed_n : header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}
std::string one_tensor_header(const std::string& dtype, std::vector<int64_t> shape, int64_t b, int64_t e) {
  json h;
  h["w"] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {b, e}}};
  return h.dump();
}
}  // namespace

TEST_CASE("safetensors round trip keeps values, dtypes and shapes", "[io]") {
  const auto dir = tmp_dir("st");
  torch::manual_seed(0);
  io::NamedTensors ts = {{"a", torch::randn({3, 5}).to(at::kBFloat16)},
                         {"b", torch::randn({7}).to(at::kHalf)},
                         {"c", torch::randn({2, 3, 4})},
                         {"d", torch::arange(10, at::kLong)}};
  io::save_file(dir + "/x.safetensors", ts, {{"format", "pt"}});
  auto f = io::SafetensorsFile::open(dir + "/x.safetensors");
  REQUIRE(f->names().size() == 4);
  CHECK(f->metadata().at("format") == "pt");
  for (const auto& [name, t] : ts) {
    at::Tensor g = f->get(name);
    CHECK(g.scalar_type() == t.scalar_type());
    CHECK(g.sizes() == t.sizes());
    CHECK(torch::equal(g, t));
  }
  // memory-mapped: two reads alias the same bytes of the mapping (no copy)
  CHECK(f->get("c").data_ptr() == f->get("c").data_ptr());
  // the header is 8-byte aligned
  std::ifstream in(dir + "/x.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  CHECK(n % 8 == 0);
}

TEST_CASE("sharded save writes an index that TensorStore reads back", "[io]") {
  const auto dir = tmp_dir("shard");
  io::NamedTensors ts;
  for (int i = 0; i < 6; ++i) ts.emplace_back("t" + std::to_string(i), torch::full({100}, (float)i));
  io::save_dir(dir, ts, /*max_shard_bytes=*/900);  // 400 bytes each -> 3 shards of 2
  CHECK(fs::exists(dir + "/model.safetensors.index.json"));
  CHECK(fs::exists(dir + "/model-00003-of-00003.safetensors"));
  CHECK_FALSE(fs::exists(dir + "/model.safetensors"));
  auto st = io::TensorStore::open_dir(dir);
  CHECK(st.names().size() == 6);
  CHECK(st.files().size() == 3);
  for (int i = 0; i < 6; ++i) CHECK(st.get("t" + std::to_string(i))[5].item<float>() == (float)i);
  auto idx = json::parse(std::ifstream(dir + "/model.safetensors.index.json"));
  CHECK(idx["metadata"]["total_size"].get<int64_t>() == 2400);
}

TEST_CASE("bad safetensors: truncated file", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  write_text(dir + "/t.safetensors", "abc");
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); }, {"t.safetensors", "truncated"});
  // a valid header whose data was cut off
  write_raw(dir + "/u.safetensors", one_tensor_header("F32", {4}, 0, 16), std::string(8, '\0'));
  require_error([&] { io::SafetensorsFile::open(dir + "/u.safetensors"); }, {"u.safetensors", "'w'", "out of range"});
}

TEST_CASE("bad safetensors: header length beyond the file", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  write_raw(dir + "/t.safetensors", "{}", "", /*claimed_n=*/1000000);
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); }, {"t.safetensors", "header length 1000000"});
}

TEST_CASE("bad safetensors: header that is not JSON", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  write_raw(dir + "/t.safetensors", "{\"w\": [1, 2", "");
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); }, {"t.safetensors", "not valid JSON"});
}

TEST_CASE("bad safetensors: offsets out of range", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  write_raw(dir + "/t.safetensors", one_tensor_header("F32", {4}, 8, 24), std::string(16, '\0'));
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); },
                {"t.safetensors", "'w'", "data_offsets", "out of range"});
}

TEST_CASE("bad safetensors: offsets that disagree with dtype and shape", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  write_raw(dir + "/t.safetensors", one_tensor_header("F32", {4}, 0, 12), std::string(16, '\0'));
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); }, {"t.safetensors", "'w'", "need 16"});
}

TEST_CASE("bad safetensors: overlapping tensors", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  json h;
  h["a"] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}};
  h["b"] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {8, 24}}};
  write_raw(dir + "/t.safetensors", h.dump(), std::string(24, '\0'));
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); }, {"t.safetensors", "'a'", "'b'", "overlap"});
}

TEST_CASE("bad safetensors: unknown dtype", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  write_raw(dir + "/t.safetensors", one_tensor_header("F8_E9M9", {4}, 0, 4), std::string(4, '\0'));
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); },
                {"t.safetensors", "'w'", "unknown dtype 'F8_E9M9'"});
}

TEST_CASE("bad safetensors: entry missing a field", "[io][bad]") {
  const auto dir = tmp_dir("bad");
  json h;
  h["w"] = {{"dtype", "F32"}, {"data_offsets", {0, 4}}};
  write_raw(dir + "/t.safetensors", h.dump(), std::string(4, '\0'));
  require_error([&] { io::SafetensorsFile::open(dir + "/t.safetensors"); }, {"t.safetensors", "'w'", "'shape'"});
}

// A small valid model directory written by dmc, to corrupt in the cases below.
static std::string small_model_dir(const std::string& tag) {
  const auto dir = tmp_dir(tag) + "/m";
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 1;
  c.vocab_size = 64;
  Llama::random(c, 1, at::kFloat, at::kCPU).save(dir, at::kFloat);
  return dir;
}

TEST_CASE("bad model dir: missing tensor", "[io][bad]") {
  const auto dir = small_model_dir("miss");
  auto st = io::TensorStore::open_dir(dir);
  io::NamedTensors keep;
  for (const auto& n : st.names())
    if (n != "model.layers.0.mlp.up_proj.weight") keep.emplace_back(n, st.get(n).clone());
  io::save_file(dir + "/model.safetensors", keep);
  require_error([&] { Llama::load(dir, at::kFloat, at::kCPU); },
                {dir, "missing tensor 'model.layers.0.mlp.up_proj.weight'"});
}

TEST_CASE("bad model dir: shape that disagrees with config.json", "[io][bad]") {
  const auto dir = small_model_dir("shape");
  auto j = json::parse(std::ifstream(dir + "/config.json"));
  j["intermediate_size"] = 100;
  std::ofstream(dir + "/config.json") << j.dump();
  require_error([&] { Llama::load(dir, at::kFloat, at::kCPU); },
                {"model.safetensors", "model.layers.0.mlp.gate_proj.weight", "[344, 128]", "[100, 128]"});
}

TEST_CASE("bad config.json: missing field", "[io][bad]") {
  const auto dir = small_model_dir("cfgmiss");
  auto j = json::parse(std::ifstream(dir + "/config.json"));
  j.erase("hidden_size");
  std::ofstream(dir + "/config.json") << j.dump();
  require_error([&] { Llama::load(dir, at::kFloat, at::kCPU); }, {"config.json", "missing field 'hidden_size'"});
}

TEST_CASE("bad config.json: field of the wrong type", "[io][bad]") {
  const auto dir = small_model_dir("cfgtype");
  auto j = json::parse(std::ifstream(dir + "/config.json"));
  j["num_attention_heads"] = "four";
  std::ofstream(dir + "/config.json") << j.dump();
  require_error([&] { Llama::load(dir, at::kFloat, at::kCPU); },
                {"config.json", "'num_attention_heads'", "must be an integer", "\"four\""});
  j["num_attention_heads"] = 4;
  j["rms_norm_eps"] = true;
  std::ofstream(dir + "/config.json") << j.dump();
  require_error([&] { Llama::load(dir, at::kFloat, at::kCPU); }, {"config.json", "'rms_norm_eps'", "must be a number"});
}

TEST_CASE("bad config.json: not JSON, inconsistent heads, unsupported variants", "[io][bad]") {
  const auto dir = tmp_dir("cfg");
  write_text(dir + "/config.json", "{ hidden_size: 3");
  require_error([&] { LlamaConfig::load(dir + "/config.json"); }, {"config.json", "not valid JSON"});
  json j = LlamaConfig::preset("tiny").to_json();
  j["num_key_value_heads"] = 3;
  require_error([&] { LlamaConfig::from_json(j, "c.json"); }, {"c.json", "'num_key_value_heads'", "divide"});
  j = LlamaConfig::preset("tiny").to_json();
  j["hidden_act"] = "gelu";
  require_error([&] { LlamaConfig::from_json(j, "c.json"); }, {"c.json", "'hidden_act'", "silu"});
  j = LlamaConfig::preset("tiny").to_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  require_error([&] { LlamaConfig::from_json(j, "c.json"); }, {"c.json", "rope_scaling", "'yarn'"});
}

TEST_CASE("bad paths: missing and unreadable", "[io][bad]") {
  const auto dir = tmp_dir("paths");
  require_error([&] { Llama::load(dir + "/nope", at::kFloat, at::kCPU); }, {dir + "/nope", "does not exist"});
  require_error([&] { io::SafetensorsFile::open(dir + "/nope.safetensors"); }, {"nope.safetensors", "does not exist"});
  // a directory where a file is expected cannot be read as one (tests run as root, so permissions would not do)
  fs::create_directories(dir + "/m/config.json");
  require_error([&] { LlamaConfig::load(dir + "/m/config.json"); }, {"config.json", "is a directory"});
  fs::create_directories(dir + "/d.safetensors");
  require_error([&] { io::SafetensorsFile::open(dir + "/d.safetensors"); }, {"d.safetensors", "is a directory"});
  require_error([&] { io::TensorStore::open_dir(dir); }, {dir, "no model.safetensors"});
}

TEST_CASE("config.json round trip and the HF defaults", "[io]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.eos_token_ids = {2, 7};
  auto back = LlamaConfig::from_json(c.to_json(), "x");
  CHECK(back.to_json() == c.to_json());
  json minimal = {{"vocab_size", 10},
                  {"hidden_size", 16},
                  {"intermediate_size", 20},
                  {"num_hidden_layers", 1},
                  {"num_attention_heads", 4}};
  auto m = LlamaConfig::from_json(minimal, "x");
  CHECK(m.num_key_value_heads == 4);
  CHECK(m.head_dim == 4);
  CHECK(m.rms_norm_eps == Approx(1e-6));
  CHECK(m.rope_theta == 10000.0);
  CHECK_FALSE(m.tie_word_embeddings);
}

TEST_CASE("model save/load round trip, single file and sharded, all dtypes", "[io]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  auto m = Llama::random(c, 3, at::kFloat, at::kCPU);
  const auto root = tmp_dir("rt");
  for (auto dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t shard : {int64_t(1) << 40, int64_t(200000)}) {
      const std::string dir = root + "/m" + std::to_string((int)dt) + "_" + std::to_string(shard);
      m.save(dir, dt, shard);
      CHECK(fs::exists(dir + "/model.safetensors.index.json") == (shard < (1 << 20)));
      auto back = Llama::load(dir, at::kFloat, at::kCPU);
      auto a = m.hf_tensors(), b = back.hf_tensors();
      REQUIRE(a.size() == b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        CHECK(a[i].first == b[i].first);
        CHECK(torch::equal(a[i].second.to(dt).to(at::kFloat), b[i].second));
      }
    }
  }
  // an existing directory is not overwritten by accident
  require_error(
      [&] {
        m.save(root + "/m" + std::to_string((int)at::kFloat) + "_" + std::to_string(int64_t(1) << 40), at::kFloat);
      },
      {"already exists"});
}

TEST_CASE("parallel_for: every index once on any thread count, progress, the first error rethrown", "[common]") {
  for (int64_t threads : {1, 2, 7}) {
    for (bool with_progress : {false, true}) {
      INFO("threads " << threads << " progress " << with_progress);
      std::vector<std::atomic<int>> hits(1000);
      int64_t last = -1;
      std::function<void(int64_t)> prog;
      if (with_progress) prog = [&](int64_t done) { last = done; };
      dmc::parallel_for(
          1000, threads,
          [&](int64_t i) {
            if (i % 97 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(3));
            hits[i].fetch_add(1);
          },
          prog);
      for (auto& h : hits) CHECK(h.load() == 1);
      if (with_progress) CHECK(last <= 1000);
      // an exception in one call comes back to the caller; the other threads stop taking indices
      std::atomic<int64_t> ran{0};
      CHECK_THROWS_WITH(dmc::parallel_for(
                            500, threads,
                            [&](int64_t i) {
                              ran.fetch_add(1);
                              if (i == 3) throw std::runtime_error("index 3 failed");
                            },
                            prog),
                        "index 3 failed");
      CHECK(ran.load() <= 500);
    }
  }
  dmc::parallel_for(0, 2, [](int64_t) { FAIL("no index for n = 0"); });
}
