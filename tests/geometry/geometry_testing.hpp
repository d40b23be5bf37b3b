// Shared helpers for the geometry tests: random problem families and brute-force oracles.
//
// The oracles enumerate every subset S of the columns (N <= 8): the projection onto the cone is
// the best least-squares fit over the subsets whose fit has lambda_S >= 0; the projection onto
// the hull the best affine fit with weights >= 0. They use a different factorisation (SVD) than
// the library (complete orthogonal decomposition), so they share no code with what they check.
#pragma once

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <radargate/geometry.hpp>

namespace geotest {

using radargate::index_t;
using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

enum Family {
  generic,
  duplicate,
  zero_column,
  collinear,
  nearly_collinear,
  wide,
  rank_deficient,
  tiny,
  huge,
  mixed_columns,
  n_families
};
inline const char* family_name(int f) {
  static const char* names[] = {
      "generic",      "duplicate",      "zero_column", "collinear",  "nearly collinear",
      "wide (N > d)", "rank_deficient", "scale 1e-20", "scale 1e20", "column scales 1e-20..1e20"};
  return names[f];
}

/// y kinds: inside the cone, on a face of the cone, inside the hull, random (usually outside).
enum YKind { cone_inside, cone_face, hull_inside, random_point, n_ykinds };

struct Problem {
  index_t d = 0, N = 0;
  std::vector<double> V;  // row-major [d, N]
  std::vector<double> y;  // [d]
  double& at(index_t i, index_t j) { return V[i * N + j]; }
  radargate::View<const double, 2> Vv() const { return radargate::make_view(V.data(), d, N); }
  radargate::View<const double, 1> yv() const { return radargate::make_view(y.data(), d); }
  Mat M() const {
    Mat m(d, N);
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < N; ++j) m(i, j) = V[i * N + j];
    return m;
  }
  Vec Y() const { return Eigen::Map<const Vec>(y.data(), d); }
};

inline Problem make_problem(std::mt19937_64& rng, int family, int ykind, index_t max_n = 7) {
  std::normal_distribution<double> nd;
  Problem p;
  p.d = 1 + index_t(rng() % 6);
  p.N = 1 + index_t(rng() % max_n);
  if (family == wide) {
    p.d = 1 + index_t(rng() % 3);
    p.N = std::min<index_t>(max_n, p.d + 1 + index_t(rng() % 5));
  }
  p.V.resize(p.d * p.N);
  p.y.assign(p.d, 0.0);
  for (double& v : p.V) v = nd(rng);
  const index_t a = index_t(rng() % p.N), b = index_t(rng() % p.N);
  if (family == duplicate)
    for (index_t i = 0; i < p.d; ++i) p.at(i, b) = p.at(i, a);
  if (family == zero_column)
    for (index_t i = 0; i < p.d; ++i) p.at(i, a) = 0;
  if (family == collinear) {
    const double c = nd(rng) * 3;  // either sign
    for (index_t i = 0; i < p.d; ++i) p.at(i, b) = c * p.at(i, a);
  }
  if (family == nearly_collinear) {  // 1e-7 .. 1e-10 apart in angle
    const double eps = std::pow(10.0, -7.0 - double(rng() % 4));
    double n2 = 0;
    for (index_t i = 0; i < p.d; ++i) n2 += p.at(i, a) * p.at(i, a);
    for (index_t i = 0; i < p.d; ++i) p.at(i, b) = p.at(i, a) + eps * std::sqrt(n2) * nd(rng);
  }
  if (family == rank_deficient) {
    const index_t k = 1 + index_t(rng() % std::min(p.d, p.N));
    Mat L = Mat::NullaryExpr(p.d, k, [&] { return nd(rng); });
    Mat R = Mat::NullaryExpr(k, p.N, [&] { return nd(rng); });
    Mat LR = L * R;
    for (index_t i = 0; i < p.d; ++i)
      for (index_t j = 0; j < p.N; ++j) p.at(i, j) = LR(i, j);
  }
  std::vector<double> lam(p.N, 0.0);
  double lsum = 0;
  for (index_t j = 0; j < p.N; ++j) {
    lam[j] = std::abs(nd(rng));
    if (ykind == cone_face && rng() % 2) lam[j] = 0;
    lsum += lam[j];
  }
  if (ykind == hull_inside && lsum > 0)
    for (double& l : lam) l /= lsum;
  if (ykind == random_point) {
    for (double& v : p.y) v = nd(rng);
  } else {
    for (index_t i = 0; i < p.d; ++i)
      for (index_t j = 0; j < p.N; ++j) p.y[i] += lam[j] * p.at(i, j);
  }
  double scale = 1;
  if (family == tiny) scale = 1e-20;
  if (family == huge) scale = 1e20;
  for (double& v : p.V) v *= scale;
  for (double& v : p.y) v *= scale;
  if (family == mixed_columns)
    for (index_t j = 0; j < p.N; ++j) {
      const double s = std::pow(10.0, double(int(rng() % 41) - 20));
      for (index_t i = 0; i < p.d; ++i) p.at(i, j) *= s;
    }
  return p;
}

