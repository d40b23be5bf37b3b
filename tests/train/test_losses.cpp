// The losses and their gradients against central differences in float64, and against values
// worked out by hand.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "radargate/train.hpp"

using namespace radargate;

namespace {
std::vector<double> randn(std::size_t n, std::uint64_t seed, double sd = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<double> v(n);
  for (double& e : v) e = nd(rng);
  return v;
}
}  // namespace

TEST_CASE("mse: value and gradient against central differences", "[train][loss]") {
  const index_t T = 5, d = 7;
  std::vector<double> y = randn(T * d, 1), t = randn(T * d, 2), dy(T * d);
  const double L =
      train::mse_loss<double>(make_view(static_cast<const double*>(y.data()), T, d),
                              make_view(static_cast<const double*>(t.data()), T, d), make_view(dy.data(), T, d));
  double ref = 0;
  for (std::size_t i = 0; i < y.size(); ++i) ref += (y[i] - t[i]) * (y[i] - t[i]);
  CHECK(L == Approx(ref / double(T * d)).epsilon(1e-14));
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double keep = y[i], h = 1e-6;
    auto f = [&] {
      return train::mse_loss<double>(make_view(static_cast<const double*>(y.data()), T, d),
                                     make_view(static_cast<const double*>(t.data()), T, d), View<double, 2>());
    };
    y[i] = keep + h;
    const double fp = f();
    y[i] = keep - h;
    const double fm = f();
    y[i] = keep;
    CHECK(std::abs((fp - fm) / (2 * h) - dy[i]) <= 1e-8 * std::max(1.0, std::abs(dy[i])));
  }
}

TEST_CASE("cross_entropy: value, accuracy and gradient against central differences", "[train][loss]") {
  const index_t T = 6, d = 5;
  std::vector<double> y = randn(T * d, 3, 2.0), dy(T * d);
  std::vector<std::int64_t> labels = {0, 4, 2, 2, 1, 3};
  std::int64_t correct = 0;
  const double L = train::cross_entropy_loss<double>(make_view(static_cast<const double*>(y.data()), T, d),
                                                     labels.data(), make_view(dy.data(), T, d), &correct);
  double ref = 0;
  std::int64_t right = 0;
  for (index_t t = 0; t < T; ++t) {
    double z = 0;
    index_t arg = 0;
    for (index_t j = 0; j < d; ++j) {
      z += std::exp(y[t * d + j]);
      if (y[t * d + j] > y[t * d + arg]) arg = j;
    }
    ref += std::log(z) - y[t * d + labels[t]];
    right += arg == labels[t];
  }
  CHECK(L == Approx(ref / double(T)).epsilon(1e-13));
  CHECK(correct == right);
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double keep = y[i], h = 1e-6;
    auto f = [&] {
      return train::cross_entropy_loss<double>(make_view(static_cast<const double*>(y.data()), T, d), labels.data(),
                                               View<double, 2>());
    };
    y[i] = keep + h;
    const double fp = f();
    y[i] = keep - h;
    const double fm = f();
    y[i] = keep;
    CHECK(std::abs((fp - fm) / (2 * h) - dy[i]) <= 1e-8);
  }
  // Each row of the gradient sums to zero (softmax minus one-hot).
  for (index_t t = 0; t < T; ++t) {
    double s = 0;
    for (index_t j = 0; j < d; ++j) s += dy[t * d + j];
    CHECK(std::abs(s) < 1e-15);
  }
}

TEST_CASE("cross_entropy: stable for large logits, labels out of range are an error", "[train][loss]") {
  std::vector<double> y = {1000.0, 0.0, -1000.0};
  std::int64_t label = 1;
  std::vector<double> dy(3);
  const double L = train::cross_entropy_loss<double>(make_view(static_cast<const double*>(y.data()), 1, 3), &label,
                                                     make_view(dy.data(), 1, 3));
  CHECK(L == Approx(1000.0));
  CHECK(dy[0] == Approx(1.0));
  CHECK(dy[1] == Approx(-1.0));
  label = 3;
  CHECK_THROWS_WITH(train::cross_entropy_loss<double>(make_view(static_cast<const double*>(y.data()), 1, 3), &label,
                                                      View<double, 2>()),
                    "cross_entropy: label 3 of token 0 is outside 0..2");
}

TEST_CASE("schedule: warm-up, constant and cosine", "[train][schedule]") {
  train::Schedule s{train::ScheduleKind::cosine, 0.1, 4, 14};
  CHECK(s.at(0) == Approx(0.025));
  CHECK(s.at(3) == Approx(0.1));
  CHECK(s.at(4) == Approx(0.1));
  CHECK(s.at(9) == Approx(0.05));
  CHECK(s.at(13) == Approx(0.1 * 0.5 * (1 + std::cos(3.14159265358979323846 * 0.9))));
  train::Schedule c{train::ScheduleKind::constant, 0.1, 2, 10};
  CHECK(c.at(0) == Approx(0.05));
  CHECK(c.at(1) == Approx(0.1));
  CHECK(c.at(9) == Approx(0.1));
  CHECK_THROWS_WITH((train::Schedule{train::ScheduleKind::constant, -1.0, 0, 1}.validate()),
                    "schedule: expected a finite learning rate >= 0, found -1");
  CHECK(train::parse_schedule("cosine") == train::ScheduleKind::cosine);
  CHECK_THROWS_WITH(train::parse_schedule("linear"), "schedule: expected constant | cosine, found 'linear'");
}
