"""GGUF oracles from the `gguf` PyPI package (llama.cpp's own Python library), for dmc's C++ reader.

  gguf_oracle.py quants OUT_DIR      writes OUT_DIR/quants.gguf (one tensor per quant type, written by
                                     gguf.GGUFWriter: random blocks with finite f16 scales, 3 rows) and, per tensor,
                                     OUT_DIR/<name>.f32: gguf.quants.dequantize's output as raw little-endian fp32
  gguf_oracle.py sp_gguf MODEL OUT.gguf  a GGUF whose metadata holds the SentencePiece MODEL as llama.cpp's
                                     converter writes it (tokenizer.ggml.model llama: tokens, scores, token types)
  gguf_oracle.py meta OUT_DIR        writes OUT_DIR/meta.gguf with one metadata key of every value type and
                                     OUT_DIR/meta.json with what they hold
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

# (type, byte offsets of the f16 fields inside one block)
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}


def quants(out):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(out, "quants.gguf"), "llama")
    expect = {}
    for t, fields in F16_FIELDS.items():
        block, size = gguf.GGML_QUANT_SIZES[t]
        rows, cols = 3, 2 * max(block, 256)
        raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        halves = (rng.standard_normal((rows, cols // block, len(fields))) * 0.05).astype(np.float16)
        for i, off in enumerate(fields):
            raw[:, :, off:off + 2] = halves[:, :, i:i + 1].view(np.uint8).reshape(rows, cols // block, 2)
        raw = raw.reshape(rows, -1)
        name = "q_" + t.name
        w.add_tensor(name, raw, raw_dtype=t)
        expect[name] = gguf.quants.dequantize(raw, t).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w.add_tensor("f_F32", x)
    expect["f_F32"] = x
    h = x.astype(np.float16)
    w.add_tensor("f_F16", h)
    expect["f_F16"] = h.astype(np.float32)
    b = (x.view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("f_BF16", b, raw_dtype=Q.BF16)
    expect["f_BF16"] = gguf.quants.dequantize(b.view(np.uint8), Q.BF16).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for name, a in expect.items():
        np.ascontiguousarray(a, dtype="<f4").tofile(os.path.join(out, name + ".f32"))


def meta(out):
    w = gguf.GGUFWriter(os.path.join(out, "meta.gguf"), "llama")
    vals = {"t.u8": 200, "t.i8": -100, "t.u16": 60000, "t.i16": -30000, "t.u32": 4000000000, "t.i32": -2000000000,
            "t.f32": 0.5, "t.bool": True, "t.str": "héllo", "t.u64": 2**40, "t.i64": -2**40, "t.f64": 0.125,
            "t.arr": ["a", "b c"], "t.iarr": [1, -2, 3]}
    w.add_uint8("t.u8", 200); w.add_int8("t.i8", -100); w.add_uint16("t.u16", 60000); w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000); w.add_int32("t.i32", -2000000000); w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True); w.add_string("t.str", "héllo"); w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -2**40); w.add_float64("t.f64", 0.125); w.add_array("t.arr", ["a", "b c"])
    w.add_array("t.iarr", [1, -2, 3])
    w.add_tensor("x", np.arange(32, dtype=np.float32).reshape(2, 16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    vals["general.architecture"] = "llama"
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(vals, f)


def sp_gguf(model, out):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_tensor("x", np.zeros((1, 32), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


if __name__ == "__main__":
    if sys.argv[1] == "sp_gguf":
        sp_gguf(sys.argv[2], sys.argv[3])
    else:
        {"quants": quants, "meta": meta}[sys.argv[1]](sys.argv[2])
