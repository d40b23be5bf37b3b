// The safetensors reader and writer: round trips for every floating dtype, unaligned offsets,
// metadata, the half / bfloat16 conversions, atomic writes, and one checked message per malformed
// file.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>
#include "support/testing.hpp"

#include "radargate/io/safetensors.hpp"

using namespace radargate;
using namespace radargate::io;

namespace {

/// A file built by hand: the 8-byte size (the header's length unless `size` overrides it), the header
/// text and the data bytes.
std::vector<unsigned char> craft(const std::string& header, const std::vector<unsigned char>& data,
                                 std::uint64_t size = ~std::uint64_t(0)) {
  if (size == ~std::uint64_t(0)) size = header.size();
  std::vector<unsigned char> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(size >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::string parse_error(const std::vector<unsigned char>& file) {
  try {
    SafetensorsFile::from_bytes(file, "t.safetensors");
  } catch (const radargate::error& e) {
    return e.what();
  }
  return "(no error)";
}

using rgtest::error_of;

std::string temp_dir() {
  char tmpl[] = "/tmp/rg_io_test_XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  return tmpl;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  REQUIRE(d != nullptr);
  while (dirent* e = ::readdir(d))
    if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
  ::closedir(d);
  return names;
}

void remove_dir(const std::string& dir) {
  for (const std::string& n : list_dir(dir)) ::unlink((dir + "/" + n).c_str());
  ::rmdir(dir.c_str());
}

double next_half_up(std::uint16_t h) { return half_to_float(std::uint16_t(h + 1)); }

}  // namespace

TEST_CASE("round trip: every floating dtype, values exact in that dtype", "[io]") {
  // Multiples of 1/8 in [-8, 8] are exact in every one of the four formats.
  Tensor<double> t = make_tensor<double>({3, 2, 5});
  for (std::size_t i = 0; i < t.data.size(); ++i) t.data[i] = (double(i) - 14.0) / 8.0;
  Tensor<double> empty = make_tensor<double>({0, 4});
  for (DType dt : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
    SafetensorsWriter w;
    w.add("a.b", t, dt);
    w.add("empty", empty, dt);
    w.add("scalar", make_tensor<double>({}, 2.5), dt);
    const SafetensorsFile f = SafetensorsFile::from_bytes(w.serialize(), "mem");
    REQUIRE(f.has("a.b"));
    CHECK(f.info("a.b").dtype == dt);
    CHECK(f.info("a.b").shape == std::vector<index_t>{3, 2, 5});
    CHECK(f.get<double>("a.b").data == t.data);
    const Tensor<float> tf = f.get<float>("a.b", dt);
    for (std::size_t i = 0; i < t.data.size(); ++i) CHECK(tf.data[i] == float(t.data[i]));
    CHECK(f.get<double>("empty").shape == std::vector<index_t>{0, 4});
    CHECK(f.get<double>("empty").data.empty());
    CHECK(f.get<double>("scalar").shape.empty());
    CHECK(f.get<double>("scalar").data == std::vector<double>{2.5});
  }
}

TEST_CASE("round trip: F64 and F32 keep every bit of random values", "[io]") {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd(0.0, 1e3);
  Tensor<double> t = make_tensor<double>({17, 3});
  for (double& v : t.data) v = nd(rng);
  t.data[0] = -0.0;
  t.data[1] = std::numeric_limits<double>::denorm_min();
  t.data[2] = std::numeric_limits<double>::max();
  SafetensorsWriter w;
  w.add("d", t, DType::F64);
  w.add("f", t, DType::F32);
  const SafetensorsFile f = SafetensorsFile::from_bytes(w.serialize(), "mem");
  const Tensor<double> d = f.get<double>("d");
  for (std::size_t i = 0; i < t.data.size(); ++i) CHECK(std::memcmp(&d.data[i], &t.data[i], 8) == 0);
  CHECK(std::signbit(d.data[0]));
  const Tensor<float> s = f.get<float>("f");
  for (std::size_t i = 3; i < t.data.size(); ++i) CHECK(s.data[i] == float(t.data[i]));
  CHECK(std::isinf(s.data[2]));  // DBL_MAX overflows float
}

TEST_CASE("writer: header padded with spaces to 8 bytes, metadata kept", "[io]") {
  SafetensorsWriter w;
  w.set_metadata("radargate.config", R"({"variant": "radargate", "tau": 0.5})");
  w.set_metadata("note", "quotes \" and unicode \xce\xbb");
  w.add("x", make_tensor<double>({1, 3}, 1.0), DType::F64);
  w.add("h", make_tensor<double>({3}, 1.0), DType::F16);
  const std::vector<unsigned char> bytes = w.serialize();
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t(bytes[i]) << (8 * i);
  CHECK(n % 8 == 0);
  CHECK(bytes.size() == 8 + n + 3 * 8 + 3 * 2);
  CHECK(bytes[8 + n - 1] == ' ');
  const SafetensorsFile f = SafetensorsFile::from_bytes(bytes, "mem");
  CHECK(f.metadata().size() == 2);
  CHECK(f.metadata().at("radargate.config") == R"({"variant": "radargate", "tau": 0.5})");
  CHECK(f.metadata().at("note") == "quotes \" and unicode \xce\xbb");
  CHECK(f.names() == std::vector<std::string>{"x", "h"});
}

TEST_CASE("reader: unaligned offsets in a file built by hand", "[io]") {
  // A 3-byte U8 tensor first puts every later tensor at an odd offset; the 13-byte header puts
  // the data section itself at the odd file offset 21.
  auto le64 = [](double v) {
    std::uint64_t b;
    std::memcpy(&b, &v, 8);
    std::vector<unsigned char> o(8);
    for (int i = 0; i < 8; ++i) o[i] = static_cast<unsigned char>(b >> (8 * i));
    return o;
  };
  auto le32 = [](float v) {
    std::uint32_t b;
    std::memcpy(&b, &v, 4);
    std::vector<unsigned char> o(4);
    for (int i = 0; i < 4; ++i) o[i] = static_cast<unsigned char>(b >> (8 * i));
    return o;
  };
  std::vector<unsigned char> data = {1, 2, 3};
  for (double v : {1.5, -2.25, 3.0e-300}) {
    auto b = le64(v);
    data.insert(data.end(), b.begin(), b.end());
  }
  for (float v : {0.1f, -7.0f}) {
    auto b = le32(v);
    data.insert(data.end(), b.begin(), b.end());
  }
  data.push_back(0x00);  // F16 1.0 = 0x3C00, little endian
  data.push_back(0x3C);
  data.push_back(0x80);  // BF16 -1.0 = 0xBF80
  data.push_back(0xBF);
  const std::string header = R"({"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                             R"("d":{"dtype":"F64","shape":[3],"data_offsets":[3,27]},)"
                             R"("f":{"dtype":"F32","shape":[2,1],"data_offsets":[27,35]},)"
                             R"("h":{"dtype":"F16","shape":[1],"data_offsets":[35,37]},)"
                             R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[37,39]}})";
  const SafetensorsFile f = SafetensorsFile::from_bytes(craft(header, data), "hand");
  CHECK(f.get<double>("d").data == std::vector<double>{1.5, -2.25, 3.0e-300});
  CHECK(f.get<float>("f").data == std::vector<float>{0.1f, -7.0f});
  CHECK(f.get<double>("f").data[0] == double(0.1f));
  CHECK(f.get<double>("h").data == std::vector<double>{1.0});
  CHECK(f.get<double>("b").data == std::vector<double>{-1.0});
  CHECK(f.info("u").dtype == DType::U8);
  CHECK(f.raw("u")[2] == 3);
  CHECK(f.names() == std::vector<std::string>{"u", "d", "f", "h", "b"});
}

