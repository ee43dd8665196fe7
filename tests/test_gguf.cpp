// GGUF: dmc's reader and dequantizers against the `gguf` PyPI package (llama.cpp's own Python library), which
// writes the files and dequantizes them in the test (tests/reference/gguf_oracle.py); and every malformed-file case
// of the real-checkpoint issue, each a clear error naming the file and the field.
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/util.h"
#include "helpers.h"
#include "io/gguf.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
bool have_gguf() {
  static int ok = -1;
  if (ok < 0) ok = run(python() + " -c 'import gguf, numpy'").status == 0;
  return ok == 1;
}
std::string gguf_oracle(const std::string& what, const std::string& dir) {
  auto r = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/gguf_oracle.py " + what + " " + dir);
  INFO(r.output);
  REQUIRE(r.status == 0);
  return dir;
}
std::string bytes_of(const std::string& path) { return read_file(path); }
void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream out(path, std::ios::binary);
  out << b;
}
// The position of tensor `name`'s info record (its u64 name length) in a GGUF file's bytes.
size_t tensor_info_at(const std::string& b, const std::string& name) {
  std::string pat(8, '\0');
  const uint64_t n = name.size();
  std::memcpy(pat.data(), &n, 8);
  pat += name;
  const size_t at = b.rfind(pat);  // the tensor infos come after the metadata
  REQUIRE(at != std::string::npos);
  return at;
}
}  // namespace

TEST_CASE("GGUF: every supported quant type dequantizes bit for bit as the gguf package does", "[io][gguf]") {
  if (!have_gguf()) SKIP("python package gguf not available: " + python());
  const std::string d = gguf_oracle("quants", tmp_dir("gguf-q"));
  auto g = io::GgufFile::open(d + "/quants.gguf");
  CHECK(g->version() == 3);
  std::vector<std::string> seen;
  for (const auto& t : g->tensors()) {
    INFO(t.name << " " << t.type->name);
    at::Tensor got = g->dequantize(t);
    const std::string want = bytes_of(d + "/" + t.name + ".f32");
    REQUIRE(want.size() == (size_t)got.numel() * 4);
    CHECK(std::memcmp(want.data(), got.data_ptr<float>(), want.size()) == 0);
    CHECK(got.size(0) == 3);  // torch shape = reversed GGUF dims
    seen.push_back(t.type->name);
  }
  for (const char* want : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"})
    CHECK(std::find(seen.begin(), seen.end(), std::string(want)) != seen.end());
}

TEST_CASE("GGUF: metadata of every value type, tensor shapes and data", "[io][gguf]") {
  if (!have_gguf()) SKIP("python package gguf not available: " + python());
  const std::string d = gguf_oracle("meta", tmp_dir("gguf-m"));
  auto g = io::GgufFile::open(d + "/meta.gguf");
  const json want = json::parse(bytes_of(d + "/meta.json"));
  for (auto it = want.begin(); it != want.end(); ++it) {
    INFO(it.key());
    REQUIRE(g->has(it.key()));
    CHECK(g->metadata()[it.key()] == it.value());
  }
  CHECK(g->value_type("t.u8") == 0);
  CHECK(g->value_type("t.f64") == 12);
  CHECK(g->get_int("t.i64") == -(int64_t(1) << 40));
  CHECK(g->get_string("t.str") == "h\xc3\xa9llo");
  require_error([&] { g->get_int("t.str"); }, {"meta.gguf", "t.str", "must be an integer"});
  require_error([&] { g->get_int("absent.key"); }, {"meta.gguf", "absent.key", "missing"});
  const auto* x = g->find("x");
  REQUIRE(x);
  CHECK(x->torch_shape() == std::vector<int64_t>{2, 16});
  CHECK(at::equal(g->dequantize(*x), at::arange(32, at::kFloat).view({2, 16})));
  // GGUF v2 (llama.cpp before big-endian files) has v3's little-endian layout: the same bytes labelled version 2
  // read the same
  std::string v2 = bytes_of(d + "/meta.gguf");
  REQUIRE(v2[4] == 3);
  v2[4] = 2;
  write_bytes(d + "/meta_v2.gguf", v2);
  auto g2 = io::GgufFile::open(d + "/meta_v2.gguf");
  CHECK(g2->metadata() == g->metadata());
  CHECK(at::equal(g2->dequantize(*g2->find("x")), g->dequantize(*x)));
}

TEST_CASE("GGUF: malformed files are clear errors naming the file and the field", "[io][gguf]") {
  if (!have_gguf()) SKIP("python package gguf not available: " + python());
  const std::string d = gguf_oracle("quants", tmp_dir("gguf-bad"));
  gguf_oracle("meta", d);
  const std::string good = bytes_of(d + "/meta.gguf"), f = d + "/bad.gguf";
  auto expect = [&](const std::string& bytes, const std::vector<std::string>& parts) {
    write_bytes(f, bytes);
    require_error([&] { io::GgufFile::open(f); }, parts);
  };
  expect(good.substr(0, 100), {"bad.gguf", "truncated"});
  expect(good.substr(0, 10), {"bad.gguf", "truncated"});
  expect("GGML" + good.substr(4), {"bad.gguf", "not a GGUF file"});
  std::string v = good;
  v[4] = 4;
  expect(v, {"bad.gguf", "version 4", "expected 2 or 3"});
  v[4] = 1;  // GGUF v1: 32-bit counts, a layout dmc does not read
  expect(v, {"bad.gguf", "version 1", "expected 2 or 3"});
  // tensor x: name | u32 n_dims | u64 ne[2] | u32 type | u64 offset
  const size_t xi = tensor_info_at(good, "x") + 8 + 1;
  std::string t = good;
  t[xi + 4 + 16] = 99;
  expect(t, {"bad.gguf", "tensor 'x'", "unknown ggml type id 99"});
  std::string o = good;
  o[xi + 4 + 16 + 4] = 4;
  expect(o, {"bad.gguf", "tensor 'x'", "offset 4", "alignment 32"});
  expect(good.substr(0, good.size() - 8), {"bad.gguf", "tensor 'x'", "past the end of the file"});
  std::string k = good;
  const size_t kv = good.find("t.u8") + 4;  // the value type after the key
  k[kv] = 42;
  expect(k, {"bad.gguf", "t.u8", "unknown value type 42"});
  // a known type dmc does not expand: Q4_K relabelled Q2_K (smaller blocks, so still inside the file)
  std::string q = bytes_of(d + "/quants.gguf");
  q[tensor_info_at(q, "q_Q4_K") + 8 + 6 + 4 + 16] = 10;
  write_bytes(f, q);
  auto g = io::GgufFile::open(f);
  require_error([&] { g->dequantize(*g->find("q_Q4_K")); }, {"bad.gguf", "q_Q4_K", "Q2_K", "cannot be dequantized"});
  require_error([&] { io::GgufFile::open(d + "/missing.gguf"); }, {"missing.gguf", "cannot open"});
}