/// Distance from y to cone(M) by enumeration (N <= 10).
inline double brute_cone_distance(const Mat& M0, const Vec& y0) {
  // The cone does not change when columns are rescaled: compare on unit columns and a unit y.
  const double yn = y0.norm();
  if (yn == 0) return 0;
  const Vec y = y0 / yn;
  Mat M(M0.rows(), 0);
  for (index_t j = 0; j < M0.cols(); ++j)
    if (M0.col(j).norm() > 0) {
      M.conservativeResize(Eigen::NoChange, M.cols() + 1);
      M.col(M.cols() - 1) = M0.col(j) / M0.col(j).norm();
    }
  const index_t N = M.cols();
  double best = 1.0;
  for (unsigned mask = 1; mask < (1u << N); ++mask) {
    std::vector<index_t> S;
    for (index_t j = 0; j < N; ++j)
      if (mask & (1u << j)) S.push_back(j);
    Mat A(M.rows(), index_t(S.size()));
    for (size_t k = 0; k < S.size(); ++k) A.col(index_t(k)) = M.col(S[k]);
    Eigen::JacobiSVD<Mat> svd(A, Eigen::ComputeThinU | Eigen::ComputeThinV);
    svd.setThreshold(1e-13);
    const Vec z = svd.solve(y);
    if ((z.array() < 0).any()) continue;
    best = std::min(best, (A * z - y).norm());
  }
  return best * yn;
}

/// Distance from y to conv(M) by enumeration (N <= 10).
inline double brute_hull_distance(const Mat& M, const Vec& y) {
  const index_t N = M.cols();
  double best = std::numeric_limits<double>::infinity();
  for (unsigned mask = 1; mask < (1u << N); ++mask) {
    std::vector<index_t> S;
    for (index_t j = 0; j < N; ++j)
      if (mask & (1u << j)) S.push_back(j);
    const Vec p0 = M.col(S[0]);
    Vec mu(S.size());
    if (S.size() == 1) {
      mu(0) = 1;
    } else {
      Mat D(M.rows(), index_t(S.size()) - 1);
      for (size_t k = 1; k < S.size(); ++k) D.col(index_t(k) - 1) = M.col(S[k]) - p0;
      Eigen::JacobiSVD<Mat> svd(D, Eigen::ComputeThinU | Eigen::ComputeThinV);
      svd.setThreshold(1e-13);
      const Vec t = svd.solve(y - p0);
      mu(0) = 1 - t.sum();
      mu.tail(index_t(S.size()) - 1) = t;
    }
    if ((mu.array() < 0).any()) continue;
    Vec q = Vec::Zero(M.rows());
    for (size_t k = 0; k < S.size(); ++k) q += mu(index_t(k)) * M.col(S[k]);
    best = std::min(best, (q - y).norm());
  }
  return best;
}

}  // namespace geotest
