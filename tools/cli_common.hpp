// Shared by the sub-commands of the radargate tool: a small option parser that also writes the
// usage line and --help text, and the usage_error the dispatcher turns into exit code 2.
//
//   OptionParser o("run", "Computes the layer's output for a model and an input file.");
//   o.required("--model", "FILE", "the model (safetensors)");
//   o.flag("--backward", "also compute gradients");
//   o.optional("--grads", "LIST", "comma-separated gradient names (default: all)");
//   if (!o.parse(argc, argv)) return 0;          // --help was printed
//   const std::string model = o.str("--model");
//   const long long n = o.integer("--tokens", 1, 1 << 20, 8);
//
// Options are written "--name value" or "--name=value"; flags take no value. An unknown option,
// a positional argument, a repeated option, a missing required option or a value of the wrong
// form throws usage_error.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "radargate/io/model_file.hpp"

namespace radargate {
namespace cli {

/// `message` with every control byte (below 0x20, and 0x7f) written as \xNN: the last guard
/// that keeps an error on one line whatever text reached it.
inline std::string one_line(const std::string& message) {
  static const char* hexd = "0123456789abcdef";
  std::string r;
  for (unsigned char c : message) {
    if (c < 0x20 || c == 0x7f) {
      r += "\\x";
      r += hexd[c >> 4];
      r += hexd[c & 15];
    } else {
      r += char(c);
    }
  }
  return r;
}

/// What identifies the file a path names, now or once it is created: (device, inode) of an
/// existing file; (device, inode) of its directory and its base name otherwise. Two paths with the
/// same key name the same file however they are spelt (./a, a, a hard link, a symbolic link).
struct FileKey {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  std::string base;
  bool valid = true;
  bool operator==(const FileKey& o) const {
    return valid && o.valid && exists == o.exists && dev == o.dev && ino == o.ino && base == o.base;
  }
};

inline FileKey file_key(const std::string& path) {
  FileKey k;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    k.exists = true;
    k.dev = st.st_dev;
    k.ino = st.st_ino;
    return k;
  }
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  k.base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (::stat(dir.c_str(), &st) != 0) {
    k.valid = false;  // the directory does not exist: the write will fail and say so
    return k;
  }
  k.dev = st.st_dev;
  k.ino = st.st_ino;
  return k;
}

/// Bad usage: the dispatcher prints "radargate <cmd>: error: <message>", the usage line and a
/// pointer to --help, and exits with code 2.
class usage_error : public std::runtime_error {
 public:
  usage_error(const std::string& message, std::string usage) : std::runtime_error(message), usage_(std::move(usage)) {}
  const std::string& usage() const { return usage_; }

