// Every gradient of every variant against central finite differences in float64, and float32
// against float64 on the same inputs.
#include <catch2/catch.hpp>

#include "support/testing.hpp"

using namespace radargate;
using rgtest::Case;

namespace {

// L = sum(dy * y) for the model's current parameters and the input x.
double loss(const Model<double>& m, const std::vector<double>& x, const std::vector<double>& dy, index_t T) {
  Layer<double> layer(m.config, m.params());
  const Dims& D = layer.dims();
  std::vector<double> y(size_t(T * D.d));
  layer.forward(make_view(x.data(), T, D.d_in), make_view(y.data(), T, D.d));
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += dy[i] * y[i];
  return s;
}

// Central difference of L with respect to element `e` of `data`.
double central_difference(double& e, const std::function<double()>& f) {
  // h = cbrt(eps) balances the truncation error (h^2) against the rounding of f (eps / h); a
  // smaller step lets the rounding of an FMA build (-march=native) show in the 1e-6 comparison.
  const double h = 6e-6 * std::max(1.0, std::abs(e));
  const double keep = e;
  e = keep + h;
  const double fp = f();
  e = keep - h;
  const double fm = f();
  e = keep;
  return (fp - fm) / (2 * h);
}

// The model, the input x and the upstream gradient dy of one test case.
struct CaseData {
  Model<double> m;
  std::vector<double> x, dy;
};
CaseData case_data(const Case& c) {
  return {random_model<double>(c.cfg, c.dims, c.seed, c.opt),
          rgtest::random_vector<double>(size_t(c.tokens * c.dims.d_in), c.seed + 7),
          rgtest::random_vector<double>(size_t(c.tokens * c.dims.d), c.seed + 8)};
}

}  // namespace

TEST_CASE("every gradient of every variant matches central differences (float64)", "[gradients]") {
  for (const Case& c : rgtest::variant_cases()) {
    INFO(c.name());
    CaseData data = case_data(c);
    Model<double>& m = data.m;
    std::vector<double>& x = data.x;
    std::vector<double>& dy = data.dy;
    const index_t T = c.tokens;

    Layer<double> layer(m.config, m.params());
    std::vector<double> y(size_t(T * c.dims.d));
    auto ctx = layer.forward(make_view(x.data(), T, c.dims.d_in), make_view(y.data(), T, c.dims.d));
    rgtest::GradStore<double> G(m, T, c.dims.d_in);
    layer.backward(ctx, make_view(dy.data(), T, c.dims.d), G.views);

    auto f = [&] { return loss(m, x, dy, T); };
    {
      std::vector<double> fd(x.size());
      for (size_t i = 0; i < x.size(); ++i) fd[i] = central_difference(x[i], f);
      INFO("grad.x");
      CHECK(rgtest::max_rel_err(G.x, fd) <= 1e-6);
    }
    for (auto& kv : m.tensors) {
      std::vector<double> fd(kv.second.data.size());
      for (size_t i = 0; i < fd.size(); ++i) fd[i] = central_difference(kv.second.data[i], f);
      INFO("grad." << kv.first);
      CHECK(rgtest::max_rel_err(G.t.at(kv.first).data, fd) <= 1e-6);
    }
  }
}

TEST_CASE("accumulate adds to the buffers and a subset of gradients equals the full set", "[gradients]") {
  for (const Case& c : rgtest::variant_cases()) {
    INFO(c.name());
    CaseData data = case_data(c);
    Model<double>& m = data.m;
    std::vector<double>& x = data.x;
    std::vector<double>& dy = data.dy;
    const index_t T = c.tokens;
    Layer<double> layer(m.config, m.params());
    std::vector<double> y(size_t(T * c.dims.d));
    auto ctx = layer.forward(make_view(x.data(), T, c.dims.d_in), make_view(y.data(), T, c.dims.d));
    const auto dyv = make_view(dy.data(), T, c.dims.d);

    rgtest::GradStore<double> full(m, T, c.dims.d_in);
    layer.backward(ctx, dyv, full.views);

    // Accumulate onto a buffer holding ones: result = ones + gradient.
    rgtest::GradStore<double> acc(m, T, c.dims.d_in);
    for (auto& e : acc.x) e = 1.0;
    for (auto& kv : acc.t)
      for (auto& e : kv.second.data) e = 1.0;
    layer.backward(ctx, dyv, acc.views, GradMode::accumulate);
    for (size_t i = 0; i < acc.x.size(); ++i) CHECK(acc.x[i] == Approx(1.0 + full.x[i]).epsilon(1e-12).margin(1e-12));
    for (auto& kv : acc.t)
      for (size_t i = 0; i < kv.second.data.size(); ++i)
        CHECK(kv.second.data[i] == Approx(1.0 + full.t.at(kv.first).data[i]).epsilon(1e-12).margin(1e-12));

    // Each gradient alone (frozen everything else) equals its value in the full set.
    for (auto& kv : m.tensors) {
      rgtest::GradStore<double> one(m, T, c.dims.d_in);
      Gradients<double> only = one.views;
      only.x = {};
      for_each_param(only, [&](const char* name, auto& v) {
        if (kv.first != name) v = {};
      });
      layer.backward(ctx, dyv, only);
      INFO("grad." << kv.first << " alone");
      CHECK(one.t.at(kv.first).data == full.t.at(kv.first).data);
    }
  }
}

TEST_CASE("float32 agrees with float64 on the same inputs", "[gradients][float]") {
  for (const Case& c : rgtest::variant_cases()) {
    INFO(c.name());
    Model<double> md = random_model<double>(c.cfg, c.dims, c.seed, c.opt);
    Model<float> mf = rgtest::cast_model<float>(md);
    const index_t T = c.tokens;
    std::vector<double> xd = rgtest::random_vector<double>(size_t(T * c.dims.d_in), c.seed + 7);
    std::vector<double> dyd = rgtest::random_vector<double>(size_t(T * c.dims.d), c.seed + 8);
    std::vector<float> xf(xd.begin(), xd.end()), dyf(dyd.begin(), dyd.end());

    Layer<double> ld(md.config, md.params());
    Layer<float> lf(mf.config, mf.params());
    std::vector<double> yd(size_t(T * c.dims.d));
    std::vector<float> yf(yd.size());
    auto cd = ld.forward(make_view(xd.data(), T, c.dims.d_in), make_view(yd.data(), T, c.dims.d));
    auto cf = lf.forward(make_view(xf.data(), T, c.dims.d_in), make_view(yf.data(), T, c.dims.d));
    // float32 through ~10 dependent steps (tanh, sin, softmax): a few hundred ulps.
    CHECK(rgtest::max_rel_err(yf, yd) <= 1e-4);

    rgtest::GradStore<double> gd(md, T, c.dims.d_in);
    rgtest::GradStore<float> gf(mf, T, c.dims.d_in);
    ld.backward(cd, make_view(dyd.data(), T, c.dims.d), gd.views);
    lf.backward(cf, make_view(dyf.data(), T, c.dims.d), gf.views);
    CHECK(rgtest::max_rel_err(gf.x, gd.x) <= 1e-3);
    for (auto& kv : gd.t) {
      INFO("grad." << kv.first);
      CHECK(rgtest::max_rel_err(gf.t.at(kv.first).data, kv.second.data) <= 1e-3);
    }
  }
}
