// radargate/io/safetensors.hpp -- reading and writing safetensors files.
//
// Layout (https://github.com/huggingface/safetensors):
//
//   bytes [0, 8)          n, the header size, unsigned 64-bit little endian
//   bytes [8, 8 + n)      a UTF-8 JSON object:
//                           "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
//                           "__metadata__": {"key": "value", ...}        (optional, strings only)
//   bytes [8 + n, end)    the data section; tensor <name> is row major in bytes [begin, end) of it
//
// The reader checks everything the reference implementation checks, and names the file, the tensor,
// the expected and the found value in every error: the header size (at most 100,000,000 bytes, and
// no larger than the file), JSON syntax, the type of every field, known dtypes, shape * dtype size ==
// end - begin, offsets inside the data section, no two tensors overlapping, no gap and no trailing
// byte. Offsets need not be aligned: elements are decoded byte by byte, never through a cast pointer.
//
// F64, F32, F16 and BF16 convert to float or double. The other dtypes of the format are recognised
// (so a message can say "found I32") but cannot be read as floating-point tensors.
//
// The writer produces F64, F32, F16 or BF16 (rounding to nearest, ties to even), pads the header
// with spaces to a multiple of 8 bytes (so every tensor of an F64 file is 8-byte aligned), and
// writes through a temporary file in the destination's directory that is fsync'ed and renamed, so
// a reader never sees a partial file and a failed write leaves nothing behind.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../checked.hpp"
#include "../config.hpp"
#include "../error.hpp"
#include "../model.hpp"

namespace radargate {
namespace io {

// --- dtypes --------------------------------------------------------------------------------------

/// Every dtype of the safetensors format. Only F64, F32, F16 and BF16 hold radargate tensors.
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2 };

inline const char* to_string(DType t) {
  switch (t) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::I16:
      return "I16";
    case DType::I8:
      return "I8";
    case DType::U64:
      return "U64";
    case DType::U32:
      return "U32";
    case DType::U16:
      return "U16";
    case DType::U8:
      return "U8";
    case DType::BOOL:
      return "BOOL";
    case DType::F8_E4M3:
      return "F8_E4M3";
    case DType::F8_E5M2:
      return "F8_E5M2";
  }
  return "?";
}

inline constexpr DType all_dtypes[] = {DType::F64, DType::F32, DType::F16,  DType::BF16,    DType::I64,
                                       DType::I32, DType::I16, DType::I8,   DType::U64,     DType::U32,
                                       DType::U16, DType::U8,  DType::BOOL, DType::F8_E4M3, DType::F8_E5M2};

/// Bytes per element.
inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
    case DType::F32:
    case DType::I32:
    case DType::U32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
    case DType::U16:
      return 2;
    default:
      return 1;
  }
}

/// True for the dtypes that convert to float / double (F64, F32, F16, BF16).
inline bool is_floating(DType t) { return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16; }

/// Parses a dtype name ("F32"); returns false for a name the format does not define.
inline bool parse_dtype(const std::string& s, DType& out) {
  for (DType t : all_dtypes)
    if (s == to_string(t)) {
      out = t;
      return true;
    }
  return false;
}

/// Parses one of the four floating-point dtypes, for options and configuration; throws
/// radargate::error naming `what` otherwise.
inline DType parse_float_dtype(const std::string& s, const std::string& what = "dtype") {
  DType t;
  if (!parse_dtype(s, t) || !is_floating(t))
    detail::fail(what, ": expected one of F64 | F32 | F16 | BF16, found \"", s, "\"");
  return t;
}

// --- half and bfloat16 ---------------------------------------------------------------------------

