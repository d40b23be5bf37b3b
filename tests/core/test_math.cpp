// The per-element maths of detail/math.hpp on its own, each derivative against central
// differences. The CUDA kernels call these same functions, so this is the GPU maths, on the CPU.
#include <catch2/catch.hpp>

#include "support/testing.hpp"

using namespace radargate;

TEST_CASE("normalisations: values and vector-Jacobian products", "[math]") {
  const Normalize modes[] = {Normalize::softmax, Normalize::sigmoid, Normalize::topk_softmax, Normalize::identity};
  for (Normalize nz : modes)
    for (double tau : {1.0, 0.37, 2.5}) {
      INFO(to_string(nz) << " tau=" << tau);
      const index_t n = 5, K = 3;
      auto l0 = rgtest::random_vector<double>(n, 7, 2.0);
      auto w = rgtest::random_vector<double>(n, 8);  // L = w . g
      std::vector<double> g = l0;
      unsigned char sel[5];
      detail::normalize_forward(nz, K, tau, g.data(), n, sel);
      if (nz == Normalize::softmax || nz == Normalize::topk_softmax) {
        double s = 0;
        for (double e : g) s += e;
        CHECK(s == Approx(1.0).epsilon(1e-15));
      }
      std::vector<double> dl = w;
      detail::normalize_backward(nz, tau, g.data(), dl.data(), n);
      for (index_t j = 0; j < n; ++j) {
        auto L = [&](double delta) {
          std::vector<double> l = l0;
          l[j] += delta;
          unsigned char s2[5];
          detail::normalize_forward(nz, K, tau, l.data(), n, s2);
          double acc = 0;
          for (index_t q = 0; q < n; ++q) acc += w[q] * l[q];
          return acc;
        };
        const double h = 1e-6;
        CHECK(dl[j] == Approx((L(h) - L(-h)) / (2 * h)).margin(1e-8));
      }
    }
}

TEST_CASE("softmax and sigmoid stay finite for extreme logits", "[math]") {
  double l[3] = {1e4, -1e4, 0.0};
  unsigned char sel[3];
  detail::normalize_forward(Normalize::softmax, 0, 1.0, l, 3, sel);
  CHECK(l[0] == 1.0);
  CHECK(l[1] == 0.0);
  CHECK(detail::sigmoid(-1e4) == 0.0);
  CHECK(detail::sigmoid(1e4) == 1.0);
  float lf[2] = {-200.f, 200.f};
  unsigned char self[2];
  detail::normalize_forward(Normalize::sigmoid, 0, 1.0f, lf, 2, self);
  CHECK(std::isfinite(lf[0]));
  CHECK(lf[1] == 1.0f);
}

TEST_CASE("relational map weights and their gradient", "[math]") {
  for (MapMode mode : {MapMode::learned, MapMode::mean})
    for (index_t N : {1, 2, 5}) {
      INFO(to_string(mode) << " N=" << N);
      auto M = rgtest::random_vector<double>(size_t(N * N), 3, 1.5);
      for (index_t i = 0; i < N; ++i) {
        std::vector<double> m(N);
        detail::map_weights(mode, &M[i * N], 1, i, N, m.data());
        double s = 0;
        for (index_t j = 0; j < N; ++j) s += m[j];
        CHECK(m[i] == 0.0);
        CHECK(s == Approx(N == 1 ? 0.0 : 1.0).margin(1e-15));
        if (mode != MapMode::learned || N == 1) continue;
        auto w = rgtest::random_vector<double>(size_t(N), 4 + i);
        std::vector<double> dM = w;
        detail::map_weights_backward(m.data(), dM.data(), i, N);
        CHECK(dM[i] == 0.0);
        for (index_t j = 0; j < N; ++j) {
          auto L = [&](double delta) {
            std::vector<double> row(M.begin() + i * N, M.begin() + (i + 1) * N), mm(N);
            row[j] += delta;
            detail::map_weights(mode, row.data(), 1, i, N, mm.data());
            double acc = 0;
            for (index_t q = 0; q < N; ++q) acc += w[q] * mm[q];
            return acc;
          };
          CHECK(dM[j] == Approx((L(1e-6) - L(-1e-6)) / 2e-6).margin(1e-8));
        }
      }
    }
}

TEST_CASE("rotation angle gradient and plane coordinates", "[math]") {
  // L = du . R(alpha) v ; dL/dalpha from the rotated pair.
  const double va = 0.7, vb = -1.3, dua = 0.4, dub = 2.1;
  for (double alpha : {-2.0, 0.0, 0.5, 3.0}) {
    auto L = [&](double a) {
      double x = va, y = vb;
      detail::rotate_pair(std::cos(a), std::sin(a), x, y);
      return dua * x + dub * y;
    };
    double x = va, y = vb;
    detail::rotate_pair(std::cos(alpha), std::sin(alpha), x, y);
    CHECK(detail::rotation_angle_grad(dua, dub, x, y) ==
          Approx((L(alpha + 1e-6) - L(alpha - 1e-6)) / 2e-6).margin(1e-8));
  }
  index_t a, b;
  detail::plane_coords(Pairing::adjacent, 3, 9, a, b);
  CHECK((a == 6 && b == 7));
  detail::plane_coords(Pairing::half, 3, 9, a, b);
  CHECK((a == 3 && b == 7));
}
