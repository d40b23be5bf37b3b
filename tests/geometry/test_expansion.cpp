// The expansion report (radargate/geometry/expansion.hpp) on layers of every variant:
//  - sum, uniform, static (weights >= 0), softmax, topk, stretch_only: the output is always inside
//    the cone of the experts; the normalised gates also inside the hull;
//  - radargate and rotation_only with non-zero angles: points outside, and the report says so;
//  - all angles zero (angle.U = 0, no bias): no point outside;
//  - the weighted-sum guarantee is a check that can fail, and gates with negative weights are
//    reported as not covered by it.
#include <catch2/catch.hpp>

#include <random>

#include <radargate.hpp>
#include <radargate/geometry.hpp>

using namespace radargate;
using namespace radargate::geometry;

namespace {
const Dims dims{/*d_in*/ 6, /*d*/ 10, /*N*/ 3, /*r*/ 2, /*k*/ 2, /*P*/ 5};
constexpr index_t T = 40;

template <class S>
std::vector<S> random_x(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<S> x(T * dims.d_in);
  for (S& v : x) v = S(nd(rng));
  return x;
}

template <class S>
ExpansionReport report(const Model<S>& m, std::uint64_t seed, const ExpansionOptions& opt = {}) {
  const Layer<S, backend::reference> layer(m.config, m.params());
  const std::vector<S> x = random_x<S>(seed);
  return expansion_report(layer, View<const S, 2>(make_view(x.data(), T, dims.d_in)), opt);
}

void require_consistent(const ExpansionReport& r) {
  REQUIRE(r.tokens == T);
  REQUIRE(r.per_token.size() == size_t(T));
  for (const SetSummary* s : {&r.lora_cone, &r.lora_hull, &r.ws_cone, &r.ws_hull}) {
    REQUIRE(s->inside + s->outside + s->undetermined == T);
    REQUIRE(s->undetermined == 0);
    REQUIRE(s->distance_quantiles.size() == r.quantiles.size());
    REQUIRE(std::is_sorted(s->distance_quantiles.begin(), s->distance_quantiles.end()));
  }
  REQUIRE(r.ws_cone_check.covered + r.ws_cone_check.not_covered == T);
  REQUIRE(r.ws_hull_check.covered + r.ws_hull_check.not_covered == T);
}
}  // namespace

TEMPLATE_TEST_CASE("expansion: weighted-sum variants never leave the cone", "[geometry][expansion]", float, double) {
  using S = TestType;
  const Variant variants[] = {Variant::sum,     Variant::uniform, Variant::static_,
                              Variant::softmax, Variant::topk,    Variant::stretch_only};
  for (Variant v : variants) {
    for (std::uint64_t seed : {1u, 2u, 3u}) {
      LayerConfig cfg = LayerConfig::make(v);
      cfg.topk = 2;
      Model<S> m = random_model<S>(cfg, dims, seed);
      if (v == Variant::static_)
        for (S& e : m.tensors.at("stretch.bg").data) e = std::abs(e);  // non-negative weights
      INFO("variant " << to_string(v) << " seed " << seed);
      const ExpansionReport r = report(m, seed + 100);
      require_consistent(r);
      REQUIRE_FALSE(r.rotation);
      REQUIRE(r.lora_cone.inside == T);
      REQUIRE(r.lora_cone.outside == 0);
      REQUIRE(r.ws_cone_check.covered == T);
      REQUIRE(r.ws_cone_check.passed());
      const bool normalised =
          v == Variant::uniform || v == Variant::softmax || v == Variant::topk || v == Variant::stretch_only;
      if (normalised) {
        REQUIRE(r.lora_hull.inside == T);
        REQUIRE(r.ws_hull_check.covered == T);
        REQUIRE(r.ws_hull_check.passed());
      } else {
        REQUIRE(r.ws_hull_check.covered == 0);  // sum g != 1: not judged against the hull
      }
      REQUIRE(r.passed());
      for (const TokenExpansion& t : r.per_token) REQUIRE(t.lora_cone.relative_distance <= r.tol);
    }
  }
}

TEMPLATE_TEST_CASE("expansion: rotations leave the cone and the report says so", "[geometry][expansion]", float,
                   double) {
  using S = TestType;
  for (Variant v : {Variant::radargate, Variant::rotation_only}) {
    LayerConfig cfg = LayerConfig::make(v);
    RandomModelOptions ro;
    ro.angle_scale = 2.0;
    const Model<S> m = random_model<S>(cfg, dims, 7, ro);
    INFO("variant " << to_string(v));
    const ExpansionReport r = report(m, 8);
    require_consistent(r);
    REQUIRE(r.rotation);
    // Three experts span a 3-d cone in R^10: rotated combinations leave it almost surely.
    REQUIRE(r.lora_cone.outside >= T / 2);
    REQUIRE(r.lora_hull.outside >= T / 2);
    REQUIRE(r.lora_cone.fraction_outside == Approx(double(r.lora_cone.outside) / T));
    REQUIRE(r.lora_cone.distance_quantiles.back() > 0);
    REQUIRE(r.lora_cone.max_distance == r.lora_cone.distance_quantiles.back());
    // The same weights on the unrotated experts stay inside: the check passes.
    REQUIRE(r.ws_cone.outside == 0);
    REQUIRE(r.ws_hull.outside == 0);
    REQUIRE(r.ws_cone_check.covered == T);
    REQUIRE(r.ws_hull_check.covered == T);
    REQUIRE(r.passed());
    // Each per-token verdict is the one an independent membership call gives.
    const Layer<S, backend::reference> layer(m.config, m.params());
    const std::vector<S> x = random_x<S>(8);
    std::vector<S> y(T * dims.d);
    const auto ctx = layer.forward(make_view(x.data(), T, dims.d_in), make_view(y.data(), T, dims.d));
    for (index_t t = 0; t < T; ++t) {
      std::vector<double> V(dims.d * dims.N), p(dims.d, 0.0);
      for (index_t i = 0; i < dims.N; ++i)
        for (index_t o = 0; o < dims.d; ++o) {
          V[o * dims.N + i] = double(ctx.v[(t * dims.N + i) * dims.d + o]);
          p[o] += double(ctx.g[t * dims.N + i]) * double(ctx.u[(t * dims.N + i) * dims.d + o]);
        }
      const Membership mc =
          cone_membership(View<const double, 2>(make_view(static_cast<const double*>(V.data()), dims.d, dims.N)),
                          View<const double, 1>(make_view(static_cast<const double*>(p.data()), dims.d)));
      REQUIRE(mc.verdict == r.per_token[t].lora_cone.verdict);
      REQUIRE(mc.distance == Approx(r.per_token[t].lora_cone.distance).epsilon(1e-9).margin(1e-12));
      if (mc.outside()) REQUIRE(mc.distance > 0);
    }
  }
}