TEST_CASE("half: known values, rounding to nearest even, overflow, subnormals, NaN", "[io]") {
  CHECK(float_to_half(1.0) == 0x3C00);
  CHECK(float_to_half(-2.0) == 0xC000);
  CHECK(float_to_half(0.0) == 0x0000);
  CHECK(float_to_half(-0.0) == 0x8000);
  CHECK(float_to_half(65504.0) == 0x7BFF);   // largest finite
  CHECK(float_to_half(65519.99) == 0x7BFF);  // below the midpoint to 2^16
  CHECK(float_to_half(65520.0) == 0x7C00);   // the midpoint rounds to even = inf
  CHECK(float_to_half(1e10) == 0x7C00);
  CHECK(float_to_half(-std::numeric_limits<double>::infinity()) == 0xFC00);
  CHECK(float_to_half(std::ldexp(1.0, -24)) == 0x0001);  // smallest subnormal
  CHECK(float_to_half(std::ldexp(1.0, -25)) == 0x0000);  // half of it: tie, to even (0)
  CHECK(float_to_half(std::ldexp(1.0, -25) * 1.0000001) == 0x0001);
  CHECK(float_to_half(std::ldexp(3.0, -25)) == 0x0002);        // 1.5 ulp: tie, to even (2)
  CHECK(float_to_half(std::ldexp(1023.0, -24)) == 0x03FF);     // largest subnormal
  CHECK(float_to_half(std::ldexp(2047.0, -25)) == 0x0400);     // rounds up into the normals
  CHECK(float_to_half(std::ldexp(1.0, -14)) == 0x0400);        // smallest normal
  CHECK(float_to_half(1.0 + std::ldexp(1.0, -11)) == 0x3C00);  // tie between 1 and 1+2^-10: even
  CHECK(float_to_half(1.0 + std::ldexp(3.0, -11)) == 0x3C02);  // tie between odd and even: even
  CHECK(float_to_half(1.0 + std::ldexp(1.0, -11) + 1e-12) == 0x3C01);
  CHECK(float_to_half(1e-30) == 0x0000);
  CHECK(float_to_half(-1e-30) == 0x8000);
  const std::uint16_t qn = float_to_half(std::nan(""));
  CHECK((qn & 0x7C00) == 0x7C00);
  CHECK((qn & 0x03FF) != 0);
  CHECK(std::isnan(half_to_float(qn)));
#if !defined(__riscv)
  // RISC-V's floating-point operations return the canonical (positive) NaN, so a NaN's sign is
  // not kept there; elsewhere it is.
  CHECK(std::signbit(half_to_float(float_to_half(-std::nanf("")))));
#endif
  CHECK(half_to_float(0x7BFF) == 65504.0f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(std::isinf(half_to_float(0x7C00)));
  CHECK(std::isnan(half_to_float(0x7C01)));
}

TEST_CASE("half: every bit pattern round trips, and random values round to the nearest", "[io]") {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(std::uint16_t(h));
    if (std::isnan(f)) continue;
    REQUIRE(float_to_half(f) == h);
  }
  // The encoded value is at least as close as both neighbours, and on a tie it is the even one.
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> mant(-1.0, 1.0);
  std::uniform_int_distribution<int> ex(-26, 16);
  for (int i = 0; i < 200000; ++i) {
    const double x = std::ldexp(mant(rng), ex(rng));
    const std::uint16_t h = float_to_half(x);
    const double v = half_to_float(h);
    if (std::isinf(v)) {
      REQUIRE(std::fabs(x) >= 65520.0);
      continue;
    }
    const std::uint16_t mag = h & 0x7FFF;
    const double up = mag < 0x7BFF ? next_half_up(mag) : 65536.0;
    const double down = mag > 0 ? half_to_float(std::uint16_t(mag - 1)) : -half_to_float(1);
    const double ax = std::fabs(x), av = std::fabs(v);
    REQUIRE(std::fabs(ax - av) <= std::fabs(ax - up));
    REQUIRE(std::fabs(ax - av) <= std::fabs(ax - down));
    if (std::fabs(ax - av) == std::fabs(ax - up) || std::fabs(ax - av) == std::fabs(ax - down)) REQUIRE((mag & 1) == 0);
  }
}

