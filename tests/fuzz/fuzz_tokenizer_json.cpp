// tokenizer.json (byte-level BPE): JSON types of every field, model type, vocabulary ids, merges against the
// vocabulary, added tokens, pre-tokenizer steps and their regexes (PCRE2); an accepted file encodes and decodes a
// fixed text.
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "fuzz_common.h"
#include "fuzz_targets.h"
#include "tokenizer/bpe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    auto t = dmc::BpeTokenizer::from_json(j, "fuzz/tokenizer.json");
    (void)t.decode(t.encode("Hello  world 123 \xc3\xa9\n<|im_start|>ok"));
  } catch (const dmc::Error&) {}
  return 0;
}
