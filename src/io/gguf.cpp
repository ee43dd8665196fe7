// GGUF reader and dequantization (see gguf.h). The block formats follow ggml's reference dequantizers
// (ggml-quants.c); the arithmetic order of each type matches the `gguf` Python package's numpy forms, so that
// the two agree bit for bit (this file is compiled without floating-point contraction: no fused multiply-adds).
#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <c10/util/Half.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace dmc::io {
using json = nlohmann::json;

namespace {
const GgmlType kTypes[] = {
    {0, "F32", 1, 4, true},          {1, "F16", 1, 2, true},        {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},       {6, "Q5_0", 32, 22, true},     {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},       {9, "Q8_1", 32, 36, false},    {10, "Q2_K", 256, 84, false},
    {11, "Q3_K", 256, 110, false},   {12, "Q4_K", 256, 144, true},  {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},    {15, "Q8_K", 256, 292, false}, {20, "IQ4_NL", 32, 18, false},
    {23, "IQ4_XS", 256, 136, false}, {24, "I8", 1, 1, false},       {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},        {27, "I64", 1, 8, false},      {28, "F64", 1, 8, false},
    {30, "BF16", 1, 2, true},
};

float f16(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return static_cast<float>(c10::Half(b, c10::Half::from_bits()));
}

// the 6-bit scale and min j of a K-quant block's 12 packed bytes
void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// A cursor over the mapped header with bounds checks that name what was being read.
struct Reader {
  const uint8_t* p;
  size_t size, pos = 0;
  const std::string& path;
  void need(size_t n, const std::string& what) {
    if (n > size - pos)
      fail(path, ": truncated file: ", what, " needs ", n, " bytes at offset ", pos, ", ", size - pos, " remain");
  }
  template <typename T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    const uint64_t n = get<uint64_t>(what + " (string length)");
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p + pos), n);
    pos += n;
    return s;
  }
};

json read_value(Reader& r, uint32_t type, const std::string& key, bool in_array) {
  switch (type) {
    case 0: return r.get<uint8_t>(key);
    case 1: return r.get<int8_t>(key);
    case 2: return r.get<uint16_t>(key);
    case 3: return r.get<int16_t>(key);
    case 4: return r.get<uint32_t>(key);
    case 5: return r.get<int32_t>(key);
    case 6: return r.get<float>(key);
    case 7: {
      const uint8_t b = r.get<uint8_t>(key);
      if (b > 1) fail(r.path, ": metadata '", key, "': bool value ", (int)b, ", expected 0 or 1");
      return b == 1;
    }
    case 8: return r.str(key);
    case 9: {
      if (in_array) fail(r.path, ": metadata '", key, "': nested arrays are not supported");
      const uint32_t it = r.get<uint32_t>(key + " (array item type)");
      const uint64_t n = r.get<uint64_t>(key + " (array length)");
      if (it > 12) fail(r.path, ": metadata '", key, "': unknown array item type ", it, " (expected 0..12)");
      // every item takes at least one byte: a length beyond the file is refused before allocating
      if (n > r.size - r.pos) fail(r.path, ": metadata '", key, "': array of ", n, " items is longer than the file");
      json a = json::array();
      for (uint64_t i = 0; i < n; ++i) a.push_back(read_value(r, it, key, true));
      return a;
    }
    case 10: return r.get<uint64_t>(key);
    case 11: return r.get<int64_t>(key);
    case 12: return r.get<double>(key);
    default: fail(r.path, ": metadata '", key, "': unknown value type ", type, " (expected 0..12)");
  }
}
}  // namespace

