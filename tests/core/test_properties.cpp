// Properties of the layer that hold for any parameters: rotations preserve norms, zero angles are
// the identity, normalised gates sum to one, top-k leaves unselected experts at zero and does not
// compute them, the parameter-free gates need no gate parameters, and runs are bit-identical.
#include <catch2/catch.hpp>

#include "support/testing.hpp"

using namespace radargate;

namespace {
struct Run {
  std::vector<double> y;
  Layer<double>::Context ctx;
};

Run run(const Model<double>& m, const std::vector<double>& x, index_t T) {
  Layer<double> layer(m.config, m.params());
  Run r;
  r.y.resize(size_t(T * layer.dims().d));
  r.ctx = layer.forward(make_view(x.data(), T, layer.dims().d_in), make_view(r.y.data(), T, layer.dims().d));
  return r;
}

Dims dims_for(const LayerConfig& c, index_t N = 4) { return Dims{5, 8, N, 2, c.rotation ? 3 : 0, c.rotation ? 4 : 0}; }
}  // namespace

TEST_CASE("a plane rotation preserves the pair's norm, and its transpose undoes it", "[math]") {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-10, 10);
  for (int t = 0; t < 1000; ++t) {
    const double alpha = u(rng), a0 = u(rng), b0 = u(rng);
    double a = a0, b = b0;
    detail::rotate_pair(std::cos(alpha), std::sin(alpha), a, b);
    CHECK(std::hypot(a, b) == Approx(std::hypot(a0, b0)).epsilon(1e-14));
    detail::rotate_pair_transpose(std::cos(alpha), std::sin(alpha), a, b);  // R^T R = I
    CHECK(a == Approx(a0).margin(1e-12));
    CHECK(b == Approx(b0).margin(1e-12));
    // Zero angle is the identity, exactly.
    double c = a0, d = b0;
    detail::rotate_pair(1.0, 0.0, c, d);
    CHECK(c == a0);
    CHECK(d == b0);
  }
}

TEST_CASE("the angle bound and its derivative", "[math]") {
  for (double p : {-30.0, -2.0, -0.3, 0.0, 0.1, 1.5, 40.0}) {
    const double a = detail::bound_value(Bound::pi_tanh, p);
    CHECK(std::abs(a) <= detail::pi<double>());
    const double h = 1e-6;
    const double fd =
        (detail::bound_value(Bound::pi_tanh, p + h) - detail::bound_value(Bound::pi_tanh, p - h)) / (2 * h);
    CHECK(detail::bound_derivative(Bound::pi_tanh, p) == Approx(fd).margin(1e-8));
    CHECK(detail::bound_derivative_from_value(Bound::pi_tanh, a) == Approx(fd).margin(1e-8));
    CHECK(detail::bound_value(Bound::none, p) == p);
    CHECK(detail::bound_derivative(Bound::none, p) == 1.0);
  }
}

TEST_CASE("rotation preserves each expert's norm inside the layer", "[properties]") {
  for (Pairing pairing : {Pairing::adjacent, Pairing::half}) {
    LayerConfig c = LayerConfig::make(Variant::radargate);
    c.pairing = pairing;
    const Dims D{5, 9, 3, 2, 3, 3};  // odd d and P < d/2: some coordinates pass through
    Model<double> m = random_model<double>(c, D, 11, {true, true, 3.0});
    const index_t T = 4;
    auto x = rgtest::random_vector<double>(size_t(T * D.d_in), 12);
    Run r = run(m, x, T);
    for (index_t t = 0; t < T; ++t)
      for (index_t i = 0; i < D.N; ++i) {
        double nv = 0, nu = 0;
        for (index_t o = 0; o < D.d; ++o) {
          nv += std::pow(r.ctx.v[(t * D.N + i) * D.d + o], 2);
          nu += std::pow(r.ctx.u[(t * D.N + i) * D.d + o], 2);
        }
        CHECK(std::sqrt(nu) == Approx(std::sqrt(nv)).epsilon(1e-13));
      }
  }
}

TEST_CASE("zero angles make rotation the identity", "[properties]") {
  // angle.U = 0 and no bias: every alpha is 0, so rotation_only == uniform and radargate == stretch_only.
  const std::pair<Variant, Variant> pairs[] = {{Variant::rotation_only, Variant::uniform},
                                               {Variant::radargate, Variant::stretch_only}};
  for (auto [rot, plain] : pairs) {
    LayerConfig cr = LayerConfig::make(rot);
    const Dims D = dims_for(cr);
    Model<double> m = random_model<double>(cr, D, 21);
    for (auto& e : m.tensors.at("angle.U").data) e = 0.0;
    m.tensors.at("angle.bias").data.assign(m.tensors.at("angle.bias").data.size(), 0.0);
    Model<double> mp;
    mp.config = LayerConfig::make(plain);
    for (auto& kv : m.tensors)
      if (param_need(mp.config, kv.first) != Need::unused) mp.tensors.insert(kv);
    const index_t T = 3;
    auto x = rgtest::random_vector<double>(size_t(T * D.d_in), 22);
    Run a = run(m, x, T), b = run(mp, x, T);
    CHECK(a.y == b.y);
  }
}

