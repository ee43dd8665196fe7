#include "common/util.h"

#include <exception>

#include <thread>

#include <mutex>

#include <atomic>

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <map>
#include <sstream>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/log.h"

#ifdef DMC_WITH_CUDA
#include <torch/cuda.h>
#endif

namespace dmc {

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

static int remove_one(const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  ::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

std::string read_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(what, " '", path, "' does not exist");
  if (S_ISDIR(st.st_mode)) fail(what, " '", path, "' is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(what, " '", path, "' cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(what, " '", path, "': read error");
  return ss.str();
}

void require_dir(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(what, " '", path, "' does not exist");
  if (!S_ISDIR(st.st_mode)) fail(what, " '", path, "' is not a directory");
}

at::ScalarType parse_dtype(const std::string& n, const std::string& field) {
  if (n == "bf16" || n == "bfloat16") return at::kBFloat16;
  if (n == "fp16" || n == "float16" || n == "half") return at::kHalf;
  if (n == "fp32" || n == "float32" || n == "float") return at::kFloat;
  if (n == "fp64" || n == "float64" || n == "double") return at::kDouble;
  fail(field, ": unknown dtype '", n, "', expected one of bf16, fp16, fp32, fp64");
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    case at::kFloat: return "fp32";
    case at::kDouble: return "fp64";
    default: return c10::toString(t);
  }
}

at::Device parse_device(const std::string& n, const std::string& field) {
  if (n == "auto") return torch::cuda::is_available() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (n == "cpu") return at::Device(at::kCPU);
  if (n.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) fail(field, ": '", n, "' requested but no CUDA device is available");
    if (n == "cuda") return at::Device(at::kCUDA, 0);
    if (n.size() > 5 && n[4] == ':') {
      int idx = -1;
      try {
        idx = std::stoi(n.substr(5));
      } catch (...) {}
      if (idx >= 0 && idx < (int)torch::cuda::device_count()) return at::Device(at::kCUDA, idx);
    }
  }
  fail(field, ": unknown device '", n, "', expected cpu, cuda, cuda:N or auto");
}

std::pair<at::Device, at::ScalarType> resolve_runtime(const std::string& device, const std::string& dtype) {
  at::Device d = parse_device(device, "device");
  at::ScalarType t = dtype == "auto" ? (d.is_cuda() ? at::kBFloat16 : at::kFloat) : parse_dtype(dtype, "dtype");
  return {d, t};
}

static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  if (best_d == std::string::npos || best_d > std::max<size_t>(3, word.size() / 2)) return "";
  return best;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  std::ostringstream os;
  os.precision(u == 0 ? 0 : 2);
  os << std::fixed << b << " " << units[u];
  return os.str();
}

bool env_off(const char* name) {
  const char* e = std::getenv(name);
  return e && std::string(e) == "0";
}

int64_t parse_int(const std::string& text, const std::string& field) {
  size_t pos = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != text.size()) fail(field, ": expected an integer, got '", text, "'");
  return v;
}

int64_t parse_bytes(const std::string& s, const std::string& field) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    fail(field, ": expected a size such as 5GB or 500MB, got '", s, "'");
  }
  std::string unit = s.substr(pos);
  for (auto& ch : unit) ch = (char)toupper(ch);
  double mult = 1;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "KB")
    mult = 1e3;
  else if (unit == "MB")
    mult = 1e6;
  else if (unit == "GB")
    mult = 1e9;
  else if (unit == "KIB")
    mult = 1024.0;
  else if (unit == "MIB")
    mult = 1024.0 * 1024;
  else if (unit == "GIB")
    mult = 1024.0 * 1024 * 1024;
  else
    fail(field, ": unknown size unit '", unit, "' in '", s, "' (use B, KB, MB, GB, KiB, MiB, GiB)");
  if (!(v > 0)) fail(field, ": size must be positive, got '", s, "'");
  return (int64_t)(v * mult);
}

