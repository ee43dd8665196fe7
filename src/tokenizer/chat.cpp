// Chat prompts for the ChatML and Llama 2 template families (see chat.h).
#include "tokenizer/chat.h"

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace dmc {

ChatFormat parse_chat_format(const std::string& name) {
  if (name == "auto") return ChatFormat::Auto;
  if (name == "chatml") return ChatFormat::ChatML;
  if (name == "llama2") return ChatFormat::Llama2;
  fail("chat format: expected auto, chatml or llama2, got '", name, "'");
}

namespace {
// The default system message a ChatML template writes when the conversation has none: the literal between
// "<|im_start|>system\n" and "<|im_end|>" inside the template text ("" when there is none).
std::string default_system(const std::string& tmpl) {
  const std::string open = "<|im_start|>system\n";
  const size_t a = tmpl.find(open);
  if (a == std::string::npos) return "";
  const size_t b = tmpl.find("<|im_end|>", a);
  if (b == std::string::npos) return "";
  const std::string s = tmpl.substr(a + open.size(), b - a - open.size());
  // a template that inserts the user's system message has Jinja in between, not a literal
  return s.find("{{") == std::string::npos && s.find("{%") == std::string::npos ? s : "";
}
}  // namespace

ChatPrompt apply_chat(const Tokenizer& tok, ChatFormat format, const std::string& system, const std::string& user) {
  const std::string& tmpl = tok.chat_template();
  if (format == ChatFormat::Auto) {
    if (tmpl.find("<|im_start|>") != std::string::npos)
      format = ChatFormat::ChatML;
    else if (tmpl.find("[INST]") != std::string::npos)
      format = ChatFormat::Llama2;
    else if (tmpl.empty())
      fail(tok.path(), ": the tokenizer has no chat template; give --chat-format chatml or llama2");
    else
      fail(tok.path(),
           ": the chat template is neither ChatML nor Llama 2 (dmc has no Jinja engine); give --chat-format");
  }
  ChatPrompt p;
  if (format == ChatFormat::ChatML) {
    const std::string sys = system.empty() ? default_system(tmpl) : system;
    if (!sys.empty()) p.text += "<|im_start|>system\n" + sys + "<|im_end|>\n";
    p.text += "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n";
  } else {
    p.add_bos = true;
    p.text = system.empty() ? "[INST] " + user + " [/INST]"
                            : "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n" + user + " [/INST]";
  }
  return p;
}

}  // namespace dmc
