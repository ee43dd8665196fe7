#include "model/llama.h"
#include "ops/fused_ops.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "common/log.h"
#include "common/files.h"
#include "common/util.h"
#include "io/gguf.h"
#include "io/safetensors.h"

#include <set>

namespace dmc {
namespace fs = std::filesystem;

at::Tensor rope_inv_freq(const LlamaConfig& c, at::Device device) {
  const int64_t d = c.head_dim;
  at::Tensor idx = at::arange(0, d, 2, at::kLong).to(at::kFloat);
  at::Tensor inv = 1.0 / at::pow(at::scalar_tensor(c.rope_theta, at::kFloat), idx / (double)d);
  const auto& rs = c.rope_scaling;
  if (rs.type == "linear") {
    inv = inv / rs.factor;
  } else if (rs.type == "llama3") {
    const double old_ctx = (double)rs.original_max_position_embeddings;
    const double low_wl = old_ctx / rs.low_freq_factor, high_wl = old_ctx / rs.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > low_wl, inv / rs.factor, inv);
    at::Tensor smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    at::Tensor medium = at::logical_and(wavelen >= high_wl, wavelen <= low_wl);
    inv = at::where(medium, smoothed, scaled);
  }
  if (!c.dmc.rope_pairs.empty()) inv = inv.index_select(0, at::tensor(c.dmc.rope_pairs, at::kLong));
  return inv.to(device);
}

// ---- load / save / init ------------------------------------------------------------------------------

namespace {
std::string lname(int64_t l, const char* rest) { return cat("model.layers.", l, ".", rest); }

at::Tensor fetch(const io::TensorStore& st, const std::string& name, std::vector<int64_t> shape, at::ScalarType dtype,
                 at::Device device) {
  const auto& info = st.info(name);
  if (info.shape != shape)
    fail(st.file_of(name), ": tensor '", name, "' has shape ", c10::IntArrayRef(info.shape), ", config.json implies ",
         c10::IntArrayRef(shape));
  if (!at::isFloatingType(info.dtype))
    fail(st.file_of(name), ": tensor '", name, "' has dtype ", c10::toString(info.dtype), ", expected a float type");
  return st.get(name).to(device, dtype);
}
// Tensors in the files that the model does not read: layers beyond num_hidden_layers are an error (the config and
// the weights disagree: a silently truncated model otherwise), anything else is named in a warning.
void check_unused_tensors(const io::TensorStore& st, const std::string& dir, const LlamaConfig& c) {
  std::vector<std::string> unused;
  int64_t max_layer = -1;
  std::string example;
  for (const auto& n : st.names()) {
    if (n.rfind("model.layers.", 0) == 0) {
      const size_t dot = n.find('.', 13);
      int64_t l = -1;
      try {
        l = std::stoll(n.substr(13, dot == std::string::npos ? std::string::npos : dot - 13));
      } catch (...) {}
      if (l >= c.num_hidden_layers) {
        if (l > max_layer) {
          max_layer = l;
          example = n;
        }
        continue;
      }
    }
    static const std::vector<std::string> layer_keys = {
        "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};
    bool used = n == "model.embed_tokens.weight" || n == "model.norm.weight" ||
                (n == "lm_head.weight" && !c.tie_word_embeddings);
    for (int64_t l = 0; !used && l < c.num_hidden_layers && n.rfind("model.layers.", 0) == 0; ++l)
      for (const auto& k : layer_keys)
        if (n == lname(l, k.c_str())) {
          used = true;
          break;
        }
    if (!used) unused.push_back(n);
  }
  if (max_layer >= 0)
    fail(dir, "/config.json: field 'num_hidden_layers' is ", c.num_hidden_layers, " but the weights hold ",
         max_layer + 1, " layers (e.g. '", example, "' in ", st.file_of(example), ")");
  if (!unused.empty()) {
    std::string names;
    for (size_t i = 0; i < unused.size() && i < 5; ++i) names += (i ? ", " : "") + unused[i];
    if (unused.size() > 5) names += cat(", ... (", unused.size(), " in all)");
    log::warn(cat(dir, ": ", unused.size(), " tensor(s) in the files are not used by the model: ", names));
  }
}
}  // namespace

Llama Llama::load_gguf(const std::string& path, at::ScalarType dtype, at::Device device) {
  auto g = io::GgufFile::open(path);
  Llama m;
  m.config = LlamaConfig::from_gguf_metadata(g->metadata(), path, g->find("output.weight") != nullptr);
  const auto& c = m.config;
  const int64_t H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  std::set<std::string> used;
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    const io::GgufTensor* t = g->find(name);
    if (!t) fail(path, ": missing tensor '", name, "'");
    if (t->torch_shape() != shape)
      fail(path, ": tensor '", name, "' has shape ", c10::IntArrayRef(t->torch_shape()), ", the metadata implies ",
           c10::IntArrayRef(shape));
    used.insert(name);
    return g->dequantize(*t);
  };
  // llama.cpp stores q and k rows per head as (pair index, half) instead of HF's (half, pair index)
  auto unpermute = [&](const at::Tensor& w, int64_t heads) {
    return w.reshape({heads, D / 2, 2, H}).transpose(1, 2).reshape({heads * D, H});
  };
  auto put = [&](const at::Tensor& t) { return t.to(device, dtype).contiguous(); };
  m.embed = put(get("token_embd.weight", {c.vocab_size, H}));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    LlamaLayer L;
    L.attn_norm = put(get(b + "attn_norm.weight", {H}));
    L.wqkv = put(at::cat({unpermute(get(b + "attn_q.weight", {c.q_size(), H}), c.num_attention_heads),
                          unpermute(get(b + "attn_k.weight", {c.kv_size(), H}), c.num_key_value_heads),
                          get(b + "attn_v.weight", {c.kv_size(), H})}));
    L.wo = put(get(b + "attn_output.weight", {H, c.q_size()}));
    L.mlp_norm = put(get(b + "ffn_norm.weight", {H}));
    L.w_gate_up = put(at::cat({get(b + "ffn_gate.weight", {F, H}), get(b + "ffn_up.weight", {F, H})}));
    L.w_down = put(get(b + "ffn_down.weight", {H, F}));
    m.layers.push_back(std::move(L));
  }
  m.norm = put(get("output_norm.weight", {H}));
  m.lm_head = c.tie_word_embeddings ? m.embed : put(get("output.weight", {c.vocab_size, H}));
  for (const auto& t : g->tensors())
    if (!used.count(t.name)) {
      if (t.name.rfind("blk.", 0) == 0 && std::stoll(t.name.substr(4)) >= c.num_hidden_layers)
        fail(path, ": tensor '", t.name, "' belongs to a layer beyond llama.block_count (", c.num_hidden_layers, ")");
      log::warn(cat(path, ": tensor '", t.name, "' is not used by the model"));
    }
  m.inv_freq = rope_inv_freq(c, device);
  return m;
}

