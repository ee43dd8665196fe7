// Chat prompts: the model's chat template applied to a conversation (`dmc generate --chat`, `eval tasks --chat`,
// `dmc serve`'s /v1/chat/completions), ending with the assistant's turn to answer (add_generation_prompt).
// dmc has no Jinja engine (Debian packages none for C++), so it recognises the two template families that cover
// the Llama-architecture chat models it runs and writes their text itself:
//   chatml  <|im_start|>{role}\n{content}<|im_end|>\n for every message, then <|im_start|>assistant\n
//           (SmolLM2, Qwen2; a template that writes a default system message when none is given, as SmolLM2's
//           does, has that message taken from its text)
//   llama2  per user turn BOS [INST] {content} [/INST], per assistant turn ' {content} ' EOS, the system message
//           inside the first user turn as <<SYS>>\n{system}\n<</SYS>>\n\n (contents stripped, as Meta's template;
//           turns alternate user / assistant)
// "auto" picks the family from the tokenizer's template (tokenizer_config.json or GGUF); a template of another
// family is an error that says to pass --chat-format.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dmc {

class Tokenizer;

enum class ChatFormat { Auto, ChatML, Llama2 };
ChatFormat parse_chat_format(const std::string& name);  // auto | chatml | llama2

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

struct ChatPrompt {
  std::string text;  // the prompt text (special tokens as text: the tokenizer matches them; llama2's BOS / EOS
                     // between turns written as the tokenizer spells them, its leading BOS left out)
  // the token ids: text pieces encoded without BOS, llama2's BOS (leading one included) / EOS as ids
  std::vector<int64_t> ids(const Tokenizer& tok) const;

  struct Part {
    int kind = 0;  // 0 text, 1 BOS, 2 EOS
    std::string text;
  };
  std::vector<Part> parts;
};

// messages: an optional system message first, then user / assistant turns, the last one the user's (a dmc::Error
// naming the message otherwise). A missing system message: the template's default (if it has one), else none.
ChatPrompt apply_chat(const Tokenizer& tok, ChatFormat format, const std::vector<ChatMessage>& messages);
// one exchange: system "" = none given
ChatPrompt apply_chat(const Tokenizer& tok, ChatFormat format, const std::string& system, const std::string& user);

}  // namespace dmc
