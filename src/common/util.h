// Small shared helpers: reading files with clear errors, dtype/device names, closest-name suggestions,
// human-readable sizes, a progress reporter with ETA.
#pragma once
#include <functional>
#include <torch/types.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace dmc {

// Whole file as bytes; dmc::Error naming the path if it does not exist or cannot be read.
std::string read_file(const std::string& path, const std::string& what = "file");
// Throws dmc::Error unless `path` is an existing directory.
void require_dir(const std::string& path, const std::string& what);
bool file_exists(const std::string& path);
// rm -rf without std::filesystem: libtorch.so exports its own std::filesystem symbols, and the
// error_code overload of remove_all bound to it crashes; nothing here may depend on which copy wins.
void remove_tree(const std::string& path);

// "bf16"|"bfloat16"|"fp16"|"float16"|"half"|"fp32"|"float32"|"float"|"fp64"|"float64" -> ScalarType.
at::ScalarType parse_dtype(const std::string& name, const std::string& field = "dtype");
std::string dtype_name(at::ScalarType t);  // short name: bf16, fp16, fp32, ...
// "cpu" | "cuda" | "cuda:N" | "auto" (cuda if available, else cpu).
at::Device parse_device(const std::string& name, const std::string& field = "device");

// device "auto|cpu|cuda[:N]", dtype "auto|bf16|fp16|fp32" -> the pair ("auto" dtype: bf16 on CUDA, fp32 on CPU).
std::pair<at::Device, at::ScalarType> resolve_runtime(const std::string& device, const std::string& dtype);

// The candidate with the smallest edit distance to `word` (empty if none is close enough).
std::string closest(const std::string& word, const std::vector<std::string>& candidates);
std::string human_bytes(double bytes);
// A whole decimal integer (no trailing text), or dmc::Error "field: expected an integer, got 'text'".
int64_t parse_int(const std::string& text, const std::string& field);
// Whether the environment sets `name` to 0: the switches that turn a fast path off for an A/B or a fallback
// (DMC_FUSED_OPS, DMC_POOL_TILED, DMC_EVICT_GRAPHS, DMC_EVICT_DENSE).
bool env_off(const char* name);
// "5GB", "500MB", "1024" -> bytes.
int64_t parse_bytes(const std::string& s, const std::string& field);

// Waits for the device's queued work (a no-op on the CPU).
void sync_device(const at::Device& d);
// Bytes moved per second (read + write) by a large device-to-device copy: the bandwidth HBM floors are quoted
// against (benchmarks).
// GPU kernels of reps calls of fn by total device time (kineto): "ms per call  xlaunches  name" lines, the top
// `top`, after a total line. Returns the total kernel ms per call in *total_ms when given.
std::string kernel_profile(const std::function<void()>& fn, int reps, int top, double* total_ms = nullptr);
double copy_bandwidth(const at::Device& d);

// Logs "what: i/n (x%), rate, ETA" at most every `interval_s` seconds and at the end.
class Progress {
 public:
  Progress(std::string what, int64_t total, double interval_s = 2.0);
  void update(int64_t done, const std::string& extra = "");

 private:
  std::string what_;
  int64_t total_;
  double interval_s_;
  std::chrono::steady_clock::time_point start_, last_;
};

// fn(i) for every i in [0, n) on up to `threads` threads (0 = the hardware's), each taking the next index. The first
// exception any call throws is rethrown here once every thread has stopped (the rest of the indices are skipped).
// progress(done), when given, is called from this thread about every 200 ms while they run.
void parallel_for(int64_t n, int64_t threads, const std::function<void(int64_t)>& fn,
                  const std::function<void(int64_t)>& progress = nullptr);

}  // namespace dmc
