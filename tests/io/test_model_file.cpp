// Model and activation files: the configuration JSON, save/load round trips for every variant and
// dtype, and one checked message per kind of bad model or input.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include "support/testing.hpp"

#include "radargate/io/model_file.hpp"

using namespace radargate;
using namespace radargate::io;
using nlohmann::json;

namespace {
using rgtest::error_of;

Dims dims(index_t d_in = 5, index_t d = 6, index_t N = 3, index_t r = 2, index_t k = 2, index_t P = 3) {
  Dims D;
  D.d_in = d_in;
  D.d = d;
  D.N = N;
  D.r = r;
  D.k = k;
  D.P = P;
  return D;
}

SafetensorsFile image(const SafetensorsWriter& w, const char* name = "m.safetensors") {
  return SafetensorsFile::from_bytes(w.serialize(), name);
}

/// A valid radargate model file image, with one tensor replaced or added by `edit`.
template <class Edit>
SafetensorsFile edited_model(Edit&& edit, const std::string& config = R"({"variant":"radargate"})") {
  const Model<double> m = random_model<double>(LayerConfig::make(Variant::radargate), dims(), 1);
  SafetensorsWriter w;
  w.set_metadata(config_key, config);
  for (const auto& kv : m.tensors)
    if (!edit(w, kv.first)) w.add(kv.first, kv.second, DType::F32);
  return image(w);
}
}  // namespace

TEST_CASE("config JSON: defaults per docs/FORMAT.md", "[io]") {
  const LayerConfig r = parse_config(R"({"variant": "radargate"})");
  CHECK(r.variant == Variant::radargate);
  CHECK(r.map == MapMode::learned);
  CHECK(r.bound == Bound::pi_tanh);
  CHECK(r.pairing == Pairing::adjacent);
  CHECK(r.normalize == Normalize::softmax);
  CHECK(r.tau == 1.0);
  CHECK(r.topk == 2);
  CHECK(parse_config(R"({"variant": "static"})").normalize == Normalize::identity);
  CHECK(parse_config(R"({"variant": "topk"})").normalize == Normalize::topk_softmax);
  CHECK(parse_config(R"({"variant": "sum"})").gate == GateKind::none);
}

TEST_CASE("config JSON: every variant round trips with non-default fields", "[io]") {
  for (Variant v : all_variants) {
    LayerConfig c = LayerConfig::make(v);
    c.map = MapMode::mean;
    c.bound = Bound::none;
    c.pairing = Pairing::half;
    if (c.has_logits()) {
      c.normalize = Normalize::topk_softmax;
      c.tau = 0.25;
      c.topk = 3;
    }
    const json j = config_to_json(c);
    CHECK(j.contains("normalize") == c.has_logits());
    CHECK(j.contains("map") == c.rotation);
    const LayerConfig b = parse_config(j.dump());
    CHECK(b.variant == c.variant);
    CHECK(b.rotation == c.rotation);
    CHECK(b.gate == c.gate);
    CHECK(b.normalize == c.normalize);
    if (c.rotation) {
      CHECK(b.map == c.map);
      CHECK(b.bound == c.bound);
      CHECK(b.pairing == c.pairing);
    }
    if (c.has_logits()) {
      CHECK(b.tau == c.tau);
      CHECK(b.topk == c.topk);
    }
  }
}

