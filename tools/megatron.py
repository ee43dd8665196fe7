#!/usr/bin/env python3
"""Megatron-LM legacy checkpoints <-> dmc / HF Llama directories; `dmc convert --from-megatron / --to-megatron`
runs this (the user sees one command).

Why Python: the checkpoint is a torch.save pickle. torch's own unpickler with weights_only=True is the safe reader
that exists (it refuses every global that is not allow-listed and runs no code); writing another pickle VM in C++
would be a second, less tested one. Only three globals beyond torch's tensors are allowed, as the format notes
(../shared/megatron-format.md, section 3) list them: argparse.Namespace, io.BytesIO and megatron.core.enums.ModelType
(a stub enum here: Megatron need not be installed). Anything else in the pickle is refused before it runs.

  megatron.py import DIR OUT [--dmc auto|on|off] [--vocab-size V] [--dtype keep|bf16|fp16|fp32]
      DIR: a checkpoint root (latest_checkpointed_iteration.txt + iter_NNNNNNN/ or release/), an iter_*/release
      folder, or a root holding mp_rank_* directly (the HF release layout). Writes OUT/config.json (HF Llama keys,
      plus the "dmc" object dmc records DMC models with) and OUT/model.safetensors (HF names).
  megatron.py export HF_DIR OUT --tensor-parallel N [--iteration I | --release] [--make-vocab-size-divisible-by 128]
      the reverse: OUT/latest_checkpointed_iteration.txt and OUT/iter_{I:07d}/mp_rank_{r:02d}/model_optim_rng.pt with
      args, checkpoint_version 3.0, iteration and the _extra_state entries Megatron's strict load needs.

Errors: one line on stderr naming the file and field, exit status 1 (2 for usage errors).
"""
import argparse
import enum
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile

import torch


class Bad(Exception):
    pass


def fail(*parts):
    raise Bad("".join(str(p) for p in parts))


# ---- safe loading ----

class ModelType(enum.Enum):
    """Stand-in for megatron.core.enums.ModelType (values as megatron/core/enums.py)."""
    encoder_or_decoder = 1
    retro_encoder = 2
    retro_decoder = 3
    encoder_and_decoder = 4


ModelType.__module__ = "megatron.core.enums"


