// radargate/error.hpp -- how the library reports bad input.
//
// Host entry points validate their inputs once and report one line that names the tensor or
// field, what was expected and what was found. Device code never reports.
//
// With exceptions (the default) the report is a thrown radargate::error.
//
// Without exceptions -- RADARGATE_NO_EXCEPTIONS defined, or the compiler told -fno-exceptions
// (detected through __cpp_exceptions / __EXCEPTIONS / _CPPUNWIND) -- nothing throws: the report
// goes to the error handler installed with set_error_handler(), then the program is ended with
// std::abort(). The handler gets the message and the pointer given with it; it may log the
// message, flush what the program must keep, and end the program its own way (std::exit,
// std::_Exit). If it returns, or none is installed, the message is written to stderr and the
// program aborts: a call that found bad input never continues. This covers the core, the
// reference backend and the cpu backend; radargate::io (nlohmann/json) and geometry need exceptions.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(RADARGATE_NO_EXCEPTIONS) || !(defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND))
#define RG_EXCEPTIONS 0
#else
#define RG_EXCEPTIONS 1
#endif

namespace radargate {

class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Called with the message of a failed call when exceptions are off (see above).
using error_handler = void (*)(const char* message, void* user);

namespace detail {
struct ErrorHandlerSlot {
  error_handler handler = nullptr;
  void* user = nullptr;
};
inline ErrorHandlerSlot& error_handler_slot() {
  static ErrorHandlerSlot slot;
  return slot;
}
}  // namespace detail

/// Installs the handler that receives the message of a failed call when the library is compiled
/// without exceptions (nullptr: the default, which writes the message to stderr). Returns the
/// previous one. Not synchronised: install it before using layers from several threads.
inline error_handler set_error_handler(error_handler handler, void* user = nullptr) noexcept {
  detail::ErrorHandlerSlot& s = detail::error_handler_slot();
  const error_handler old = s.handler;
  s.handler = handler;
  s.user = user;
  return old;
}

/// True when failed calls throw radargate::error, false when they go to the error handler.
constexpr bool exceptions_enabled() noexcept { return RG_EXCEPTIONS != 0; }

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
#if RG_EXCEPTIONS
  throw error(concat(args...));
#else
  const std::string message = concat(args...);
  const ErrorHandlerSlot s = error_handler_slot();
  if (s.handler) s.handler(message.c_str(), s.user);
  std::fprintf(stderr, "radargate: %s\n", message.c_str());
  std::abort();
#endif
}
}  // namespace detail
}  // namespace radargate