Llama Llama::load(const std::string& dir, at::ScalarType dtype, at::Device device) {
  if (io::is_gguf_path(dir)) return load_gguf(dir, dtype, device);
  require_dir(dir, "model directory");
  Llama m;
  m.config = LlamaConfig::load(dir + "/config.json");
  const auto& c = m.config;
  auto st = io::TensorStore::open_dir(dir);
  const int64_t H = c.hidden_size, F = c.intermediate_size;
  m.embed = fetch(st, "model.embed_tokens.weight", {c.vocab_size, H}, dtype, device);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LlamaLayer L;
    L.attn_norm = fetch(st, lname(l, "input_layernorm.weight"), {H}, dtype, device);
    L.wqkv = at::cat({fetch(st, lname(l, "self_attn.q_proj.weight"), {c.q_size(), H}, dtype, device),
                      fetch(st, lname(l, "self_attn.k_proj.weight"), {c.kv_size(), H}, dtype, device),
                      fetch(st, lname(l, "self_attn.v_proj.weight"), {c.kv_size(), H}, dtype, device)});
    L.wo = fetch(st, lname(l, "self_attn.o_proj.weight"), {H, c.q_size()}, dtype, device);
    L.mlp_norm = fetch(st, lname(l, "post_attention_layernorm.weight"), {H}, dtype, device);
    L.w_gate_up = at::cat({fetch(st, lname(l, "mlp.gate_proj.weight"), {F, H}, dtype, device),
                           fetch(st, lname(l, "mlp.up_proj.weight"), {F, H}, dtype, device)});
    L.w_down = fetch(st, lname(l, "mlp.down_proj.weight"), {H, F}, dtype, device);
    m.layers.push_back(std::move(L));
  }
  m.norm = fetch(st, "model.norm.weight", {H}, dtype, device);
  if (c.tie_word_embeddings) {
    m.lm_head = m.embed;
  } else {
    m.lm_head = fetch(st, "lm_head.weight", {c.vocab_size, H}, dtype, device);
  }
  check_unused_tensors(st, dir, c);
  // A fetch() of a same-dtype CPU tensor aliases the read-only-backed mapping: own the memory instead, so
  // that in-place updates (training) never touch the mapping and the files can be replaced safely.
  if (device.is_cpu()) {
    auto own = [](at::Tensor& t) { t = t.clone(); };
    own(m.embed);
    own(m.norm);
    if (!c.tie_word_embeddings)
      own(m.lm_head);
    else
      m.lm_head = m.embed;
    for (auto& L : m.layers) {
      own(L.attn_norm);
      own(L.wo);
      own(L.mlp_norm);
      own(L.w_down);
    }
  }
  m.inv_freq = rope_inv_freq(c, device);
  return m;
}

