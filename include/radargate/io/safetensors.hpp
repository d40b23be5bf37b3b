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

#include <fcntl.h>
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
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U64: return "U64";
    case DType::U32: return "U32";
    case DType::U16: return "U16";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
  }
  return "?";
}

inline constexpr DType all_dtypes[] = {DType::F64, DType::F32,  DType::F16,  DType::BF16,    DType::I64,
                                       DType::I32, DType::I16,  DType::I8,   DType::U64,     DType::U32,
                                       DType::U16, DType::U8,   DType::BOOL, DType::F8_E4M3, DType::F8_E5M2};

/// Bytes per element.
inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: case DType::U64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    default: return 1;
  }
}

/// True for the dtypes that convert to float / double (F64, F32, F16, BF16).
inline bool is_floating(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

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
  int e = std::max(ex - 1, emin);              // a in [2^e, 2^(e+1)) for normal results
  const double m = std::ldexp(a, frac_bits - e);  // a in units of the last place; exact
  double q = std::floor(m);
  const double rest = m - q;                   // exact
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
    default: fail("cannot decode dtype ", to_string(t), " as floating point");
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
    default: fail("cannot encode floating-point values as dtype ", to_string(t));
  }
}

inline std::string shape_str(const std::vector<index_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

inline std::string errno_text(int e) { return std::strerror(e); }

}  // namespace detail

// --- reading -------------------------------------------------------------------------------------

/// The header of one tensor. begin/end are byte offsets into the data section.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<index_t> shape;
  std::uint64_t begin = 0, end = 0;

  index_t numel() const {
    index_t n = 1;
    for (index_t e : shape) n *= e;
    return n;
  }
};

/// Largest header accepted, as in the reference implementation.
inline constexpr std::uint64_t max_header_size = 100000000;