TEST_CASE("bfloat16: known values, every bit pattern, agreement with the bit-level rounding", "[io]") {
  CHECK(float_to_bf16(1.0) == 0x3F80);
  CHECK(float_to_bf16(-1.0) == 0xBF80);
  CHECK(float_to_bf16(3.0e38) == 0x7F62);
  CHECK(float_to_bf16(std::numeric_limits<double>::infinity()) == 0x7F80);
  CHECK(float_to_bf16(1e39) == 0x7F80);                       // beyond float's range
  CHECK(float_to_bf16(1.0 + std::ldexp(1.0, -8)) == 0x3F80);  // tie, to even
  CHECK(float_to_bf16(1.0 + std::ldexp(3.0, -8)) == 0x3F82);  // tie, to even
  CHECK(float_to_bf16(std::ldexp(1.0, -133)) == 0x0001);      // smallest subnormal
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::nan("")))));
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_float(std::uint16_t(h));
    if (std::isnan(f)) continue;
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    REQUIRE(bits == h << 16);  // decoding is the 16-bit shift
    REQUIRE(float_to_bf16(f) == h);
  }
  // The usual float -> bf16 rounding (add 0x7FFF plus the lowest kept bit, truncate) is an
  // independent implementation of round-to-nearest-even for finite floats.
  std::mt19937 rng(11);
  for (int i = 0; i < 200000; ++i) {
    std::uint32_t bits = rng();
    if ((bits & 0x7F800000u) == 0x7F800000u) continue;  // inf / NaN
    float f;
    std::memcpy(&f, &bits, 4);
    const std::uint32_t lsb = (bits >> 16) & 1u;
    const std::uint32_t expect = (bits + 0x7FFFu + lsb) >> 16;
    REQUIRE(float_to_bf16(f) == std::uint16_t(expect));
  }
}