TEST_CASE("config JSON: errors name the field, the expected and the found value", "[io]") {
  auto err = [](const std::string& text) { return error_of([&] { parse_config(text); }); };
  CHECK(err(R"({"map": "mean"})") == "config field 'variant': required, but it is missing");
  CHECK(err(R"({"variant": "radar"})") ==
        "config field 'variant': expected one of sum | uniform | static | softmax | topk | stretch_only | "
        "rotation_only | radargate, found \"radar\"");
  CHECK(err(R"({"variant": 3})") == "config field 'variant': expected a string, found number (3)");
  CHECK(err(R"({"variant": "radargate", "temperature": 2})") ==
        "config field 'temperature': unknown; expected one of variant, map, bound, pairing, normalize, tau, topk");
  CHECK(err(R"({"variant": "radargate", "tau": "1"})") ==
        "config field 'tau': expected a number, found string (\"1\")");
  CHECK(err(R"({"variant": "radargate", "tau": 0})") ==
        "config field 'tau': expected a normal number in [2.2250738585072014e-308, 1e300], found 0");
  CHECK(err(R"({"variant": "radargate", "tau": 1e-310})") ==
        "config field 'tau': expected a normal number in [2.2250738585072014e-308, 1e300], found 1e-310");
  CHECK(err(R"({"variant": "topk", "topk": 18446744073709551615})") ==
        "config field 'topk': expected a value in 1..N, found 18446744073709551615");
  CHECK(err(R"({"variant": "softmax", "variant": "sum"})") ==
        "config: key 'variant' appears more than once in one object: expected unique keys");
  CHECK(err(R"({"variant": "sum", "tau": 1})") ==
        "config field 'tau': variant 'sum' has a gate without logits (none), so no temperature is read; found 1");
  CHECK(err(R"({"variant": "topk", "topk": 2.5})") == "config field 'topk': expected an integer, found number (2.5)");
  CHECK(err(R"({"variant": "topk", "topk": 0})") == "config field 'topk': expected a value in 1..N, found 0");
  CHECK(err(R"({"variant": "radargate", "bound": "tanh"})") ==
        "config field 'bound': expected one of none | pi_tanh, found \"tanh\"");
  CHECK(err(R"({"variant": "sum", "normalize": "softmax"})") ==
        "config field 'normalize': variant 'sum' has a gate without logits (none), so nothing to normalize; found "
        "\"softmax\"");
  CHECK(
      err(R"({"variant": "rotation_only", "normalize": "softmax"})") ==
      "config field 'normalize': variant 'rotation_only' has a gate without logits (uniform), so nothing to normalize; "
      "found \"softmax\"");
  CHECK(err(R"(["radargate"])") == "config: expected a JSON object, found array ([\"radargate\"])");
  CHECK_THAT(err("{variant: radargate}"), Catch::StartsWith("config: not valid JSON: "));
}

TEMPLATE_TEST_CASE("save / load: every variant and dtype round trips", "[io]", float, double) {
  for (Variant v : all_variants) {
    LayerConfig c = LayerConfig::make(v);
    c.pairing = Pairing::half;
    const Model<TestType> m = random_model<TestType>(c, dims(), 42);
    for (DType dt : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
      const SafetensorsFile f = SafetensorsFile::from_bytes(model_writer(m, dt).serialize(), "m");
      CHECK(model_dtype(f) == dt);
      const LoadedModel<double> lm = load_model<double>(f);
      CHECK(lm.dtype == dt);
      CHECK(lm.model.config.variant == v);
      CHECK(lm.model.config.pairing == (c.rotation ? Pairing::half : Pairing::adjacent));
      CHECK(lm.dims.N == 3);
      CHECK(lm.dims.d == 6);
      CHECK(lm.dims.P == (c.rotation ? 3 : 0));
      REQUIRE(lm.model.tensors.size() == m.tensors.size());
      for (const auto& kv : m.tensors) {
        const Tensor<double>& got = lm.model.tensors.at(kv.first);
        CHECK(got.shape == kv.second.shape);
        for (std::size_t i = 0; i < got.data.size(); ++i) {
          const double want = dt == DType::F64   ? double(kv.second.data[i])
                              : dt == DType::F32 ? double(float(kv.second.data[i]))
                              : dt == DType::F16 ? double(half_to_float(float_to_half(double(kv.second.data[i]))))
                                                 : double(bf16_to_float(float_to_bf16(double(kv.second.data[i]))));
          REQUIRE(got.data[i] == want);
        }
      }
    }
  }
}