namespace detail {
using radargate::detail::concat;
using radargate::detail::fail;

/// Rounds v to a binary floating-point format with `exp_bits` exponent bits and `frac_bits`
/// fraction bits (IEEE layout, at most 16 bits in all), to nearest with ties to even, and returns
/// its bit pattern. Overflow gives +-inf, NaN a quiet NaN of the same sign, and values below the
/// smallest normal number round to subnormals (or to a signed zero). Working from the double
/// avoids the double rounding of a double -> float -> half chain.
inline std::uint16_t encode_small_float(double v, int exp_bits, int frac_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const int emin = 1 - bias, emax = bias;
  const std::uint32_t sign = std::signbit(v) ? 0x8000u : 0u;
  const std::uint32_t exp_all = ((1u << exp_bits) - 1u) << frac_bits;
  if (std::isnan(v)) return std::uint16_t(sign | exp_all | (1u << (frac_bits - 1)));
  const double a = std::fabs(v);
  if (std::isinf(a)) return std::uint16_t(sign | exp_all);
  if (a == 0.0) return std::uint16_t(sign);
  int ex = 0;
  (void)std::frexp(a, &ex);
  int e = std::max(ex - 1, emin);                 // a in [2^e, 2^(e+1)) for normal results
  const double m = std::ldexp(a, frac_bits - e);  // a in units of the last place; exact
  double q = std::floor(m);
  const double rest = m - q;  // exact
  if (rest > 0.5 || (rest == 0.5 && std::fmod(q, 2.0) != 0.0)) q += 1.0;
  std::uint32_t qi = std::uint32_t(q);
  if (qi == (2u << frac_bits)) {  // rounded up into the next binade
    qi >>= 1;
    ++e;
  }
  if (e > emax) return std::uint16_t(sign | exp_all);
  if (qi < (1u << frac_bits)) return std::uint16_t(sign | qi);  // subnormal (e == emin)
  return std::uint16_t(sign | (std::uint32_t(e + bias) << frac_bits) | (qi - (1u << frac_bits)));
}

inline double decode_small_float(std::uint16_t bits, int exp_bits, int frac_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const std::uint32_t e = (bits >> frac_bits) & ((1u << exp_bits) - 1u);
  const std::uint32_t f = bits & ((1u << frac_bits) - 1u);
  const double s = (bits & 0x8000u) ? -1.0 : 1.0;
  if (e == ((1u << exp_bits) - 1u))
    return f ? std::copysign(std::numeric_limits<double>::quiet_NaN(), s) : s * std::numeric_limits<double>::infinity();
  if (e == 0) return s * std::ldexp(double(f), 1 - bias - frac_bits);
  return s * std::ldexp(double(f | (1u << frac_bits)), int(e) - bias - frac_bits);
}

template <class U>
U load_le(const unsigned char* p) {
  U v = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) v |= U(p[i]) << (8 * i);
  return v;
}
template <class U>
void store_le(unsigned char* p, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

}  // namespace detail

/// IEEE binary16 (F16) and bfloat16 (BF16) conversions. To the small format: round to nearest,
/// ties to even; overflow to inf; NaN stays NaN. From it: exact.
inline std::uint16_t float_to_half(double v) { return detail::encode_small_float(v, 5, 10); }
inline std::uint16_t float_to_bf16(double v) { return detail::encode_small_float(v, 8, 7); }
inline float half_to_float(std::uint16_t h) { return float(detail::decode_small_float(h, 5, 10)); }
inline float bf16_to_float(std::uint16_t h) { return float(detail::decode_small_float(h, 8, 7)); }

namespace detail {

/// Decodes n elements of a floating dtype from little-endian bytes (any alignment).
template <class S>
void decode(const unsigned char* src, DType t, std::size_t n, S* dst) {
  switch (t) {
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t b = load_le<std::uint64_t>(src + 8 * i);
        double v;
        std::memcpy(&v, &b, 8);
        dst[i] = static_cast<S>(v);
      }
      return;
    case DType::F32:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t b = load_le<std::uint32_t>(src + 4 * i);
        float v;
        std::memcpy(&v, &b, 4);
        dst[i] = static_cast<S>(v);
      }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<S>(half_to_float(load_le<std::uint16_t>(src + 2 * i)));
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<S>(bf16_to_float(load_le<std::uint16_t>(src + 2 * i)));
      return;
    default:
      fail("cannot decode dtype ", to_string(t), " as floating point");
  }
}

/// Encodes n values as a floating dtype, little endian.
template <class S>
void encode(const S* src, DType t, std::size_t n, unsigned char* dst) {
  switch (t) {
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        const double v = static_cast<double>(src[i]);
        std::uint64_t b;
        std::memcpy(&b, &v, 8);
        store_le(dst + 8 * i, b);
      }
      return;
    case DType::F32:
      for (std::size_t i = 0; i < n; ++i) {
        const float v = static_cast<float>(src[i]);
        std::uint32_t b;
        std::memcpy(&b, &v, 4);
        store_le(dst + 4 * i, b);
      }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) store_le(dst + 2 * i, float_to_half(double(src[i])));
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) store_le(dst + 2 * i, float_to_bf16(double(src[i])));
      return;
    default:
      fail("cannot encode floating-point values as dtype ", to_string(t));
  }
}

inline std::string shape_str(const std::vector<index_t>& s) { return checked::shape_text(s.data(), s.size()); }

inline std::string errno_text(int e) { return std::strerror(e); }

/// "a directory", "a character device", ... for messages about what a path names.
inline const char* file_kind(mode_t m) {
  if (S_ISREG(m)) return "a regular file";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISLNK(m)) return "a symbolic link";
  return "not a regular file";
}

/// s with every byte outside printable ASCII written as \xNN and '\' as "\\", so that a name read
/// from a file (or a path) can neither split a message into two lines nor send terminal escapes.
inline std::string printable(const std::string& s) {
  static const char* hexd = "0123456789abcdef";
  std::string r;
  r.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\\')
      r += "\\\\";
    else if (c >= 0x20 && c < 0x7f)
      r += char(c);
    else {
      r += "\\x";
      r += hexd[c >> 4];
      r += hexd[c & 15];
    }
  }
  return r;
}

