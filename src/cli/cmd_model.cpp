// dmc info / init / convert / tokenizer: model-directory and tokenizer housekeeping.
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/error.h"
#include "common/log.h"
#include "common/files.h"
#include "common/process.h"
#include "common/util.h"
#include "train/model_shape.h"
#include "config/options.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "tokenizer/bpe.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace dmc::cli {

int cmd_info(const Args& a) {
  std::string model;
  bool json_out = false;
  OptionTable t("info", "dmc info DIR [--json]");
  t.add("model", &model, "model directory (config.json + safetensors)", true);
  t.add("json", &json_out, "print JSON instead of text");
  t.positional({"model"});
  t.parse(a);
  if (io::is_gguf_path(model)) {
    // a GGUF file: its header, the shape its metadata gives, its tensor types, its tokenizer
    auto g = io::GgufFile::open(model);
    const auto cfg = LlamaConfig::from_gguf_metadata(g->metadata(), model, g->find("output.weight") != nullptr);
    std::map<std::string, int64_t> by_type;
    int64_t params = 0, bytes = 0;
    for (const auto& x : g->tensors()) {
      by_type[x.type->name] += 1;
      params += x.numel();
      bytes += x.nbytes;
    }
    auto tok = Tokenizer::from_gguf(*g);
    nlohmann::json j = {{"model", model},
                        {"format", cat("GGUF v", g->version())},
                        {"name", g->get_string("general.name", "")},
                        {"config", cfg.to_json()},
                        {"parameters", params},
                        {"tensors", g->tensors().size()},
                        {"tensor_types", by_type},
                        {"bytes", bytes},
                        {"tokenizer",
                         {{"kind", tok.kind()},
                          {"vocab", tok.vocab_size()},
                          {"bos", tok.bos_id()},
                          {"eos", tok.eos_id()},
                          {"chat_template", !tok.chat_template().empty()}}}};
    if (json_out) {
      std::cout << j.dump(2) << "\n";
    } else {
      std::cout << model << ": " << j["format"].get<std::string>() << ", " << j["name"].get<std::string>() << "\n"
                << "  layers " << cfg.num_hidden_layers << ", hidden " << cfg.hidden_size << ", heads "
                << cfg.num_attention_heads << " / kv " << cfg.num_key_value_heads << ", head_dim " << cfg.head_dim
                << ", ffn " << cfg.intermediate_size << ", vocab " << cfg.vocab_size << ", positions "
                << cfg.max_position_embeddings << (cfg.tie_word_embeddings ? ", tied embeddings" : "") << "\n"
                << "  " << params << " parameters in " << g->tensors().size() << " tensors, " << bytes
                << " bytes: " << nlohmann::json(by_type).dump() << "\n"
                << "  tokenizer: " << tok.kind() << ", " << tok.vocab_size() << " tokens, bos " << tok.bos_id()
                << ", eos " << tok.eos_id() << (tok.chat_template().empty() ? "" : ", chat template") << "\n";
    }
    return 0;
  }
  require_dir(model, "model directory");
  const auto cfg = LlamaConfig::load(model + "/config.json");
  auto st = io::TensorStore::open_dir(model);
  std::map<std::string, int64_t> bytes_by_dtype, count_by_dtype;
  int64_t params = 0, bytes = 0;
  for (const auto& n : st.names()) {
    const auto& ti = st.info(n);
    int64_t numel = 1;
    for (auto d : ti.shape) numel *= d;
    params += numel;
    const int64_t b = ti.end - ti.begin;
    bytes += b;
    bytes_by_dtype[io::dtype_to_safetensors(ti.dtype)] += b;
    count_by_dtype[io::dtype_to_safetensors(ti.dtype)] += 1;
  }
  nlohmann::json j;
  j["model"] = model;
  j["config"] = cfg.to_json();
  j["parameters"] = params;
  j["parameters_expected"] = cfg.num_parameters();
  j["tensors"] = st.names().size();
  j["bytes"] = bytes;
  j["files"] = st.files();
  for (const auto& kv : bytes_by_dtype)
    j["dtypes"][kv.first] = {{"tensors", count_by_dtype[kv.first]}, {"bytes", kv.second}};
  if (json_out) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "model:       " << model << "\n"
            << "shape:       " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size << ", heads "
            << cfg.num_attention_heads << " (kv " << cfg.num_key_value_heads << "), head_dim " << cfg.head_dim
            << ", ffn " << cfg.intermediate_size << ", vocab " << cfg.vocab_size << "\n"
            << "rope:        theta " << cfg.rope_theta << ", scaling " << cfg.rope_scaling.type << ", max positions "
            << cfg.max_position_embeddings << "\n"
            << "embeddings:  " << (cfg.tie_word_embeddings ? "tied" : "untied") << ", rms_norm_eps " << cfg.rms_norm_eps
            << "\n"
            << "parameters:  " << params << " (" << params / 1e6 << " M)\n"
            << "tensors:     " << st.names().size() << " in " << st.files().size() << " file(s)\n"
            << "bytes:       " << bytes << " (" << human_bytes((double)bytes) << ")\n";
  for (const auto& kv : bytes_by_dtype)
    std::cout << "dtype " << kv.first << ":  " << count_by_dtype[kv.first] << " tensors, "
              << human_bytes((double)kv.second) << "\n";
  return 0;
}

