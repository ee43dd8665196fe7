// config.json: every field's type and range, rope_scaling, the dmc block, shape consistency.
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "fuzz_targets.h"
#include "model/llama_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    // the same entry as LlamaConfig::load (JSON errors become dmc::Error there too)
    nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return 0;
    auto c = dmc::LlamaConfig::from_json(j, "fuzz/config.json");
    (void)c.num_parameters();
    (void)dmc::LlamaConfig::from_json(c.to_json(), "round trip");  // what dmc writes, it reads back
  } catch (const dmc::Error&) {}
  return 0;
}