Llama Llama::random(const LlamaConfig& c, uint64_t seed, at::ScalarType dtype, at::Device device, double init_std) {
  c.validate("model config");
  torch::manual_seed(seed);
  auto opt = at::TensorOptions().dtype(at::kFloat).device(device);
  auto mat = [&](int64_t r, int64_t k) { return (at::randn({r, k}, opt) * init_std).to(dtype); };
  auto ones = [&](int64_t n) { return at::ones({n}, opt.dtype(dtype)); };
  Llama m;
  m.config = c;
  const int64_t H = c.hidden_size, F = c.intermediate_size;
  m.embed = mat(c.vocab_size, H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LlamaLayer L;
    L.attn_norm = ones(H);
    L.wqkv = mat(c.q_size() + 2 * c.kv_size(), H);
    L.wo = mat(H, c.q_size());
    L.mlp_norm = ones(H);
    L.w_gate_up = mat(2 * F, H);
    L.w_down = mat(H, F);
    m.layers.push_back(std::move(L));
  }
  m.norm = ones(H);
  m.lm_head = c.tie_word_embeddings ? m.embed : mat(c.vocab_size, H);
  m.inv_freq = rope_inv_freq(c, device);
  return m;
}

std::vector<std::pair<std::string, at::Tensor>> Llama::hf_tensors() const {
  const auto& c = config;
  const int64_t F = c.intermediate_size;
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", embed);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& L = layers[l];
    out.emplace_back(lname(l, "input_layernorm.weight"), L.attn_norm);
    out.emplace_back(lname(l, "self_attn.q_proj.weight"), L.wqkv.narrow(0, 0, c.q_size()));
    out.emplace_back(lname(l, "self_attn.k_proj.weight"), L.wqkv.narrow(0, c.q_size(), c.kv_size()));
    out.emplace_back(lname(l, "self_attn.v_proj.weight"), L.wqkv.narrow(0, c.q_size() + c.kv_size(), c.kv_size()));
    out.emplace_back(lname(l, "self_attn.o_proj.weight"), L.wo);
    out.emplace_back(lname(l, "post_attention_layernorm.weight"), L.mlp_norm);
    out.emplace_back(lname(l, "mlp.gate_proj.weight"), L.w_gate_up.narrow(0, 0, F));
    out.emplace_back(lname(l, "mlp.up_proj.weight"), L.w_gate_up.narrow(0, F, F));
    out.emplace_back(lname(l, "mlp.down_proj.weight"), L.w_down);
  }
  out.emplace_back("model.norm.weight", norm);
  if (!c.tie_word_embeddings) out.emplace_back("lm_head.weight", lm_head);
  return out;
}

void Llama::save(const std::string& dir, at::ScalarType dtype, int64_t max_shard_bytes, bool overwrite,
                 const std::vector<std::string>& inputs, const std::map<std::string, std::string>& extra_files) const {
  OutputDir out(dir, overwrite, inputs, "output model directory");
  LlamaConfig c = config;
  c.torch_dtype = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  c.save(out.staging() + "/config.json");
  auto tensors = hf_tensors();
  for (auto& nt : tensors) nt.second = nt.second.detach().to(at::kCPU, dtype);
  io::save_dir(out.staging(), tensors, max_shard_bytes, {{"format", "pt"}});
  for (const auto& [name, text] : extra_files) write_file_atomic(out.staging() + "/" + name, text);
  out.commit();
}

