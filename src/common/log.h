// Logging front end. spdlog (and the fmt it is built with) stays inside log.cpp, so the rest of the code,
// which sees LibTorch's own fmt headers, never mixes the two. Messages are built with dmc::cat().
//   dmc::log::info(dmc::cat("step ", step, " loss ", loss));
//   dmc::log::set_file("run/log.txt");   // also write to a file
#pragma once
#include <string>

namespace dmc::log {
void info(const std::string& msg);
void warn(const std::string& msg);
void error(const std::string& msg);
void debug(const std::string& msg);
// trace|debug|info|warn|error|off: the console's level; a file sink keeps info and above (or the console's, when
// more verbose) whatever the console shows
void set_level(const std::string& level);
void set_file(const std::string& path);  // adds a file sink (appends)
}  // namespace dmc::log
