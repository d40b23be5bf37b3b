// Shared by the libFuzzer harnesses in fuzz/ (built and run by scripts/fuzz).
//
// A harness passes the fuzzer's bytes to one reader of the library. radargate::error is the
// expected outcome for bad bytes; anything else (another exception, a crash, a sanitizer report,
// a hang, more memory than -rss_limit_mb) is a finding. Every error message must be one printable
// line: a control byte in it would let a file forge a second error line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "radargate/error.hpp"

namespace fuzz {

inline void check_message(const char* what) {
  for (const char* p = what; *p; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c == 0x7f) {
      std::fprintf(stderr, "fuzz: control byte 0x%02x in an error message: %s\n", c, what);
      std::abort();
    }
  }
}

/// Runs f; radargate::error is expected (its message is checked), any other exception aborts.
template <class F>
void expect_errors_only(F&& f) {
  try {
    f();
  } catch (const radargate::error& e) {
    check_message(e.what());
  }
}

inline std::vector<unsigned char> bytes(const std::uint8_t* data, std::size_t size) {
  return std::vector<unsigned char>(data, data + size);
}

}  // namespace fuzz