const GgmlType* ggml_type(uint32_t id) {
  for (const auto& t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open GGUF file (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  const size_t size = (size_t)st.st_size;
  if (size < 24) {
    ::close(fd);
    fail(path, ": truncated file (", size, " bytes), a GGUF header takes 24");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail(path, ": mmap failed (", std::strerror(errno), ")");
  f->base_ = static_cast<const uint8_t*>(p);
  f->size_ = size;
  Reader r{f->base_, size, 0, f->path_};
  const uint32_t magic = r.get<uint32_t>("magic");
  if (std::memcmp(f->base_, "GGUF", 4) != 0)
    fail(path, ": not a GGUF file (magic 0x", std::hex, magic, std::dec, ", expected \"GGUF\")");
  f->version_ = r.get<uint32_t>("version");
  if (f->version_ != 2 && f->version_ != 3)
    fail(path, ": GGUF version ", f->version_, " is not supported (expected 2 or 3)");
  const uint64_t n_tensors = r.get<uint64_t>("tensor_count");
  const uint64_t n_kv = r.get<uint64_t>("metadata_kv_count");
  if (n_tensors > size || n_kv > size)
    fail(path, ": tensor_count ", n_tensors, " / kv_count ", n_kv, " exceed the file");
  f->meta_ = json::object();
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = r.str(cat("metadata key #", i));
    const uint32_t type = r.get<uint32_t>(key + " (value type)");
    if (f->meta_.contains(key)) fail(path, ": metadata key '", key, "' appears twice");
    f->meta_[key] = read_value(r, type, key, false);
    f->types_[key] = type;
  }
  int64_t align = 32;
  if (f->meta_.contains("general.alignment")) {
    const json& a = f->meta_["general.alignment"];
    if (!a.is_number_integer() || a.get<int64_t>() <= 0 || (a.get<int64_t>() & (a.get<int64_t>() - 1)) != 0)
      fail(path, ": metadata 'general.alignment' must be a positive power of two, got ", a.dump());
    align = a.get<int64_t>();
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = r.str(cat("tensor #", i, " name"));
    const uint32_t nd = r.get<uint32_t>(t.name + " (n_dims)");
    if (nd == 0 || nd > 4) fail(path, ": tensor '", t.name, "': ", nd, " dimensions (expected 1..4)");
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t v = r.get<uint64_t>(t.name + " (dims)");
      if (v == 0 || v > (uint64_t(1) << 40)) fail(path, ": tensor '", t.name, "': dimension ", d, " = ", v);
      t.ne.push_back((int64_t)v);
    }
    const uint32_t ty = r.get<uint32_t>(t.name + " (type)");
    t.type = ggml_type(ty);
    if (!t.type) fail(path, ": tensor '", t.name, "': unknown ggml type id ", ty);
    t.offset = r.get<uint64_t>(t.name + " (offset)");
    if (t.offset % align != 0)
      fail(path, ": tensor '", t.name, "': offset ", t.offset, " is not a multiple of the alignment ", align);
    if (t.ne[0] % t.type->block_size != 0)
      fail(path, ": tensor '", t.name, "': row length ", t.ne[0], " is not a multiple of ", t.type->name,
           "'s block of ", t.type->block_size);
    const int64_t n = t.numel();
    if (n <= 0 || n > (int64_t(1) << 40)) fail(path, ": tensor '", t.name, "': ", n, " elements");
    t.nbytes = n / t.type->block_size * t.type->type_size;
    for (const auto& o : f->tensors_)
      if (o.name == t.name) fail(path, ": tensor '", t.name, "' appears twice");
    f->tensors_.push_back(std::move(t));
  }
  f->data_offset_ = (r.pos + align - 1) / align * align;
  for (const auto& t : f->tensors_) {
    if (f->data_offset_ > size || t.offset > size - f->data_offset_ ||
        (uint64_t)t.nbytes > size - f->data_offset_ - t.offset)
      fail(path, ": tensor '", t.name, "': data [", t.offset, ", ", t.offset + t.nbytes,
           ") of the data section is past the end of the file (", size - std::min(size, f->data_offset_),
           " data bytes)");
  }
  return f;
}

GgufFile::~GgufFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

uint32_t GgufFile::value_type(const std::string& key) const {
  auto it = types_.find(key);
  if (it == types_.end()) fail(path_, ": metadata key '", key, "' is missing");
  return it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
  if (!meta_.contains(key)) fail(path_, ": metadata key '", key, "' is missing");
  const json& v = meta_[key];
  if (!v.is_number_integer()) fail(path_, ": metadata '", key, "' must be an integer, got ", v.dump().substr(0, 80));
  return v.get<int64_t>();
}
int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return meta_.contains(key) ? get_int(key) : fallback;
}
double GgufFile::get_float(const std::string& key) const {
  if (!meta_.contains(key)) fail(path_, ": metadata key '", key, "' is missing");
  const json& v = meta_[key];
  if (!v.is_number()) fail(path_, ": metadata '", key, "' must be a number, got ", v.dump().substr(0, 80));
  return v.get<double>();
}
double GgufFile::get_float(const std::string& key, double fallback) const {
  return meta_.contains(key) ? get_float(key) : fallback;
}
std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  if (!meta_.contains(key)) return fallback;
  const json& v = meta_[key];
  if (!v.is_string()) fail(path_, ": metadata '", key, "' must be a string, got ", v.dump().substr(0, 80));
  return v.get<std::string>();
}

const GgufTensor* GgufFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

at::Tensor GgufFile::dequantize(const GgufTensor& t) const {
  if (!t.type->supported)
    fail(path_, ": tensor '", t.name, "': ggml type ", t.type->name,
         " cannot be dequantized by dmc (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)");
  at::Tensor out = at::empty(t.torch_shape(), at::kFloat);
  dequantize_row(*t.type, data(t), out.data_ptr<float>(), t.numel());
  return out;
}

