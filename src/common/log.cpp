// spdlog-backed implementation of log.h: one logger writing to stderr (colour when a terminal) and,
// optionally, to a file.
#include "common/log.h"

#include "common/error.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace dmc::log {
namespace {
// The console's level (set_level) and the file's (info, or more verbose when the console is): a run's log.txt keeps
// the whole log when the console is asked for warnings only, as the scripts do.
spdlog::level::level_enum g_console = spdlog::level::info;
bool g_has_file = false;
std::shared_ptr<spdlog::sinks::stderr_color_sink_mt>& console() {
  static auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  return sink;
}
std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto lg = std::make_shared<spdlog::logger>("dmc", console());
    lg->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    lg->set_level(spdlog::level::info);
    lg->flush_on(spdlog::level::info);
    return lg;
  }();
  return l;
}
spdlog::level::level_enum file_level() { return std::min(g_console, spdlog::level::info); }
void apply_levels() {
  console()->set_level(g_console);
  for (auto& s : logger()->sinks())
    if (s != console()) s->set_level(file_level());
  logger()->set_level(g_has_file ? file_level() : g_console);
  logger()->flush_on(file_level());
}
}  // namespace

void info(const std::string& msg) { logger()->info(msg); }
void warn(const std::string& msg) { logger()->warn(msg); }
void error(const std::string& msg) { logger()->error(msg); }
void debug(const std::string& msg) { logger()->debug(msg); }
void set_level(const std::string& level) {
  // spdlog maps an unknown name to "off", which would silence everything: refuse it instead
  if (level != "trace" && level != "debug" && level != "info" && level != "warn" && level != "error" && level != "off")
    fail("log_level: expected trace, debug, info, warn, error or off, got '", level, "'");
  g_console = spdlog::level::from_str(level);
  apply_levels();
}
void set_file(const std::string& path) {
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  logger()->sinks().push_back(sink);
  g_has_file = true;
  apply_levels();
}
}  // namespace dmc::log
