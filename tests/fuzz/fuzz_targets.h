// Fuzz targets for dmc's parsers of untrusted files: safetensors headers, config.json, YAML settings and the
// .xz / .gz decoders of data prepare. Each target feeds the bytes to the parser and accepts exactly two outcomes:
// a parsed value or a dmc::Error (the clear message naming file and field). Anything else escaping (a raw library
// exception, a crash, a sanitizer report) is a finding.
//
// Built two ways (CMakeLists.txt):
//   - with clang + libFuzzer (DMC_FUZZ=ON, scripts/fuzz.sh): fuzz_<target>, run for a bounded time over the corpus;
//   - with the ASan/UBSan build (DMC_SANITIZE=ON, scripts/sanitize.sh, CI): fuzz_<target>_replay, which runs every
//     file of tests/fuzz/corpus/<target>/ once (findings saved there stay fixed).
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