int cmd_init(const Args& a) {
  std::string out, dtype = "fp32", tokenizer;
  ModelShapeOptions shape;
  int64_t seed = 1234;
  double init_std = 0.02;
  bool overwrite = false;
  OptionTable t(
      "init", "dmc init --out DIR [--preset tiny|llama-1b|llama2-7b|llama2-13b] [--tokenizer FILE] [shape overrides]");
  t.add("out", &out, "output model directory", true);
  t.add("tokenizer", &tokenizer, "take vocab_size, bos and eos from this SentencePiece model");
  shape.add_to(t);
  t.add("init_std", &init_std, "standard deviation of the normal init of matrices").above(0);
  t.add("seed", &seed, "random seed");
  t.add("dtype", &dtype, "stored dtype: fp32, bf16, fp16");
  t.add("overwrite", &overwrite, "replace --out if it exists");
  t.parse(a);
  log::info(t.to_yaml());
  const LlamaConfig c = shape.resolve(tokenizer);
  auto model = Llama::random(c, (uint64_t)seed, at::kFloat, at::kCPU, init_std);
  model.save(out, parse_dtype(dtype), 5000000000LL, overwrite, {tokenizer});
  log::info(cat("wrote ", out, ": ", c.num_parameters(), " parameters (", shape.preset, ")"));
  return 0;
}

namespace {
// Megatron-LM legacy checkpoints through tools/megatron.py (torch's weights_only unpickler with a three-entry
// allow-list; see that file for why Python): the helper writes into the staging directory, dmc checks the result
// (an import must load as a model) and then puts it in place.
void run_megatron_helper(const std::vector<std::string>& args, const std::string& what) {
  std::vector<std::string> argv = {helper_python(), helper_script("megatron.py")};
  argv.insert(argv.end(), args.begin(), args.end());
  const ProcessResult r = run_program(argv);
  if (r.status != 0) {
    std::string msg = r.err;
    const size_t at = msg.rfind("error: ");
    if (at != std::string::npos) msg = msg.substr(at + 7);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
    if (msg.empty()) msg = cat("the helper exited with status ", r.status);
    fail(what, ": ", msg);
  }
  if (!r.out.empty()) log::info(cat(what, ": ", r.out.substr(0, r.out.find('\n'))));
}
}  // namespace

