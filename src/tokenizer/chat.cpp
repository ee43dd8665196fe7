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

std::vector<int64_t> ChatPrompt::ids(const Tokenizer& tok) const {
  std::vector<int64_t> out;
  for (const auto& p : parts) {
    if (p.kind == 0) {
      const auto t = tok.encode(p.text, false);
      out.insert(out.end(), t.begin(), t.end());
    } else {
      const int64_t id = p.kind == 1 ? tok.bos_id() : tok.eos_id();
      if (id >= 0) out.push_back(id);
    }
  }
  return out;
}

namespace {
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}
}  // namespace

ChatPrompt apply_chat(const Tokenizer& tok, ChatFormat format, const std::vector<ChatMessage>& messages) {
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
  // the conversation's shape: [system] user (assistant user)*
  DMC_CHECK(!messages.empty(), "chat: no messages");
  const bool has_system = messages[0].role == "system";
  for (size_t i = has_system ? 1 : 0, turn = 0; i < messages.size(); ++i, ++turn) {
    const std::string want = turn % 2 == 0 ? "user" : "assistant";
    DMC_CHECK(messages[i].role == want, "chat: message ", i, " has role '", messages[i].role, "', expected '", want,
              "' (an optional system message first, then user and assistant turns in turn)");
  }
  DMC_CHECK(messages.back().role == "user", "chat: the last message must be the user's, got '", messages.back().role,
            "'");
  ChatPrompt p;
  auto text = [&](const std::string& t) {
    p.text += t;
    if (p.parts.empty() || p.parts.back().kind != 0) p.parts.push_back({0, ""});
    p.parts.back().text += t;
  };
  auto special = [&](int kind) {
    const int64_t id = kind == 1 ? tok.bos_id() : tok.eos_id();
    if (id >= 0) p.text += tok.piece(id);
    p.parts.push_back({kind, ""});
  };
  if (format == ChatFormat::ChatML) {
    const std::string sys = has_system ? messages[0].content : default_system(tmpl);
    if (!sys.empty() || has_system) text("<|im_start|>system\n" + sys + "<|im_end|>\n");
    for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i)
      text("<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n");
    text("<|im_start|>assistant\n");
  } else {
    for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
      std::string content = messages[i].content;
      if (i == 1 && has_system) content = "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + content;
      if (messages[i].role == "user") {
        if (!p.parts.empty()) special(1);
        else p.parts.push_back({1, ""});  // the leading BOS: an id, not part of the text
        text("[INST] " + strip(content) + " [/INST]");
      } else {
        text(" " + strip(content) + " ");
        special(2);
      }
    }
  }
  return p;
}

ChatPrompt apply_chat(const Tokenizer& tok, ChatFormat format, const std::string& system, const std::string& user) {
  std::vector<ChatMessage> ms;
  if (!system.empty()) ms.push_back({"system", system});
  ms.push_back({"user", user});
  return apply_chat(tok, format, ms);
}

}  // namespace dmc
