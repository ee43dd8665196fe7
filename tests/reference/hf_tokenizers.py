"""Hugging Face `tokenizers` (PyPI) as the oracle of dmc's byte-level BPE.

  hf_tokenizers.py lines OUT.json                 >= 2000 varied lines: text of /usr/share/common-licenses, digits,
                                                  unicode scripts, emoji, whitespace runs, code, special tokens in text
  hf_tokenizers.py train_llama3 OUT_DIR           a Llama-3-style tokenizer.json (Split regex + ByteLevel, ignore_merges)
                                                  trained here on the license texts
  hf_tokenizers.py from_gguf GGUF OUT_DIR         SmolLM2's tokenizer as HF defines it (BPE; Digits(individual) +
                                                  ByteLevel; the control tokens as special added tokens), built with
                                                  the tokenizers API from the GGUF's metadata read by the `gguf` package
  hf_tokenizers.py encode TOKENIZER_JSON LINES.json OUT.json   ids of every line (no special tokens added) and the
                                                  decoded text
"""
import glob
import json
import os
import random
import sys

from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers, AddedToken

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def license_text():
    parts = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    return "\n".join(parts)


def lines(out):
    rng = random.Random(5)
    text = [l for l in license_text().split("\n") if l.strip()]
    out_lines = text[:900]
    scripts = ["Ελληνικά κείμενα", "Русский текст", "日本語のテキスト", "中文文本测试", "한국어 텍스트", "עברית", "العربية",
               "हिन्दी पाठ", "ไทย", "Tiếng Việt có dấu", "naïve café résumé", "Straße ß", "ﬁ ligature", "Ω≈ç√∫"]
    emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🤖", "⭐"]
    code = ["def f(x):\n    return x**2  # square", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
            "if __name__ == '__main__':\n\tmain()", "SELECT * FROM t WHERE id='42';", "x = {'a': [1, 2, 3]}",
            "#include <vector>\n\nint main() {}", "  indented\n\n\n   lines  ", "a\r\nb\rc\n"]
    for i in range(1200):
        k = i % 8
        if k == 0:
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 6)))
        elif k == 1:
            s = rng.choice(scripts) + " " + rng.choice(scripts)
        elif k == 2:
            s = "".join(rng.choice(emoji) for _ in range(rng.randint(1, 4))) + " " + rng.choice(text)
        elif k == 3:
            s = rng.choice(code)
        elif k == 4:
            s = rng.choice(text) + " " * rng.randint(2, 9) + "\t" * rng.randint(0, 2) + rng.choice(text)
        elif k == 5:
            s = rng.choice(SPECIALS) + rng.choice(["user\n", "", " "]) + rng.choice(text) + rng.choice(SPECIALS)
        elif k == 6:
            s = rng.choice(text).upper() + " I'll've they're WE'D 3.14159 1,000,000 $5.00 50% 2024-01-01"
        else:
            s = " " + rng.choice(text) + "  "
        out_lines.append(s)
    out_lines += ["", " ", "\n", "   ", "a", "1", "12345678901234567890", "<|im_start|><|im_end|>", "<|im_start"]
    # one long text (every line so far, twice): words repeat (dmc caches a piece's merges within one encode) and the
    # pre-tokenizer walks one long subject (a per-match UTF-8 check made this quadratic once)
    out_lines.append("\n".join(out_lines) * 2)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(out_lines, f, ensure_ascii=False)


def train_llama3(out):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=3000, special_tokens=SPECIALS,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = license_text().split("\n")
    tok.train_from_iterator(text, trainer=tr)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))


def from_gguf(path, out):
    import gguf
    r = gguf.GGUFReader(path)

    def field(name):
        return r.fields[name].contents()

    tokens, types, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges")
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))


def encode(tj, lines_path, out):
    tok = Tokenizer.from_file(tj)
    with open(lines_path, encoding="utf-8") as f:
        ls = json.load(f)
    res = []
    for s in ls:
        ids = tok.encode(s, add_special_tokens=False).ids
        res.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "lines":
        lines(sys.argv[2])
    elif cmd == "train_llama3":
        train_llama3(sys.argv[2])
    elif cmd == "from_gguf":
        from_gguf(sys.argv[2], sys.argv[3])
    elif cmd == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4])