TEST_CASE("F16 / BF16 files round values to nearest even and keep inf and NaN", "[io]") {
  Tensor<double> t = make_tensor<double>({5});
  t.data = {1.0 + std::ldexp(1.0, -11), 70000.0, std::numeric_limits<double>::infinity(), std::nan(""), 1e-6};
  SafetensorsWriter w;
  w.add("h", t, DType::F16);
  w.add("b", t, DType::BF16);
  const SafetensorsFile f = SafetensorsFile::from_bytes(w.serialize(), "mem");
  const Tensor<double> h = f.get<double>("h");
  CHECK(h.data[0] == 1.0);
  CHECK(std::isinf(h.data[1]));
  CHECK(std::isinf(h.data[2]));
  CHECK(std::isnan(h.data[3]));
  CHECK(h.data[4] == double(half_to_float(float_to_half(1e-6))));
  CHECK(h.data[4] > 0.0);  // a subnormal half, not flushed to zero
  const Tensor<double> b = f.get<double>("b");
  CHECK(b.data[1] == 70144.0);
  CHECK(std::isnan(b.data[3]));
}

TEST_CASE("reader: every malformed file is an error that says what was expected and found", "[io]") {
  const std::string ok = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::vector<unsigned char> d8(8, 0);
  REQUIRE(parse_error(craft(ok, d8)) == "(no error)");

  SECTION("too short for the size") {
    CHECK(
        parse_error({}) ==
        "file 't.safetensors': too short for the 8-byte header size: expected at least 8 bytes, found 0 (empty file)");
    CHECK(parse_error({1, 2, 3, 4, 5}) ==
          "file 't.safetensors': too short for the 8-byte header size: expected at least 8 bytes, found 5");
  }
  SECTION("header larger than the file") {
    CHECK(parse_error(craft(ok, d8, 1000)) ==
          "file 't.safetensors': header size 1000 bytes is larger than the file: expected at most " +
              std::to_string(ok.size() + 8) + " bytes after the 8-byte size (file truncated?)");
  }
  SECTION("header over the limit") {
    CHECK_THAT(parse_error(craft(ok, d8, 100000001)),
               Catch::Contains("header size 100000001 bytes exceeds the limit of 100000000 bytes"));
    CHECK_THAT(parse_error(craft(ok, d8, ~std::uint64_t(0) - 1)), Catch::Contains("exceeds the limit"));
  }
  SECTION("header not JSON, or not an object") {
    CHECK_THAT(parse_error(craft(R"({"x": {"dtype": "F32", )", {})),
               Catch::StartsWith("file 't.safetensors': header is not valid JSON: "));
    CHECK(parse_error(craft("[1, 2]", {})) ==
          "file 't.safetensors': header: expected a JSON object starting with '{', found byte 0x5b");
    CHECK_THAT(parse_error(craft("{}   x", {})), Catch::Contains("header is not valid JSON"));
    CHECK(parse_error(craft("{", {}, 1)) == "file 't.safetensors': header of 1 bytes: expected a JSON object");
    // Invalid UTF-8 inside a string.
    CHECK_THAT(parse_error(craft("{\"\xff\":1}", {})), Catch::Contains("header is not valid JSON"));
  }
  SECTION("entry not an object; missing or wrong fields") {
    CHECK(parse_error(craft(R"({"x": 3})", {})) ==
          "file 't.safetensors': tensor 'x': expected an object with dtype, shape and data_offsets, found a "
          "non-negative integer");
    CHECK(parse_error(craft(R"({"x":{"shape":[2],"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': missing 'dtype'");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': missing 'shape'");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[2]}})", d8)) ==
          "file 't.safetensors': tensor 'x': missing 'data_offsets'");
    CHECK(parse_error(craft(R"({"x":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'dtype': expected a string, found a non-negative integer (5)");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'dtype': expected a safetensors dtype (F64, F32, F16, BF16, I64, ...), "
          "found \"F128\"");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'shape': expected an array of non-negative integers, found a non-negative "
          "integer (2)");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'shape': expected non-negative integers, found a negative integer (-2)");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'shape': expected non-negative integers, found number (2.0)");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'data_offsets': expected an array [begin, end], found an array of 1 "
          "element");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'data_offsets': expected non-negative integers, found string (\"0\")");
  }
  SECTION("offsets out of range or inconsistent with the shape") {
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'data_offsets': expected begin <= end, found [8, 0]");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d8)) ==
          "file 't.safetensors': tensor 'x': 'data_offsets' [0, 16] out of range: the data section has 8 bytes (file "
          "truncated?)");
    CHECK(
        parse_error(craft(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8)) ==
        "file 't.safetensors': tensor 'x': expected 12 bytes (shape [3] of F32), found data_offsets [0, 8] = 8 bytes");
    CHECK(
        parse_error(craft(R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", d8)) ==
        "file 't.safetensors': tensor 'x': expected 16 bytes (shape [2] of F64), found data_offsets [0, 8] = 8 bytes");
    CHECK_THAT(parse_error(craft(R"({"x":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8)),
               Catch::Contains("tensor 'x': shape [4294967296, 4294967296] is too large"));
  }
  SECTION("truncated data section") {
    CHECK(parse_error(craft(ok, std::vector<unsigned char>(5, 0))) ==
          "file 't.safetensors': tensor 'x': 'data_offsets' [0, 8] out of range: the data section has 5 bytes (file "
          "truncated?)");
  }
  SECTION("overlap, gap, trailing bytes, duplicate names") {
    const std::vector<unsigned char> d12(12, 0);
    CHECK(parse_error(craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            d12)) ==
          "file 't.safetensors': tensors 'a' (bytes [0, 8)) and 'b' (bytes [4, 12)) overlap");
    CHECK(parse_error(craft(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                            d12)) ==
          "file 't.safetensors': bytes [4, 8) of the data section belong to no tensor (before tensor 'b')");
    CHECK(parse_error(craft(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8)) ==
          "file 't.safetensors': bytes [0, 4) of the data section belong to no tensor (before tensor 'b')");
    CHECK(parse_error(craft(ok, d12)) ==
          "file 't.safetensors': 4 trailing bytes: the data section has 12 bytes, the tensors cover 8");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            d8)) == "file 't.safetensors': header: name 'x' appears more than once");
    CHECK(parse_error(craft(R"({"x":{"dtype":"F64","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8)) ==
          "file 't.safetensors': header: key 'dtype' appears more than once (in 'x')");
    CHECK(parse_error(craft(R"({"__metadata__":{"k":"a","k":"b"}})", {})) ==
          "file 't.safetensors': header: key 'k' appears more than once (in '__metadata__')");
    // Empty tensors may share an offset with anything that starts there.
    CHECK(parse_error(craft(R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                            R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("z":{"dtype":"F64","shape":[0,3],"data_offsets":[8,8]}})",
                            d8)) == "(no error)");
  }
  SECTION("metadata must be an object of strings") {
    CHECK(parse_error(craft(R"({"__metadata__":[1]})", {})) ==
          "file 't.safetensors': '__metadata__': expected an object of strings, found array");
    CHECK(parse_error(craft(R"({"__metadata__":{"k":1}})", {})) ==
          "file 't.safetensors': '__metadata__' key 'k': expected a string value, found a non-negative integer (1)");
  }
}