// ---- forward ------------------------------------------------------------------------------------------

std::string Llama::layer_param_name(int64_t l, const char* field) { return cat("layers.", l, ".", field); }

std::vector<std::pair<std::string, at::Tensor*>> Llama::parameters() {
  std::vector<std::pair<std::string, at::Tensor*>> p;
  p.emplace_back("embed", &embed);
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& L = layers[l];
    const int64_t i = (int64_t)l;
    p.emplace_back(layer_param_name(i, "attn_norm"), &L.attn_norm);
    p.emplace_back(layer_param_name(i, "wqkv"), &L.wqkv);
    p.emplace_back(layer_param_name(i, "wo"), &L.wo);
    p.emplace_back(layer_param_name(i, "mlp_norm"), &L.mlp_norm);
    p.emplace_back(layer_param_name(i, "w_gate_up"), &L.w_gate_up);
    p.emplace_back(layer_param_name(i, "w_down"), &L.w_down);
  }
  p.emplace_back("norm", &norm);
  if (!config.tie_word_embeddings) p.emplace_back("lm_head", &lm_head);
  return p;
}

std::pair<at::Tensor, at::Tensor> Llama::layer_forward(const LlamaLayer& L, int64_t l, const at::Tensor& x,
                                                       Attention& attn, bool recompute, bool sp,
                                                       const Gemm* gemm) const {
  // sequence parallel: each rank normalises its own tokens, so the replicated norm weights' gradients are partial
  // sums, added over the group by copy_to_group's backward
  auto nw = [&](const at::Tensor& w) { return sp ? copy_to_group(w, tp) : w; };
  // the projections: Megatron's column / row parallel forms, or the caller's GEMM (no grad, no sequence parallel)
  auto gemm_rows = [&](const at::Tensor& in, const at::Tensor& w) {
    return (*gemm)(in.reshape({-1, in.size(-1)}), w).view([&] {
      auto s = in.sizes().vec();
      s.back() = w.size(0);
      return s;
    }());
  };
  auto column = [&](const at::Tensor& in, const at::Tensor& w) {
    return gemm ? gemm_rows(in, w) : column_parallel_linear(in, w, tp, sp);
  };
  auto row = [&](const at::Tensor& in, const at::Tensor& w) {
    return gemm ? reduce_from_group(gemm_rows(in, w), tp) : row_parallel_linear(in, w, tp, sp);
  };
  const int64_t nh = local_heads(), nkv = local_kv_heads(), hd = config.head_dim;
  const int64_t B = attn.batch(), T = attn.seq_len();
  // [B, T, (nh + 2 nkv) hd], this rank's heads over every token (sequence parallel: gathered from the token shards)
  at::Tensor qkv = column(rms_norm(x, nw(L.attn_norm), config.rms_norm_eps), L.wqkv).view({B, T, (nh + 2 * nkv) * hd});
  Attention::Out a = attn.layer(l, qkv, recompute);  // [B, T, nh hd]
  at::Tensor h = x + row(a.o, L.wo);
  at::Tensor gu = column(rms_norm(h, nw(L.mlp_norm), config.rms_norm_eps), L.w_gate_up);
  return {h + row(swiglu(gu), L.w_down), a.aux};
}

