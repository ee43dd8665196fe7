"""The official `openai` Python client against a running `dmc serve` (tests/test_serve.cpp starts it):
completions, streaming, stop strings, seeds, chat (streamed and not). Prints one JSON object of what it saw;
the C++ test asserts on it.

  openai_client.py BASE_URL MODEL_NAME API_KEY
"""
import json
import sys

import openai


def main():
    base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)
    out = {"client_version": openai.__version__}
    prompt = "The capital of France is"
    r = c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    out["completion"] = r.choices[0].text
    out["completion_finish"] = r.choices[0].finish_reason
    out["usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]
    out["stream_joined"] = "".join(ch.choices[0].text for ch in c.completions.create(
        model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True))
    stop = out["completion"][len(out["completion"]) // 2:][:3] or "."
    out["stop"] = stop
    out["stopped"] = c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                          stop=[stop]).choices[0].text
    seeded = [c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0.9, seed=7)
              .choices[0].text for _ in range(2)]
    out["seed_same"] = seeded[0] == seeded[1]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ch = c.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    out["chat"] = ch.choices[0].message.content
    out["chat_role"] = ch.choices[0].message.role
    out["chat_stream_joined"] = "".join((e.choices[0].delta.content or "") for e in c.chat.completions.create(
        model=model, messages=msgs, max_tokens=24, temperature=0, stream=True))
    try:
        c.completions.create(model="no-such-model", prompt=prompt, max_tokens=2)
        out["unknown_model"] = "accepted"
    except openai.NotFoundError as e:
        out["unknown_model"] = "404"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
