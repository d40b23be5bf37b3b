// The per-element maths the CUDA kernels add to detail/math.hpp, checked on the CPU: pair slots,
// sin/cos of pi t by range reduction and polynomials, and the bounded angle's cos, sin and
// derivative.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include <radargate.hpp>

using namespace radargate;

TEST_CASE("pair slots cover every coordinate once and agree with the rotation planes", "[cudahost]") {
  for (Pairing pairing : {Pairing::adjacent, Pairing::half})
    for (index_t d : {1, 2, 3, 4, 5, 8, 9, 31, 64, 4097}) {
      std::vector<int> seen(size_t(d), 0);
      const index_t S = detail::num_slots(d);
      REQUIRE(S == (d + 1) / 2);
      for (index_t m = 0; m < S; ++m)
        for (int e = 0; e < 2; ++e) {
          const index_t c = detail::slot_coord(pairing, m, e, d);
          if (c < 0) continue;
          REQUIRE(c < d);
          ++seen[size_t(c)];
        }
      for (index_t c = 0; c < d; ++c) REQUIRE(seen[size_t(c)] == 1);
      for (index_t m = 0; m < d / 2; ++m) {
        index_t a, b;
        detail::plane_coords(pairing, m, d, a, b);
        REQUIRE(detail::slot_coord(pairing, m, 0, d) == a);
        REQUIRE(detail::slot_coord(pairing, m, 1, d) == b);
      }
    }
}

TEST_CASE("sincospi matches sin and cos of pi t", "[cudahost]") {
  std::mt19937 rng(7);
  double worst_unit = 0, worst = 0;
  std::vector<float> ts;
  for (int i = -4000; i <= 4000; ++i) ts.push_back(float(i) / 4000.0f);  // |t| <= 1, exact halves included
  std::uniform_real_distribution<float> big(-3000.0f, 3000.0f);
  for (int i = 0; i < 20000; ++i) ts.push_back(big(rng));
  for (float h : {0.5f, 1.5f, -2.5f, 7.0f, -8.0f, 1001.5f}) ts.push_back(h);
  for (float t : ts) {
    float s, c;
    detail::sincospi(t, s, c);
    const double ref_s = std::sin(M_PI * double(t)), ref_c = std::cos(M_PI * double(t));
    const double e = std::max(std::abs(s - ref_s), std::abs(c - ref_c));
    worst = std::max(worst, e);
    if (std::abs(t) <= 1.0f) {
      float su, cu;
      detail::sincospi_unit(t, su, cu);
      worst_unit = std::max({worst_unit, std::abs(su - ref_s), std::abs(cu - ref_c)});
    }
  }
  INFO("worst |error|: unit " << worst_unit << ", general " << worst);
  CHECK(worst_unit < 1e-6);
  // For |t| up to 3000 the float t itself carries an ulp of 2.4e-4 half turns, which the reference
  // evaluates exactly, so the comparison is against the reduced argument's rounding.
  CHECK(worst < 1e-6);
}

TEST_CASE("bound_sincos gives cos, sin and the derivative of the bounded angle", "[cudahost]") {
  for (Bound b : {Bound::none, Bound::pi_tanh})
    for (float p : {-40.0f, -3.0f, -1.1f, -0.2f, 0.0f, 0.3f, 0.9f, 2.5f, 17.0f}) {
      float c, s, dadp;
      detail::bound_sincos<false>(b, p, c, s, dadp);
      const double alpha = detail::bound_value(b, double(p));
      CHECK(std::abs(c - std::cos(alpha)) < 2e-6);
      CHECK(std::abs(s - std::sin(alpha)) < 2e-6);
      CHECK(std::abs(dadp - detail::bound_derivative(b, double(p))) < 2e-6 * std::max(1.0, std::abs(double(dadp))));
      // The host form of the fast variant is the same function.
      float c2, s2, d2;
      detail::bound_sincos<true>(b, p, c2, s2, d2);
      CHECK(c2 == c);
      CHECK(s2 == s);
      CHECK(d2 == dadp);
    }
}

TEST_CASE("a plane rotation from bound_sincos keeps the norm and its transpose undoes it", "[cudahost]") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (int i = 0; i < 200; ++i) {
    float c, s, dadp;
    detail::bound_sincos<false>(i % 2 ? Bound::pi_tanh : Bound::none, 3.0f * nd(rng), c, s, dadp);
    const float a0 = nd(rng), b0 = nd(rng);
    float a = a0, b = b0;
    detail::rotate_pair(c, s, a, b);
    CHECK(std::abs(std::hypot(a, b) - std::hypot(a0, b0)) < 1e-5f * (1 + std::hypot(a0, b0)));
    detail::rotate_pair_transpose(c, s, a, b);
    CHECK(std::abs(a - a0) < 1e-5f * (1 + std::abs(a0)));
    CHECK(std::abs(b - b0) < 1e-5f * (1 + std::abs(b0)));
  }
}
