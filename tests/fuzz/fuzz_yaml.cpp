// YAML settings through the OptionTable: nested maps, lists, nulls, wrong types, unknown keys, ranges.
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "config/options.h"
#include "fuzz_common.h"
#include "fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = dmc::fuzz::scratch_file("yaml", data, size);
  int64_t n = 1, m = 0;
  double x = 0.5;
  bool b = false;
  std::string s = "a", t = "";
  std::vector<std::string> list;
  dmc::OptionTable opt("fuzz", "fuzz");
  opt.add("n", &n, "count").min(1);
  opt.add("model.m", &m, "nested");
  opt.add("x", &x, "fraction").min(0).below(1);
  opt.add("b", &b, "flag");
  opt.add("s", &s, "choice").one_of({"a", "b"});
  opt.add("t", &t, "text");
  opt.add("list", &list, "items");
  try {
    opt.load_yaml(path);
    (void)opt.to_yaml();
  } catch (const dmc::Error&) {}
  return 0;
}