namespace {
// Activation checkpointing of one layer: forward keeps only the layer input; backward recomputes the layer
// with grad enabled (and the forward's autocast state) and differentiates it.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  // Returns {x_out, aux} (aux: the attention's per-layer output, a [batch] of zeros when it has none). The attention
  // runs again in backward (recompute = true): whatever it draws must come from its own state (DMC: fed noise).
  // The six layer weights are separate arguments (a TensorList argument gets a single gradient slot).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& attn_norm, const at::Tensor& wqkv,
                                                const at::Tensor& wo, const at::Tensor& mlp_norm,
                                                const at::Tensor& w_gate_up, const at::Tensor& w_down,
                                                int64_t model_ptr, int64_t attn_ptr, int64_t l, bool sp) {
    const Llama* m = reinterpret_cast<const Llama*>(model_ptr);
    Attention* attn = reinterpret_cast<Attention*>(attn_ptr);
    std::vector<at::Tensor> saved{x, attn_norm, wqkv, wo, mlp_norm, w_gate_up, w_down};
    ctx->save_for_backward(saved);
    ctx->saved_data["m"] = model_ptr;
    ctx->saved_data["a"] = attn_ptr;
    ctx->saved_data["l"] = l;
    ctx->saved_data["sp"] = sp;
    const bool ac = at::autocast::is_autocast_enabled(at::kCUDA);
    ctx->saved_data["autocast"] = ac;
    ctx->saved_data["autocast_dtype"] = (int64_t)at::autocast::get_autocast_dtype(at::kCUDA);
    auto [y, aux] = m->layer_forward(m->layers[l], l, x, *attn, /*recompute=*/false, sp);
    if (!aux.defined()) aux = at::zeros({attn->batch()}, x.options().dtype(at::kFloat));
    return {y, aux};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const Llama* m = reinterpret_cast<const Llama*>(ctx->saved_data["m"].toInt());
    Attention* attn = reinterpret_cast<Attention*>(ctx->saved_data["a"].toInt());
    const int64_t l = ctx->saved_data["l"].toInt();
    at::Tensor x = saved[0].detach().requires_grad_(true);
    std::vector<at::Tensor> p;
    for (size_t i = 1; i < saved.size(); ++i) p.push_back(saved[i].detach().requires_grad_(saved[i].requires_grad()));
    LlamaLayer L{p[0], p[1], p[2], p[3], p[4], p[5]};
    at::Tensor y, dm;
    {
      at::AutoGradMode enable(true);
      const bool ac = ctx->saved_data["autocast"].toBool();
      const bool prev = at::autocast::is_autocast_enabled(at::kCUDA);
      const auto prev_dt = at::autocast::get_autocast_dtype(at::kCUDA);
      at::autocast::set_autocast_enabled(at::kCUDA, ac);
      at::autocast::set_autocast_dtype(at::kCUDA, (at::ScalarType)ctx->saved_data["autocast_dtype"].toInt());
      std::tie(y, dm) = m->layer_forward(L, l, x, *attn, /*recompute=*/true, ctx->saved_data["sp"].toBool());
      at::autocast::set_autocast_enabled(at::kCUDA, prev);
      at::autocast::set_autocast_dtype(at::kCUDA, prev_dt);
      at::autocast::clear_cache();
    }
    std::vector<at::Tensor> inputs{x};
    for (auto& t : p)
      if (t.requires_grad()) inputs.push_back(t);
    std::vector<at::Tensor> outs{y}, gouts{grad_out[0]};
    if (dm.defined() && dm.requires_grad() && grad_out[1].defined()) {
      outs.push_back(dm);
      gouts.push_back(grad_out[1].to(dm.scalar_type()));
    }
    auto grads = torch::autograd::grad(outs, inputs, gouts, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    torch::autograd::variable_list out{grads[0]};
    size_t gi = 1;
    for (auto& t : p) out.push_back(t.requires_grad() ? grads[gi++] : at::Tensor());
    out.push_back(at::Tensor());  // model_ptr
    out.push_back(at::Tensor());  // attn_ptr
    out.push_back(at::Tensor());  // l
    out.push_back(at::Tensor());  // sp
    return out;
  }
};
}  // namespace

at::Tensor Llama::embed_local(const at::Tensor& ids) const {
  const int64_t Vl = embed.size(0), start = tp.rank * Vl;
  at::Tensor local = ids - start;
  at::Tensor mine = (local >= 0) & (local < Vl);
  return at::embedding(embed, local.clamp(0, Vl - 1)) * mine.unsqueeze(-1).to(embed.scalar_type());
}

at::Tensor Llama::embed_tokens(const at::Tensor& ids) const {
  if (tp.size == 1) return at::embedding(embed, ids);
  // vocabulary-parallel: this rank looks up the ids in its slice, zeros elsewhere, the group sums
  return reduce_from_group(embed_local(ids), tp);
}

at::Tensor Llama::lm_logits(const at::Tensor& hidden) const {
  // under sequence parallelism forward_hidden's all-gather already sums the gradient over the group in backward
  return at::linear(sequence_parallel_now() ? hidden : copy_to_group(hidden, tp), lm_head);
}

