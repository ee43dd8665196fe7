// safetensors: header length, JSON header, dtypes, shapes (checked arithmetic), offsets against the file size,
// overlaps; every tensor of an accepted file is then read whole.
#include "common/error.h"
#include "fuzz_common.h"
#include "fuzz_targets.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = dmc::fuzz::scratch_file("st", data, size);
  try {
    auto f = dmc::io::SafetensorsFile::open(path);
    for (const auto& n : f->names()) {
      at::Tensor t = f->get(n);
      if (t.numel() > 0) (void)t.reshape({-1}).sum().item<double>();
    }
  } catch (const dmc::Error&) {}
  return 0;
}