TEMPLATE_TEST_CASE("expansion: with every angle zero radargate stays inside", "[geometry][expansion]", float, double) {
  using S = TestType;
  for (Variant v : {Variant::radargate, Variant::rotation_only}) {
    Model<S> m = random_model<S>(LayerConfig::make(v), dims, 9);
    for (S& e : m.tensors.at("angle.U").data) e = S(0);
    m.tensors.erase("angle.bias");
    INFO("variant " << to_string(v));
    const ExpansionReport r = report(m, 10);
    require_consistent(r);
    REQUIRE(r.lora_cone.outside == 0);
    REQUIRE(r.lora_cone.inside == T);
    REQUIRE(r.lora_hull.outside == 0);
    REQUIRE(r.lora_hull.inside == T);
    REQUIRE(r.passed());
    // The same model with angles back on leaves the cone: the zero-angle result is not vacuous.
    Model<S> m2 = random_model<S>(LayerConfig::make(v), dims, 9);
    REQUIRE(report(m2, 10).lora_cone.outside > 0);
  }
}

TEST_CASE("expansion: negative gate weights are reported as not covered", "[geometry][expansion]") {
  LayerConfig cfg = LayerConfig::make(Variant::static_);  // normalize = identity
  Model<double> m = random_model<double>(cfg, dims, 4);
  std::vector<double>& bg = m.tensors.at("stretch.bg").data;
  bg = {0.7, -0.4, 0.2};  // one negative weight on every token
  const ExpansionReport r = report(m, 5);
  require_consistent(r);
  REQUIRE(r.ws_cone_check.covered == 0);
  REQUIRE(r.ws_cone_check.not_covered == T);
  REQUIRE(r.ws_hull_check.not_covered == T);
  REQUIRE(r.passed());  // nothing covered, nothing violated
  for (const TokenExpansion& t : r.per_token) {
    REQUIRE_FALSE(t.gate_nonnegative);
    REQUIRE(t.gate_sum == Approx(0.5));
  }
  // The memberships are still measured: with a negative weight the point may leave the cone.
  REQUIRE(r.lora_cone.inside + r.lora_cone.outside == T);
  REQUIRE(r.lora_cone.outside > 0);
}

TEST_CASE("expansion: the weighted-sum guarantee is a check that can fail", "[geometry][expansion]") {
  const Model<double> m = random_model<double>(LayerConfig::make(Variant::softmax), dims, 12);
  // Solvers capped at one iteration cannot reach a point that needs all three experts (softmax
  // weights are all > 0), so no inside certificate exists: every covered token is a violation.
  ExpansionOptions opt;
  opt.membership.nnls.max_iter = 1;
  opt.membership.hull.max_iter = 1;
  const ExpansionReport r = report(m, 13, opt);
  REQUIRE(r.ws_cone_check.covered == T);
  REQUIRE(r.ws_cone_check.violations == T);
  REQUIRE(r.ws_hull_check.violations == T);
  REQUIRE(r.ws_cone.inside == 0);
  REQUIRE_FALSE(r.passed());
  // The same report without the cap passes.
  REQUIRE(report(m, 13).passed());
}

TEST_CASE("expansion: threads and quantiles", "[geometry][expansion]") {
  const Model<double> m = random_model<double>(LayerConfig::make(Variant::radargate), dims, 14);
  ExpansionOptions o1, o2;
  o2.membership.threads = 2;
  o2.quantiles = {0.25, 0.75};
  const ExpansionReport a = report(m, 15, o1), b = report(m, 15, o2);
  REQUIRE(b.lora_cone.distance_quantiles.size() == 2);
  for (index_t t = 0; t < T; ++t) {
    REQUIRE(a.per_token[t].lora_cone.distance == b.per_token[t].lora_cone.distance);
    REQUIRE(a.per_token[t].lora_hull.verdict == b.per_token[t].lora_hull.verdict);
  }
  // Quantiles by hand.
  std::vector<double> dist;
  for (const TokenExpansion& t : a.per_token) dist.push_back(t.lora_cone.distance);
  std::sort(dist.begin(), dist.end());
  REQUIRE(a.lora_cone.distance_quantiles.front() == dist.front());
  REQUIRE(a.lora_cone.distance_quantiles.back() == dist.back());
  const double pos = 0.5 * double(T - 1);
  const size_t lo = size_t(pos);
  REQUIRE(a.lora_cone.distance_quantiles[1] == Approx(dist[lo] + (pos - double(lo)) * (dist[lo + 1] - dist[lo])));
  ExpansionOptions bad;
  bad.quantiles = {1.5};
  REQUIRE_THROWS_WITH(report(m, 15, bad), Catch::Contains("quantiles"));
}
