// Host entry points validate once and throw radargate::error naming the tensor, the expected and
// the found value.
#include <catch2/catch.hpp>

#include "support/testing.hpp"

using namespace radargate;
using Catch::Matchers::Contains;

namespace {
Model<double> model(Variant v) {
  LayerConfig c = LayerConfig::make(v);
  return random_model<double>(c, Dims{5, 8, 3, 2, c.rotation ? 2 : 0, c.rotation ? 4 : 0}, 1);
}
void construct(const Model<double>& m) { Layer<double> l(m.config, m.params()); }
}  // namespace

TEST_CASE("missing, unused and misshapen parameters are named", "[validation]") {
  Model<double> m = model(Variant::radargate);
  m.tensors.erase("angle.U");
  CHECK_THROWS_WITH(construct(m), Contains("'angle.U'") && Contains("missing"));

  m = model(Variant::radargate);
  m.tensors.erase("map.M");
  CHECK_THROWS_WITH(construct(m), Contains("'map.M'") && Contains("learned"));
  m.config.map = MapMode::mean;
  CHECK_NOTHROW(construct(m));

  m = model(Variant::softmax);
  m.tensors["angle.U"] = make_tensor<double>({4, 2});
  CHECK_THROWS_WITH(construct(m), Contains("'angle.U'") && Contains("not read by variant 'softmax'"));

  m = model(Variant::radargate);
  m.tensors.at("lora.B").shape = {3, 8, 3};
  CHECK_THROWS_WITH(construct(m),
                    Contains("'lora.B'") && Contains("expected shape [3, 8, 2]") && Contains("found [3, 8, 3]"));

  m = model(Variant::radargate);
  m.tensors.at("angle.U") = make_tensor<double>({5, 2});  // P = 5 > floor(8/2)
  m.tensors.at("angle.bias") = make_tensor<double>({3, 5});
  CHECK_THROWS_WITH(construct(m), Contains("'angle.U'") && Contains("1..4") && Contains("found 5"));

  m = model(Variant::radargate);
  m.tensors.at("stretch.ws").shape = {7};
  m.tensors.at("stretch.ws").data.resize(7);
  CHECK_THROWS_WITH(construct(m), Contains("'stretch.ws'") && Contains("[8]") && Contains("[7]"));
}

TEST_CASE("configuration fields are checked", "[validation]") {
  Model<double> m = model(Variant::topk);
  m.config.topk = 4;
  CHECK_THROWS_WITH(construct(m), Contains("'topk'") && Contains("1..3") && Contains("found 4"));
  m.config.topk = 2;
  m.config.tau = 0.0;
  CHECK_THROWS_WITH(construct(m), Contains("'tau'"));
  CHECK_THROWS_WITH(parse_variant("radar"), Contains("'variant'") && Contains("radargate") && Contains("\"radar\""));
  CHECK(parse_variant("static") == Variant::static_);
  for (Variant v : all_variants) CHECK(parse_variant(to_string(v)) == v);
}

TEST_CASE("x, y, dy and gradient buffers are checked", "[validation]") {
  Model<double> m = model(Variant::radargate);
  Layer<double> layer(m.config, m.params());
  std::vector<double> x(2 * 5), y(2 * 8), dy(2 * 8);
  CHECK_THROWS_WITH(layer.forward(make_view(x.data(), 2, 4), make_view(y.data(), 2, 8)),
                    Contains("'x'") && Contains("[T, 5]") && Contains("[2, 4]"));
  CHECK_THROWS_WITH(layer.forward(make_view(x.data(), 2, 5), make_view(y.data(), 1, 8)),
                    Contains("'y'") && Contains("[2, 8]") && Contains("[1, 8]"));
  auto ctx = layer.forward(make_view(x.data(), 2, 5), make_view(y.data(), 2, 8));
  CHECK_THROWS_WITH(layer.backward(ctx, make_view(dy.data(), 1, 8), Gradients<double>{}),
                    Contains("'dy'") && Contains("[2, 8]"));
  std::vector<double> gA(3 * 2 * 4);
  Gradients<double> g;
  g.lora_A = make_view(gA.data(), 3, 2, 4);
  CHECK_THROWS_WITH(layer.backward(ctx, make_view(dy.data(), 2, 8), g),
                    Contains("grad.lora.A") && Contains("[3, 2, 5]") && Contains("[3, 2, 4]"));
}

TEST_CASE("views describe strided caller memory", "[view]") {
  // A column-major 3x2 matrix viewed through strides gives the same layer output as a copy.
  Model<double> m = model(Variant::softmax);
  Layer<double> layer(m.config, m.params());
  const index_t T = 3;
  auto x = rgtest::random_vector<double>(size_t(T * 5), 2);
  std::vector<double> xt(x.size());
  for (index_t t = 0; t < T; ++t)
    for (index_t a = 0; a < 5; ++a) xt[a * T + t] = x[t * 5 + a];
  View<const double, 2> xv;
  xv.data = xt.data();
  xv.shape[0] = T;
  xv.shape[1] = 5;
  xv.stride[0] = 1;
  xv.stride[1] = T;
  CHECK_FALSE(xv.contiguous());
  std::vector<double> y1(size_t(T * 8)), y2(y1.size());
  layer.forward(make_view(x.data(), T, 5), make_view(y1.data(), T, 8));
  layer.forward(xv, make_view(y2.data(), T, 8));
  // the same up to the order of a sum: a strided matrix takes Eigen's unvectorised product path,
  // which rounds differently where the vectorised one uses FMA (-march=native)
  CHECK(rgtest::max_rel_err(y2, y1) <= 1e-14);
}

TEST_CASE("an empty tensor is reported by its extents, not as missing", "[validation]") {
  Model<double> m = model(Variant::sum);
  m.tensors.at("lora.A") = make_tensor<double>({0, 2, 5});
  m.tensors.at("lora.B") = make_tensor<double>({0, 8, 2});
  CHECK_THROWS_WITH(construct(m), Contains("'lora.A'") && Contains("N >= 1") && Contains("found N = 0"));
}