TEST_CASE("softmax and top-k gates sum to one; unselected experts get zero and are not computed", "[properties]") {
  for (Variant v : {Variant::softmax, Variant::topk, Variant::stretch_only, Variant::radargate}) {
    LayerConfig c = LayerConfig::make(v);
    const Dims D = dims_for(c, 5);
    Model<double> m = random_model<double>(c, D, 31);
    const index_t T = 6;
    auto x = rgtest::random_vector<double>(size_t(T * D.d_in), 32);
    Run r = run(m, x, T);
    for (index_t t = 0; t < T; ++t) {
      double s = 0;
      int nonzero = 0;
      for (index_t i = 0; i < D.N; ++i) {
        s += r.ctx.g[t * D.N + i];
        nonzero += r.ctx.g[t * D.N + i] != 0.0;
      }
      CHECK(s == Approx(1.0).epsilon(1e-14));
      if (v == Variant::topk) CHECK(nonzero == c.topk);
    }
  }
  // Poison the experts that top-k does not select for any token with NaN: the output stays finite,
  // so they were never computed.
  LayerConfig c = LayerConfig::make(Variant::topk);
  c.topk = 2;
  const Dims D = dims_for(c, 6);
  Model<double> m = random_model<double>(c, D, 41);
  auto& bg = m.tensors.at("stretch.bg").data;
  bg = {5.0, -50.0, 4.0, -50.0, -50.0, -50.0};  // experts 0 and 2 always win
  const index_t T = 4;
  auto x = rgtest::random_vector<double>(size_t(T * D.d_in), 42);
  Run clean = run(m, x, T);
  for (index_t i : {1, 3, 4, 5}) {
    for (index_t q = 0; q < D.r * D.d_in; ++q) m.tensors.at("lora.A").data[i * D.r * D.d_in + q] = std::nan("");
    for (index_t q = 0; q < D.d * D.r; ++q) m.tensors.at("lora.B").data[i * D.d * D.r + q] = std::nan("");
  }
  Run poisoned = run(m, x, T);
  CHECK(poisoned.y == clean.y);
  for (index_t t = 0; t < T; ++t) {
    CHECK(poisoned.ctx.sel[t * D.N + 0] == 1);
    CHECK(poisoned.ctx.sel[t * D.N + 1] == 0);
  }
  // Ties: the lower index wins.
  unsigned char sel[4];
  const double l[4] = {1.0, 2.0, 2.0, 2.0};
  detail::topk_select(l, 4, 2, sel);
  CHECK((sel[0] == 0 && sel[1] == 1 && sel[2] == 1 && sel[3] == 0));
}

TEST_CASE("sum and uniform need no gate parameters and compute what they say", "[properties]") {
  LayerConfig cs = LayerConfig::make(Variant::sum), cu = LayerConfig::make(Variant::uniform);
  const Dims D = dims_for(cs, 3);
  Model<double> m = random_model<double>(cs, D, 51, {false, false, 1.0});
  CHECK(m.tensors.size() == 2);  // lora.A and lora.B only
  Model<double> mu = m;
  mu.config = cu;
  const index_t T = 2;
  auto x = rgtest::random_vector<double>(size_t(T * D.d_in), 52);
  Run s = run(m, x, T), u = run(mu, x, T);
  for (size_t i = 0; i < s.y.size(); ++i) CHECK(u.y[i] == Approx(s.y[i] / 3.0).epsilon(1e-14));
  // y = sum_i B_i A_i x by hand.
  for (index_t t = 0; t < T; ++t)
    for (index_t o = 0; o < D.d; ++o) {
      double acc = 0;
      for (index_t i = 0; i < D.N; ++i)
        for (index_t q = 0; q < D.r; ++q) {
          double h = 0;
          for (index_t a = 0; a < D.d_in; ++a)
            h += m.tensors.at("lora.A").data[(i * D.r + q) * D.d_in + a] * x[t * D.d_in + a];
          acc += m.tensors.at("lora.B").data[(i * D.d + o) * D.r + q] * h;
        }
      CHECK(s.y[t * D.d + o] == Approx(acc).epsilon(1e-13));
    }
}

TEST_CASE("the same inputs give bit-identical results run to run", "[properties]") {
  for (Variant v : all_variants) {
    LayerConfig c = LayerConfig::make(v);
    const Dims D = dims_for(c);
    Model<double> m = random_model<double>(c, D, 61);
    const index_t T = 3;
    auto x = rgtest::random_vector<double>(size_t(T * D.d_in), 62);
    auto dy = rgtest::random_vector<double>(size_t(T * D.d), 63);
    Layer<double> layer(m.config, m.params());
    std::vector<double> y1(size_t(T * D.d)), y2(y1.size());
    auto c1 = layer.forward(make_view(x.data(), T, D.d_in), make_view(y1.data(), T, D.d));
    auto c2 = layer.forward(make_view(x.data(), T, D.d_in), make_view(y2.data(), T, D.d));
    CHECK(y1 == y2);
    rgtest::GradStore<double> g1(m, T, D.d_in), g2(m, T, D.d_in);
    layer.backward(c1, make_view(dy.data(), T, D.d), g1.views);
    layer.backward(c2, make_view(dy.data(), T, D.d), g2.views);
    CHECK(g1.x == g2.x);
    for (auto& kv : g1.t) CHECK(kv.second.data == g2.t.at(kv.first).data);
  }
}