void dequantize_row(const GgmlType& type, const uint8_t* src, float* y, int64_t n) {
  const int64_t nb = n / type.block_size;
  switch (type.id) {
    case 0: std::memcpy(y, src, n * 4); return;
    case 1:
      for (int64_t i = 0; i < n; ++i) y[i] = f16(src + 2 * i);
      return;
    case 30:
      for (int64_t i = 0; i < n; ++i) {
        uint32_t b = (uint32_t)src[2 * i] | ((uint32_t)src[2 * i + 1] << 8);
        b <<= 16;
        std::memcpy(y + i, &b, 4);
      }
      return;
    case 8:  // Q8_0: d f16 | qs i8[32];  y = d q
      for (int64_t b = 0; b < nb; ++b, src += 34, y += 32) {
        const float d = f16(src);
        for (int j = 0; j < 32; ++j) y[j] = d * (float)(int8_t)src[2 + j];
      }
      return;
    case 2:  // Q4_0: d | qs[16] (low nibbles: values 0..15, high: 16..31);  y = d (q - 8)
      for (int64_t b = 0; b < nb; ++b, src += 18, y += 32) {
        const float d = f16(src);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * (float)((src[2 + j] & 0xF) - 8);
          y[j + 16] = d * (float)((src[2 + j] >> 4) - 8);
        }
      }
      return;
    case 3:  // Q4_1: d | m | qs[16];  y = d q + m
      for (int64_t b = 0; b < nb; ++b, src += 20, y += 32) {
        const float d = f16(src), m = f16(src + 2);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * (float)(src[4 + j] & 0xF) + m;
          y[j + 16] = d * (float)(src[4 + j] >> 4) + m;
        }
      }
      return;
    case 6:  // Q5_0: d | qh u32 (the fifth bits) | qs[16];  y = d (q - 16)
    case 7:  // Q5_1: d | m | qh | qs[16];  y = d q + m
    {
      const bool q51 = type.id == 7;
      const int hdr = q51 ? 4 : 2;
      for (int64_t b = 0; b < nb; ++b, src += type.type_size, y += 32) {
        const float d = f16(src), m = q51 ? f16(src + 2) : 0.f;
        uint32_t qh;
        std::memcpy(&qh, src + hdr, 4);
        const uint8_t* qs = src + hdr + 4;
        for (int j = 0; j < 16; ++j) {
          const int x0 = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
          const int x1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
          if (q51) {
            y[j] = d * (float)x0 + m;
            y[j + 16] = d * (float)x1 + m;
          } else {
            y[j] = d * (float)(x0 - 16);
            y[j + 16] = d * (float)(x1 - 16);
          }
        }
      }
      return;
    }
    case 12:  // Q4_K: d | dmin | scales[12] | qs[128]; 8 sub-blocks of 32: y = (d sc) q - (dmin m)
    case 13:  // Q5_K: d | dmin | scales[12] | qh[32] | qs[128]
    {
      const bool q5 = type.id == 13;
      for (int64_t b = 0; b < nb; ++b, src += type.type_size) {
        const float d = f16(src), dmin = f16(src + 2);
        const uint8_t* sc = src + 4;
        const uint8_t* qh = src + 16;
        const uint8_t* q = src + (q5 ? 48 : 16);
        for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
          uint8_t s1, m1, s2, m2;
          scale_min_k4(is, sc, s1, m1);
          scale_min_k4(is + 1, sc, s2, m2);
          const float d1 = d * (float)s1, dm1 = dmin * (float)m1, d2 = d * (float)s2, dm2 = dmin * (float)m2;
          const int u1 = 1 << is, u2 = 2 << is;
          for (int l = 0; l < 32; ++l) {
            const int h1 = q5 && (qh[l] & u1) ? 16 : 0, h2 = q5 && (qh[l] & u2) ? 16 : 0;
            y[j + l] = d1 * (float)((q[l] & 0xF) + h1) - dm1;
            y[j + 32 + l] = d2 * (float)((q[l] >> 4) + h2) - dm2;
          }
        }
        y += 256;
      }
      return;
    }
    case 14:  // Q6_K: ql[128] | qh[64] | scales i8[16] | d;  16 sub-blocks of 16: y = (d sc) (q - 32)
      for (int64_t b = 0; b < nb; ++b, src += 210, y += 256) {
        const float d = f16(src + 208);
        const uint8_t* ql = src;
        const uint8_t* qh = src + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(src + 192);
        for (int n0 = 0; n0 < 256; n0 += 128, ql += 64, qh += 32, sc += 8) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[n0 + l] = d * (float)sc[is] * (float)q1;
            y[n0 + l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[n0 + l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[n0 + l + 96] = d * (float)sc[is + 6] * (float)q4;
          }
        }
      }
      return;
    default: fail("dequantize: ggml type ", type.name, " is not supported");
  }
}

}  // namespace dmc::io
