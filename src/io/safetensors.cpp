#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"

namespace dmc::io {
using json = nlohmann::json;

at::ScalarType dtype_from_safetensors(const std::string& s, const std::string& where) {
  static const std::map<std::string, at::ScalarType> m = {
      {"BF16", at::kBFloat16}, {"F16", at::kHalf},  {"F32", at::kFloat}, {"F64", at::kDouble}, {"I64", at::kLong},
      {"I32", at::kInt},       {"I16", at::kShort}, {"I8", at::kChar},   {"U8", at::kByte},    {"BOOL", at::kBool}};
  auto it = m.find(s);
  if (it == m.end())
    fail(where, ": unknown dtype '", s, "', expected one of BF16, F16, F32, F64, I64, I32, I16, I8, U8, BOOL");
  return it->second;
}

std::string dtype_to_safetensors(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: fail("safetensors: cannot store dtype ", c10::toString(t));
  }
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->self_ = f;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path, ": file does not exist");
  if (S_ISDIR(st.st_mode)) fail(path, ": is a directory, expected a safetensors file");
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, ": cannot be read (", std::strerror(errno), ")");
  size_t size = (size_t)st.st_size;
  if (size < 8) {
    ::close(fd);
    fail(path, ": truncated file (", size, " bytes), expected at least the 8-byte header length");
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail(path, ": mmap failed (", std::strerror(errno), ")");
  f->map_ = p;
  f->map_size_ = size;

  uint64_t n = 0;
  std::memcpy(&n, p, 8);  // little-endian hosts only (x86_64, aarch64)
  if (n > size - 8)
    fail(path, ": header length ", n, " is beyond the end of the file (", size - 8, " bytes follow it)");
  json header;
  try {
    header = json::parse(static_cast<const char*>(p) + 8, static_cast<const char*>(p) + 8 + n);
  } catch (const std::exception& e) {
    fail(path, ": header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) fail(path, ": header is not a JSON object");
  f->data_offset_ = 8 + n;
  const int64_t data_size = (int64_t)(size - f->data_offset_);

  std::vector<std::pair<int64_t, std::string>> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) fail(path, ": __metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) f->metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    const std::string where = cat(path, ": tensor '", name, "'");
    const json& e = *it;
    if (!e.is_object()) fail(where, ": entry is not an object");
    if (!e.contains("dtype") || !e["dtype"].is_string()) fail(where, ": field 'dtype' missing or not a string");
    if (!e.contains("shape") || !e["shape"].is_array()) fail(where, ": field 'shape' missing or not an array");
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
      fail(where, ": field 'data_offsets' must be [begin, end]");
    TensorInfo ti;
    ti.dtype = dtype_from_safetensors(e["dtype"].get<std::string>(), where);
    int64_t numel = 1;
    bool overflow = false;  // checked arithmetic: a crafted shape must not wrap around to a few bytes
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail(where, ": field 'shape' must hold non-negative integers");
      ti.shape.push_back(d.get<int64_t>());
      overflow = __builtin_mul_overflow(numel, ti.shape.back(), &numel) || overflow;
    }
    int64_t want = 0;
    if (overflow || __builtin_mul_overflow(numel, (int64_t)c10::elementSize(ti.dtype), &want))
      fail(where, ": field 'shape' ", e["shape"].dump(), " is too large (its byte size overflows 64 bits)");
    for (const auto& o : e["data_offsets"])
      if (!o.is_number_integer() || o.get<int64_t>() < 0)
        fail(where, ": field 'data_offsets' must hold non-negative integers");
    ti.begin = e["data_offsets"][0].get<int64_t>();
    ti.end = e["data_offsets"][1].get<int64_t>();
    if (ti.begin > ti.end) fail(where, ": data_offsets begin ", ti.begin, " > end ", ti.end);
    if (ti.end > data_size)
      fail(where, ": data_offsets [", ti.begin, ", ", ti.end, "] out of range, the data section has ", data_size,
           " bytes (truncated file?)");
    if (ti.end - ti.begin != want)
      fail(where, ": data_offsets span ", ti.end - ti.begin, " bytes but dtype ", e["dtype"].get<std::string>(),
           " and shape need ", want);
    spans.emplace_back(ti.begin, name);
    f->infos_[name] = std::move(ti);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    const auto& a = f->infos_[spans[i - 1].second];
    const auto& b = f->infos_[spans[i].second];
    if (b.begin < a.end && b.end > b.begin && a.end > a.begin)
      fail(path, ": tensors '", spans[i - 1].second, "' and '", spans[i].second, "' overlap (bytes ", b.begin, "..",
           std::min(a.end, b.end), ")");
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> v;
  for (const auto& kv : infos_) v.push_back(kv.first);
  return v;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) fail(path_, ": missing tensor '", name, "'");
  return it->second;
}