at::Tensor Llama::forward_hidden(const at::Tensor& ids) const {
  if (!vanilla_) vanilla_ = std::make_shared<VanillaAttention>();
  return forward_hidden(ids, {}, *vanilla_);
}

at::Tensor Llama::forward_hidden(const at::Tensor& ids, const at::Tensor& positions, Attention& attn,
                                 const Gemm* gemm) const {
  TORCH_CHECK(ids.dim() == 2, "ids must be [batch, seq]");
  const int64_t B = ids.size(0), T = ids.size(1), H = config.hidden_size;
  const at::Tensor pos =
      positions.defined() ? positions : at::arange(T, at::TensorOptions().dtype(at::kLong).device(ids.device()));
  attn.begin(*this, ids, pos);
  attn.aux.assign(layers.size(), at::Tensor());
  const bool grad = at::GradMode::is_enabled();
  DMC_CHECK(!gemm || !grad, "forward_hidden: a custom GEMM is for no-grad forwards only");
  const bool recompute = activation_checkpointing && grad;
  if (recompute)
    DMC_CHECK(attn.checkpointable(),
              "activation checkpointing: this attention cannot run twice alike (DMC training "
              "needs pre-drawn noise)");
  const bool sp = sequence_parallel_now();
  if (sp)
    DMC_CHECK((B * T) % tp.size == 0, "sequence parallelism: batch x seq = ", B * T,
              " tokens do not split over tensor_parallel = ", tp.size);
  // sequence parallel: x is this rank's token rows [B T / tp, H]; else [B, T, H]
  at::Tensor x = sp ? reduce_scatter_tokens(embed_local(ids).reshape({B * T, H}), tp) : embed_tokens(ids);
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& L = layers[l];
    if (recompute) {
      auto outs =
          CheckpointedLayer::apply(x, L.attn_norm, L.wqkv, L.wo, L.mlp_norm, L.w_gate_up, L.w_down,
                                   reinterpret_cast<int64_t>(this), reinterpret_cast<int64_t>(&attn), (int64_t)l, sp);
      x = outs[0];
      attn.aux[l] = outs[1];
    } else {
      std::tie(x, attn.aux[l]) = layer_forward(L, (int64_t)l, x, attn, /*recompute=*/false, sp, gemm);
    }
  }
  if (!sp) return rms_norm(x, norm, config.rms_norm_eps);
  return gather_tokens(rms_norm(x, copy_to_group(norm, tp), config.rms_norm_eps), tp).view({B, T, H});
}

// ---- tensor parallelism ----------------------------------------------------------------------------------

namespace {
enum class Shard { Replicated, Qkv, WoCols, GateUp, DownCols, VocabRows };
Shard shard_kind(const std::string& name) {
  auto ends = [&](const char* s) {
    const std::string x(s);
    return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0;
  };
  if (ends("wqkv")) return Shard::Qkv;
  if (ends("wo")) return Shard::WoCols;
  if (ends("w_gate_up")) return Shard::GateUp;
  if (ends("w_down")) return Shard::DownCols;
  if (name == "embed" || name == "lm_head") return Shard::VocabRows;
  return Shard::Replicated;
}
}  // namespace

bool Llama::is_sharded(const std::string& name) const { return shard_kind(name) != Shard::Replicated; }

at::Tensor Llama::shard_of(const std::string& name, const at::Tensor& full, int64_t r, int64_t s) const {
  const auto& c = config;
  const int64_t hd = c.head_dim, nh = c.num_attention_heads, nkv = c.num_key_value_heads, F = c.intermediate_size,
                V = c.vocab_size;
  const int64_t nhl = nh / s, nkvl = nkv / s, Fl = F / s, Vl = V / s;
  switch (shard_kind(name)) {
    case Shard::Qkv:
      return at::cat({full.narrow(0, r * nhl * hd, nhl * hd), full.narrow(0, nh * hd + r * nkvl * hd, nkvl * hd),
                      full.narrow(0, (nh + nkv) * hd + r * nkvl * hd, nkvl * hd)})
          .contiguous();
    case Shard::WoCols: return full.narrow(1, r * nhl * hd, nhl * hd).contiguous();
    case Shard::GateUp: return at::cat({full.narrow(0, r * Fl, Fl), full.narrow(0, F + r * Fl, Fl)}).contiguous();
    case Shard::DownCols: return full.narrow(1, r * Fl, Fl).contiguous();
    case Shard::VocabRows: return full.narrow(0, r * Vl, Vl).contiguous();
    default: return full;
  }
}

