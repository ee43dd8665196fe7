// In-process decompression of .xz (liblzma) and .gz (zlib) inputs, so that no input path ever reaches a shell.
// Concatenated streams (xz and gzip both allow them) are decoded as one, like `xz -dc` / `gzip -dc`.
// Corrupt or truncated data is a dmc::Error naming `what` (the input's path) and the decoder's reason.
#pragma once
#include <string>

namespace dmc::data {

std::string decompress_xz(const std::string& packed, const std::string& what);
std::string decompress_gz(const std::string& packed, const std::string& what);

}  // namespace dmc::data
