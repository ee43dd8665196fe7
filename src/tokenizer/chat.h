// Chat prompts: the model's chat template applied to one (system, user) exchange, for `dmc generate --chat`.
// dmc has no Jinja engine (Debian packages none for C++), so it recognises the two template families that cover
// the Llama-architecture chat models it runs and writes their text itself:
//   chatml  <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
//           (SmolLM2, Qwen2; a template that writes a default system message when none is given, as SmolLM2's
//           does, has that message taken from its text)
//   llama2  [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]     (after BOS; without a system: [INST] {user}
//   [/INST])
// "auto" picks the family from the tokenizer's template (tokenizer_config.json or GGUF); a template of another
// family is an error that says to pass --chat-format.
#pragma once
#include <string>

namespace dmc {

class Tokenizer;

enum class ChatFormat { Auto, ChatML, Llama2 };
ChatFormat parse_chat_format(const std::string& name);  // auto | chatml | llama2

struct ChatPrompt {
  std::string text;      // the prompt text (special tokens as text: the tokenizer matches them)
  bool add_bos = false;  // llama2: BOS goes first as a token id
};

// system: "" = the template's default system message (if it has one), else none.
ChatPrompt apply_chat(const Tokenizer& tok, ChatFormat format, const std::string& system, const std::string& user);

}  // namespace dmc
