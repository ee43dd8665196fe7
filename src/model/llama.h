// Llama decoder (RMSNorm, RoPE in the HF rotate-half convention, SwiGLU, GQA, causal SDPA) as plain ATen
// operations over explicit weight tensors, so that autograd, dtype and device all come from LibTorch.
//
// Layouts:
//   ids          [batch, seq] int64
//   hidden       [batch, seq, hidden_size]
//   q            [batch, n_heads, seq, head_dim]      k, v  [batch, n_kv_heads, seq, head_dim]
//   wqkv         [(n_heads + 2 * n_kv_heads) * head_dim, hidden_size]   rows: q heads, k heads, v heads
//   w_gate_up    [2 * intermediate_size, hidden_size]                   rows: gate, then up
//   logits       [batch, seq, vocab_size]  in the model dtype
//
// The q/k/v and gate/up projections are stored fused for speed and split back into HF tensor names
// (model.layers.N.self_attn.q_proj.weight, ...) on save, so checkpoints load in transformers unchanged.
//
// One forward serves training, evaluation, prefill and decode: forward_hidden(ids, positions, attention) runs the
// block code, and the Attention object the caller passes (model/attention.h) decides what attention is.
//
//   auto model = dmc::Llama::load("ckpt/", at::kBFloat16, at::kCUDA);
//   at::Tensor logits = model.forward(ids);                       // vanilla causal attention, positions 0..T-1
//   DmcLayerAttention a(DmcMode::Eval, opts);  model.forward(ids, a);   // a.boundaries: the decisions taken
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <functional>
#include <memory>

#include "dist/dist.h"
#include "model/attention.h"
#include "model/llama_config.h"
#include "ops/fused_ops.h"

namespace dmc {

struct LlamaLayer {
  at::Tensor attn_norm;  // [hidden]
  at::Tensor wqkv;       // [(nh + 2 nkv) hd, hidden]
  at::Tensor wo;         // [hidden, nh hd]
  at::Tensor mlp_norm;   // [hidden]
  at::Tensor w_gate_up;  // [2 ffn, hidden]
  at::Tensor w_down;     // [hidden, ffn]
};

// inv_freq [head_dim / 2] fp32 with the config's RoPE scaling applied.
at::Tensor rope_inv_freq(const LlamaConfig& c, at::Device device);
class Llama {
 public:
  LlamaConfig config;
  at::Tensor embed;  // [vocab, hidden]
  std::vector<LlamaLayer> layers;
  at::Tensor norm;      // [hidden]
  at::Tensor lm_head;   // [vocab, hidden]; the same tensor as embed when tie_word_embeddings
  at::Tensor inv_freq;  // [head_dim / 2] fp32
  // Training: recompute each layer's activations in backward instead of storing them.
  bool activation_checkpointing = false;

  // Tensor parallelism (Megatron style; size 1 = none). After shard_tensor_parallel(g) this rank holds: wqkv rows of
  // its whole KV-head groups (q heads [r nh/tp, (r+1) nh/tp), their k and v heads), wo columns of those q heads,
  // w_gate_up rows [r F/tp, (r+1) F/tp) of gate and of up, w_down's matching columns, and rows
  // [r V/tp, (r+1) V/tp) of embed and lm_head (vocabulary-parallel); norms are replicated. forward() then returns
  // this rank's vocabulary slice of the logits [batch, seq, V/tp]; vocab_parallel_cross_entropy takes them.
  Group tp;
  // Sequence parallelism under TP (Megatron-LM's; training forwards with gradient only): the residual stream, the
  // norms and the embedding output are split by token over the tp group ([batch * seq / tp, hidden] per rank), the
  // column-parallel GEMMs all-gather their input and the row-parallel ones reduce-scatter their output (the same
  // bytes as the all-reduces they replace); the replicated norm weights' gradients are summed over the group.
  // Needs batch * seq divisible by tp. forward_hidden still returns the whole [batch, seq, hidden].
  bool sequence_parallel = false;
  // Whether a forward now splits tokens: sequence_parallel, TP, and gradient on (no-grad forwards run plain TP).
  bool sequence_parallel_now() const { return sequence_parallel && tp.size > 1 && at::GradMode::is_enabled(); }
  void shard_tensor_parallel(const Group& g);
  // Parameter `name` (of parameters()) whole again from every rank's shard (collective over tp).
  at::Tensor unshard(const std::string& name, const at::Tensor& local) const;
  // The shard of a whole parameter tensor for tp rank `rank` of `size`.
  at::Tensor shard_of(const std::string& name, const at::Tensor& full, int64_t rank, int64_t size) const;
  // Whether parameter `name` is split over the tensor-parallel ranks (else replicated).
  bool is_sharded(const std::string& name) const;
  int64_t local_heads() const { return config.num_attention_heads / tp.size; }
  int64_t local_kv_heads() const { return config.num_key_value_heads / tp.size; }