TEST_CASE("load: bad model files are errors that name the file, the tensor, expected and found", "[io]") {
  auto load = [](const SafetensorsFile& f) { return error_of([&] { load_model<float>(f); }); };
  auto keep = [](SafetensorsWriter&, const std::string&) { return false; };
  REQUIRE(load(edited_model(keep)) == "(no error)");

  SECTION("missing configuration") {
    SafetensorsWriter w;
    w.add("lora.A", make_tensor<float>({1, 1, 1}), DType::F32);
    CHECK(load(image(w)) ==
          "file 'm.safetensors': missing __metadata__ entry 'radargate.config' (the layer configuration, a JSON object "
          "with at least \"variant\"); not a radargate model file?");
  }
  SECTION("configuration errors") {
    CHECK(load(edited_model(keep, R"({"variant":"radar_gate"})")) ==
          "file 'm.safetensors': __metadata__ 'radargate.config': config field 'variant': expected one of sum | "
          "uniform | "
          "static | softmax | topk | stretch_only | rotation_only | radargate, found \"radar_gate\"");
    CHECK_THAT(load(edited_model(keep, R"({"variant":)")),
               Catch::StartsWith("file 'm.safetensors': __metadata__ 'radargate.config': config: not valid JSON: "));
    // A topk that the normalisation does not read is refused, not ignored.
    CHECK(load(edited_model(keep, R"({"variant":"radargate","normalize":"softmax","topk":4})")) ==
          "file 'm.safetensors': __metadata__ 'radargate.config': config field 'topk': only read by normalize "
          "topk_softmax, but variant 'radargate' normalizes with softmax; found 4");
    CHECK(load(edited_model(keep, R"({"variant":"radargate","normalize":"topk_softmax","topk":4})")) ==
          "file 'm.safetensors': config field 'topk': expected a value in 1..3 (N), found 4");
  }
  SECTION("unknown tensor name") {
    auto extra = [](SafetensorsWriter& w, const std::string& n) {
      if (n == "lora.A") w.add("lora.a", make_tensor<float>({1}), DType::F32);
      return false;
    };
    CHECK_THAT(
        load(edited_model(extra)),
        Catch::StartsWith("file 'm.safetensors': tensor 'lora.a': unknown parameter name; expected one of lora.A, "
                          "lora.B, lora.scale, map.M,"));
  }
  SECTION("missing required tensor") {
    auto drop = [](SafetensorsWriter&, const std::string& n) { return n == "angle.U"; };
    CHECK(load(edited_model(drop)) ==
          "file 'm.safetensors': tensor 'angle.U': required by variant 'radargate', but it is missing");
  }
  SECTION("wrong shape and rank") {
    auto shape = [](SafetensorsWriter& w, const std::string& n) {
      if (n != "lora.B") return false;
      w.add(n, make_tensor<float>({3, 6, 3}), DType::F32);
      return true;
    };
    CHECK(load(edited_model(shape)) ==
          "file 'm.safetensors': tensor 'lora.B': expected shape [3, 6, 2], found [3, 6, 3]");
    auto rank = [](SafetensorsWriter& w, const std::string& n) {
      if (n != "stretch.ws") return false;
      w.add(n, make_tensor<float>({6, 1}), DType::F32);
      return true;
    };
    CHECK(load(edited_model(rank)) ==
          "file 'm.safetensors': tensor 'stretch.ws': expected a rank-1 tensor, found shape [6, 1]");
  }
  SECTION("mixed or non-floating dtypes") {
    auto f64 = [](SafetensorsWriter& w, const std::string& n) {
      if (n != "lora.B") return false;
      w.add(n, make_tensor<float>({3, 6, 2}), DType::F64);
      return true;
    };
    CHECK(load(edited_model(f64)) ==
          "file 'm.safetensors': tensor 'lora.B': expected dtype F32 (the dtype of 'lora.A'), found F64");
    auto i32 = [](SafetensorsWriter& w, const std::string& n) {
      if (n != "lora.A") return false;
      w.add_raw(n, DType::I32, {3, 2, 5}, std::vector<unsigned char>(3 * 2 * 5 * 4, 0));
      return true;
    };
    CHECK(load(edited_model(i32)) ==
          "file 'm.safetensors': tensor 'lora.A': expected a floating-point dtype (F64, F32, F16 or BF16), found I32");
  }
  SECTION("a tensor the variant does not read") {
    SafetensorsWriter w;
    const Model<float> m = random_model<float>(LayerConfig::make(Variant::softmax), dims(), 3);
    w.set_metadata(config_key, R"({"variant":"softmax"})");
    for (const auto& kv : m.tensors) w.add(kv.first, kv.second, DType::F32);
    w.add("angle.U", make_tensor<float>({3, 2}), DType::F32);
    CHECK(load(image(w)) ==
          "file 'm.safetensors': tensor 'angle.U': not read by variant 'softmax'; remove it from the model");
  }
  SECTION("non-finite parameter") {
    auto nan = [](SafetensorsWriter& w, const std::string& n) {
      if (n != "angle.bias") return false;
      Tensor<float> t = make_tensor<float>({3, 3});
      t.data[5] = std::numeric_limits<float>::infinity();
      w.add(n, t, DType::F32);
      return true;
    };
    CHECK(load(edited_model(nan)) ==
          "file 'm.safetensors': tensor 'angle.bias': expected finite values, found inf at index [1, 2]");
  }
  SECTION("saving refuses an invalid model") {
    Model<float> m = random_model<float>(LayerConfig::make(Variant::radargate), dims(), 3);
    m.tensors.erase("lora.B");
    CHECK(error_of([&] { model_writer(m, DType::F32); }) ==
          "tensor 'lora.B': required by variant 'radargate', but it is missing");
  }
}

