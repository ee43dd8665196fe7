#include "cli/load.h"

#include "common/util.h"
#include "io/gguf.h"

namespace dmc::cli {

LoadedModel load_model_and_tokenizer(const std::string& model, const std::string& tokenizer, const std::string& device,
                                     const std::string& dtype) {
  auto [dev, dt] = resolve_runtime(device, dtype);
  auto tok = Tokenizer::load(tokenizer.empty() ? model : tokenizer);
  auto m = Llama::load(model, dt, dev);
  // what names the model's shape in errors: DIR/config.json, or the .gguf file itself
  tok.check_model_vocab(m.config.vocab_size, io::is_gguf_path(model) ? model : model + "/config.json");
  return {std::move(tok), std::move(m)};
}

}  // namespace dmc::cli
