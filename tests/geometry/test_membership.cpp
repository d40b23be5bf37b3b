// Cone and hull membership (radargate/geometry/cone.hpp): every answer on every degenerate family
// rests on a certificate that re-verifies; verdicts and distances agree with brute force; points
// pushed out of the boundary by a known amount are found outside at that distance; tampered
// certificates are rejected; batches are thread-count independent.
#include <catch2/catch.hpp>

#include "geometry/geometry_testing.hpp"

using namespace radargate;
using namespace radargate::geometry;
using geotest::Problem;

TEST_CASE("membership: certificates verify on every family, and agree with brute force", "[geometry][membership]") {
  std::mt19937_64 rng(77);
  const MembershipOptions opt;
  for (int fam = 0; fam < geotest::n_families; ++fam) {
    int counts[2][3] = {};
    double worst_dist[2] = {0, 0};
    for (int t = 0; t < 400; ++t) {
      const Problem p = geotest::make_problem(rng, fam, int(t % geotest::n_ykinds));
      for (Set set : {Set::cone, Set::hull}) {
        const int s = set == Set::cone ? 0 : 1;
        const Membership m = membership(set, p.Vv(), p.yv(), opt);
        INFO("family " << geotest::family_name(fam) << " problem " << t << " set " << to_string(set) << " d=" << p.d
                       << " N=" << p.N << " rel.dist=" << m.relative_distance << " margin=" << m.margin);
        ++counts[s][int(m.verdict)];
        REQUIRE(m.verdict != Verdict::undetermined);
        const CertificateCheck c = check_certificate(p.Vv(), p.yv(), m, opt);
        REQUIRE(c.ok);
        // The verdict names its certificate.
        if (m.inside()) REQUIRE(m.certificate == Certificate::combination);
        if (m.outside())
          REQUIRE(m.certificate ==
                  (set == Set::cone ? Certificate::separating_direction : Certificate::separating_hyperplane));
        // lambda is feasible.
        double sum = 0;
        for (double l : m.lambda) {
          REQUIRE(l >= 0);
          sum += l;
        }
        if (set == Set::hull) REQUIRE(sum == Approx(1.0).epsilon(1e-12));
        // Distance against brute force, and the verdict against the brute-force distance when
        // that distance is clearly on one side of the tolerance.
        const double brute =
            set == Set::cone ? geotest::brute_cone_distance(p.M(), p.Y()) : geotest::brute_hull_distance(p.M(), p.Y());
        const double err = std::abs(m.distance - brute) / (m.scale > 0 ? m.scale : 1.0);
        worst_dist[s] = std::max(worst_dist[s], err);
        REQUIRE(err <= 1e-9);
        const double rel = m.scale > 0 ? brute / m.scale : 0.0;
        if (rel < 1e-3 * opt.tol) REQUIRE(m.inside());
        if (rel > 1e3 * opt.tol) REQUIRE(m.outside());
        // For the hull the margin is a proven lower bound and the distance an upper bound.
        if (set == Set::hull && m.outside()) {
          REQUIRE(m.margin <= brute * (1 + 1e-9) + 1e-12 * m.scale);
          REQUIRE(m.margin >= brute - 1e-9 * m.scale);
        }
      }
    }
    WARN("membership family " << geotest::family_name(fam) << ": cone inside/outside " << counts[0][0] << "/"
                              << counts[0][1] << ", hull inside/outside " << counts[1][0] << "/" << counts[1][1]
                              << "; worst |distance - brute force| / scale: cone " << worst_dist[0] << ", hull "
                              << worst_dist[1]);
  }
}

