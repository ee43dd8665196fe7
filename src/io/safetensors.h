// Safetensors read (memory-mapped) and write, single file or sharded with model.safetensors.index.json.
//
// File layout: [u64 little-endian N][N bytes of JSON header][data bytes]. The header maps each tensor name to
//   {"dtype": "BF16"|"F16"|"F32"|"F64"|"I64"|"I32"|"I16"|"I8"|"U8"|"BOOL", "shape": [d0, d1, ...],
//    "data_offsets": [begin, end]}      (offsets relative to the start of the data bytes)
// plus an optional "__metadata__": {string: string}. Every check on the header (length, JSON, dtype, shape,
// offsets in range, sizes equal to numel * element size, no two tensors overlapping) raises dmc::Error naming
// the file and the tensor.
//
// Reading maps the file (MAP_PRIVATE) and returns CPU tensors that alias the mapping: no copy is made until
// the caller converts dtype or device. Each tensor keeps the mapping alive.
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dmc::io {

struct TensorInfo {
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // byte offsets into the data section
};

class SafetensorsFile {
 public:
  // Opens and validates `path`. Throws dmc::Error on any malformed header.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return infos_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;
  // CPU tensor aliasing the mapping (no copy).
  at::Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_offset_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// All tensors of a checkpoint directory: model.safetensors, or the shards that
// model.safetensors.index.json lists (its "weight_map" maps each name to a shard file).
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir);
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  // Throws dmc::Error "<dir>: missing tensor '<name>'" when absent.
  at::Tensor get(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;
  std::string file_of(const std::string& name) const;
  const std::string& dir() const { return dir_; }
  std::vector<std::string> files() const;

 private:
  std::string dir_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> files_;  // by file name
  std::map<std::string, std::string> where_;                       // tensor name -> file name
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes one safetensors file (via a temporary file and rename). Tensors are written in the given order
// as contiguous CPU bytes; the header is padded to a multiple of 8 bytes.
void save_file(const std::string& path, const NamedTensors& tensors,
               const std::map<std::string, std::string>& metadata = {});

// Writes model.safetensors, or, when the total exceeds max_shard_bytes, model-0000i-of-0000N.safetensors
// plus model.safetensors.index.json, into the existing directory `dir`.
void save_dir(const std::string& dir, const NamedTensors& tensors, int64_t max_shard_bytes,
              const std::map<std::string, std::string>& metadata = {});

// "BF16" <-> at::kBFloat16, ...
at::ScalarType dtype_from_safetensors(const std::string& s, const std::string& where);
std::string dtype_to_safetensors(at::ScalarType t);

}  // namespace dmc::io
