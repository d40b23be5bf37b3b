// Files of many named layers (radargate/io/model_set.hpp): round trips of every variant and dtype,
// views in place in the file's bytes, one-layer files read unchanged, and the errors.
#include <catch2/catch.hpp>
#include <memory>
#include <string>

#include "radargate.hpp"
#include "radargate/io/model_set.hpp"

using namespace radargate;
namespace io = radargate::io;

namespace {
Dims dims(index_t d_in, index_t d, index_t N, index_t r) {
  Dims D;
  D.d_in = d_in;
  D.d = d;
  D.N = N;
  D.r = r;
  D.k = 3;
  D.P = d / 2;
  return D;
}

std::shared_ptr<const io::SafetensorsFile> bytes_file(std::vector<unsigned char> b, const std::string& name = "mem") {
  return std::make_shared<const io::SafetensorsFile>(io::SafetensorsFile::from_bytes(std::move(b), name));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const radargate::error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEMPLATE_TEST_CASE("model set: layers of every variant round trip by name, with their own shapes", "[peft]", float,
                   double) {
  using S = TestType;
  for (io::DType dt : {io::DType::F32, io::DType::F64, io::DType::F16, io::DType::BF16}) {
    io::ModelSetWriter w;
    std::vector<Model<double>> models;
    std::vector<std::string> names;
    int j = 0;
    for (Variant v : all_variants) {
      Model<double> m =
          random_model<double>(LayerConfig::make(v), dims(5 + j, 6 + 2 * (j % 2), 2 + j % 3, 1 + j % 2), 10 + j);
      names.push_back("model.layers." + std::to_string(j) + ".mlp.up_proj");
      w.add(names.back(), m, dt);
      models.push_back(m);
      ++j;
    }
    const io::ModelSet<S> set(bytes_file(w.serialize()));
    REQUIRE(set.named());
    REQUIRE(set.size() == models.size());
    REQUIRE(set.names() == names);
    std::size_t i = 0;
    for (const io::ModelLayer<S>& l : set) {
      CHECK(l.name == names[i]);
      CHECK(l.dtype == dt);
      CHECK(l.config.variant == models[i].config.variant);
      const Model<S> back = l.to_model();
      REQUIRE(back.tensors.size() == models[i].tensors.size());
      for (const auto& kv : models[i].tensors) {
        const Tensor<S>& t = back.tensors.at(kv.first);
        REQUIRE(t.shape == kv.second.shape);
        for (std::size_t e = 0; e < t.data.size(); ++e) {
          const double want = dt == io::DType::F16    ? double(io::half_to_float(io::float_to_half(kv.second.data[e])))
                              : dt == io::DType::BF16 ? double(io::bf16_to_float(io::float_to_bf16(kv.second.data[e])))
                              : dt == io::DType::F32  ? double(float(kv.second.data[e]))
                                                      : double(S(kv.second.data[e]));
          REQUIRE(double(t.data[e]) == want);
        }
      }
      // In place exactly when the file's dtype is S.
      const bool same = (dt == io::DType::F32 && std::is_same<S, float>::value) ||
                        (dt == io::DType::F64 && std::is_same<S, double>::value);
      CHECK(l.in_place == (same ? l.tensors.size() : 0u));
      ++i;
    }
    CHECK(&set.layer(names[2]) == &set[2]);
  }
}

TEST_CASE("model set: views point into the file's bytes, and a layer runs from them", "[peft]") {
  io::ModelSetWriter w;
  const Model<double> m = random_model<double>(LayerConfig::make(Variant::radargate), dims(8, 6, 3, 2), 3);
  w.add("a.q_proj", m, io::DType::F32);
  w.add("a.v_proj", random_model<double>(LayerConfig::make(Variant::sum), dims(8, 4, 2, 2), 4), io::DType::F32);
  const auto file = bytes_file(w.serialize());
  const io::ModelSet<float> set(file);
  const io::ModelLayer<float>& q = set.layer("a.q_proj");
  CHECK(static_cast<const void*>(q.params.lora_A.data) == static_cast<const void*>(file->raw("a.q_proj.lora.A")));
  // The same outputs as the owning model loaded another way.
  Model<float> owned;
  owned.config = m.config;
  for (const auto& kv : m.tensors) {
    Tensor<float> t;
    t.shape = kv.second.shape;
    for (double v : kv.second.data) t.data.push_back(float(v));
    owned.tensors[kv.first] = t;
  }
  Tensor<float> x = make_tensor<float>({4, 8}, 0.25f), y1 = make_tensor<float>({4, 6}), y2 = make_tensor<float>({4, 6});
  for (std::size_t e = 0; e < x.data.size(); ++e) x.data[e] = float(std::sin(double(e)));
  Layer<float> a(q.config, q.params), b(owned.config, owned.params());
  a.forward(x.view<2>(), y1.mutable_view<2>());
  b.forward(x.view<2>(), y2.mutable_view<2>());
  CHECK(y1.data == y2.data);
  // The set stays valid after a move (views into storage that moves with it).
  io::ModelSet<float> moved = std::move(const_cast<io::ModelSet<float>&>(set));
  CHECK(moved.layer("a.v_proj").dims.d == 4);
}

TEST_CASE("model set: a one-layer file opens as one unnamed layer", "[peft]") {
  const Model<double> m = random_model<double>(LayerConfig::make(Variant::softmax), dims(5, 4, 3, 2), 1);
  const io::ModelSet<double> set(bytes_file(io::model_writer(m, io::DType::F64).serialize(), "one"));
  REQUIRE(!set.named());
  REQUIRE(set.size() == 1);
  CHECK(set.select("").name.empty());
  CHECK(set.select("").in_place == m.tensors.size());
  CHECK(error_of([&] { (void)set.select("x"); }) ==
        "file 'one': layer 'x': this is a one-layer file (its layer has no name); leave out the layer name");
}

TEST_CASE("model set: errors name the file, the layer and what was found", "[peft]") {
  io::ModelSetWriter w;
  w.add("l0", random_model<double>(LayerConfig::make(Variant::sum), dims(3, 2, 1, 1), 1), io::DType::F32);
  w.add("l1", random_model<double>(LayerConfig::make(Variant::sum), dims(3, 2, 1, 1), 2), io::DType::F32);
  const io::ModelSet<float> set(bytes_file(w.serialize(), "two"));
  CHECK(error_of([&] { (void)set.select(""); }) == "file 'two': holds 2 layers; choose one with --layer NAME: l0, l1");
  CHECK(error_of([&] { (void)set.layer("l2"); }) == "file 'two': no layer 'l2'; the file holds 2 layers: l0, l1");

  // writer refusals
  CHECK(error_of([&] {
          w.add("l0", random_model<double>(LayerConfig::make(Variant::sum), dims(3, 2, 1, 1), 1), io::DType::F32);
        }) == "layer 'l0': added twice");
  CHECK(error_of([&] { w.add("", Model<double>(), io::DType::F32); }) ==
        "layer name: expected a non-empty name, found \"\"");
  Model<double> bad = random_model<double>(LayerConfig::make(Variant::sum), dims(3, 2, 1, 1), 1);
  bad.tensors["lora.B"].shape = {1, 2, 2};
  CHECK(error_of([&] { w.add("bad", bad, io::DType::F32); }).rfind("layer 'bad': tensor 'lora.B'", 0) == 0);

  // a tensor of no listed layer; a shape error inside one layer
  io::SafetensorsWriter raw;
  const Model<double> m = random_model<double>(LayerConfig::make(Variant::sum), dims(3, 2, 1, 1), 1);
  raw.add("l0.lora.A", m.tensors.at("lora.A"), io::DType::F32);
  raw.add("l0.lora.B", m.tensors.at("lora.B"), io::DType::F32);
  raw.add("l9.lora.A", m.tensors.at("lora.A"), io::DType::F32);
  raw.set_metadata(io::layers_key, R"([{"name": "l0", "config": {"variant": "sum"}}])");
  CHECK(
      error_of([&] { io::ModelSet<float> s(bytes_file(raw.serialize(), "f")); }) ==
      "file 'f': tensor 'l9.lora.A': belongs to no layer: expected '<layer>.<parameter>' with a layer listed in "
      "'radargate.layers' (l0) and a parameter among lora.A, lora.B, lora.scale, map.M, angle.Wx, angle.Wv, angle.Wc, "
      "angle.U, angle.bias, stretch.Wg, stretch.bg, stretch.ws, base.W0, base.b0");
  io::SafetensorsWriter raw2;
  raw2.add("l0.lora.A", m.tensors.at("lora.A"), io::DType::F32);
  Tensor<double> B = make_tensor<double>({1, 2, 3});
  raw2.add("l0.lora.B", B, io::DType::F32);
  raw2.set_metadata(io::layers_key, R"([{"name": "l0", "config": {"variant": "sum"}}])");
  CHECK(error_of([&] {
          io::ModelSet<float> s(bytes_file(raw2.serialize(), "g"));
        }).rfind("file 'g': layer 'l0': tensor 'lora.B'", 0) == 0);
  io::SafetensorsWriter raw3;
  raw3.add("l0.lora.A", m.tensors.at("lora.A"), io::DType::F32);
  raw3.set_metadata(io::layers_key, R"([{"name": "l0", "config": {"variant": "nope"}}])");
  CHECK(error_of([&] {
          io::ModelSet<float> s(bytes_file(raw3.serialize(), "h"));
        }).rfind("file 'h': layer 'l0': ", 0) == 0);
  raw3.set_metadata(io::config_key, R"({"variant": "sum"})");
  CHECK(error_of([&] { io::ModelSet<float> s(bytes_file(raw3.serialize(), "i")); }) ==
        "file 'i': __metadata__ holds both 'radargate.config' (one layer) and 'radargate.layers' (many layers); "
        "expected one of them");
}
