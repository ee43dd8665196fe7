// GGUF (llama.cpp's model file), versions 2 and 3: read, memory-mapped, and dequantized to fp32.
//
// File layout (little-endian):
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x (string key | u32 value_type | value)         string = u64 length + bytes (no terminator)
//       value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
//                    9 array (u32 item type | u64 count | items), 10 u64, 11 i64, 12 f64
//   tensor_count x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset)
//   padding to `general.alignment` (default 32) | tensor data (each offset relative to here, aligned)
// ne[0] is the fastest-varying dimension: a GGUF [ne0, ne1] matrix is a torch [ne1, ne0] tensor.
//
// Quantized types store blocks of `block_size` values in `type_size` bytes along ne[0]; dequantize() expands
// F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K with the arithmetic of ggml's reference
// (and of the `gguf` Python package, which the tests hold it to bit for bit); any other type is a dmc::Error
// naming it. Every structural check (magic, version, counts, strings, value types, dims, offsets, alignment,
// data past the end) raises dmc::Error naming the file and the key or tensor.
//
//   auto g = dmc::io::GgufFile::open("model.gguf");
//   int64_t layers = g->metadata()["llama.block_count"];
//   at::Tensor w = g->dequantize(*g->find("blk.0.attn_q.weight"));   // [ne1, ne0] fp32
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dmc::io {

struct GgmlType {
  uint32_t id = 0;
  const char* name = "?";
  int64_t block_size = 1, type_size = 4;  // values a block, bytes a block
  bool supported = false;                 // dequantize() expands it
};
// The type table entry of a ggml type id; nullptr when the id is unknown to dmc.
const GgmlType* ggml_type(uint32_t id);

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order (ne[0] fastest)
  const GgmlType* type = nullptr;
  uint64_t offset = 0;  // relative to the data section
  int64_t nbytes = 0;
  std::vector<int64_t> torch_shape() const { return std::vector<int64_t>(ne.rbegin(), ne.rend()); }
  int64_t numel() const;
};

class GgufFile {
 public:
  static std::shared_ptr<GgufFile> open(const std::string& path);
  ~GgufFile();

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  // Metadata as JSON (numbers, bools, strings, arrays); value_type() keeps the GGUF type of each key.
  const nlohmann::json& metadata() const { return meta_; }
  uint32_t value_type(const std::string& key) const;
  bool has(const std::string& key) const { return meta_.contains(key); }
  // Typed reads with errors naming the file and the key.
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key) const;
  double get_float(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback = "") const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find(const std::string& name) const;
  const uint8_t* data(const GgufTensor& t) const { return base_ + data_offset_ + t.offset; }
  // fp32 CPU tensor of torch_shape().
  at::Tensor dequantize(const GgufTensor& t) const;

 private:
  GgufFile() = default;
  std::string path_;
  uint32_t version_ = 0;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  size_t data_offset_ = 0;
  nlohmann::json meta_;
  std::map<std::string, uint32_t> types_;
  std::vector<GgufTensor> tensors_;
};

// Whether a model or tokenizer path names a GGUF file (by its ".gguf" suffix): the one test commands use to choose
// the GGUF reader over an HF directory.
inline bool is_gguf_path(const std::string& path) {
  return path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
}

// Dequantizes n values (a multiple of the type's block size) of `type` from src into dst.
void dequantize_row(const GgmlType& type, const uint8_t* src, float* dst, int64_t n);

}  // namespace dmc::io
