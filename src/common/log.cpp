// spdlog-backed implementation of log.h: one logger writing to stderr (colour when a terminal) and,
// optionally, to a file.
#include "common/log.h"

#include "common/error.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace dmc::log {
namespace {
std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto lg = std::make_shared<spdlog::logger>("dmc", sink);
    lg->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    lg->set_level(spdlog::level::info);
    lg->flush_on(spdlog::level::info);
    return lg;
  }();
  return l;
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
  logger()->set_level(spdlog::level::from_str(level));
}
void set_file(const std::string& path) {
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  logger()->sinks().push_back(sink);
}
}  // namespace dmc::log