/// A JSON value for a message: its text, cut to `limit` characters.
inline std::string excerpt(const std::string& text, std::size_t limit = 48) {
  if (text.size() <= limit) return printable(text);
  return printable(text.substr(0, limit)) + "...";
}
inline std::string excerpt(const nlohmann::json& j, std::size_t limit = 48) {
  return excerpt(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), limit);
}

/// Bytes this process may allocate at most: the smaller of the physical memory and the
/// RLIMIT_AS / RLIMIT_DATA limits. Sizes read from a file are checked against it before anything
/// is allocated for them.
inline std::uint64_t memory_limit() {
  std::uint64_t lim = std::numeric_limits<std::uint64_t>::max();
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) lim = std::uint64_t(pages) * std::uint64_t(page);
  for (int res : {RLIMIT_AS, RLIMIT_DATA}) {
    struct rlimit rl;
    if (::getrlimit(res, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) lim = std::min<std::uint64_t>(lim, rl.rlim_cur);
  }
  return lim;
}

/// Parses JSON text that is not a safetensors header (e.g. the configuration stored in the
/// metadata): a linear pass first rejects nesting deeper than `max_depth` and repeated keys in one
/// object (which the DOM would silently collapse), so the DOM built after it is shallow and every
/// later dump() of it is bounded. Errors read "<what>: ...". Json is nlohmann::json, or
/// nlohmann::ordered_json where the order of keys matters.
template <class Json = nlohmann::json>
inline Json parse_json_checked(const std::string& text, const std::string& what, int max_depth = 16) {
  struct Checker {
    const std::string& what;
    int max_depth;
    std::vector<std::unordered_set<std::string>> open;  // the keys of each open container (arrays: none)
    std::vector<std::string> path;
    bool open_one() {
      if (int(open.size()) >= max_depth)
        fail(what, ": nested deeper than ", max_depth, " levels: expected at most ", max_depth);
      open.emplace_back();
      return true;
    }
    bool null() { return true; }
    bool boolean(bool) { return true; }
    bool number_integer(nlohmann::json::number_integer_t) { return true; }
    bool number_unsigned(nlohmann::json::number_unsigned_t) { return true; }
    bool number_float(nlohmann::json::number_float_t, const std::string&) { return true; }
    bool string(std::string&) { return true; }
    bool binary(nlohmann::json::binary_t&) { return true; }
    bool start_object(std::size_t) { return open_one(); }
    bool start_array(std::size_t) { return open_one(); }
    bool end_object() {
      open.pop_back();
      return true;
    }
    bool end_array() { return end_object(); }
    bool key(std::string& k) {
      if (!open.back().insert(k).second)
        fail(what, ": key '", printable(k), "' appears more than once in one object: expected unique keys");
      return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& e) {
      fail(what, ": not valid JSON: ", printable(e.what()));
    }
  } checker{what, max_depth, {}, {}};
  nlohmann::json::sax_parse(text.begin(), text.end(), &checker);
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": not valid JSON: ", printable(e.what()));
  }
}

}  // namespace detail

// --- reading -------------------------------------------------------------------------------------

/// The header of one tensor. begin/end are byte offsets into the data section.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<index_t> shape;
  std::uint64_t begin = 0, end = 0;

  /// Element count (representable: the reader checked it with radargate::checked::numel).
  index_t numel() const { return checked::numel_or_throw(shape, "tensor"); }
};

/// Largest header accepted, as in the reference implementation.
inline constexpr std::uint64_t max_header_size = 100000000;
/// Largest rank accepted in a header (radargate's tensors have rank 3 at most).
inline constexpr std::size_t max_rank = 64;