TEST_CASE("reader: dtype and name errors on access", "[io]") {
  SafetensorsWriter w;
  w.add_raw("idx", DType::I32, {2}, {1, 0, 0, 0, 2, 0, 0, 0});
  w.add("x", make_tensor<double>({2}, 1.0), DType::F32);
  const SafetensorsFile f = SafetensorsFile::from_bytes(w.serialize(), "in.safetensors");
  CHECK(f.info("idx").dtype == DType::I32);
  CHECK(error_of([&] { f.get<double>("idx", DType::F64); }) ==
        "file 'in.safetensors': tensor 'idx': expected dtype F64, found I32");
  CHECK(error_of([&] { f.get<double>("idx"); }) ==
        "file 'in.safetensors': tensor 'idx': expected a floating-point dtype (F64, F32, F16 or BF16), found I32");
  CHECK(error_of([&] { f.get<double>("x", DType::F64); }) ==
        "file 'in.safetensors': tensor 'x': expected dtype F64, found F32");
  CHECK(error_of([&] { f.get<double>("y"); }) == "file 'in.safetensors': tensor 'y': missing from the file");
  CHECK(error_of([] { SafetensorsFile::read("/nonexistent/dir/m.safetensors"); }) ==
        "file '/nonexistent/dir/m.safetensors': cannot open: No such file or directory");
  CHECK(error_of([] { parse_float_dtype("I32", "option --dtype"); }) ==
        "option --dtype: expected one of F64 | F32 | F16 | BF16, found \"I32\"");
}

