// NNLS (radargate/geometry/nnls.hpp): optimality (KKT) on every degenerate family, agreement with
// a brute-force oracle, scale invariance, strided and float views, the reported iteration cap,
// and clear errors on bad input.
#include <catch2/catch.hpp>

#include "geometry/geometry_testing.hpp"

using namespace radargate;
using namespace radargate::geometry;
using geotest::Problem;

namespace {
// KKT residual of (V, y, lambda), relative: columns and y at unit norm.
double kkt(const Problem& p, const std::vector<double>& lam) {
  const geotest::Mat M = p.M();
  const geotest::Vec y = p.Y();
  const double yn = y.norm();
  if (yn == 0) return 0;
  geotest::Vec l = Eigen::Map<const geotest::Vec>(lam.data(), p.N);
  const geotest::Vec r = (y - M * l) / yn;
  double worst = 0;
  for (index_t j = 0; j < p.N; ++j) {
    if (lam[j] < 0) return 1e300;
    const double cn = M.col(j).norm();
    if (cn == 0) continue;
    const double w = M.col(j).dot(r) / cn;
    worst = std::max(worst, lam[j] > 0 ? std::abs(w) : w);
  }
  return worst;
}
}  // namespace

TEST_CASE("nnls: KKT holds and the residual matches brute force on every family", "[geometry][nnls]") {
  std::mt19937_64 rng(2024);
  for (int fam = 0; fam < geotest::n_families; ++fam) {
    double worst_kkt = 0, worst_diff = 0;
    for (int t = 0; t < 300; ++t) {
      const Problem p = geotest::make_problem(rng, fam, int(t % geotest::n_ykinds));
      const NnlsResult r = nnls(p.Vv(), p.yv());
      INFO("family " << geotest::family_name(fam) << " problem " << t << " d=" << p.d << " N=" << p.N);
      REQUIRE(r.converged);
      REQUIRE(r.lambda.size() == size_t(p.N));
      for (double l : r.lambda) REQUIRE(l >= 0);
      const double k = kkt(p, r.lambda);
      worst_kkt = std::max(worst_kkt, k);
      REQUIRE(k <= 1e-10);
      REQUIRE(r.kkt_violation == Approx(k).margin(1e-13));
      const double yn = p.Y().norm();
      const double brute = geotest::brute_cone_distance(p.M(), p.Y());
      worst_diff = std::max(worst_diff, std::abs(r.residual - brute) / (yn > 0 ? yn : 1));
      REQUIRE(std::abs(r.residual - brute) <= 1e-9 * yn);
      // The passive set is exactly the support of lambda.
      for (index_t j = 0; j < p.N; ++j)
        REQUIRE((std::find(r.passive.begin(), r.passive.end(), j) != r.passive.end()) == (r.lambda[j] > 0));
    }
    WARN("nnls family " << geotest::family_name(fam) << ": worst KKT " << worst_kkt
                        << ", worst |residual - brute force| / ||y|| " << worst_diff);
  }
}

TEST_CASE("nnls: answers are scale invariant", "[geometry][nnls]") {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> nd;
  for (int t = 0; t < 200; ++t) {
    Problem p = geotest::make_problem(rng, geotest::generic, int(t % geotest::n_ykinds));
    const NnlsResult a = nnls(p.Vv(), p.yv());
    // Columns scaled by 10^k (k in -20..20) and y by 10^m: the same cone, the same projection.
    Problem q = p;
    std::vector<double> cs(p.N);
    for (index_t j = 0; j < p.N; ++j) cs[j] = std::pow(10.0, double(int(rng() % 41) - 20));
    const double ys = std::pow(10.0, double(int(rng() % 41) - 20));
    for (index_t i = 0; i < p.d; ++i) {
      for (index_t j = 0; j < p.N; ++j) q.at(i, j) *= cs[j];
      q.y[i] *= ys;
    }
    const NnlsResult b = nnls(q.Vv(), q.yv());
    const double yn = p.Y().norm();
    REQUIRE(b.residual / ys == Approx(a.residual).margin(1e-12 * yn));
    // lambda is unique here (generic columns, d >= N or a unique optimal face); compare the fit.
    geotest::Vec fa = geotest::Vec::Zero(p.d), fb = geotest::Vec::Zero(p.d);
    for (index_t j = 0; j < p.N; ++j) {
      fa += a.lambda[j] * p.M().col(j);
      fb += b.lambda[j] * q.M().col(j) / ys;
    }
    REQUIRE((fa - fb).norm() <= 1e-10 * std::max(yn, 1e-300));
  }
}

