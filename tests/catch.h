// Catch2 v2/v3 shim: v3 (the GPU machine) has per-topic headers and a main library; v2 (Debian 12) is one
// header whose main tests/main.cpp defines.
#pragma once
#if defined(DMC_CATCH3)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
// Catch2 v2 has no SKIP: warn visibly and leave the test case.
#define SKIP(msg)   \
  do {              \
    WARN("SKIPPED: " << (msg)); \
    return;         \
  } while (0)
#endif