/// A parsed safetensors file held in memory. Every accessor throws radargate::error with a
/// message that starts with "file '<source>': ".
class SafetensorsFile {
 public:
  /// Reads and validates a file.
  static SafetensorsFile read(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) detail::fail("file '", path, "': cannot open: ", detail::errno_text(errno));
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 16];
    std::size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
    const bool bad = std::ferror(f) != 0;
    const int err = errno;
    std::fclose(f);
    if (bad) detail::fail("file '", path, "': read error: ", detail::errno_text(err));
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
    detail::fail("file '", source_, "': ", a...);
  }
  template <class... A>
  [[noreturn]] void fail_tensor(const std::string& name, const A&... a) const {
    detail::fail("file '", source_, "': tensor '", name, "': ", a...);
  }

 private:
  std::string source_;
  std::vector<unsigned char> bytes_;
  std::size_t data_start_ = 0;
  std::vector<TensorInfo> infos_;  // sorted by begin
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;

  static const char* json_type(const nlohmann::json& j) {
    if (j.is_number_unsigned()) return "a non-negative integer";
    if (j.is_number_integer()) return "a negative integer";
    return j.type_name();
  }

  std::uint64_t read_offset(const std::string& name, const char* field, const nlohmann::json& j) const {
    if (!j.is_number_unsigned())
      fail_tensor(name, "'", field, "': expected non-negative integers, found ", json_type(j), " (", j.dump(), ")");
    return j.get<std::uint64_t>();
  }

  void parse() {
    const std::uint64_t size = bytes_.size();
    if (size < 8)
      fail_file("too short for the 8-byte header size: expected at least 8 bytes, found ", size,
                size == 0 ? " (empty file)" : "");
    const std::uint64_t n = detail::load_le<std::uint64_t>(bytes_.data());
    if (n > max_header_size)
      fail_file("header size ", n, " bytes exceeds the limit of ", max_header_size, " bytes (corrupt or not a safetensors file)");
    if (n > size - 8)
      fail_file("header size ", n, " bytes is larger than the file: expected at most ", size - 8,
                " bytes after the 8-byte size (file truncated?)");
    if (n < 2) fail_file("header of ", n, " bytes: expected a JSON object");
    data_start_ = std::size_t(8 + n);
    const char* hb = reinterpret_cast<const char*>(bytes_.data() + 8);
    if (hb[0] != '{') fail_file("header: expected a JSON object starting with '{', found byte 0x", hex(bytes_[8]));

    // A repeated key would silently replace the earlier one in the parsed object (a tensor name,
    // or a field such as "dtype" inside one entry); catch it while parsing.
    using ev_t = nlohmann::json::parse_event_t;
    std::vector<std::set<std::string>> keys;  // the keys seen in each open object
    std::string top_key, duplicate;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(hb, hb + n, [&](int depth, ev_t ev, nlohmann::json& parsed) {
        if (ev == ev_t::object_start) keys.emplace_back();
        if (ev == ev_t::object_end && !keys.empty()) keys.pop_back();
        if (ev == ev_t::key && !keys.empty()) {
          const std::string k = parsed.get<std::string>();
          if (depth == 1) top_key = k;
          if (!keys.back().insert(k).second && duplicate.empty())
            duplicate = depth == 1 ? "name '" + k + "' appears more than once"
                                   : "key '" + k + "' appears more than once (in '" + top_key + "')";
        }
        return true;
      });
    } catch (const nlohmann::json::exception& e) {
      fail_file("header is not valid JSON: ", e.what());
    }
    if (!header.is_object()) fail_file("header: expected a JSON object, found ", header.type_name());
    if (!duplicate.empty()) fail_file("header: ", duplicate);

    const std::uint64_t data_size = size - 8 - n;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) fail_file("'__metadata__': expected an object of strings, found ", v.type_name());
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string())
            fail_file("'__metadata__' key '", m.key(), "': expected a string value, found ", m.value().type_name(),
                      " (", m.value().dump(), ")");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object()) fail_tensor(name, "expected an object with dtype, shape and data_offsets, found ", v.type_name());
      TensorInfo ti;
      ti.name = name;
      // dtype
      auto dt = v.find("dtype");
      if (dt == v.end()) fail_tensor(name, "missing 'dtype'");
      if (!dt->is_string()) fail_tensor(name, "'dtype': expected a string, found ", dt->type_name(), " (", dt->dump(), ")");
      if (!parse_dtype(dt->get<std::string>(), ti.dtype))
        fail_tensor(name, "'dtype': expected a safetensors dtype (F64, F32, F16, BF16, I64, ...), found \"",
                    dt->get<std::string>(), "\"");
      // shape
      auto sh = v.find("shape");
      if (sh == v.end()) fail_tensor(name, "missing 'shape'");
      if (!sh->is_array()) fail_tensor(name, "'shape': expected an array of non-negative integers, found ", sh->type_name());
      std::uint64_t numel = 1;
      bool overflow = false;
      for (const nlohmann::json& e : *sh) {
        if (!e.is_number_unsigned())
          fail_tensor(name, "'shape': expected non-negative integers, found ", json_type(e), " (", e.dump(), ")");
        const std::uint64_t x = e.get<std::uint64_t>();
        if (x > std::uint64_t(std::numeric_limits<index_t>::max())) overflow = true;
        else if (x != 0 && numel > std::numeric_limits<std::uint64_t>::max() / x) overflow = true;
        else numel *= x;
        ti.shape.push_back(index_t(x));
      }
      // data_offsets
      auto off = v.find("data_offsets");
      if (off == v.end()) fail_tensor(name, "missing 'data_offsets'");
      if (!off->is_array() || off->size() != 2)
        fail_tensor(name, "'data_offsets': expected an array [begin, end], found ", off->dump());
      ti.begin = read_offset(name, "data_offsets", (*off)[0]);
      ti.end = read_offset(name, "data_offsets", (*off)[1]);
      if (ti.begin > ti.end)
        fail_tensor(name, "'data_offsets': expected begin <= end, found [", ti.begin, ", ", ti.end, "]");
      if (ti.end > data_size)
        fail_tensor(name, "'data_offsets' [", ti.begin, ", ", ti.end, "] out of range: the data section has ",
                    data_size, " bytes (file truncated?)");
      const std::uint64_t es = dtype_size(ti.dtype);
      if (overflow || numel > std::numeric_limits<std::uint64_t>::max() / es)
        fail_tensor(name, "shape ", sh->dump(), " is too large");
      if (numel * es != ti.end - ti.begin)
        fail_tensor(name, "expected ", numel * es, " bytes (shape ", detail::shape_str(ti.shape), " of ",
                    to_string(ti.dtype), "), found data_offsets [", ti.begin, ", ", ti.end, "] = ", ti.end - ti.begin,
                    " bytes");
      infos_.push_back(std::move(ti));
    }
    // Tensors must tile the data section exactly: no overlap, no gap, nothing after the last one.
    std::stable_sort(infos_.begin(), infos_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t covered = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo& t : infos_) {
      if (t.begin < covered)
        fail_file("tensors '", prev->name, "' (bytes [", prev->begin, ", ", prev->end, ")) and '", t.name, "' (bytes [",
                  t.begin, ", ", t.end, ")) overlap");
      if (t.begin > covered)
        fail_file("bytes [", covered, ", ", t.begin, ") of the data section belong to no tensor (before tensor '",
                  t.name, "')");
      covered = t.end;
      if (t.end > t.begin || !prev) prev = &t;
    }
    if (covered != data_size)
      fail_file(data_size - covered, " trailing bytes: the data section has ", data_size, " bytes, the tensors cover ",
                covered);
    for (std::size_t i = 0; i < infos_.size(); ++i) index_[infos_[i].name] = i;
  }

  static std::string hex(unsigned char c) {
    const char* d = "0123456789abcdef";
    return std::string{d[c >> 4], d[c & 15]};
  }
};