at::Tensor Llama::unshard(const std::string& name, const at::Tensor& local) const {
  const Shard k = shard_kind(name);
  if (tp.size == 1 || k == Shard::Replicated) return local;
  const int64_t s = tp.size;
  // gather along dim 0 (columns are transposed there and back)
  const bool cols = k == Shard::WoCols || k == Shard::DownCols;
  at::Tensor g = all_gather_cat(cols ? local.t().contiguous() : local, tp);  // [s * rows, ...]
  std::vector<at::Tensor> parts = g.chunk(s, 0);
  if (cols) {
    for (auto& p : parts) p = p.t();
    return at::cat(parts, 1);
  }
  if (k == Shard::VocabRows) return at::cat(parts, 0);
  const auto& c = config;
  const int64_t hd = c.head_dim;
  std::vector<at::Tensor> a, b, d;
  for (auto& p : parts) {
    if (k == Shard::Qkv) {
      const int64_t q = local_heads() * hd, kv = local_kv_heads() * hd;
      a.push_back(p.narrow(0, 0, q));
      b.push_back(p.narrow(0, q, kv));
      d.push_back(p.narrow(0, q + kv, kv));
    } else {  // GateUp
      const int64_t Fl = p.size(0) / 2;
      a.push_back(p.narrow(0, 0, Fl));
      b.push_back(p.narrow(0, Fl, Fl));
    }
  }
  std::vector<at::Tensor> all = a;
  all.insert(all.end(), b.begin(), b.end());
  all.insert(all.end(), d.begin(), d.end());
  return at::cat(all, 0);
}

void Llama::shard_tensor_parallel(const Group& g) {
  const auto& c = config;
  DMC_CHECK(tp.size == 1, "shard_tensor_parallel: the model is already sharded");
  const int64_t s = g.size;
  DMC_CHECK(c.num_key_value_heads % s == 0, "tensor_parallel ", s, ": num_key_value_heads (", c.num_key_value_heads,
            ") must divide evenly (each rank owns whole KV-head groups)");
  DMC_CHECK(c.intermediate_size % s == 0, "tensor_parallel ", s, ": intermediate_size (", c.intermediate_size,
            ") must divide evenly");
  DMC_CHECK(c.vocab_size % s == 0, "tensor_parallel ", s, ": vocab_size (", c.vocab_size, ") must divide evenly");
  const bool tied = c.tie_word_embeddings;
  for (auto& [name, t] : parameters()) *t = shard_of(name, *t, g.rank, s);
  if (tied) lm_head = embed;
  tp = g;
}

void Llama::swap_rope_pairs(int64_t a, int64_t b) {
  const int64_t D = config.head_dim, half = D / 2;
  DMC_CHECK(a >= 0 && a < half && b >= 0 && b < half, "swap_rope_pairs: pairs ", a, ", ", b, " out of 0..", half - 1);
  if (a == b) return;
  auto& order = config.dmc.rope_pairs;
  if (order.empty())
    for (int64_t p = 0; p < half; ++p) order.push_back(p);
  std::swap(order[(size_t)a], order[(size_t)b]);
  // rows of one layer's local wqkv: q heads, then k heads (v untouched: RoPE does not rotate it)
  std::vector<int64_t> from, to;
  for (int64_t h = 0; h < local_heads() + local_kv_heads(); ++h)
    for (int64_t off : {int64_t(0), half}) {
      from.insert(from.end(), {h * D + off + a, h * D + off + b});
      to.insert(to.end(), {h * D + off + b, h * D + off + a});
    }
  at::NoGradGuard ng;
  const at::Tensor src = at::tensor(from, at::kLong).to(device()), dst = at::tensor(to, at::kLong).to(device());
  for (auto& L : layers) L.wqkv.index_copy_(0, dst, L.wqkv.index_select(0, src));
  inv_freq = rope_inv_freq(config, device());
}

}  // namespace dmc
