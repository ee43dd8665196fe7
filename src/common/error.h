// dmc::Error: the one exception type for bad input. Its message names the file, the field and what was
// expected; the CLI prints it and exits with status 1. Use DMC_CHECK(cond, parts...) for one-line checks.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dmc {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// cat("a", 1, 'b') -> "a1b": ostream concatenation, for messages.
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

}  // namespace dmc

#define DMC_CHECK(cond, ...)               \
  do {                                     \
    if (!(cond)) ::dmc::fail(__VA_ARGS__); \
  } while (0)