int cmd_convert(const Args& a) {
  std::string model, from_gguf, from_megatron, to_megatron, out, dtype = "bf16", max_shard = "5GB", tokenizer,
      dmc_mode = "auto";
  int64_t tensor_parallel = 1, iteration = 1;
  bool overwrite = false, release = false;
  OptionTable t("convert",
                "dmc convert (--model DIR | --from-gguf FILE | --from-megatron DIR | --to-megatron DIR) --out DIR "
                "[--dtype bf16|fp16|fp32] [--max-shard-size 5GB] [--tensor-parallel N]");
  t.add("model", &model, "input model directory");
  t.add("from_gguf", &from_gguf, "input llama.cpp GGUF file (weights dequantized, its tokenizer as tokenizer.json)");
  t.add("from_megatron", &from_megatron,
        "input Megatron-LM legacy checkpoint (a root with latest_checkpointed_iteration.txt, an iter_* or release "
        "folder, or a root holding mp_rank_* as NVIDIA's DMC releases do); any tensor-parallel size");
  t.add("to_megatron", &to_megatron, "input model directory to write as a Megatron-LM legacy checkpoint at --out");
  t.add("out", &out, "output directory", true);
  t.add("dtype", &dtype, "output dtype: bf16, fp16, fp32");
  t.add("max_shard_size", &max_shard, "largest shard file (e.g. 5GB, 500MB); larger models are sharded with an index");
  t.add("tokenizer", &tokenizer,
        "--from-megatron: the model's tokenizer.model, copied into --out; its size is the true vocabulary (the "
        "checkpoint's padding rows are dropped)");
  t.add("dmc", &dmc_mode, "--from-megatron: record the model as DMC: auto (when args has dmc_* settings), on, off")
      .one_of({"auto", "on", "off"});
  t.add("tensor_parallel", &tensor_parallel, "--to-megatron: tensor-parallel ranks to split into").min(1);
  t.add("iteration", &iteration, "--to-megatron: the iteration recorded (iter_NNNNNNN)").min(1);
  t.add("release", &release, "--to-megatron: write release/ instead of iter_NNNNNNN/");
  t.add("overwrite", &overwrite, "replace --out if it exists");
  t.check([&] {
    const int given = !model.empty() + !from_gguf.empty() + !from_megatron.empty() + !to_megatron.empty();
    DMC_CHECK(given == 1, "convert: give one of --model, --from-gguf, --from-megatron or --to-megatron");
  });
  t.parse(a);
  log::info(t.to_yaml());
  const at::ScalarType dt = parse_dtype(dtype, "dtype");
  const int64_t shard = parse_bytes(max_shard, "max_shard_size");
  if (!from_megatron.empty()) {
    OutputDir o(out, overwrite, {from_megatron}, "output model directory");
    std::vector<std::string> args = {"import", from_megatron, o.staging(), "--dmc", dmc_mode, "--dtype",
                                     dtype_name(dt)};
    std::optional<Tokenizer> tok;
    if (!tokenizer.empty()) {
      tok = Tokenizer::load(tokenizer);
      args.insert(args.end(), {"--vocab-size", std::to_string(tok->vocab_size()), "--tokenizer", tokenizer});
    }
    run_megatron_helper(args, "convert --from-megatron " + from_megatron);
    const Llama m = Llama::load(o.staging(), dt, at::kCPU);  // the result must be a model dmc runs
    if (tok) tok->check_model_vocab(m.config.vocab_size, o.staging());
    o.commit();
    log::info(cat("wrote ", out, " (", m.config.num_hidden_layers, " layers", m.config.dmc.enabled ? ", DMC" : "",
                  ")"));
    return 0;
  }
  if (!to_megatron.empty()) {
    (void)Llama::load(to_megatron, at::kFloat, at::kCPU);  // the input must be a model dmc runs
    OutputDir o(out, overwrite, {to_megatron}, "output Megatron checkpoint");
    std::vector<std::string> args = {"export", to_megatron, o.staging(), "--tensor-parallel",
                                     std::to_string(tensor_parallel), "--iteration", std::to_string(iteration)};
    if (release) args.push_back("--release");
    run_megatron_helper(args, "convert --to-megatron " + to_megatron);
    o.commit();
    log::info(cat("wrote ", out, " (Megatron legacy, tensor parallel ", tensor_parallel, ")"));
    return 0;
  }
  const std::string input = model.empty() ? from_gguf : model;
  check_output_target(out, overwrite, {input}, "output model directory");  // before the (long) load
  std::map<std::string, std::string> extra;
  if (!from_gguf.empty()) {
    // the tokenizer of the GGUF's metadata as HF files: tokenizer.json, tokenizer_config.json, generation_config.json
    auto g = io::GgufFile::open(from_gguf);
    auto tok = Tokenizer::from_gguf(*g);
    auto name = [&](int64_t id) { return id >= 0 ? nlohmann::json(tok.piece(id)) : nlohmann::json(nullptr); };
    nlohmann::json cfg = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                          {"bos_token", name(tok.bos_id())},
                          {"eos_token", name(tok.eos_id())},
                          {"add_bos_token", tok.adds_bos()},
                          {"model_max_length", g->get_int("llama.context_length", 4096)},
                          {"clean_up_tokenization_spaces", false}};
    if (g->has("tokenizer.ggml.unknown_token_id"))
      cfg["unk_token"] = name(g->get_int("tokenizer.ggml.unknown_token_id"));
    if (g->has("tokenizer.ggml.padding_token_id"))
      cfg["pad_token"] = name(g->get_int("tokenizer.ggml.padding_token_id"));
    if (!tok.chat_template().empty()) cfg["chat_template"] = tok.chat_template();
    extra["tokenizer.json"] = tok.bpe()->to_json().dump(2);
    extra["tokenizer_config.json"] = cfg.dump(2);
    extra["generation_config.json"] = nlohmann::json{
        {"bos_token_id", tok.bos_id()},
        {"eos_token_id", tok.eos_id()},
        {"_from_model_config", false}}.dump(2);
  }
  // Loading in the target dtype converts tensor by tensor from the mapping.
  auto m = Llama::load(input, dt, at::kCPU);
  m.save(out, dt, shard, overwrite, {input}, extra);
  log::info(cat("wrote ", out, " (", dtype, ", shards of at most ", max_shard, ")"));
  return 0;
}

