// The vectorised angle maths of the cpu backend (alpha = bound(pre), cos alpha, sin alpha,
// dalpha/dpre) agrees with the per-element maths of detail/math.hpp evaluated with std::, over
// small, moderate, large and saturating pre-activations, in float and double, for both bounds.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "radargate/detail/cpu_simd.hpp"

using namespace radargate;

TEMPLATE_TEST_CASE("vectorised angle maths matches std:: to a few ulp (absolute)", "[cpu]", float, double) {
  using S = TestType;
  using B = detail::simd::batch<S>;
  constexpr index_t W = detail::simd::width<S>();
  const double eps = std::numeric_limits<S>::epsilon();
  std::mt19937_64 rng(3);
  std::vector<S> inputs = {S(0),    S(-0.0), S(1e-30), S(-1e-7), S(0.25), S(0.625), S(-0.624), S(1),
                           S(-3.5), S(7.9),  S(8.1),   S(-19.9), S(25),   S(-60),   S(1e6)};
  for (int i = 0; i < 20000; ++i) {
    const double scale = i % 3 == 0 ? 0.01 : (i % 3 == 1 ? 1.0 : 12.0);
    inputs.push_back(S(std::uniform_real_distribution<double>(-scale, scale)(rng)));
  }
  while (inputs.size() % std::size_t(W)) inputs.push_back(S(0.5));
  for (Bound bound : {Bound::pi_tanh, Bound::none}) {
    double ec = 0, es = 0, ed = 0;
    for (std::size_t i = 0; i < inputs.size(); i += std::size_t(W)) {
      if (bound == Bound::none && std::abs(double(inputs[i])) > 1e4) continue;  // range reduction of huge angles
      alignas(64) S in[W], c[W], s[W], d[W];
      for (index_t l = 0; l < W; ++l) in[l] = inputs[i + std::size_t(l)];
      B bc, bs, bd;
      detail::simd::angle_cos_sin(bound, B::load_aligned(in), bc, bs, bd);
      bc.store_aligned(c);
      bs.store_aligned(s);
      bd.store_aligned(d);
      for (index_t l = 0; l < W; ++l) {
        const double alpha = double(detail::bound_value(bound, double(in[l])));
        ec = std::max(ec, std::abs(double(c[l]) - std::cos(alpha)));
        es = std::max(es, std::abs(double(s[l]) - std::sin(alpha)));
        ed = std::max(ed, std::abs(double(d[l]) - double(detail::bound_derivative(bound, double(in[l])))));
      }
    }
    INFO("bound " << to_string(bound) << ": cos error " << ec << ", sin error " << es << ", dalpha error " << ed);
    CHECK(ec <= 16 * eps);
    CHECK(es <= 16 * eps);
    CHECK(ed <= 32 * eps);
  }
}
