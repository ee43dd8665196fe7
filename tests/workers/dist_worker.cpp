// Worker for the distributed tests (tests/test_dist.cpp): one process of a tensor-parallel group (all ranks TP,
// torchrun-style environment) runs a forward and backward of a small random Llama, vanilla or DMC (train mode with
// fed noise), and rank 0 writes the whole logits, the loss and every gradient reassembled from the shards.
//   dmc_dist_worker OUT.safetensors vanilla|dmc [recompute 0|1] [cpu|cuda] [sp 0|1]   (cuda: NCCL, GPU LOCAL_RANK;
//     sp: sequence parallelism)
//   dmc_dist_worker OUT.safetensors generate-vanilla|generate-dmc [0] [cpu|cuda]: greedy generation of three prompts
//     through the decode engine with continuous batching (each rank its own page pool of its KV heads)
#include <torch/torch.h>

#include <iostream>
#ifdef DMC_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "common/error.h"
#include "dist/dist.h"
#include "ops/dmc.h"
#include "inference/generate.h"
#include "io/safetensors.h"
#include "model/llama.h"

using namespace dmc;

int main(int argc, char** argv) {
  try {
    DMC_CHECK(argc >= 3, "usage: dmc_dist_worker OUT vanilla|dmc [recompute]");
    const std::string out = argv[1], mode = argv[2];
    const bool recompute = argc > 3 && std::string(argv[3]) == "1";
    const char* ws = std::getenv("WORLD_SIZE");
    const int64_t world = ws ? std::atoll(ws) : 1;
    const bool cuda = argc > 4 && std::string(argv[4]) == "cuda";
    const bool sp = argc > 5 && std::string(argv[5]) == "1";
    const char* lr = std::getenv("LOCAL_RANK");
    const at::Device dev = cuda ? at::Device(at::kCUDA, (int8_t)(lr ? std::atoi(lr) : 0)) : at::Device(at::kCPU);
#ifdef DMC_WITH_CUDA
    if (cuda) c10::cuda::set_device(dev.index());  // NCCL works on the current device
#endif
    Dist d = Dist::from_env(world, dev);
    LlamaConfig c = LlamaConfig::preset("tiny");
    c.num_hidden_layers = 2;
    c.vocab_size = 64;
    c.hidden_size = 64;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.intermediate_size = 96;
    c.max_position_embeddings = 64;
    auto m = Llama::random(c, 11, at::kFloat, dev, 0.2);
    m.activation_checkpointing = recompute;
    m.shard_tensor_parallel(d.tp);
    m.sequence_parallel = sp;
    if (mode.rfind("generate-", 0) == 0) {
      if (mode == "generate-dmc") {
        m.config.dmc.enabled = true;
        m.config.dmc.init_val = 0.2;
        m.config.dmc.window = 3;
      }
      torch::manual_seed(5);
      std::vector<std::vector<int64_t>> prompts;
      for (int64_t n : {7, 19, 12}) {
        at::Tensor t = at::randint(0, c.vocab_size, {n}, at::kLong).contiguous();
        prompts.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
      }
      GenerateOptions go;
      go.max_new_tokens = 10;
      go.stop_at_eos = false;
      go.sampling.temperature = 0;
      go.max_batch = 2;
      go.cache.page_size = 4;
      auto res = generate(m, prompts, go);
      at::Tensor toks = at::empty({3, 10}, at::kLong);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 10; ++j) toks[i][j] = res.tokens[i][j];
      Decoder dec(m, DecoderOptions{});
      at::Tensor first = dec.prefill(0, prompts[1]).to(at::kCPU);
      if (d.is_main()) io::save_file(out, {{"tokens", toks}, {"prefill_logits", first.contiguous()}});
      d.shutdown();
      return 0;
    }
    auto params = m.parameters();
    for (auto& p : params) p.second->requires_grad_(true);
    torch::manual_seed(3);
    const int64_t B = 2, T = 24;
    at::Tensor ids = at::randint(0, c.vocab_size, {B, T}, at::kLong).to(dev),
               tgt = at::randint(0, c.vocab_size, {B, T}, at::kLong).to(dev);
    std::unique_ptr<Attention> attn = std::make_unique<VanillaAttention>();
    if (mode == "dmc") {
      DmcOptions o;
      o.init_val = 0.3;
      o.window = 3;
      o.temperature = 0.5;
      const int64_t nkvl = m.local_kv_heads();
      std::vector<at::Tensor> noise;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        at::Tensor full = at::randn({B, T, c.num_key_value_heads});  // the same on every rank (same seed)
        noise.push_back(full.narrow(2, d.tp.rank * nkvl, nkvl).contiguous().to(dev));
      }
      attn = std::make_unique<DmcLayerAttention>(DmcMode::Train, o, at::Tensor(), noise);
    }
    at::Tensor h = m.forward_hidden(ids, *attn);
    at::Tensor logits = m.lm_logits(h);  // [B, T, V / tp]
    at::Tensor loss = vocab_parallel_cross_entropy(logits.reshape({B * T, -1}), tgt.reshape({-1}), m.tp);
    if (mode == "dmc") {
      // the compression loss with the global semantics: decision means over all heads of all ranks
      at::Tensor dm = reduce_from_group(at::stack(attn->aux), m.tp) / (double)m.tp.size;  // [L, B]
      loss = loss + dmc_loss(dm, 3.0);
    }
    loss.backward();
    std::vector<std::pair<std::string, at::Tensor>> outs;
    at::Tensor lg = all_gather_cat(logits.detach().permute({2, 0, 1}).contiguous(), m.tp).permute({1, 2, 0});
    outs.emplace_back("logits", lg.contiguous());
    outs.emplace_back("loss", loss.detach().reshape({1}));
    for (auto& [name, t] : params) outs.emplace_back("grad." + name, m.unshard(name, t->grad()).contiguous());
    for (auto& o : outs) o.second = o.second.to(at::kCPU);
    if (d.is_main()) io::save_file(out, outs);
    d.shutdown();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: " << e.what() << std::endl;
    return 1;
  }
}