at::Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  auto keep = self_.lock();
  char* base = static_cast<char*>(map_) + data_offset_ + ti.begin;
  return at::from_blob(
      base, ti.shape, [keep](void*) {}, at::TensorOptions().dtype(ti.dtype));
}

TensorStore TensorStore::open_dir(const std::string& dir) {
  TensorStore s;
  s.dir_ = dir;
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) fail(dir, ": model directory does not exist");
  if (!S_ISDIR(st.st_mode)) fail(dir, ": is not a directory, expected a model directory");
  const std::string index = dir + "/model.safetensors.index.json";
  const std::string single = dir + "/model.safetensors";
  if (::stat(index.c_str(), &st) == 0) {
    json j;
    std::ifstream in(index);
    if (!in) fail(index, ": cannot be read");
    try {
      in >> j;
    } catch (const std::exception& e) {
      fail(index, ": not valid JSON (", e.what(), ")");
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index, ": field 'weight_map' missing or not an object");
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) fail(index, ": weight_map['", it.key(), "'] is not a file name");
      const std::string file = it->get<std::string>();
      if (file.find('/') != std::string::npos)
        fail(index, ": weight_map['", it.key(), "'] names a path, expected a file name");
      if (!s.files_.count(file)) s.files_[file] = SafetensorsFile::open(dir + "/" + file);
      if (!s.files_[file]->has(it.key()))
        fail(dir + "/" + file, ": missing tensor '", it.key(), "' (listed in model.safetensors.index.json)");
      s.where_[it.key()] = file;
    }
  } else if (::stat(single.c_str(), &st) == 0) {
    s.files_["model.safetensors"] = SafetensorsFile::open(single);
    for (const auto& n : s.files_["model.safetensors"]->names()) s.where_[n] = "model.safetensors";
  } else {
    fail(dir, ": no model.safetensors or model.safetensors.index.json");
  }
  return s;
}

at::Tensor TensorStore::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor '", name, "'");
  return files_.at(it->second)->get(name);
}

const TensorInfo& TensorStore::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor '", name, "'");
  return files_.at(it->second)->info(name);
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> v;
  for (const auto& kv : where_) v.push_back(kv.first);
  return v;
}

std::string TensorStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor '", name, "'");
  return dir_ + "/" + it->second;
}

std::vector<std::string> TensorStore::files() const {
  std::vector<std::string> v;
  for (const auto& kv : files_) v.push_back(dir_ + "/" + kv.first);
  return v;
}

static int64_t tensor_bytes(const at::Tensor& t) { return t.numel() * (int64_t)t.element_size(); }

void save_file(const std::string& path, const NamedTensors& tensors,
               const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  int64_t off = 0;
  for (const auto& [name, t] : tensors) {
    json e;
    e["dtype"] = dtype_to_safetensors(t.scalar_type());
    e["shape"] = t.sizes().vec();
    e["data_offsets"] = {off, off + tensor_bytes(t)};
    off += tensor_bytes(t);
    header[name] = e;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h.push_back(' ');
  AtomicFile out(path);
  uint64_t n = h.size();
  out.write(&n, 8);
  out.write(h);
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const size_t bytes = (size_t)tensor_bytes(c);
    if (bytes) out.write(c.data_ptr(), bytes);
  }
  out.commit();
}

void save_dir(const std::string& dir, const NamedTensors& tensors, int64_t max_shard_bytes,
              const std::map<std::string, std::string>& metadata) {
  int64_t total = 0;
  for (const auto& nt : tensors) total += tensor_bytes(nt.second);
  if (total <= max_shard_bytes) {
    save_file(dir + "/model.safetensors", tensors, metadata);
    return;
  }
  std::vector<NamedTensors> shards(1);
  int64_t cur = 0;
  for (const auto& nt : tensors) {
    int64_t b = tensor_bytes(nt.second);
    if (cur > 0 && cur + b > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(nt);
    cur += b;
  }
  json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    save_file(dir + "/" + name, shards[i], metadata);
    for (const auto& nt : shards[i]) index["weight_map"][nt.first] = name;
  }
  const std::string ipath = dir + "/model.safetensors.index.json";
  write_file_atomic(ipath, index.dump(2) + "\n");
}

}  // namespace dmc::io