TEST_CASE("writer: bad tensors are refused", "[io]") {
  SafetensorsWriter w;
  w.add("x", make_tensor<float>({2}), DType::F32);
  CHECK(error_of([&] { w.add("x", make_tensor<float>({2}), DType::F32); }) == "tensor 'x': added twice");
  CHECK(error_of([&] { w.add("__metadata__", make_tensor<float>({2}), DType::F32); }) ==
        "tensor name: expected a non-empty name other than __metadata__, found \"__metadata__\"");
  CHECK(error_of([&] { w.add("i", make_tensor<float>({2}), DType::I32); }) ==
        "tensor 'i': expected an output dtype of F64, F32, F16 or BF16, found I32");
  Tensor<float> bad = make_tensor<float>({2, 2});
  bad.data.pop_back();
  CHECK(error_of([&] { w.add("b", bad, DType::F32); }) == "tensor 'b': shape [2, 2] holds 4 elements, found 3");
  CHECK(error_of([&] { w.add_raw("r", DType::U8, {3}, {1, 2}); }) == "tensor 'r': expected 3 bytes, found 2");
}

TEST_CASE("write_atomic: the file appears whole; a failed write leaves nothing behind", "[io]") {
  const std::string dir = temp_dir();
  SafetensorsWriter w;
  w.set_metadata("k", "v");
  w.add("x", make_tensor<double>({4, 3}, 0.5), DType::BF16);
  w.write_atomic(dir + "/out.safetensors");
  CHECK(list_dir(dir) == std::vector<std::string>{"out.safetensors"});
  const SafetensorsFile f = SafetensorsFile::read(dir + "/out.safetensors");
  CHECK(f.get<float>("x").data == std::vector<float>(12, 0.5f));
  CHECK(f.metadata().at("k") == "v");
  struct stat st;
  REQUIRE(::stat((dir + "/out.safetensors").c_str(), &st) == 0);
  CHECK((st.st_mode & 0044) != 0);  // created 0666 & ~umask, not the 0600 of mkstemp

  // Overwriting keeps the replacement whole.
  SafetensorsWriter w2;
  w2.add("y", make_tensor<double>({1}, 2.0), DType::F64);
  w2.write_atomic(dir + "/out.safetensors");
  CHECK(SafetensorsFile::read(dir + "/out.safetensors").names() == std::vector<std::string>{"y"});

  // A rename onto a non-empty directory fails after the temporary file was written: it is removed.
  REQUIRE(::mkdir((dir + "/sub").c_str(), 0755) == 0);
  REQUIRE(::mkdir((dir + "/sub/inner").c_str(), 0755) == 0);
  CHECK_THAT(error_of([&] { w.write_atomic(dir + "/sub"); }),
             Catch::StartsWith("output '" + dir +
                               "/sub': expected a new file or a regular file to replace, found a directory"));
  auto names = list_dir(dir);
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"out.safetensors", "sub"});
  ::rmdir((dir + "/sub/inner").c_str());
  ::rmdir((dir + "/sub").c_str());

  // A missing directory: nothing can be created.
  CHECK_THAT(error_of([&] { w.write_atomic(dir + "/missing/out.safetensors"); }),
             Catch::Contains("cannot create a temporary file in '" + dir + "/missing': No such file or directory"));
  remove_dir(dir);
}