int cmd_tokenize(const Args& a) {
  std::string model, tokenizer, text, file;
  bool pieces = false, json_out = false, add_bos = false;
  OptionTable t("tokenize", "dmc tokenize (--model M | --tokenizer T) (--text TEXT | --file F) [--pieces] [--json]");
  t.add("model", &model, "a model directory or .gguf (its own tokenizer)");
  t.add("tokenizer", &tokenizer, "tokenizer.model, tokenizer.json, a .gguf or a directory");
  t.add("text", &text, "the text to tokenize");
  t.add("file", &file, "a UTF-8 file to tokenize instead of --text");
  t.add("pieces", &pieces, "print each id with its piece (id -> 'piece') instead of the id list");
  t.add("json", &json_out, "print {\"ids\": [...], \"pieces\": [...]} instead");
  t.add("add_bos", &add_bos, "prepend BOS where the tokenizer uses one");
  t.check([&] {
    DMC_CHECK(model.empty() != tokenizer.empty(), "tokenize: give one of --model or --tokenizer");
    DMC_CHECK(t.is_set("text") != t.is_set("file"), "tokenize: give one of --text or --file");
  });
  t.parse(a);
  auto tok = Tokenizer::load(tokenizer.empty() ? model : tokenizer);
  const std::string in = file.empty() ? text : read_file(file, "text");
  const std::vector<int64_t> ids = tok.encode(in, add_bos);
  if (json_out) {
    nlohmann::json p = nlohmann::json::array();
    for (int64_t id : ids) p.push_back(tok.piece(id));
    std::cout << nlohmann::json{{"ids", ids}, {"pieces", p}}.dump() << "\n";
  } else if (pieces) {
    for (int64_t id : ids) std::cout << id << " -> '" << tok.decode({id}) << "'\n";
  } else {
    std::cout << "[";
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? ", " : "") << ids[i];
    std::cout << "]\n";
  }
  return 0;
}

int cmd_tokenizer(const Args& a) {
  if (a.empty() || a[0] != "train") {
    if (!a.empty() && (a[0] == "-h" || a[0] == "--help")) {
      std::cout << "usage: dmc tokenizer train --input FILES --out PREFIX [--vocab-size N]\n";
      return 0;
    }
    fail("command line: expected 'dmc tokenizer train ...'");
  }
  Tokenizer::TrainOptions o;
  OptionTable t("tokenizer train", "dmc tokenizer train --input F1,F2,... --out PREFIX [--vocab-size N]");
  t.add("input", &o.inputs, "comma-separated text files", true);
  t.add("out", &o.model_prefix, "output prefix: writes PREFIX.model and PREFIX.vocab", true);
  t.add("vocab_size", &o.vocab_size, "vocabulary size").min(8);
  t.add("max_sentences", &o.max_sentences, "lines sampled for training").min(1);
  t.add("overwrite", &o.overwrite, "replace PREFIX.model / PREFIX.vocab if they exist");
  t.parse(Args(a.begin() + 1, a.end()));
  log::info(t.to_yaml());
  Tokenizer::train(o);
  auto tok = Tokenizer::load(o.model_prefix + ".model");
  log::info(cat("wrote ", o.model_prefix, ".model (", tok.vocab_size(), " pieces)"));
  return 0;
}

}  // namespace dmc::cli
