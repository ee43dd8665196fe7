#!/usr/bin/env python3
"""Test writer: Megatron-LM legacy checkpoints made from an HF Llama directory by the facts of
../shared/megatron-format.md, written independently of tools/megatron.py (the code under test), so that an import
is checked against the format and not against its own exporter.

  megatron_writer.py HF_DIR OUT --tp N [--layout iter|release|root] [--dmc-args] [--iteration 2000]
                     [--divisor 128] [--bad KIND]
  KIND: missing-shard | mixed-tp | no-iteration | unexpected-key | bad-shape | evil-global:MARKER_PATH
  HF_DIR may be random:llama2-7b (or random:tiny): random bf16 weights of that shape, no HF model (the GPU run)
  megatron_writer.py --compare A.pt B.pt      loads both with weights_only=True and the allow-list, prints JSON:
                                              the model keys, shapes and values equal?, args of B

Per rank r of N (section 4 / 5): the fused QKV holds query groups r*ng/N .. (r+1)*ng/N-1, each group its q heads,
then its k head, then its v head; fc1 is [gate_r; up_r]; linear_proj and fc2 split by columns; embedding and output
rows split by vocabulary after padding it to a multiple of divisor*N with copies of the last row.
"""
import argparse
import enum
import io
import json
import os
import sys

import torch
from safetensors.torch import load_file


# megatron/core/enums.py's ModelType, values 1-4, under its module name
ModelType = enum.Enum("ModelType", "encoder_or_decoder retro_encoder retro_decoder encoder_and_decoder",
                      module="megatron.core.enums")