TEST_CASE("membership: a point pushed out of the boundary by delta is outside at distance delta",
          "[geometry][membership]") {
  std::mt19937_64 rng(9);
  std::normal_distribution<double> nd;
  for (Set set : {Set::cone, Set::hull}) {
    int tested = 0;
    for (int t = 0; t < 60; ++t) {
      const index_t d = 3 + index_t(rng() % 4), N = 2 + index_t(rng() % 5);
      Problem p;
      p.d = d;
      p.N = N;
      p.V.resize(d * N);
      p.y.resize(d);
      for (double& v : p.V) v = nd(rng);
      for (double& v : p.y) v = 3 * nd(rng);
      const Membership far = membership(set, p.Vv(), p.yv());
      if (!far.outside()) continue;
      // q0 = nearest point (on the boundary), n = unit outward normal; q0 + s n projects to q0.
      geotest::Vec q0 = geotest::Vec::Zero(d);
      for (index_t j = 0; j < N; ++j) q0 += far.lambda[j] * p.M().col(j);
      const geotest::Vec n = (p.Y() - q0).normalized();
      const double ref = set == Set::cone ? q0.norm() : far.scale;
      if (set == Set::cone && ref < 1e-3) continue;  // the nearest point is the apex
      for (double delta : {1e-2, 1e-4, 1e-6, 1e-7}) {
        Problem q = p;
        const geotest::Vec yq = q0 + delta * ref * n;
        for (index_t i = 0; i < d; ++i) q.y[i] = yq(i);
        const Membership m = membership(set, q.Vv(), q.yv());
        INFO("set " << to_string(set) << " delta " << delta << " rel.dist " << m.relative_distance);
        REQUIRE(m.outside());
        REQUIRE(check_certificate(q.Vv(), q.yv(), m).ok);
        REQUIRE(m.distance == Approx(delta * ref).epsilon(1e-6));
      }
      // On the boundary itself (up to rounding of q0): inside.
      Problem b = p;
      for (index_t i = 0; i < d; ++i) b.y[i] = q0(i);
      const Membership on = membership(set, b.Vv(), b.yv());
      REQUIRE(on.inside());
      ++tested;
    }
    REQUIRE(tested >= 20);
  }
}

TEST_CASE("membership: tampered certificates are rejected", "[geometry][membership]") {
  // V = identity in R^3: cone = positive orthant, hull = the unit simplex.
  const double V[] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const double yin[] = {0.2, 0.3, 0.5}, yout[] = {1, -1, 0.5};
  auto Vv = View<const double, 2>(make_view(V, 3, 3));
  auto in = View<const double, 1>(make_view(yin, 3));
  auto out = View<const double, 1>(make_view(yout, 3));
  for (Set set : {Set::cone, Set::hull}) {
    Membership mi = membership(set, Vv, in);
    REQUIRE(mi.inside());
    REQUIRE(check_certificate(Vv, in, mi).ok);
    Membership bad = mi;
    bad.lambda[0] = -bad.lambda[0];  // negative weight
    REQUIRE_FALSE(check_certificate(Vv, in, bad).ok);
    bad = mi;
    bad.lambda[1] += 1e-3;  // wrong combination
    REQUIRE_FALSE(check_certificate(Vv, in, bad).ok);
    bad = mi;
    bad.verdict = Verdict::outside;  // verdict not backed by its certificate
    REQUIRE_FALSE(check_certificate(Vv, in, bad).ok);
    // The inside certificate cannot be replayed on an outside point.
    REQUIRE_FALSE(check_certificate(Vv, out, mi).ok);

    Membership mo = membership(set, Vv, out);
    REQUIRE(mo.outside());
    REQUIRE(check_certificate(Vv, out, mo).ok);
    bad = mo;
    bad.direction[1] = -bad.direction[1];  // no longer separates
    REQUIRE_FALSE(check_certificate(Vv, out, bad).ok);
    bad = mo;
    bad.certificate = Certificate::combination;
    REQUIRE_FALSE(check_certificate(Vv, out, bad).ok);
    if (set == Set::hull) {
      bad = mo;
      bad.offset -= 0.1;  // a vertex would lie beyond the hyperplane
      REQUIRE_FALSE(check_certificate(Vv, out, bad).ok);
    }
    REQUIRE_FALSE(check_certificate(Vv, in, mo).ok);
  }
  // Hull: y inside the cone but outside the simplex.
  const double y2[] = {1, 1, 1};
  auto v2 = View<const double, 1>(make_view(y2, 3));
  REQUIRE(cone_membership(Vv, v2).inside());
  const Membership h = hull_membership(Vv, v2);
  REQUIRE(h.outside());
  REQUIRE(h.distance == Approx(2.0 / std::sqrt(3.0)).epsilon(1e-12));
  REQUIRE(hull_distance(Vv, v2) == Approx(2.0 / std::sqrt(3.0)).epsilon(1e-12));
  REQUIRE(cone_distance(Vv, out) == Approx(1.0).epsilon(1e-12));
}