/// A parsed safetensors file held in memory. Every accessor throws radargate::error with a
/// message that starts with "file '<source>': ". Names read from the file and the source are
/// printed through detail::printable.
class SafetensorsFile {
 public:
  /// Reads and validates a file. Only regular files are read (a device, a FIFO or a directory is
  /// refused before any byte is read), and exactly as many bytes as fstat reports, after checking
  /// that they fit in detail::memory_limit().
  static SafetensorsFile read(const std::string& path) {
    const std::string p = detail::printable(path);
    // O_NONBLOCK: opening a FIFO must not wait for a writer; the flag is harmless for a regular file.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) detail::fail("file '", p, "': cannot open: ", detail::errno_text(errno));
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st;
    if (::fstat(fd, &st) != 0) detail::fail("file '", p, "': cannot stat: ", detail::errno_text(errno));
    if (!S_ISREG(st.st_mode))
      detail::fail("file '", p, "': expected a regular file, found ", detail::file_kind(st.st_mode));
    const std::uint64_t size = std::uint64_t(st.st_size);
    const std::uint64_t limit = detail::memory_limit();
    if (size > limit)
      detail::fail("file '", p, "': ", size, " bytes: expected at most ", limit,
                   " bytes (the memory this process may use), found a larger file");
    std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t got = ::read(fd, bytes.data() + done, bytes.size() - done);
      if (got < 0) {
        if (errno == EINTR) continue;
        detail::fail("file '", p, "': read error: ", detail::errno_text(errno));
      }
      if (got == 0)
        detail::fail("file '", p, "': expected ", size, " bytes (its size when opened), found ", done,
                     " (the file shrank while being read)");
      done += std::size_t(got);
    }
    unsigned char extra;
    ssize_t more;
    while ((more = ::read(fd, &extra, 1)) < 0 && errno == EINTR) {
    }
    if (more > 0)
      detail::fail("file '", p, "': expected ", size,
                   " bytes (its size when opened), found more (the file grew while "
                   "being read)");
    return from_bytes(std::move(bytes), path);
  }

  /// Validates bytes already in memory; `source` names them in messages.
  static SafetensorsFile from_bytes(std::vector<unsigned char> bytes, std::string source) {
    SafetensorsFile sf;
    sf.source_ = std::move(source);
    sf.bytes_ = std::move(bytes);
    sf.parse();
    return sf;
  }

  const std::string& source() const { return source_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  /// Tensor names in data order.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const TensorInfo& t : infos_) n.push_back(t.name);
    return n;
  }
  const std::vector<TensorInfo>& tensors() const { return infos_; }
  const TensorInfo& info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail_tensor(name, "missing from the file");
    return infos_[it->second];
  }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// The raw little-endian bytes of a tensor.
  const unsigned char* raw(const std::string& name) const { return bytes_.data() + data_start_ + info(name).begin; }

  /// A tensor of any floating dtype, converted to S.
  template <class S>
  Tensor<S> get(const std::string& name) const {
    static_assert(std::is_floating_point<S>::value, "SafetensorsFile::get: S must be float or double");
    const TensorInfo& ti = info(name);
    if (!is_floating(ti.dtype))
      fail_tensor(name, "expected a floating-point dtype (F64, F32, F16 or BF16), found ", to_string(ti.dtype));
    std::uint64_t need = 0;
    if (!checked::mul(std::uint64_t(ti.numel()), std::uint64_t(sizeof(S)), need) || need > detail::memory_limit())
      fail_tensor(name, "expected a tensor that fits in memory as ", sizeof(S) == 8 ? "double" : "float", " (at most ",
                  detail::memory_limit(), " bytes), found shape ", detail::shape_str(ti.shape));
    Tensor<S> t;
    t.shape = ti.shape;
    t.data.resize(std::size_t(ti.numel()));
    detail::decode(raw(name), ti.dtype, t.data.size(), t.data.data());
    return t;
  }

  /// A tensor that must be stored as `expect`, converted to S.
  template <class S>
  Tensor<S> get(const std::string& name, DType expect) const {
    const TensorInfo& ti = info(name);
    if (ti.dtype != expect) fail_tensor(name, "expected dtype ", to_string(expect), ", found ", to_string(ti.dtype));
    return get<S>(name);
  }

  template <class... A>
  [[noreturn]] void fail_file(const A&... a) const {
    detail::fail("file '", detail::printable(source_), "': ", a...);
  }
  template <class... A>
  [[noreturn]] void fail_tensor(const std::string& name, const A&... a) const {
    detail::fail("file '", detail::printable(source_), "': tensor '", detail::printable(name), "': ", a...);
  }

 private:
  std::string source_;
  std::vector<unsigned char> bytes_;
  std::size_t data_start_ = 0;
  std::vector<TensorInfo> infos_;  // sorted by begin
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;

  /// The header, read by nlohmann's SAX parser (iterative: no recursion whatever the nesting) into
  /// TensorInfo directly, never into a DOM: time is linear in the header's length, memory is
  /// linear in the number of valid entries, and every value is judged as it arrives. Repeated
  /// names and repeated keys inside one entry or in __metadata__ are errors (a DOM would keep the
  /// last one silently). Fields other than dtype, shape and data_offsets are skipped, whatever
  /// they hold, as the reference implementation does.
  struct HeaderReader {
    HeaderReader(SafetensorsFile& file, std::uint64_t data_bytes) : f(file), data_size(data_bytes) {}
    SafetensorsFile& f;
    std::uint64_t data_size;
    enum class At { start, top, top_value, meta, meta_value, entry, field_value, shape, offsets, skip, done };
    At at = At::start;
    std::size_t skip_depth = 0;
    std::string name, field;
    std::unordered_set<std::string> keys;  // the keys of the open entry or of __metadata__
    bool has_dtype = false, has_shape = false, has_offsets = false;
    TensorInfo cur;
    std::vector<std::uint64_t> offsets;
    std::vector<std::uint64_t> raw_shape;

    // What a value is, for messages: its kind with an article and its (shortened) text.
    struct Found {
      const char* kind;
      std::string text;
    };
    std::string found(const Found& v) const {
      return v.text.empty() ? v.kind : std::string(v.kind) + " (" + v.text + ")";
    }

    bool value(const Found& v, std::uint64_t u = 0, bool is_unsigned = false, const std::string* str = nullptr) {
      switch (at) {
        case At::start:
          f.fail_file("header: expected a JSON object, found ", v.kind);
        case At::top_value:
          bad_top_value(v);
        case At::meta_value:
          if (!str)
            f.fail_file("'__metadata__' key '", detail::printable(field), "': expected a string value, found ",
                        found(v));
          f.metadata_[field] = *str;
          at = At::meta;
          return true;
        case At::field_value:
          if (field == "dtype") {
            if (!str) f.fail_tensor(name, "'dtype': expected a string, found ", found(v));
            if (!parse_dtype(*str, cur.dtype))
              f.fail_tensor(name, "'dtype': expected a safetensors dtype (F64, F32, F16, BF16, I64, ...), found ",
                            v.text);
            has_dtype = true;
          } else if (field == "shape") {
            f.fail_tensor(name, "'shape': expected an array of non-negative integers, found ", found(v));
          } else if (field == "data_offsets") {
            f.fail_tensor(name, "'data_offsets': expected an array [begin, end], found ", found(v));
          }
          at = At::entry;
          return true;
        case At::shape:
          if (!is_unsigned) f.fail_tensor(name, "'shape': expected non-negative integers, found ", found(v));
          if (raw_shape.size() == max_rank)
            f.fail_tensor(name, "'shape': expected at most ", max_rank, " dimensions, found more");
          raw_shape.push_back(u);
          return true;
        case At::offsets:
          if (!is_unsigned) f.fail_tensor(name, "'data_offsets': expected non-negative integers, found ", found(v));
          if (offsets.size() == 2)
            f.fail_tensor(name,
                          "'data_offsets': expected an array [begin, end], found an array of more than 2 elements");
          offsets.push_back(u);
          return true;
        case At::skip:
          return true;
        default:
          f.fail_file("header: unexpected ", v.kind);  // unreachable: the parser checks the grammar
      }
    }
    [[noreturn]] void bad_top_value(const Found& v) const {
      if (name == "__metadata__") f.fail_file("'__metadata__': expected an object of strings, found ", v.kind);
      f.fail_tensor(name, "expected an object with dtype, shape and data_offsets, found ", v.kind);
    }

    bool null() { return value({"null", "null"}); }
    bool boolean(bool b) { return value({"boolean", b ? "true" : "false"}); }
    bool number_integer(nlohmann::json::number_integer_t x) {
      if (x >= 0) return number_unsigned(std::uint64_t(x));
      return value({"a negative integer", std::to_string(x)});
    }
    bool number_unsigned(nlohmann::json::number_unsigned_t x) {
      return value({"a non-negative integer", std::to_string(x)}, x, true);
    }
    bool number_float(nlohmann::json::number_float_t, const std::string& text) {
      return value({"number", detail::excerpt(text)});
    }
    bool string(std::string& s) { return value({"string", "\"" + detail::excerpt(s) + "\""}, 0, false, &s); }
    bool binary(nlohmann::json::binary_t&) { return value({"binary", ""}); }

    bool start_object(std::size_t) {
      switch (at) {
        case At::start:
          at = At::top;
          return true;
        case At::top_value:
          keys.clear();
          if (name == "__metadata__") {
            at = At::meta;
          } else {
            at = At::entry;
            has_dtype = has_shape = has_offsets = false;
            cur = TensorInfo();
            cur.name = name;
            offsets.clear();
            raw_shape.clear();
          }
          return true;
        case At::field_value:
          if (field == "dtype" || field == "shape" || field == "data_offsets") return value({"object", ""});
          at = At::skip;
          skip_depth = 1;
          return true;
        case At::skip:
          ++skip_depth;
          return true;
        default:
          return value({"object", ""});
      }
    }
    bool start_array(std::size_t) {
      switch (at) {
        case At::field_value:
          if (field == "shape") {
            at = At::shape;
            has_shape = true;
            return true;
          }
          if (field == "data_offsets") {
            at = At::offsets;
            has_offsets = true;
            return true;
          }
          if (field == "dtype") return value({"array", ""});
          at = At::skip;
          skip_depth = 1;
          return true;
        case At::skip:
          ++skip_depth;
          return true;
        default:
          return value({"array", ""});
      }
    }
    bool end_array() {
      if (at == At::skip) return end_skipped();
      if (at == At::offsets && offsets.size() != 2)
        f.fail_tensor(name, "'data_offsets': expected an array [begin, end], found an array of ", offsets.size(),
                      offsets.size() == 1 ? " element" : " elements");
      at = At::entry;  // shape or data_offsets
      return true;
    }
    bool end_object() {
      switch (at) {
        case At::skip:
          return end_skipped();
        case At::top:
          at = At::done;
          return true;
        case At::meta:
          at = At::top;
          return true;
        case At::entry:
          finish_entry();
          at = At::top;
          return true;
        default:
          return true;  // unreachable: the parser checks the grammar
      }
    }
    bool end_skipped() {
      if (--skip_depth == 0) at = At::entry;
      return true;
    }
    bool key(std::string& k) {
      if (at == At::top) {
        if (f.index_.count(k) || (k == "__metadata__" && saw_metadata))
          f.fail_file("header: name '", detail::printable(k), "' appears more than once");
        if (k == "__metadata__") saw_metadata = true;
        name = std::move(k);
        at = At::top_value;
        return true;
      }
      if (at == At::meta || at == At::entry) {
        if (!keys.insert(k).second)
          f.fail_file("header: key '", detail::printable(k), "' appears more than once (in '", detail::printable(name),
                      "')");
        field = std::move(k);
        at = at == At::meta ? At::meta_value : At::field_value;
        return true;
      }
      return true;  // inside a skipped value
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& e) {
      f.fail_file("header is not valid JSON: ", detail::printable(e.what()));
    }
    bool saw_metadata = false;

    void finish_entry() {
      if (!has_dtype) f.fail_tensor(name, "missing 'dtype'");
      if (!has_shape) f.fail_tensor(name, "missing 'shape'");
      if (!has_offsets) f.fail_tensor(name, "missing 'data_offsets'");
      cur.begin = offsets[0];
      cur.end = offsets[1];
      if (cur.begin > cur.end)
        f.fail_tensor(name, "'data_offsets': expected begin <= end, found [", cur.begin, ", ", cur.end, "]");
      if (cur.end > data_size)
        f.fail_tensor(name, "'data_offsets' [", cur.begin, ", ", cur.end, "] out of range: the data section has ",
                      data_size, " bytes (file truncated?)");
      bool representable = true;
      for (std::uint64_t x : raw_shape) {
        if (x > std::uint64_t(std::numeric_limits<index_t>::max())) representable = false;
        cur.shape.push_back(representable ? index_t(x) : 0);
      }
      index_t numel = 0;
      std::uint64_t bytes = 0;
      if (!representable || !checked::numel(cur.shape, numel) ||
          !checked::mul(std::uint64_t(numel), std::uint64_t(dtype_size(cur.dtype)), bytes)) {
        std::string text = "[";
        for (std::size_t i = 0; i < raw_shape.size(); ++i) text += (i ? ", " : "") + std::to_string(raw_shape[i]);
        f.fail_tensor(name, "shape ", text, "] is too large: expected the product of its non-zero extents to fit in ",
                      std::numeric_limits<index_t>::max());
      }
      if (bytes != cur.end - cur.begin)
        f.fail_tensor(name, "expected ", bytes, " bytes (shape ", detail::shape_str(cur.shape), " of ",
                      to_string(cur.dtype), "), found data_offsets [", cur.begin, ", ", cur.end,
                      "] = ", cur.end - cur.begin, " bytes");
      f.index_.emplace(name, f.infos_.size());
      f.infos_.push_back(std::move(cur));
    }
  };

  void parse() {
    const std::uint64_t size = bytes_.size();
    if (size < 8)
      fail_file("too short for the 8-byte header size: expected at least 8 bytes, found ", size,
                size == 0 ? " (empty file)" : "");
    const std::uint64_t n = detail::load_le<std::uint64_t>(bytes_.data());
    if (n > max_header_size)
      fail_file("header size ", n, " bytes exceeds the limit of ", max_header_size,
                " bytes (corrupt or not a safetensors file)");
    if (n > size - 8)
      fail_file("header size ", n, " bytes is larger than the file: expected at most ", size - 8,
                " bytes after the 8-byte size (file truncated?)");
    if (n < 2) fail_file("header of ", n, " bytes: expected a JSON object");
    data_start_ = std::size_t(8 + n);
    const char* hb = reinterpret_cast<const char*>(bytes_.data() + 8);
    if (hb[0] != '{') fail_file("header: expected a JSON object starting with '{', found byte 0x", hex(bytes_[8]));
    // JSON text never holds a NUL byte; a header padded with NULs (or cut short by one) is not a
    // safetensors header, whatever follows.
    if (const void* nul = std::memchr(hb, 0, std::size_t(n)))
      fail_file("header: expected JSON text padded with spaces, found byte 0x00 at offset ",
                8 + (static_cast<const char*>(nul) - hb));

    HeaderReader reader(*this, size - 8 - n);
    nlohmann::json::sax_parse(hb, hb + n, &reader);

    // Tensors must tile the data section exactly: no overlap, no gap, nothing after the last one.
    std::stable_sort(infos_.begin(), infos_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    const std::uint64_t data_size = size - 8 - n;
    std::uint64_t covered = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo& t : infos_) {
      if (t.begin < covered)
        fail_file("tensors '", detail::printable(prev->name), "' (bytes [", prev->begin, ", ", prev->end, ")) and '",
                  detail::printable(t.name), "' (bytes [", t.begin, ", ", t.end, ")) overlap");
      if (t.begin > covered)
        fail_file("bytes [", covered, ", ", t.begin, ") of the data section belong to no tensor (before tensor '",
                  detail::printable(t.name), "')");
      covered = t.end;
      if (t.end > t.begin || !prev) prev = &t;
    }
    if (covered != data_size)
      fail_file(data_size - covered, " trailing bytes: the data section has ", data_size, " bytes, the tensors cover ",
                covered);
    index_.clear();
    for (std::size_t i = 0; i < infos_.size(); ++i) index_[infos_[i].name] = i;
  }

  static std::string hex(unsigned char c) {
    const char* d = "0123456789abcdef";
    return std::string{d[c >> 4], d[c & 15]};
  }
};