TEST_CASE("activations: x and dy are checked against the model", "[io]") {
  const Dims D = dims();
  auto file = [](std::initializer_list<std::pair<const char*, Tensor<double>>> ts, DType dt = DType::F32) {
    SafetensorsWriter w;
    for (const auto& t : ts) w.add(t.first, t.second, dt);
    return SafetensorsFile::from_bytes(w.serialize(), "in.safetensors");
  };
  auto load = [&](const SafetensorsFile& f, bool dy) {
    return error_of([&] { load_activations<float>(f, D, DType::F32, dy); });
  };
  const Tensor<double> x = make_tensor<double>({4, 5}, 0.5), dy = make_tensor<double>({4, 6}, 1.0);
  const Activations<float> a = load_activations<float>(file({{"x", x}, {"dy", dy}}), D, DType::F32, true);
  CHECK(a.x.shape == std::vector<index_t>{4, 5});
  CHECK(a.dy.data == std::vector<float>(24, 1.0f));
  CHECK(load(file({{"x", x}}), false) == "(no error)");
  CHECK(load(file({{"y", x}}), false) ==
        "file 'in.safetensors': tensor 'y': unknown input name; expected x [T, d_in] or dy [T, d]");
  CHECK(load(file({{"dy", dy}}), false) ==
        "file 'in.safetensors': tensor 'x': missing from the file (expected shape [T, 5])");
  CHECK(load(file({{"x", x}}), true) ==
        "file 'in.safetensors': tensor 'dy': missing from the file (backward needs dy [4, 6])");
  CHECK(load(file({{"x", x}}, DType::F64), false) ==
        "file 'in.safetensors': tensor 'x': expected dtype F32 (the model's dtype), found F64");
  CHECK(load(file({{"x", make_tensor<double>({4, 6})}}), false) ==
        "file 'in.safetensors': tensor 'x': expected shape [T, 5] (d_in = 5), found [4, 6]");
  CHECK(load(file({{"x", make_tensor<double>({20})}}), false) ==
        "file 'in.safetensors': tensor 'x': expected shape [T, 5] (d_in = 5), found [20]");
  CHECK(load(file({{"x", x}, {"dy", make_tensor<double>({3, 6})}}), true) ==
        "file 'in.safetensors': tensor 'dy': expected shape [4, 6] (T from x), found [3, 6]");
  Tensor<double> bad = x;
  bad.data[7] = std::nan("");
  CHECK(load(file({{"x", bad}}), false) ==
        "file 'in.safetensors': tensor 'x': expected finite values, found nan at index [1, 2]");
}