TEST_CASE("nnls: float views, strided views and the row-major overload agree", "[geometry][nnls]") {
  std::mt19937_64 rng(11);
  for (int t = 0; t < 100; ++t) {
    Problem p = geotest::make_problem(rng, geotest::generic, int(t % geotest::n_ykinds));
    std::vector<float> Vf(p.V.begin(), p.V.end()), yf(p.y.begin(), p.y.end());
    for (size_t k = 0; k < Vf.size(); ++k) p.V[k] = double(Vf[k]);  // same numbers in both types
    for (size_t k = 0; k < yf.size(); ++k) p.y[k] = double(yf[k]);
    const NnlsResult a = nnls(p.Vv(), p.yv());
    const NnlsResult b = nnls(View<const float, 2>(make_view(static_cast<const float*>(Vf.data()), p.d, p.N)),
                              View<const float, 1>(make_view(static_cast<const float*>(yf.data()), p.d)));
    REQUIRE(a.lambda == b.lambda);
    REQUIRE(a.residual == b.residual);
    // Column-major storage described by strides.
    std::vector<double> Vc(p.V.size());
    for (index_t i = 0; i < p.d; ++i)
      for (index_t j = 0; j < p.N; ++j) Vc[j * p.d + i] = p.V[i * p.N + j];
    View<const double, 2> cm;
    cm.data = Vc.data();
    cm.shape[0] = p.d;
    cm.shape[1] = p.N;
    cm.stride[0] = 1;
    cm.stride[1] = p.d;
    const NnlsResult c = nnls(cm, p.yv());
    REQUIRE(a.lambda == c.lambda);
    const NnlsResult e = nnls(p.V.data(), p.y.data(), p.d, p.N);
    REQUIRE(a.lambda == e.lambda);
  }
}

TEST_CASE("nnls: the iteration cap is reported, never silent", "[geometry][nnls]") {
  // y needs all 6 columns: the default cap converges, a cap of 2 cannot.
  const index_t d = 6, N = 6;
  std::vector<double> V(d * N, 0.0), y(d, 1.0);
  for (index_t i = 0; i < d; ++i) V[i * N + i] = 1.0 + double(i);
  NnlsOptions opt;
  const NnlsResult full = nnls(V.data(), y.data(), d, N, opt);
  REQUIRE(full.converged);
  REQUIRE(full.residual <= 1e-14);
  opt.max_iter = 2;
  const NnlsResult capped = nnls(V.data(), y.data(), d, N, opt);
  REQUIRE_FALSE(capped.converged);
  REQUIRE(capped.iterations == 2);
  REQUIRE(capped.max_iter == 2);
  for (double l : capped.lambda) REQUIRE(l >= 0);
  REQUIRE(capped.residual > 0.5);
  // The membership answer of a capped solve still rests on a certificate: not inside.
  MembershipOptions mo;
  mo.nnls.max_iter = 2;
  const Membership m = cone_membership(View<const double, 2>(make_view(static_cast<const double*>(V.data()), d, N)),
                                       View<const double, 1>(make_view(static_cast<const double*>(y.data()), d)), mo);
  REQUIRE_FALSE(m.converged);
  REQUIRE(m.verdict != Verdict::inside);
}

TEST_CASE("nnls: zero target, single column, columns opposite to y", "[geometry][nnls]") {
  {
    const double V[] = {1, 2, 3, 4}, y[] = {0, 0};
    const NnlsResult r = nnls(V, y, 2, 2);
    REQUIRE(r.converged);
    REQUIRE(r.residual == 0);
    REQUIRE(r.lambda == std::vector<double>{0, 0});
  }
  {
    const double V[] = {-1, -2}, y[] = {1, 2};  // column [-1, -2] points away from y
    const NnlsResult r = nnls(V, y, 2, 1);
    REQUIRE(r.lambda[0] == 0);
    REQUIRE(r.residual == Approx(std::sqrt(5.0)));
  }
  {
    const double V[] = {2, 4}, y[] = {1, 2};  // y = 0.5 v
    const NnlsResult r = nnls(V, y, 2, 1);
    REQUIRE(r.lambda[0] == Approx(0.5));
    REQUIRE(r.residual <= 1e-15);
  }
}

TEST_CASE("nnls: bad input gets a clear error", "[geometry][nnls]") {
  const double V[] = {1, 2, 3, 4, 5, 6}, y[] = {1, 2};
  auto Vv = View<const double, 2>(make_view(V, 2, 3));
  REQUIRE_THROWS_WITH(nnls(View<const double, 2>(make_view(V, 2, 0)), View<const double, 1>(make_view(y, 2))),
                      Catch::Contains("tensor 'V'") && Catch::Contains("non-empty"));
  REQUIRE_THROWS_WITH(nnls(Vv, View<const double, 1>(make_view(y, 1))), Catch::Contains("tensor 'y'") &&
                                                                            Catch::Contains("expected shape [2]") &&
                                                                            Catch::Contains("found [1]"));
  const double Vn[] = {1, 2, std::nan(""), 4, 5, 6};
  REQUIRE_THROWS_WITH(nnls(View<const double, 2>(make_view(Vn, 2, 3)), View<const double, 1>(make_view(y, 2))),
                      Catch::Contains("tensor 'V'") && Catch::Contains("finite") && Catch::Contains("[0, 2]"));
  const double yi[] = {1, HUGE_VAL};
  REQUIRE_THROWS_WITH(nnls(Vv, View<const double, 1>(make_view(yi, 2))),
                      Catch::Contains("tensor 'y'") && Catch::Contains("finite") && Catch::Contains("[1]"));
}