def stub_megatron_module():
    """torch.save pickles args.model_type by reference (GLOBAL megatron.core.enums ModelType): the name must resolve
    in this process, which has no Megatron installed."""
    import types
    for name in ("megatron", "megatron.core", "megatron.core.enums"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["megatron.core.enums"].ModelType = ModelType
ALLOWED = [argparse.Namespace, io.BytesIO, (ModelType, "megatron.core.enums.ModelType")]


def safe_load(path):
    try:
        with torch.serialization.safe_globals(ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        fail(path, ": missing")
    except Exception as e:  # noqa: BLE001 - torch's UnpicklingError names the refused global
        msg = str(e).split("\n")
        hint = next((m for m in msg if "GLOBAL" in m or "global" in m), msg[0])
        fail(path, ": refused by the safe loader (weights_only=True with the allow-list argparse.Namespace, "
             "io.BytesIO, megatron.core.enums.ModelType): ", hint.strip())


# ---- layout ----

RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")


def find_shards(root):
    """The folder holding mp_rank_* and {tp_rank: file}."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        fail(root, ": not a directory")
    folder = root
    tracker = os.path.join(root, "latest_checkpointed_iteration.txt")
    if not any(RANK_DIR.match(n) for n in os.listdir(root)):
        if not os.path.exists(tracker):
            fail(root, ": no mp_rank_* folders and no latest_checkpointed_iteration.txt (expected a Megatron "
                 "checkpoint root, an iter_*/release folder or a root with mp_rank_* as the HF release has)")
        with open(tracker) as f:
            it = f.read().strip()
        if it == "release":
            folder = os.path.join(root, "release")
        else:
            if not it.isdigit() or int(it) <= 0:
                fail(tracker, ": expected an iteration > 0 or 'release', got ", repr(it))
            folder = os.path.join(root, f"iter_{int(it):07d}")
        if not os.path.isdir(folder):
            fail(tracker, ": names ", os.path.basename(folder), " but ", folder, " does not exist")
    shards, pp = {}, set()
    for n in sorted(os.listdir(folder)):
        m = RANK_DIR.match(n)
        if not m:
            continue
        if m.group(2) is not None and int(m.group(2)) != 0 or m.group(3) is not None:
            fail(os.path.join(folder, n), ": pipeline or expert parallel checkpoints are not supported (PP = EP = 1)")
        pp.add(m.group(2))
        shards[int(m.group(1))] = os.path.join(folder, n, "model_optim_rng.pt")
    if not shards:
        fail(folder, ": no mp_rank_* folders")
    tp = len(shards)
    if sorted(shards) != list(range(tp)):
        fail(folder, ": tensor-parallel ranks ", sorted(shards), " are not 0..", tp - 1, " (a missing shard?)")
    for r, p in shards.items():
        if not os.path.isfile(p):
            fail(p, ": missing (tensor-parallel rank ", r, ")")
    return folder, [shards[r] for r in range(tp)]


def arg(args, name, path):
    """A required args attribute (missing or None: an error naming the file and the attribute)."""
    v = getattr(args, name, None)
    if v is None:
        fail(path, ": args.", name, " is missing")
    return v


def read_checkpoint(root):
    folder, files = find_shards(root)
    tp = len(files)
    states = [safe_load(p) for p in files]
    for p, s in zip(files, states):
        if not isinstance(s, dict):
            fail(p, ": expected a dict at the top level")
        for k in ("args", "model"):
            if k not in s:
                fail(p, ": field '", k, "' is missing", " (a virtual-pipeline checkpoint with model0, model1, ...?)"
                     if k == "model" and "model0" in s else "")
        if "iteration" not in s:
            fail(p, ": field 'iteration' is missing (Megatron's loader requires it)")
        if not isinstance(s["args"], argparse.Namespace):
            fail(p, ": field 'args' is not an argparse.Namespace")
        a = s["args"]
        t = getattr(a, "tensor_model_parallel_size", None)
        if t is not None and t != tp:
            missing = ", ".join(f"mp_rank_{r:02d}" for r in range(tp, t))
            fail(p, ": args.tensor_model_parallel_size is ", t, " but the checkpoint has ", tp, " mp_rank folders",
                 f" (missing shards: {missing})" if t > tp else "")
        pps = getattr(a, "pipeline_model_parallel_size", 1) or 1
        if pps != 1:
            fail(p, ": args.pipeline_model_parallel_size is ", pps, " (only 1 is supported)")
    return files, states


def shape_from_args(a, path):
    L = arg(a, "num_layers", path)
    h = arg(a, "hidden_size", path)
    nh = arg(a, "num_attention_heads", path)
    kv = getattr(a, "kv_channels", None) or h // nh
    # group_query_attention False: num_query_groups is ignored (defaults to 1), every head has its own k / v
    ng = arg(a, "num_query_groups", path) if getattr(a, "group_query_attention", False) else nh
    ffn = arg(a, "ffn_hidden_size", path)
    rp = getattr(a, "rotary_percent", None)
    if rp is None or float(rp) != 1.0:
        fail(path, ": args.rotary_percent is ", rp, "; dmc supports rotary over the whole head (1.0) only")
    if getattr(a, "rotary_interleaved", False):
        fail(path, ": args.rotary_interleaved is True; dmc (like HF Llama) uses rotate-half RoPE")
    if getattr(a, "swiglu", None) is not True:
        fail(path, ": args.swiglu is ", getattr(a, "swiglu", None), " (a Llama MLP is SwiGLU)")
    if getattr(a, "add_bias_linear", False) or getattr(a, "add_qkv_bias", False):
        fail(path, ": args.add_bias_linear / add_qkv_bias are set; dmc's Llama has no biases")
    norm = getattr(a, "normalization", "RMSNorm")
    if norm != "RMSNorm":
        fail(path, ": args.normalization is ", norm, " (expected RMSNorm)")
    if nh % ng:
        fail(path, ": args.num_attention_heads ", nh, " is not a multiple of the query groups ", ng)
    return dict(L=L, h=h, nh=nh, ng=ng, kv=kv, ffn=ffn,
                eps=float(getattr(a, "norm_epsilon", None) or 1e-5),
                theta=float(getattr(a, "rotary_base", None) or 10000),
                max_pos=int(getattr(a, "max_position_embeddings", None) or getattr(a, "seq_length", None) or 4096),
                tied=not getattr(a, "untie_embeddings_and_output_weights", False))


def merge(files, states, sh, true_vocab):
    """Megatron shards -> HF tensors (section 8 of the format notes)."""
    tp = len(files)
    L, h, nh, ng, kv, ffn = sh["L"], sh["h"], sh["nh"], sh["ng"], sh["kv"], sh["ffn"]
    if ng % tp or ffn % tp:
        fail(files[0], ": query groups ", ng, " / ffn ", ffn, " do not divide over tensor parallel ", tp)
    models = [s["model"] for s in states]
    names = set(models[0])
    for p, m in zip(files[1:], models[1:]):
        if set(m) != names:
            fail(p, ": its keys differ from rank 0's (", sorted(set(m) ^ names)[:3], ")")

    def get(r, key, shape):
        m = models[r]
        if key not in m:
            fail(files[r], ": key '", key, "' is missing")
        t = m[key]
        if not isinstance(t, torch.Tensor):
            fail(files[r], ": key '", key, "' is not a tensor")
        if shape is not None and tuple(t.shape) != tuple(shape):
            fail(files[r], ": key '", key, "' has shape ", list(t.shape), ", args say ", list(shape))
        return t

    used = set()

    def cat(key, shape, dim):
        used.add(key)
        return torch.cat([get(r, key, shape) for r in range(tp)], dim)

    def rep(key, shape):
        used.add(key)
        return get(0, key, shape)

    vp = models[0].get("embedding.word_embeddings.weight")
    if not isinstance(vp, torch.Tensor) or vp.dim() != 2:
        fail(files[0], ": key 'embedding.word_embeddings.weight' is missing or not a matrix")
    vloc = vp.shape[0]
    padded = vloc * tp
    V = true_vocab or padded
    if V > padded:
        fail(files[0], ": vocabulary ", V, " is larger than the checkpoint's ", padded, " rows")
    out = {}
    out["model.embed_tokens.weight"] = cat("embedding.word_embeddings.weight", (vloc, h), 0)[:V]
    qpg = nh // ng
    for i in range(L):
        p = f"decoder.layers.{i}."
        o = f"model.layers.{i}."
        out[o + "input_layernorm.weight"] = rep(p + "self_attention.linear_qkv.layer_norm_weight", (h,))
        w = cat(p + "self_attention.linear_qkv.weight", ((qpg + 2) * kv * ng // tp, h), 0).view(ng, (qpg + 2) * kv, h)
        out[o + "self_attn.q_proj.weight"] = w[:, :qpg * kv].reshape(-1, h).clone()
        out[o + "self_attn.k_proj.weight"] = w[:, qpg * kv:(qpg + 1) * kv].reshape(-1, h).clone()
        out[o + "self_attn.v_proj.weight"] = w[:, (qpg + 1) * kv:].reshape(-1, h).clone()
        out[o + "self_attn.o_proj.weight"] = cat(p + "self_attention.linear_proj.weight", (h, nh * kv // tp), 1)
        out[o + "post_attention_layernorm.weight"] = rep(p + "mlp.linear_fc1.layer_norm_weight", (h,))
        fc1 = [get(r, p + "mlp.linear_fc1.weight", (2 * ffn // tp, h)) for r in range(tp)]
        used.add(p + "mlp.linear_fc1.weight")
        out[o + "mlp.gate_proj.weight"] = torch.cat([f[:ffn // tp] for f in fc1], 0)
        out[o + "mlp.up_proj.weight"] = torch.cat([f[ffn // tp:] for f in fc1], 0)
        out[o + "mlp.down_proj.weight"] = cat(p + "mlp.linear_fc2.weight", (h, ffn // tp), 1)
    out["model.norm.weight"] = rep("decoder.final_layernorm.weight", (h,))
    if "output_layer.weight" in names:
        out["lm_head.weight"] = cat("output_layer.weight", (vloc, h), 0)[:V]
    elif not sh["tied"]:
        fail(files[0], ": key 'output_layer.weight' is missing but args.untie_embeddings_and_output_weights is True")
    # everything else must be Transformer Engine's extra state (or a dropped rotary buffer)
    for k in sorted(names - used):
        if k.endswith("_extra_state") or k.endswith("rotary_pos_emb.inv_freq") or k == "output_layer._extra_state":
            continue
        fail(files[0], ": unexpected key '", k, "' (not part of a Llama GPTModel)")
    return {k: v.contiguous() for k, v in out.items()}, padded


def cmd_import(a):
    files, states = read_checkpoint(a.dir)
    args = states[0]["args"]
    sh = shape_from_args(args, files[0])
    true_vocab = a.vocab_size or getattr(args, "true_vocab_size", None) or 0
    tensors, padded = merge(files, states, sh, true_vocab)
    V = tensors["model.embed_tokens.weight"].shape[0]
    dt = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}[
        a.dtype]
    if dt is not None:
        tensors = {k: v.to(dt) for k, v in tensors.items()}
    dtype_name = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
                  torch.float64: "float64"}[
        tensors["model.embed_tokens.weight"].dtype]
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": sh["h"], "intermediate_size": sh["ffn"], "num_hidden_layers": sh["L"],
        "num_attention_heads": sh["nh"], "num_key_value_heads": sh["ng"], "head_dim": sh["kv"],
        "max_position_embeddings": sh["max_pos"], "rms_norm_eps": sh["eps"], "rope_theta": sh["theta"],
        "vocab_size": V, "tie_word_embeddings": "lm_head.weight" not in tensors, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "torch_dtype": dtype_name, "bos_token_id": 1, "eos_token_id": 2,
    }
    dmc_args = {k: getattr(args, k) for k in vars(args) if k.startswith("dmc_")}
    on = a.dmc == "on" or (a.dmc == "auto" and bool(dmc_args))
    if on:
        cfg["dmc"] = {"enabled": True, "stage": "", "init_val": float(dmc_args.get("dmc_init_val", 5.0)),
                      "window": int(dmc_args.get("dmc_window_size", 12)),
                      "target_cr": float(dmc_args.get("dmc_cr", 4.0))}
    cfg["megatron"] = {"iteration": states[0]["iteration"], "tensor_model_parallel_size": len(files),
                       "padded_vocab_size": padded, "checkpoint_version": states[0].get("checkpoint_version"),
                       "dmc_args": {k: (v if isinstance(v, (int, float, bool, str)) or v is None else str(v))
                                    for k, v in dmc_args.items()}}
    from safetensors.torch import save_file

    def write(tmp):
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        if a.tokenizer:
            shutil.copyfile(a.tokenizer, os.path.join(tmp, "tokenizer.model"))
    publish(a.out, write)
    print(json.dumps({"tensor_parallel": len(files), "iteration": states[0]["iteration"], "vocab_size": V,
                      "padded_vocab_size": padded, "dmc": on, "layers": sh["L"]}))


def publish(out, write):
    """write(dir) fills a directory that then becomes `out`: an existing empty `out` (dmc's staging directory,
    which dmc renames into place) is filled directly; otherwise a temporary sibling is renamed to `out`."""
    out = os.path.abspath(out)
    if os.path.isdir(out) and not os.listdir(out):
        write(out)
        return
    if os.path.exists(out):
        fail(out, ": exists")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-megatron-", dir=parent)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- export ----

def te_extra_state():
    """Transformer Engine 1.x's get_extra_state without FP8: a BytesIO holding torch.save(None)."""
    b = io.BytesIO()
    torch.save(None, b)
    b.seek(0)
    return b


def cmd_export(a):
    from safetensors.torch import load_file
    stub_megatron_module()
    src = os.path.abspath(a.hf_dir)
    cfg_path = os.path.join(src, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        fail(cfg_path, ": missing")
    except json.JSONDecodeError as e:
        fail(cfg_path, ": not valid JSON (", e, ")")
    files = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))
    if not files:
        fail(src, ": no .safetensors files")
    t = {}
    for n in files:
        t.update(load_file(os.path.join(src, n)))
    need = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
    for k in need:
        if k not in cfg:
            fail(cfg_path, ": field '", k, "' is missing")
    h, ffn, L, nh, V = (cfg[k] for k in need)
    ng = cfg.get("num_key_value_heads") or nh
    kv = cfg.get("head_dim") or h // nh
    tp = a.tensor_parallel
    if ng % tp or ffn % tp or nh % tp:
        fail("--tensor-parallel ", tp, ": must divide the query groups (", ng, "), heads (", nh, ") and ffn (", ffn, ")")
    div = a.make_vocab_size_divisible_by * tp
    Vp = int(math.ceil(V / div) * div)
    qpg = nh // ng

    def T(k, shape):
        if k not in t:
            fail(src, ": tensor '", k, "' is missing")
        if tuple(t[k].shape) != tuple(shape):
            fail(src, ": tensor '", k, "' has shape ", list(t[k].shape), ", config.json says ", list(shape))
        return t[k]

    def pad_vocab(w):  # Megatron's saver fills the padding rows with the last real row
        return torch.cat([w, w[-1:].expand(Vp - V, -1)], 0) if Vp > V else w

    emb = pad_vocab(T("model.embed_tokens.weight", (V, h)))
    tied = "lm_head.weight" not in t
    head = emb if tied else pad_vocab(T("lm_head.weight", (V, h)))
    ranks = [dict() for _ in range(tp)]
    for r in range(tp):
        m = ranks[r]
        m["embedding.word_embeddings.weight"] = emb.chunk(tp, 0)[r].clone()
        for i in range(L):
            o = f"model.layers.{i}."
            p = f"decoder.layers.{i}."
            q = T(o + "self_attn.q_proj.weight", (nh * kv, h)).view(ng, qpg * kv, h)
            k_ = T(o + "self_attn.k_proj.weight", (ng * kv, h)).view(ng, kv, h)
            v = T(o + "self_attn.v_proj.weight", (ng * kv, h)).view(ng, kv, h)
            qkv = torch.cat([q, k_, v], 1)  # [ng, (qpg + 2) kv, h]: whole query groups
            g = ng // tp
            # the layer's extra states in Megatron's order (core_attention has none: loads on every TE version)
            m[p + "self_attention.linear_proj.weight"] = T(o + "self_attn.o_proj.weight", (h, nh * kv)).chunk(tp, 1)[r].clone()
            m[p + "self_attention.linear_proj._extra_state"] = te_extra_state()
            m[p + "self_attention.linear_qkv.layer_norm_weight"] = T(o + "input_layernorm.weight", (h,)).clone()
            m[p + "self_attention.linear_qkv.weight"] = qkv[r * g:(r + 1) * g].reshape(-1, h).clone()
            m[p + "self_attention.linear_qkv._extra_state"] = te_extra_state()
            m[p + "mlp.linear_fc1.layer_norm_weight"] = T(o + "post_attention_layernorm.weight", (h,)).clone()
            gate = T(o + "mlp.gate_proj.weight", (ffn, h)).chunk(tp, 0)[r]
            up = T(o + "mlp.up_proj.weight", (ffn, h)).chunk(tp, 0)[r]
            m[p + "mlp.linear_fc1.weight"] = torch.cat([gate, up], 0).clone()
            m[p + "mlp.linear_fc1._extra_state"] = te_extra_state()
            m[p + "mlp.linear_fc2.weight"] = T(o + "mlp.down_proj.weight", (h, ffn)).chunk(tp, 1)[r].clone()
            m[p + "mlp.linear_fc2._extra_state"] = te_extra_state()
        m["decoder.final_layernorm.weight"] = T("model.norm.weight", (h,)).clone()
        if not tied:
            m["output_layer.weight"] = head.chunk(tp, 0)[r].clone()
            m["output_layer._extra_state"] = None
    dtype = t["model.embed_tokens.weight"].dtype
    dmc = cfg.get("dmc") or {}
    ns = argparse.Namespace(
        num_layers=L, hidden_size=h, num_attention_heads=nh, ffn_hidden_size=ffn, kv_channels=kv,
        group_query_attention=ng != nh, num_query_groups=ng,
        seq_length=cfg.get("max_position_embeddings", 4096), max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        position_embedding_type="rope", use_rotary_position_embeddings=True, add_position_embedding=False,
        rotary_percent=1.0, rotary_base=int(cfg.get("rope_theta", 10000)), rotary_interleaved=False,
        use_rope_scaling=False, rotary_seq_len_interpolation_factor=None,
        normalization="RMSNorm", norm_epsilon=cfg.get("rms_norm_eps", 1e-5), apply_layernorm_1p=False,
        swiglu=True, add_bias_linear=False, add_qkv_bias=False, untie_embeddings_and_output_weights=not tied,
        padded_vocab_size=Vp, make_vocab_size_divisible_by=a.make_vocab_size_divisible_by,
        tokenizer_type="Llama2Tokenizer", tensor_model_parallel_size=tp, pipeline_model_parallel_size=1,
        virtual_pipeline_model_parallel_size=None, params_dtype=dtype, bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16, model_type=ModelType.encoder_or_decoder, transformer_impl="transformer_engine",
        use_legacy_models=False, apply_query_key_layer_scaling=False, iteration=a.iteration,
        true_vocab_size=V)  # Megatron's loader_mcore takes --true-vocab-size; here it lets an import drop the padding
    if dmc.get("enabled"):
        ns.dmc_init_val = float(dmc.get("init_val", 5.0))
        ns.dmc_window_size = int(dmc.get("window", 12))
        ns.dmc_cr = float(dmc.get("target_cr", 4.0))
    sub = "release" if a.release else f"iter_{a.iteration:07d}"

    def write(tmp):
        for r in range(tp):
            d = os.path.join(tmp, sub, f"mp_rank_{r:02d}")
            os.makedirs(d)
            torch.save({"args": ns, "checkpoint_version": 3.0, "iteration": a.iteration, "model": ranks[r],
                        "num_floating_point_operations_so_far": 0}, os.path.join(d, "model_optim_rng.pt"))
        with open(os.path.join(tmp, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("release" if a.release else str(a.iteration))  # no newline, as Megatron writes it
    publish(a.out, write)
    print(json.dumps({"tensor_parallel": tp, "iteration": a.iteration, "padded_vocab_size": Vp, "layers": L}))


def main():
    ap = argparse.ArgumentParser(description="Megatron-LM legacy checkpoints <-> dmc / HF Llama directories")
    sp = ap.add_subparsers(dest="cmd", required=True)
    i = sp.add_parser("import")
    i.add_argument("dir")
    i.add_argument("out")
    i.add_argument("--dmc", choices=["auto", "on", "off"], default="auto")
    i.add_argument("--vocab-size", type=int, default=0)
    i.add_argument("--tokenizer", default="")
    i.add_argument("--dtype", choices=["keep", "bf16", "fp16", "fp32", "fp64"], default="keep")
    e = sp.add_parser("export")
    e.add_argument("hf_dir")
    e.add_argument("out")
    e.add_argument("--tensor-parallel", type=int, required=True)
    e.add_argument("--iteration", type=int, default=1)
    e.add_argument("--release", action="store_true")
    e.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    a = ap.parse_args()
    try:
        if a.cmd == "import":
            if a.vocab_size < 0:
                fail("--vocab-size: must be >= 0")
            if a.tokenizer and not os.path.isfile(a.tokenizer):
                fail(a.tokenizer, ": --tokenizer: no such file")
            cmd_import(a)
        else:
            if a.tensor_parallel < 1 or a.iteration < 1 or a.make_vocab_size_divisible_by < 1:
                fail("--tensor-parallel, --iteration and --make-vocab-size-divisible-by must be >= 1")
            cmd_export(a)
    except Bad as b:
        print(f"error: {b}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
