// Helpers shared by the fuzz targets: the bytes written to a per-process temporary file (the parsers read paths).
#pragma once
#include <unistd.h>

#include <cstdio>
#include <string>

namespace dmc::fuzz {

inline std::string scratch_file(const char* tag, const uint8_t* data, size_t size) {
  const std::string path = std::string("/tmp/dmc-fuzz-") + tag + "-" + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}

}  // namespace dmc::fuzz