Progress::Progress(std::string what, int64_t total, double interval_s)
    : what_(std::move(what)),
      total_(total),
      interval_s_(interval_s),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void Progress::update(int64_t done, const std::string& extra) {
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_).count();
  if (done < total_ && since < interval_s_) return;
  last_ = now;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double rate = elapsed > 0 ? done / elapsed : 0;
  double eta = rate > 0 ? (total_ - done) / rate : 0;
  std::ostringstream os;
  os.precision(1);
  os << std::fixed << what_ << ": " << done << "/" << total_ << " (" << (total_ ? 100.0 * done / total_ : 100.0)
     << "%), elapsed " << elapsed << " s, ETA " << eta << " s";
  if (!extra.empty()) os << ", " << extra;
  log::info(os.str());
}

void sync_device(const at::Device& d) {
#ifdef DMC_WITH_CUDA
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
#else
  (void)d;
#endif
}

double copy_bandwidth(const at::Device& dev) {
  at::Tensor a = at::empty({int64_t(1) << 28}, at::TensorOptions().dtype(at::kFloat).device(dev));  // 1 GiB
  at::Tensor b = at::empty_like(a);
  b.copy_(a);
  sync_device(dev);
  const auto t0 = std::chrono::steady_clock::now();
  const int reps = 10;
  for (int i = 0; i < reps; ++i) b.copy_(a);
  sync_device(dev);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * a.numel() * 4 * reps / s;
}

std::string kernel_profile(const std::function<void()>& fn, int reps, int top, double* total_ms) {
  namespace pr = torch::profiler::impl;
  const pr::ProfilerConfig cfg(pr::ProfilerState::KINETO);
  const std::set<pr::ActivityType> acts = {pr::ActivityType::CPU, pr::ActivityType::CUDA};
  torch::autograd::profiler::prepareProfiler(cfg, acts);
  torch::autograd::profiler::enableProfiler(cfg, acts);
  for (int i = 0; i < reps; ++i) fn();
  auto result = torch::autograd::profiler::disableProfiler();
  std::map<std::string, std::pair<double, int64_t>> by_name;
  double total = 0;
  for (const auto& e : result->events()) {
    if (e.activityType() != 5) continue;  // libkineto::ActivityType::CONCURRENT_KERNEL: device kernels
    auto& slot = by_name[e.name().substr(0, 90)];
    slot.first += e.durationNs() / 1e6;
    slot.second += 1;
    total += e.durationNs() / 1e6;
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.first > b.second.first; });
  std::ostringstream os;
  os << "GPU kernel time per call " << total / reps << " ms; top kernels, ms per call:\n";
  for (size_t i = 0; i < rows.size() && (int)i < top; ++i)
    os << "  " << rows[i].second.first / reps << " ms  x" << rows[i].second.second / reps << "  " << rows[i].first
       << "\n";
  if (total_ms) *total_ms = total / reps;
  return os.str();
}

void parallel_for(int64_t n, int64_t threads, const std::function<void(int64_t)>& fn,
                  const std::function<void(int64_t)>& progress) {
  if (n <= 0) return;
  const int64_t nt =
      std::min<int64_t>(n, threads > 0 ? threads : std::max<int64_t>(1, std::thread::hardware_concurrency()));
  std::atomic<int64_t> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mu;
  auto work = [&] {
    for (int64_t i; !failed.load() && (i = next.fetch_add(1)) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu);
        if (!error) error = std::current_exception();
        failed = true;
      }
      done.fetch_add(1);
    }
  };
  // with progress this thread only reports; without, it takes a share of the work
  std::vector<std::thread> pool;
  for (int64_t t = progress ? 0 : 1; t < nt; ++t) pool.emplace_back(work);
  if (progress) {
    for (;;) {  // while they run: the caller reports the end (a count of n here would be said twice)
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const int64_t d = done.load();
      if (d >= n || failed.load()) break;
      progress(d);
    }
  } else {
    work();
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace dmc