 private:
  std::string usage_;
};

class OptionParser {
 public:
  OptionParser(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

  /// An option that must be given.
  OptionParser& required(const std::string& name, const std::string& metavar, const std::string& help) {
    return add(name, metavar, help, true, false);
  }
  /// An option that may be given; `help` should say what happens when it is not.
  OptionParser& optional(const std::string& name, const std::string& metavar, const std::string& help) {
    return add(name, metavar, help, false, false);
  }
  /// A flag: present or not.
  OptionParser& flag(const std::string& name, const std::string& help) { return add(name, "", help, false, true); }
  /// Free text printed at the end of --help (examples, notes).
  OptionParser& epilog(const std::string& text) {
    epilog_ = text;
    return *this;
  }

  /// Parses argv (argv[0] is the sub-command's name). Returns false when --help was asked for and
  /// printed to stdout; the caller then exits with 0.
  bool parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::fputs(help().c_str(), stdout);
        return false;
      }
      if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) fail("unexpected argument '" + arg + "'");
      std::string value;
      bool inline_value = false;
      const std::size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
        inline_value = true;
      }
      const Spec* s = find(arg);
      if (!s) fail("unknown option '" + arg + "'");
      if (values_.count(arg)) fail("option " + arg + " given more than once");
      if (s->is_flag) {
        if (inline_value) fail("option " + arg + " takes no value");
      } else if (!inline_value) {
        if (i + 1 >= argc) fail("option " + arg + " needs a value (" + s->metavar + ")");
        value = argv[++i];
      }
      values_[arg] = value;
    }
    for (const Spec& s : specs_)
      if (s.required && !values_.count(s.name)) fail("option " + s.name + " is required");
    return true;
  }

  bool has(const std::string& name) const {
    check_declared(name);
    return values_.count(name) != 0;
  }

  /// The value of an option that was given (required options always are).
  std::string str(const std::string& name) const {
    check_declared(name);
    auto it = values_.find(name);
    if (it == values_.end()) fail("option " + name + " is required");
    return it->second;
  }
  std::string str(const std::string& name, const std::string& fallback) const {
    return has(name) ? str(name) : fallback;
  }

  /// An integer in [lo, hi].
  long long integer(const std::string& name, long long lo, long long hi) const {
    const std::string v = str(name);
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno == ERANGE || x < lo || x > hi)
      fail("option " + name + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi) +
           ", found '" + v + "'");
    return x;
  }
  long long integer(const std::string& name, long long lo, long long hi, long long fallback) const {
    return has(name) ? integer(name, lo, hi) : fallback;
  }

  /// A finite number.
  double number(const std::string& name) const {
    const std::string v = str(name);
    errno = 0;
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (!v.empty() && *end == '\0' && errno == ERANGE && std::fabs(x) <= 1)
      fail("option " + name + ": expected a number in double's normal range, found '" + v + "' (it underflows)");
    if (v.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(x))
      fail("option " + name + ": expected a finite number, found '" + v + "'");
    return x;
  }
  double number(const std::string& name, double fallback) const { return has(name) ? number(name) : fallback; }

  /// A comma-separated list of non-empty items.
  std::vector<std::string> list(const std::string& name) const {
    const std::string v = str(name);
    std::vector<std::string> out;
    std::size_t start = 0;
    while (true) {
      const std::size_t comma = v.find(',', start);
      const std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (item.empty()) fail("option " + name + ": expected a comma-separated list of names, found '" + v + "'");
      out.push_back(item);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    return out;
  }

  /// Refuses (as bad usage) an output option that names the same file as another option, an input
  /// or another output: writing it would replace that file.
  void refuse_same_file(const std::string& out_name, const std::vector<std::string>& others) const {
    if (!has(out_name)) return;
    const FileKey out = file_key(str(out_name));
    for (const std::string& other : others) {
      if (!has(other)) continue;
      if (file_key(str(other)) == out)
        fail("option " + out_name + ": expected a file other than " + other + " ('" + one_line(str(other)) +
             "'), found the same file '" + one_line(str(out_name)) + "' (it would be replaced)");
    }
  }

  /// Throws usage_error with this command's usage line.
  [[noreturn]] void fail(const std::string& message) const { throw usage_error(message, usage()); }

  /// "usage: radargate run --model FILE [--backward] ..."
  std::string usage() const {
    std::string u = "usage: radargate " + command_;
    std::string line = u;
    for (const Spec& s : specs_) {
      std::string item = s.name + (s.is_flag ? "" : " " + s.metavar);
      if (!s.required) item = "[" + item + "]";
      if (line.size() + 1 + item.size() > 100) {
        u += "\n" + std::string(("usage: radargate " + command_).size(), ' ');
        line = std::string(("usage: radargate " + command_).size(), ' ');
      }
      u += " " + item;
      line += " " + item;
    }
    return u + "\n";
  }

  std::string help() const {
    std::string h = usage() + "\n" + summary_ + "\n\noptions:\n";
    std::size_t w = 10;
    for (const Spec& s : specs_) w = std::max(w, label(s).size());
    for (const Spec& s : specs_) {
      std::string text = s.help;
      // Continuation lines of a multi-line help text line up under the first.
      std::string indented;
      for (char c : text) {
        indented += c;
        if (c == '\n') indented += std::string(w + 4, ' ');
      }
      h += "  " + label(s) + std::string(w - label(s).size() + 2, ' ') + indented + "\n";
    }
    h += "  " + std::string("-h, --help") + std::string(w - 10 + 2, ' ') + "show this help and exit\n";
    if (!epilog_.empty()) h += "\n" + epilog_ + (epilog_.back() == '\n' ? "" : "\n");
    return h;
  }

 private:
  struct Spec {
    std::string name, metavar, help;
    bool required = false, is_flag = false;
  };
  std::string command_, summary_, epilog_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;

  OptionParser& add(const std::string& name, const std::string& metavar, const std::string& help, bool req,
                    bool is_flag) {
    if (name.compare(0, 2, "--") != 0 || find(name))
      throw std::logic_error("OptionParser: bad or repeated option name '" + name + "'");
    specs_.push_back(Spec{name, metavar, help, req, is_flag});
    return *this;
  }
  const Spec* find(const std::string& name) const {
    for (const Spec& s : specs_)
      if (s.name == name) return &s;
    return nullptr;
  }
  void check_declared(const std::string& name) const {
    if (!find(name)) throw std::logic_error("OptionParser: option '" + name + "' was never declared");
  }
  static std::string label(const Spec& s) { return s.name + (s.is_flag ? "" : " " + s.metavar); }
};

/// Removes the temporary files a killed writer left next to `path` (io::remove_stale_temp_files)
/// and notes each on stderr.
inline void clean_stale_temps(const char* command, const std::string& path) {
  for (const std::string& f : io::remove_stale_temp_files(path))
    std::fprintf(stderr, "radargate %s: note: removed '%s', a temporary file left by a writer that no longer runs\n",
                 command, one_line(f).c_str());
}

/// Non-finite outputs are errors: "output 'y': expected finite values, found nan at index [0, 3]
/// (the computation overflowed ...)"; nothing is written.
template <class S>
void require_finite_output(const std::string& name, const Tensor<S>& t) {
  try {
    io::require_finite(name, t);
  } catch (const radargate::error& e) {
    const std::string what = e.what();
    const std::string tail = what.rfind("tensor '", 0) == 0 ? what.substr(what.find("': ") + 3) : what;
    detail::fail("output '", name, "': ", tail,
                 " (the computation overflowed: the model's values or the inputs are too large for its dtype; nothing "
                 "was written)");
  }
}

}  // namespace cli
}  // namespace radargate