// --- writing -------------------------------------------------------------------------------------

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written, fsync'ed
/// and renamed over `path`. On any failure the temporary file is removed and radargate::error is
/// thrown; `path` is then either absent or still holds its previous content.
inline void write_file_atomic(const std::string& path, const std::vector<unsigned char>& bytes) {
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty()) detail::fail("output '", path, "': expected a file name, found a directory path");
  static std::atomic<unsigned> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    const auto stamp = std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    tmp = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "." + base + ".tmp." +
          std::to_string(::getpid()) + "." + std::to_string(counter++) + "." + std::to_string(stamp % 1000000);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST)
      detail::fail("output '", path, "': cannot create a temporary file in '", dir, "': ", detail::errno_text(errno));
  }
  if (fd < 0) detail::fail("output '", path, "': cannot create a unique temporary file in '", dir, "'");
  auto abandon = [&](const std::string& what, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    detail::fail("output '", path, "': ", what, ": ", detail::errno_text(err));
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      abandon("write failed", errno);
    }
    done += std::size_t(w);
  }
  if (::fsync(fd) != 0) abandon("fsync failed", errno);
  const int c = ::close(fd);
  fd = -1;
  if (c != 0) abandon("close failed", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("rename failed", errno);
  // Make the rename itself durable; failure here cannot undo it and is not reported.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

/// Collects tensors and metadata and writes one safetensors file. Tensors are laid out in the
/// order they were added.
class SafetensorsWriter {
 public:
  /// Adds a tensor, converted to `dtype` (F64, F32, F16 or BF16).
  template <class S>
  void add(const std::string& name, const Tensor<S>& t, DType dtype) {
    if (std::size_t(t.numel()) != t.data.size())
      detail::fail("tensor '", name, "': shape ", detail::shape_str(t.shape), " holds ", t.numel(),
                   " elements, found ", t.data.size());
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
  void add_raw(const std::string& name, DType dtype, const std::vector<index_t>& shape, std::vector<unsigned char> bytes) {
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

  static index_t count(const std::vector<index_t>& shape) {
    index_t n = 1;
    for (index_t e : shape) n *= e;
    return n;
  }
  Entry make_entry(const std::string& name, DType dtype, const std::vector<index_t>& shape) const {
    if (name.empty() || name == "__metadata__")
      detail::fail("tensor name: expected a non-empty name other than __metadata__, found \"", name, "\"");
    if (has(name)) detail::fail("tensor '", name, "': added twice");
    for (index_t e : shape)
      if (e < 0) detail::fail("tensor '", name, "': expected non-negative extents, found shape ", detail::shape_str(shape));
    Entry e;
    e.name = name;
    e.dtype = dtype;
    e.shape = shape;
    return e;
  }
};

}  // namespace io
}  // namespace radargate