// --- writing -------------------------------------------------------------------------------------

namespace detail {
/// The directory and the base name of a path ("a/b" -> "a", "b"; "b" -> ".", "b").
inline std::pair<std::string, std::string> split_path(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

/// True when `name` is ".<base>.tmp.<pid>.<counter>.<stamp>" (the temporary files of
/// PendingFile), with the pid stored in *pid.
inline bool is_temp_name(const std::string& name, const std::string& base, long* pid) {
  const std::string head = "." + base + ".tmp.";
  if (name.size() <= head.size() || name.compare(0, head.size(), head) != 0) return false;
  int fields = 0;
  long first = 0;
  std::size_t i = head.size();
  while (i < name.size()) {
    std::size_t j = i;
    long v = 0;
    while (j < name.size() && name[j] >= '0' && name[j] <= '9' && j - i < 18) v = v * 10 + (name[j++] - '0');
    if (j == i) return false;
    if (fields == 0) first = v;
    ++fields;
    if (j == name.size()) break;
    if (name[j] != '.') return false;
    i = j + 1;
    if (i == name.size()) return false;
  }
  if (fields != 3 || first <= 0) return false;
  *pid = first;
  return true;
}
}  // namespace detail

/// The temporary files ".<name>.tmp.<pid>.<n>.<stamp>" next to `path` whose writer is gone: its
/// process does not exist on this machine and the file has not changed for `min_age_s` seconds.
/// A writer killed by SIGKILL (or a power cut) leaves one behind; nothing else makes such names.
inline std::vector<std::string> stale_temp_files(const std::string& path, double min_age_s = 60) {
  std::vector<std::string> out;
  const auto [dir, base] = detail::split_path(path);
  if (base.empty()) return out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  const std::time_t now = std::time(nullptr);
  while (const dirent* e = ::readdir(d)) {
    long pid = 0;
    const std::string name = e->d_name;
    if (!detail::is_temp_name(name, base, &pid)) continue;
    if (pid == long(::getpid()) || ::kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;
    const std::string full = dir + "/" + name;
    struct stat st;
    if (::lstat(full.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (double(now - st.st_mtime) < min_age_s) continue;
    out.push_back(full);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

/// Removes the files stale_temp_files names; returns those removed.
inline std::vector<std::string> remove_stale_temp_files(const std::string& path, double min_age_s = 60) {
  std::vector<std::string> removed;
  for (const std::string& f : stale_temp_files(path, min_age_s))
    if (::unlink(f.c_str()) == 0) removed.push_back(f);
  return removed;
}

/// A file written in two steps, so several outputs are published together or not at all: the
/// constructor writes `bytes` to a temporary file in the destination's directory and fsyncs it;
/// commit() renames it over `path`. A PendingFile destroyed without commit() removes its temporary
/// file, so a failure before the renames leaves every destination as it was (absent, or with its
/// previous content). An existing destination that is not a regular file (a directory, a device)
/// is refused before anything is written.
class PendingFile {
 public:
  PendingFile(const std::string& path, const std::vector<unsigned char>& bytes) : path_(path) {
    const std::string p = detail::printable(path);
    const auto [dir, base] = detail::split_path(path);
    dir_ = dir;
    if (base.empty()) detail::fail("output '", p, "': expected a file name, found a directory path");
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
      detail::fail("output '", p, "': expected a new file or a regular file to replace, found ",
                   detail::file_kind(st.st_mode));
    static std::atomic<unsigned> counter{0};
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      const auto stamp = std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
      const std::size_t slash = path.find_last_of('/');
      tmp_ = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "." + base + ".tmp." +
             std::to_string(::getpid()) + "." + std::to_string(counter++) + "." + std::to_string(stamp % 1000000);
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ < 0 && errno != EEXIST)
        detail::fail("output '", p, "': cannot create a temporary file in '", detail::printable(dir),
                     "': ", detail::errno_text(errno));
    }
    if (fd_ < 0)
      detail::fail("output '", p, "': cannot create a unique temporary file in '", detail::printable(dir), "'");
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t w = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        abandon("write failed", errno);
      }
      done += std::size_t(w);
    }
    if (::fsync(fd_) != 0) abandon("fsync failed", errno);
    const int c = ::close(fd_);
    fd_ = -1;
    if (c != 0) abandon("close failed", errno);
  }
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;
  ~PendingFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  /// Renames the temporary file over the destination (then fsyncs the directory).
  void commit() {
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) abandon("rename failed", errno);
    committed_ = true;
    // Make the rename itself durable; failure here cannot undo it and is not reported.
    const int dfd = ::open(dir_.c_str(), O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_, dir_, tmp_;
  int fd_ = -1;
  bool committed_ = false;

  [[noreturn]] void abandon(const std::string& what, int err) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_.c_str());
    committed_ = true;  // nothing left to remove
    detail::fail("output '", detail::printable(path_), "': ", what, ": ", detail::errno_text(err));
  }
};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written, fsync'ed
/// and renamed over `path`. On any failure the temporary file is removed and radargate::error is
/// thrown; `path` is then either absent or still holds its previous content.
inline void write_file_atomic(const std::string& path, const std::vector<unsigned char>& bytes) {
  PendingFile(path, bytes).commit();
}

/// Collects tensors and metadata and writes one safetensors file. Tensors are laid out in the
/// order they were added.
class SafetensorsWriter {
 public:
  /// Adds a tensor, converted to `dtype` (F64, F32, F16 or BF16).
  template <class S>
  void add(const std::string& name, const Tensor<S>& t, DType dtype) {
    if (std::size_t(t.numel()) != t.data.size())
      detail::fail("tensor '", name, "': shape ", detail::shape_str(t.shape), " holds ", t.numel(), " elements, found ",
                   t.data.size());
    add(name, t.data.data(), t.shape, dtype);
  }
  template <class S>
  void add(const std::string& name, const S* data, const std::vector<index_t>& shape, DType dtype) {
    if (!is_floating(dtype))
      detail::fail("tensor '", name, "': expected an output dtype of F64, F32, F16 or BF16, found ", to_string(dtype));
    Entry e = make_entry(name, dtype, shape);
    e.bytes.resize(std::size_t(count(shape)) * dtype_size(dtype));
    detail::encode(data, dtype, std::size_t(count(shape)), e.bytes.data());
    entries_.push_back(std::move(e));
  }
  /// Adds a tensor of any dtype from its little-endian bytes (size must match shape and dtype).
  void add_raw(const std::string& name, DType dtype, const std::vector<index_t>& shape,
               std::vector<unsigned char> bytes) {
    Entry e = make_entry(name, dtype, shape);
    if (bytes.size() != std::size_t(count(shape)) * dtype_size(dtype))
      detail::fail("tensor '", name, "': expected ", std::size_t(count(shape)) * dtype_size(dtype), " bytes, found ",
                   bytes.size());
    e.bytes = std::move(bytes);
    entries_.push_back(std::move(e));
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  bool has(const std::string& name) const {
    for (const Entry& e : entries_)
      if (e.name == name) return true;
    return false;
  }

  /// The complete file.
  std::vector<unsigned char> serialize() const {
    nlohmann::json h = nlohmann::json::object();
    if (!metadata_.empty()) h["__metadata__"] = metadata_;
    std::uint64_t off = 0;
    for (const Entry& e : entries_) {
      h[e.name] = {{"dtype", to_string(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + e.bytes.size()}}};
      off += e.bytes.size();
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<unsigned char> out(8 + text.size());
    detail::store_le(out.data(), std::uint64_t(text.size()));
    std::memcpy(out.data() + 8, text.data(), text.size());
    out.reserve(out.size() + off);
    for (const Entry& e : entries_) out.insert(out.end(), e.bytes.begin(), e.bytes.end());
    return out;
  }

  /// Writes the file through write_file_atomic.
  void write_atomic(const std::string& path) const { write_file_atomic(path, serialize()); }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<index_t> shape;
    std::vector<unsigned char> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;

  static index_t count(const std::vector<index_t>& shape) { return checked::numel_or_throw(shape, "tensor"); }
  Entry make_entry(const std::string& name, DType dtype, const std::vector<index_t>& shape) const {
    if (name.empty() || name == "__metadata__")
      detail::fail("tensor name: expected a non-empty name other than __metadata__, found \"", name, "\"");
    if (has(name)) detail::fail("tensor '", name, "': added twice");
    for (index_t e : shape)
      if (e < 0)
        detail::fail("tensor '", name, "': expected non-negative extents, found shape ", detail::shape_str(shape));
    Entry e;
    e.name = name;
    e.dtype = dtype;
    e.shape = shape;
    return e;
  }
};

}  // namespace io
}  // namespace radargate