TEST_CASE("membership: batches equal single calls and do not depend on the thread count", "[geometry][membership]") {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd;
  const index_t B = 64, d = 5, N = 4;
  std::vector<double> V(B * d * N), Y(B * d);
  for (double& v : V) v = nd(rng);
  for (double& v : Y) v = nd(rng);
  auto Vb = View<const double, 3>(make_view(static_cast<const double*>(V.data()), B, d, N));
  auto Yb = View<const double, 2>(make_view(static_cast<const double*>(Y.data()), B, d));
  for (Set set : {Set::cone, Set::hull}) {
    MembershipOptions o1, o3;
    o3.threads = 3;
    const auto a = membership_batch(set, Vb, Yb, o1);
    const auto b = membership_batch(set, Vb, Yb, o3);
    REQUIRE(a.size() == size_t(B));
    for (index_t k = 0; k < B; ++k) {
      const Membership s = membership(set, View<const double, 2>(Vb[k]), View<const double, 1>(Yb[k]));
      REQUIRE(a[k].verdict == s.verdict);
      REQUIRE(a[k].lambda == s.lambda);
      REQUIRE(b[k].lambda == s.lambda);
      REQUIRE(b[k].direction == s.direction);
    }
    // One V against many points.
    const auto c = membership_batch(set, View<const double, 2>(Vb[0]), Yb, o3);
    for (index_t k = 0; k < B; ++k) {
      const Membership s = membership(set, View<const double, 2>(Vb[0]), View<const double, 1>(Yb[k]));
      REQUIRE(c[k].lambda == s.lambda);
      REQUIRE(c[k].verdict == s.verdict);
    }
  }
  // Errors name the batch entry.
  V[2 * d * N + 3] = std::nan("");
  REQUIRE_THROWS_WITH(membership_batch(Set::cone, Vb, Yb),
                      Catch::Contains("tensor 'V[2]'") && Catch::Contains("finite"));
  auto Ybad = View<const double, 2>(make_view(static_cast<const double*>(Y.data()), B - 1, d));
  REQUIRE_THROWS_WITH(membership_batch(Set::cone, Vb, Ybad),
                      Catch::Contains("tensor 'y'") && Catch::Contains("[64, 5]"));
}

TEST_CASE("membership: float data gives the same verdicts as the same numbers in double", "[geometry][membership]") {
  std::mt19937_64 rng(21);
  for (int t = 0; t < 200; ++t) {
    Problem p = geotest::make_problem(rng, int(t % geotest::n_families), int(t % geotest::n_ykinds));
    if (p.V.size() == 0) continue;
    bool representable = true;
    for (double v : p.V) representable = representable && std::abs(v) < 1e30 && (v == 0 || std::abs(v) > 1e-30);
    for (double v : p.y) representable = representable && std::abs(v) < 1e30 && (v == 0 || std::abs(v) > 1e-30);
    if (!representable) continue;
    std::vector<float> Vf(p.V.begin(), p.V.end()), yf(p.y.begin(), p.y.end());
    for (size_t k = 0; k < Vf.size(); ++k) p.V[k] = Vf[k];
    for (size_t k = 0; k < yf.size(); ++k) p.y[k] = yf[k];
    for (Set set : {Set::cone, Set::hull}) {
      const Membership a = membership(set, p.Vv(), p.yv());
      const Membership b =
          membership(set, View<const float, 2>(make_view(static_cast<const float*>(Vf.data()), p.d, p.N)),
                     View<const float, 1>(make_view(static_cast<const float*>(yf.data()), p.d)));
      REQUIRE(a.verdict == b.verdict);
      REQUIRE(a.lambda == b.lambda);
    }
  }
}
