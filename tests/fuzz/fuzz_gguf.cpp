// GGUF: header, metadata values (nested types, lengths against the file size), tensor infos (dims, types,
// alignment, data against the end of the file); every supported tensor of an accepted file is dequantized whole,
// and the model shape and the tokenizer are read from its metadata when it has them.
#include "common/error.h"
#include "fuzz_common.h"
#include "fuzz_targets.h"
#include "io/gguf.h"
#include "model/llama_config.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = dmc::fuzz::scratch_file("gguf", data, size);
  try {
    auto g = dmc::io::GgufFile::open(path);
    for (const auto& t : g->tensors())
      if (t.type->supported && t.numel() <= (1 << 20)) (void)g->dequantize(t).sum().item<double>();
    try {
      (void)dmc::LlamaConfig::from_gguf_metadata(g->metadata(), path, g->find("output.weight") != nullptr);
    } catch (const dmc::Error&) {}
    if (g->has("tokenizer.ggml.model")) (void)dmc::Tokenizer::from_gguf(*g).encode("Hello 123 world!");
  } catch (const dmc::Error&) {}
  return 0;
}
