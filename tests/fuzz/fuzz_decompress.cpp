// data prepare's in-process decoders: the first byte picks .xz or .gz, the rest is the compressed file.
#include <string>

#include "common/error.h"
#include "data/decompress.h"
#include "fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string packed(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] & 1)
      (void)dmc::data::decompress_xz(packed, "fuzz.xz");
    else
      (void)dmc::data::decompress_gz(packed, "fuzz.gz");
  } catch (const dmc::Error&) {}
  return 0;
}
