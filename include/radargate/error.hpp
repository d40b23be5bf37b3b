// radargate/error.hpp -- the library's one exception type.
//
// Host entry points validate their inputs once and throw radargate::error with a message that
// names the tensor or field, what was expected and what was found. Device code never throws.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace radargate {

class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << args);
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw error(concat(args...));
}
}  // namespace detail
}  // namespace radargate