def install_stub_module():
    """torch.save pickles ModelType by reference: make megatron.core.enums importable in this process."""
    import types
    for name in ("megatron", "megatron.core", "megatron.core.enums"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["megatron.core.enums"].ModelType = ModelType


class Evil:
    """A pickle that would run a command if it were ever unpickled without the allow-list."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def extra_state():
    b = io.BytesIO()
    torch.save(None, b)
    b.seek(0)
    return b


def compare(a_path, b_path):
    allowed = [argparse.Namespace, io.BytesIO, (ModelType, "megatron.core.enums.ModelType")]
    with torch.serialization.safe_globals(allowed):
        a = torch.load(a_path, weights_only=True)
        b = torch.load(b_path, weights_only=True)
    ma, mb = a["model"], b["model"]
    tensors = [k for k in ma if isinstance(ma[k], torch.Tensor)]
    same_keys = set(ma) == set(mb)
    same_shapes = same_keys and all(tuple(ma[k].shape) == tuple(mb[k].shape) for k in tensors)
    same_values = same_shapes and all(torch.equal(ma[k], mb[k]) for k in tensors)
    extra_kinds = same_keys and all(type(ma[k]) is type(mb[k]) for k in ma)
    print(json.dumps({"same_keys": same_keys, "same_shapes": same_shapes, "same_values": same_values,
                      "same_extra_state_kinds": extra_kinds, "only_a": sorted(set(ma) - set(mb))[:5],
                      "only_b": sorted(set(mb) - set(ma))[:5], "b_checkpoint_version": b.get("checkpoint_version"),
                      "b_iteration": b.get("iteration"),
                      "b_args": {k: v for k, v in vars(b["args"]).items() if isinstance(v, (int, float, bool, str))}}))


def random_weights(shape):
    """HF-named random bf16 weights (std 0.02, norms 1) of a Llama shape: the 7B of the seed's releases."""
    dims = {"llama2-7b": (4096, 32, 32, 32, 11008, 32000, 4096), "tiny": (64, 2, 4, 4, 96, 512, 256)}
    if shape not in dims:
        raise SystemExit(f"unknown random shape {shape!r} (known: {', '.join(dims)})")
    h, L, nh, ng, ffn, V, pos = dims[shape]
    kv = h // nh
    cfg = {"hidden_size": h, "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": ng,
           "intermediate_size": ffn, "vocab_size": V, "max_position_embeddings": pos, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0}
    g = torch.Generator().manual_seed(0)

    def rnd(*sz):
        return (torch.randn(*sz, generator=g) * 0.02).to(torch.bfloat16)
    w = {"model.embed_tokens.weight": rnd(V, h), "lm_head.weight": rnd(V, h),
         "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        w[p + "self_attn.q_proj.weight"] = rnd(nh * kv, h)
        w[p + "self_attn.k_proj.weight"] = rnd(ng * kv, h)
        w[p + "self_attn.v_proj.weight"] = rnd(ng * kv, h)
        w[p + "self_attn.o_proj.weight"] = rnd(h, nh * kv)
        w[p + "mlp.gate_proj.weight"] = rnd(ffn, h)
        w[p + "mlp.up_proj.weight"] = rnd(ffn, h)
        w[p + "mlp.down_proj.weight"] = rnd(h, ffn)
    return cfg, w


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--layout", choices=["iter", "release", "root"], default="iter")
    ap.add_argument("--dmc-args", action="store_true")
    ap.add_argument("--iteration", type=int, default=2000)
    ap.add_argument("--divisor", type=int, default=128)
    ap.add_argument("--bad", default="")
    a = ap.parse_args()
    install_stub_module()
    if a.hf_dir.startswith("random:"):
        cfg, w = random_weights(a.hf_dir.split(":", 1)[1])
    else:
        with open(os.path.join(a.hf_dir, "config.json")) as f:
            cfg = json.load(f)
        w = {}
        for n in os.listdir(a.hf_dir):
            if n.endswith(".safetensors"):
                w.update(load_file(os.path.join(a.hf_dir, n)))
    h, nh, L, ffn, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], \
        cfg["intermediate_size"], cfg["vocab_size"]
    ng = cfg.get("num_key_value_heads", nh)
    kv = h // nh
    N = a.tp
    step = a.divisor * N
    Vp = (V + step - 1) // step * step
    pad_rows = lambda m: torch.cat([m] + [m[V - 1:V]] * (Vp - V), 0)  # noqa: E731
    emb = pad_rows(w["model.embed_tokens.weight"])
    tied = "lm_head.weight" not in w
    out_w = None if tied else pad_rows(w["lm_head.weight"])
    rows = Vp // N
    per_group = nh // ng
    ranks = []
    for r in range(N):
        m = {}
        m["embedding.word_embeddings.weight"] = emb[r * rows:(r + 1) * rows].clone()
        for i in range(L):
            pre = f"model.layers.{i}."
            q = w[pre + "self_attn.q_proj.weight"]
            k = w[pre + "self_attn.k_proj.weight"]
            v = w[pre + "self_attn.v_proj.weight"]
            blocks = []
            for g in range(r * ng // N, (r + 1) * ng // N):
                for j in range(per_group):
                    head = g * per_group + j
                    blocks.append(q[head * kv:(head + 1) * kv])
                blocks.append(k[g * kv:(g + 1) * kv])
                blocks.append(v[g * kv:(g + 1) * kv])
            lp = f"decoder.layers.{i}."
            m[lp + "self_attention.linear_qkv.layer_norm_weight"] = w[pre + "input_layernorm.weight"].clone()
            m[lp + "self_attention.linear_qkv.weight"] = torch.cat(blocks, 0)
            m[lp + "self_attention.linear_qkv._extra_state"] = extra_state()
            o = w[pre + "self_attn.o_proj.weight"]
            cols = o.shape[1] // N
            m[lp + "self_attention.linear_proj.weight"] = o[:, r * cols:(r + 1) * cols].clone()
            m[lp + "self_attention.linear_proj._extra_state"] = extra_state()
            f = ffn // N
            gate = w[pre + "mlp.gate_proj.weight"][r * f:(r + 1) * f]
            up = w[pre + "mlp.up_proj.weight"][r * f:(r + 1) * f]
            m[lp + "mlp.linear_fc1.layer_norm_weight"] = w[pre + "post_attention_layernorm.weight"].clone()
            m[lp + "mlp.linear_fc1.weight"] = torch.cat([gate, up], 0)
            m[lp + "mlp.linear_fc1._extra_state"] = extra_state()
            d = w[pre + "mlp.down_proj.weight"]
            m[lp + "mlp.linear_fc2.weight"] = d[:, r * f:(r + 1) * f].clone()
            m[lp + "mlp.linear_fc2._extra_state"] = extra_state()
        m["decoder.final_layernorm.weight"] = w["model.norm.weight"].clone()
        if not tied:
            m["output_layer.weight"] = out_w[r * rows:(r + 1) * rows].clone()
            m["output_layer._extra_state"] = None
        ranks.append(m)
    args = argparse.Namespace(
        num_layers=L, hidden_size=h, num_attention_heads=nh, ffn_hidden_size=ffn, kv_channels=kv,
        group_query_attention=ng != nh, num_query_groups=ng if ng != nh else 1,
        seq_length=cfg["max_position_embeddings"], max_position_embeddings=cfg["max_position_embeddings"],
        position_embedding_type="rope", rotary_percent=1.0, rotary_base=int(cfg.get("rope_theta", 10000)),
        rotary_interleaved=False, normalization="RMSNorm", norm_epsilon=cfg.get("rms_norm_eps", 1e-5), swiglu=True,
        add_bias_linear=False, add_qkv_bias=False, untie_embeddings_and_output_weights=not tied,
        padded_vocab_size=Vp, make_vocab_size_divisible_by=a.divisor, tensor_model_parallel_size=N,
        pipeline_model_parallel_size=1, params_dtype=w["model.norm.weight"].dtype, bf16=False,
        model_type=ModelType.encoder_or_decoder, transformer_impl="transformer_engine")
    if a.dmc_args:
        args.dmc_init_val, args.dmc_window_size, args.dmc_temp, args.dmc_cr = 3.0, 6, 0.1, 8.0
    folder = {"iter": f"iter_{a.iteration:07d}", "release": "release", "root": ""}[a.layout]
    os.makedirs(a.out, exist_ok=True)
    if a.layout != "root":
        with open(os.path.join(a.out, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("release" if a.layout == "release" else str(a.iteration))
    else:  # the HF release: the tracker at the root, mp_rank_* beside it
        with open(os.path.join(a.out, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(a.iteration))
    for r in range(N):
        state = {"args": args, "checkpoint_version": 3.0, "iteration": a.iteration, "model": ranks[r]}
        if a.bad == "no-iteration":
            del state["iteration"]
        if a.bad == "unexpected-key":
            state["model"]["decoder.layers.0.self_attention.q_layernorm.weight"] = torch.ones(h)
        if a.bad == "bad-shape":
            state["model"]["decoder.final_layernorm.weight"] = torch.ones(h + 1)
        if a.bad == "mixed-tp" and r == N - 1:
            args2 = argparse.Namespace(**vars(args))
            args2.tensor_model_parallel_size = N + 1
            state["args"] = args2
        if a.bad.startswith("evil-global:"):
            state["payload"] = Evil(a.bad.split(":", 1)[1])
        if a.bad == "missing-shard" and r == N - 1:
            continue
        d = os.path.join(a.out, folder, f"mp_rank_{r:02d}")
        os.makedirs(d, exist_ok=True)
        torch.save(state, os.path.join(d, "model_optim_rng.pt"))


if __name__ == "__main__":
    main()
