#include "data/decompress.h"

#include <lzma.h>
#include <zlib.h>

#include "common/error.h"

namespace dmc::data {

namespace {
const char* lzma_reason(lzma_ret r) {
  switch (r) {
    case LZMA_MEM_ERROR: return "out of memory";
    case LZMA_FORMAT_ERROR: return "not in the .xz format";
    case LZMA_OPTIONS_ERROR: return "unsupported compression options";
    case LZMA_DATA_ERROR: return "corrupt data";
    case LZMA_BUF_ERROR: return "truncated, or not .xz data";
    case LZMA_UNSUPPORTED_CHECK: return "unsupported integrity check";
    default: return "decoder error";
  }
}
}  // namespace

std::string decompress_xz(const std::string& packed, const std::string& what) {
  lzma_stream s = LZMA_STREAM_INIT;
  lzma_ret r = lzma_stream_decoder(&s, UINT64_MAX, LZMA_CONCATENATED);
  if (r != LZMA_OK) fail("input '", what, "': cannot start the xz decoder (", lzma_reason(r), ")");
  std::string out;
  char buf[1 << 16];
  s.next_in = reinterpret_cast<const uint8_t*>(packed.data());
  s.avail_in = packed.size();
  for (;;) {
    s.next_out = reinterpret_cast<uint8_t*>(buf);
    s.avail_out = sizeof buf;
    r = lzma_code(&s, s.avail_in == 0 ? LZMA_FINISH : LZMA_RUN);
    out.append(buf, sizeof buf - s.avail_out);
    if (r == LZMA_STREAM_END) break;
    if (r != LZMA_OK) {
      lzma_end(&s);
      fail("input '", what, "': xz decompression failed (", lzma_reason(r), ")");
    }
  }
  lzma_end(&s);
  return out;
}

std::string decompress_gz(const std::string& packed, const std::string& what) {
  std::string out;
  char buf[1 << 16];
  size_t pos = 0;
  do {  // one gzip member per pass
    z_stream z{};
    if (inflateInit2(&z, 15 + 16) != Z_OK) fail("input '", what, "': cannot start the gzip decoder");
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(packed.data() + pos));
    z.avail_in = (uInt)(packed.size() - pos);
    int r = Z_OK;
    while (r != Z_STREAM_END) {
      z.next_out = reinterpret_cast<Bytef*>(buf);
      z.avail_out = sizeof buf;
      r = inflate(&z, Z_NO_FLUSH);
      out.append(buf, sizeof buf - z.avail_out);
      if (r == Z_STREAM_END) break;
      if (r != Z_OK) {
        const std::string msg = z.msg ? z.msg : (r == Z_BUF_ERROR ? "truncated data" : "corrupt data");
        inflateEnd(&z);
        fail("input '", what, "': gzip decompression failed (", msg, ")");
      }
    }
    pos = packed.size() - z.avail_in;
    inflateEnd(&z);
  } while (pos < packed.size());
  return out;
}

}  // namespace dmc::data