  // Reads DIR/config.json and DIR's safetensors; checks every tensor's presence and shape. Layers in the files
  // beyond config.json's num_hidden_layers are an error (a silently truncated model otherwise); other tensors the
  // model does not use are named in a warning.
  // A path ending in .gguf is read by load_gguf.
  static Llama load(const std::string& dir, at::ScalarType dtype, at::Device device);
  // A llama.cpp GGUF file of architecture "llama": the shape from its metadata, every tensor dequantized (gguf.h)
  // and renamed, the Q/K rows put back from llama.cpp's RoPE permutation into HF order, tied embeddings when the
  // file has no output.weight. Unsupported metadata (another architecture, partial rotary, RoPE scaling) and
  // missing or misshapen tensors are errors naming the file and the key / tensor.
  static Llama load_gguf(const std::string& path, at::ScalarType dtype, at::Device device);
  // Random init like HF (normal(0, init_std) for matrices, ones for norms), seeded.
  static Llama random(const LlamaConfig& config, uint64_t seed, at::ScalarType dtype, at::Device device,
                      double init_std = 0.02);
  // Writes config.json + safetensors (sharded above max_shard_bytes) into `dir` atomically (common/files.h
  // OutputDir: built beside `dir`, swapped in when complete). Fails if `dir` exists unless overwrite, and if `dir`
  // is, contains or lies inside one of `inputs` (e.g. the directory the model was loaded from).
  // extra_files: more files of the directory, name -> contents (a tokenizer.json, say), part of the same swap.
  void save(const std::string& dir, at::ScalarType dtype, int64_t max_shard_bytes = 5000000000LL,
            bool overwrite = false, const std::vector<std::string>& inputs = {},
            const std::map<std::string, std::string>& extra_files = {}) const;
  // Weights under their HF names (fused tensors split into views).
  std::vector<std::pair<std::string, at::Tensor>> hf_tensors() const;

  // Swaps rotary pairs a and b (each of dims (p, p + D/2)) in every q and k head of every layer, rows of wqkv, and
  // their frequencies with them (config.dmc.rope_pairs, inv_freq): the same function with the pairs stored in another
  // order (exact up to rounding; a retrofit moves the pair whose partner dim becomes the decision neuron, D-1, to
  // the last position). This rank's heads under tensor parallelism (the swap is inside each head).
  void swap_rope_pairs(int64_t a, int64_t b);

  // Trainable tensors under stable internal names (fused: layers.N.wqkv, layers.N.w_gate_up, ...).
  std::vector<std::pair<std::string, at::Tensor*>> parameters();
  // The name parameters() gives layer l's tensor `field` ("wqkv", "attn_norm", ...): "layers.<l>.<field>".
  static std::string layer_param_name(int64_t l, const char* field);

  at::ScalarType dtype() const { return embed.scalar_type(); }
  at::Device device() const { return embed.device(); }

  // A GEMM in place of at::linear for the block's projections (no-grad forwards only; the decode engine's row
  // padding): x [M, K], w [N, K] -> [M, N].
  using Gemm = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& w)>;

  // Final-norm hidden states [batch, seq, hidden] of ids [batch, seq] at positions [seq] (int64; undefined =
  // 0..seq-1; the decode engine passes each row's own position [batch] with seq = 1), attention as `attn` runs it.
  // The one forward of every path. With activation checkpointing `attn` must live until backward has run.
  at::Tensor forward_hidden(const at::Tensor& ids, const at::Tensor& positions, Attention& attn,
                            const Gemm* gemm = nullptr) const;
  at::Tensor forward_hidden(const at::Tensor& ids, Attention& attn) const { return forward_hidden(ids, {}, attn); }
  // Vanilla causal attention (the model's own VanillaAttention, which lives as long as the model: a backward with
  // activation checkpointing runs it again).
  at::Tensor forward_hidden(const at::Tensor& ids) const;
  // Logits [batch, seq, vocab] (under TP this rank's vocabulary slice).
  at::Tensor forward(const at::Tensor& ids, Attention& attn) const { return lm_logits(forward_hidden(ids, attn)); }
  at::Tensor forward(const at::Tensor& ids) const { return lm_logits(forward_hidden(ids)); }
  // Token embeddings [..., hidden] of ids [...] (vocabulary-parallel lookup + sum over the group under TP).
  at::Tensor embed_tokens(const at::Tensor& ids) const;
  // Logits of forward_hidden's output: [.., vocab] (under TP this rank's vocabulary slice [.., vocab / tp]; the
  // gradient reaches the hidden states summed over the group).
  at::Tensor lm_logits(const at::Tensor& hidden) const;

  // One decoder layer: x [batch, seq, hidden] -> {x + attn + mlp, the attention's aux output}. `L` may hold other
  // tensors than layers[l] (the recompute in backward passes detached copies). sp: sequence parallel, x is this
  // rank's token rows [batch * seq / tp, hidden] (seq = attn.cos().size(0)).
  std::pair<at::Tensor, at::Tensor> layer_forward(const LlamaLayer& L, int64_t l, const at::Tensor& x, Attention& attn,
                                                  bool recompute, bool sp, const Gemm* gemm = nullptr) const;

 private:
  mutable std::shared_ptr<VanillaAttention> vanilla_;  // forward_hidden(ids)'s attention
  // embedding rows of ids found in this rank's vocabulary slice, zeros elsewhere [..., hidden]
  at::Tensor embed_local(const at::Tensor& ids) const;
};

}  // namespace dmc
