#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"

namespace dmc::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
// Test hook: DMC_CKPT_WRITE_DELAY_MS slows each file of a checkpoint write, so that tests can kill a process
// in the middle of one.
void test_delay() {
  if (const char* d = std::getenv("DMC_CKPT_WRITE_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoll(d)));
}
std::string step_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%08lld", (long long)step);
  return b;
}
std::vector<std::pair<int64_t, std::string>> list_steps(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> v;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::exists(root)) return v;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (!e.is_directory() || n.rfind("step-", 0) != 0 || n.find(".tmp") != std::string::npos) continue;
    try {
      v.emplace_back(std::stoll(n.substr(5)), e.path().string());
    } catch (...) {}
  }
  std::sort(v.begin(), v.end());
  return v;
}
}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointData& d, int64_t keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  // leftovers of writes that were interrupted earlier
  std::vector<std::string> stale;
  for (const auto& e : fs::directory_iterator(root))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) stale.push_back(e.path().string());
  for (const auto& s : stale) remove_tree(s);
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp = root / cat(step_name(step), ".tmp-", ::getpid());
  try {
    fs::create_directories(tmp);
    LlamaConfig c = d.model->config;
    c.torch_dtype = "float32";
    c.save((tmp / "config.json").string());
    auto tensors = d.model->hf_tensors();
    for (auto& nt : tensors) nt.second = nt.second.detach().to(at::kCPU, at::kFloat);
    test_delay();
    io::save_dir(tmp.string(), tensors, int64_t(5) << 30, {{"format", "pt"}});
    test_delay();
    io::NamedTensors opt;
    for (const auto& nt : d.optimizer) opt.emplace_back(nt.first, nt.second.detach().to(at::kCPU));
    io::save_file((tmp / "optimizer.safetensors").string(), opt);
    test_delay();
    io::NamedTensors rng;
    for (const auto& nt : d.rng) rng.emplace_back(nt.first, nt.second.detach().to(at::kCPU));
    io::save_file((tmp / "rng.safetensors").string(), rng);
    write_file_atomic((tmp / "trainer_state.json").string(), d.trainer_state.dump(2) + "\n");
    test_delay();
    // the marker goes in before the directory appears under its final name: the rename is atomic, so a
    // step-XXXXXXXX directory is either absent or complete (an older one at the same step is exchanged, not
    // deleted first)
    write_file_atomic((tmp / "COMPLETE").string(), cat("step ", step, "\n"));
    move_into_place(tmp.string(), final_dir.string());
  } catch (const std::exception& e) {
    remove_tree(tmp.string());
    auto prev = latest_checkpoint(run_dir);
    fail("checkpoint at step ", step, " not saved: ", e.what(), "; ",
         prev ? "the previous checkpoint " + *prev + " is intact" : std::string("no earlier checkpoint exists"));
  }
  // keep the newest keep_last complete checkpoints
  if (keep_last > 0) {
    auto steps = list_steps(run_dir);
    std::vector<std::string> complete;
    for (auto& s : steps)
      if (fs::exists(fs::path(s.second) / "COMPLETE")) complete.push_back(s.second);
    for (size_t i = 0; i + (size_t)keep_last < complete.size(); ++i) remove_tree(complete[i]);
  }
  return final_dir.string();
}

std::vector<std::string> checkpoint_dirs(const std::string& run_dir) {
  std::vector<std::string> v;
  for (auto& s : list_steps(run_dir)) v.push_back(s.second);
  return v;
}

json read_trainer_state(const std::string& dir) {
  const std::string p = dir + "/trainer_state.json";
  try {
    return json::parse(read_file(p, "trainer state"));
  } catch (const json::exception& e) {
    fail(p, ": not valid JSON (", e.what(), ")");
  }
}

void validate_checkpoint(const std::string& dir) {
  require_dir(dir, "checkpoint");
  if (!fs::exists(dir + "/COMPLETE"))
    fail(dir, ": incomplete checkpoint (no COMPLETE marker: the write was interrupted)");
  auto st = read_trainer_state(dir);
  for (const char* k : {"step", "loader_position"})
    if (!st.contains(k) || !st[k].is_number_integer())
      fail(dir, "/trainer_state.json: field '", k, "' missing or not an integer");
  LlamaConfig::load(dir + "/config.json");
  io::TensorStore::open_dir(dir);
  io::SafetensorsFile::open(dir + "/optimizer.safetensors");
  io::SafetensorsFile::open(dir + "/rng.safetensors");
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  auto steps = list_steps(run_dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    try {
      validate_checkpoint(it->second);
      return it->second;
    } catch (const Error& e) {
      log::warn(cat("resume: skipping ", it->second, ": ", e.what()));
    }
  }
  return std::nullopt;
}

}  // namespace dmc::train
