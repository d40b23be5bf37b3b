// radargate/geometry/hull.hpp -- the point of a convex hull nearest to a given point
//
//   lambda* = argmin { || V lambda - y ||_2  :  lambda >= 0,  sum_j lambda_j = 1 },   V : [d, N]
//
// is the exact Euclidean projection of y onto conv(v_1, ..., v_N) (no penalty, no lifting).
// Translating by y turns it into the minimum-norm point of conv(p_j), p_j = (v_j - y) / s, with
// s = max_j ||v_j - y|| so that every p_j has norm <= 1 whatever the scale of the data. It is
// found with Wolfe's algorithm (P. Wolfe, "Finding the nearest point in a polytope", Math.
// Programming 11, 1976), an active-set method on "corrals" (affinely independent subsets):
//
//   major cycle: with x the current point, j = argmin_i x . p_i. Since every q in the hull has
//     x . q >= min_i x . p_i, the number  lower = min_i x . p_i / ||x||  bounds the distance from
//     below, and ||x|| bounds it from above. Stop when ||x|| - max(lower, 0) <= gap_tol.
//     Otherwise add p_j to the corral S.
//   minor cycle: the point of the affine hull of S nearest to 0, sum_{k in S} mu_k p_k with
//     sum mu = 1, solved as min_t || p_s0 + D t ||, D = [p_sk - p_s0], by a complete orthogonal
//     decomposition (stable for near-dependent points) plus one refinement step; the point is
//     formed as the projection (I - Q1 Q1^T) p_s0 so its direction stays accurate. If every
//     mu_k > 0 it becomes the new x; otherwise move from the current weights towards mu until the
//     first weight hits zero, drop it, and repeat.
//
// Duplicate, collinear or coincident points, N > d + 1 and huge or tiny scales are all handled:
// the corral never holds an affinely dependent set in exact arithmetic, and a point that rounding
// makes look like an improvement that is not one is skipped until the iterate moves again.
// Every affine solve counts as one iteration; max_iter is reported, never silent.
#pragma once

#include <algorithm>
#include <vector>

#include "detail.hpp"

namespace radargate {
namespace geometry {

struct HullOptions {
  double gap_tol = 1e-13;  // stop when (upper - lower bound on the distance) <= gap_tol * s
  index_t max_iter = 0;    // affine solves allowed; 0 means max(100, 10 (N + d))
};

struct HullProjection {
  std::vector<double> lambda;  // [N], >= 0, sums to 1
  double distance = 0;         // ||V lambda - y||, accumulated in long double
  double lower_bound = 0;      // a proven lower bound on the distance (from the last major cycle)
  index_t iterations = 0;
  index_t max_iter = 0;
  bool converged = false;
  std::vector<index_t> support;  // columns with lambda_j > 0
};

namespace detail {

struct WolfeCore {
  std::vector<index_t> S;   // corral (indices into the columns)
  std::vector<double> wts;  // its weights, > 0, sum 1
  double lower = 0;         // lower bound on the scaled distance
  index_t iterations = 0;
  bool converged = false;
};

/// Affine minimiser of the points P.col(S[k]): weights mu with sum mu = 1, and the point itself,
///   x = p_s0 + D t = (I - Q1 Q1^T) p_s0,   D = [p_sk - p_s0],  Q1 an orthonormal basis of range(D).
/// x is formed as that projection (Householder factors of D), not as sum mu_k p_k: then x is
/// orthogonal to the affine hull to rounding level relative to ||x|| itself, so its direction
/// (the separating hyperplane's normal) stays accurate however close to the hull the point lies.
inline Vector affine_minimizer(const Matrix& P, const std::vector<index_t>& S, Vector& x) {
  const index_t k = index_t(S.size());
  Vector mu(k);
  x = P.col(S[0]);
  if (k == 1) {
    mu(0) = 1;
    return mu;
  }
  const index_t d = P.rows();
  Matrix D(d, k - 1);
  for (index_t c = 1; c < k; ++c) D.col(c - 1) = P.col(S[c]) - P.col(S[0]);
  Eigen::CompleteOrthogonalDecomposition<Matrix> cod;
  cod.setThreshold(std::max(1e-14, 4 * std::numeric_limits<double>::epsilon() * double(d + k)));
  cod.compute(D);
  const Vector rhs = -P.col(S[0]);
  Vector t = cod.solve(rhs);
  LVector r(d);
  for (index_t i = 0; i < d; ++i) r(i) = rhs(i);
  for (index_t c = 0; c < k - 1; ++c)
    for (index_t i = 0; i < d; ++i) r(i) -= static_cast<long double>(D(i, c)) * t(c);
  t += cod.solve(Vector(r.cast<double>()));
  mu(0) = 1 - t.sum();
  mu.tail(k - 1) = t;
  Vector c = cod.householderQ().transpose() * x;
  c.head(cod.rank()).setZero();
  x = cod.householderQ() * c;
  return mu;
}

/// The state of Wolfe's method: the corral S with its weights, the iterate x, and the columns that
/// rounding kept from entering since the iterate last moved.
struct WolfeState {
  const Matrix& P;
  index_t d, n;
  WolfeCore out;
  std::vector<char> in_S, banned;
  Vector x, xa;
  index_t it = 0;

  /// Starts from the column of least norm.
  explicit WolfeState(const Matrix& points)
      : P(points), d(points.rows()), n(points.cols()), in_S(points.cols(), 0), banned(points.cols(), 0) {
    index_t j0 = 0;
    for (index_t j = 1; j < n; ++j)
      if (P.col(j).squaredNorm() < P.col(j0).squaredNorm()) j0 = j;
    out.S = {j0};
    out.wts = {1.0};
    in_S[j0] = 1;
    x = P.col(j0);
  }

  /// x = sum_k wts_k P.col(S[k]), accumulated in long double.
  void recompute_x() {
    LVector acc = LVector::Zero(d);
    for (size_t k = 0; k < out.S.size(); ++k)
      for (index_t i = 0; i < d; ++i) acc(i) += static_cast<long double>(out.wts[k]) * P(i, out.S[k]);
    x = acc.cast<double>();
  }

  /// The column to enter the corral (-1 when none may), with the lower bound on the distance
  /// that the scan of every column proves (xn = ||x||).
  index_t entering(double xn, double gap_tol, double& lower) const {
    index_t j = -1;
    if (xn > 0) {
      double best = std::numeric_limits<double>::infinity();
      double best_all = best;
      for (index_t i = 0; i < n; ++i) {
        const double v = static_cast<double>(dot_ld(x, P.col(i)));
        best_all = std::min(best_all, v);
        if (!banned[i] && !in_S[i] && v < best) {
          best = v;
          j = i;
        }
      }
      lower = std::max(0.0, best_all / xn);
      // Only a point that improves on the corral by more than the tolerance may enter.
      if (j >= 0 && !(xn - best / xn > gap_tol)) j = -1;
    }
    return j;
  }

  /// Moves the weights from wts towards the affine weights mu until one reaches zero, and drops
  /// the columns whose weight did.
  void step_to_boundary(const Vector& mu) {
    double theta = std::numeric_limits<double>::infinity();
    index_t kmin = -1;
    for (index_t k = 0; k < mu.size(); ++k)
      if (!(mu(k) > 0)) {
        const double a = out.wts[k] / (out.wts[k] - mu(k));
        if (a < theta) {
          theta = a;
          kmin = k;
        }
      }
    for (index_t k = 0; k < mu.size(); ++k) out.wts[k] = theta * mu(k) + (1 - theta) * out.wts[k];
    out.wts[kmin] = 0;
    std::vector<index_t> S2;
    std::vector<double> w2;
    double s = 0;
    for (size_t k = 0; k < out.S.size(); ++k) {
      if (out.wts[k] > 0) {
        S2.push_back(out.S[k]);
        w2.push_back(out.wts[k]);
        s += out.wts[k];
      } else {
        in_S[out.S[k]] = 0;
      }
    }
    for (double& v : w2) v /= s;
    out.S = std::move(S2);
    out.wts = std::move(w2);
  }

  /// Column j enters the corral; the minor cycles then shrink the corral until its affine
  /// minimiser lies in its relative interior (or the iterations run out).
  void minor_cycles(index_t j, index_t max_iter) {
    out.S.push_back(j);
    out.wts.push_back(0.0);
    in_S[j] = 1;
    bool first = true, moved = false, at_minimizer = false;
    for (;;) {
      ++it;
      const Vector mu = affine_minimizer(P, out.S, xa);
      bool all_positive = true;
      for (index_t k = 0; k < mu.size(); ++k)
        if (!(mu(k) > 0)) all_positive = false;
      if (all_positive) {
        const double s = mu.sum();
        for (index_t k = 0; k < mu.size(); ++k) out.wts[k] = mu(k) / s;
        x = xa;  // the affine minimiser lies in the relative interior: it is the new iterate
        moved = true;
        at_minimizer = true;
        break;
      }
      if (first && !(mu(mu.size() - 1) > 0)) {  // rounding says j cannot enter: skip it for now
        in_S[j] = 0;
        banned[j] = 1;
        out.S.pop_back();
        out.wts.pop_back();
        break;
      }
      first = false;
      step_to_boundary(mu);
      moved = true;
      if (it >= max_iter) break;
    }
    if (moved) std::fill(banned.begin(), banned.end(), 0);
    if (moved && !at_minimizer) recompute_x();
  }
};

inline WolfeCore wolfe(const Matrix& P, double gap_tol, index_t max_iter) {
  WolfeState w(P);
  for (;;) {
    const double xn = w.x.norm();
    double lower = 0;
    const index_t j = w.entering(xn, gap_tol, lower);
    w.out.lower = lower;
    if (xn - lower <= gap_tol || j < 0) {
      // j < 0 with the gap still open happens only when rounding blocked every candidate.
      w.out.converged = xn - lower <= gap_tol || std::find(w.banned.begin(), w.banned.end(), 1) == w.banned.end();
      break;
    }
    if (w.it >= max_iter) break;
    w.minor_cycles(j, max_iter);
  }
  w.out.iterations = w.it;
  return w.out;
}

/// Unit direction from the hull towards y, from the support of lambda: the component of
/// (y - v_s0) orthogonal to aff{v_k : lambda_k > 0}, by the same projection as affine_minimizer.
/// Zero when y lies in that affine hull.
inline Vector hull_direction(const Matrix& M, const Vector& y, const std::vector<double>& lambda) {
  const index_t d = M.rows();
  std::vector<index_t> S;
  for (index_t j = 0; j < M.cols(); ++j)
    if (lambda[j] > 0) S.push_back(j);
  if (S.empty()) S.push_back(0);
  Matrix P(d, index_t(S.size()));
  for (size_t k = 0; k < S.size(); ++k)
    for (index_t i = 0; i < d; ++i) P(i, index_t(k)) = 0.5 * M(i, S[k]) - 0.5 * y(i);
  const double mx = P.cwiseAbs().maxCoeff();
  Vector x = Vector::Zero(d);
  if (!(mx > 0)) return x;
  P /= mx;
  std::vector<index_t> all(S.size());
  for (size_t k = 0; k < S.size(); ++k) all[k] = index_t(k);
  affine_minimizer(P, all, x);
  const double xn = x.norm();
  if (xn > 0) x /= -xn;
  return x;
}

/// The hull problem on dense double data.
inline HullProjection hull_dense(const Matrix& M, const Vector& yv, const HullOptions& opt) {
  const index_t d = M.rows(), N = M.cols();
  HullProjection res;
  res.max_iter = opt.max_iter > 0 ? opt.max_iter : std::max<index_t>(100, 10 * (N + d));
  res.lambda.assign(N, 0.0);
  // p_j = (v_j - y) / s, with s = max_j ||v_j - y|| computed without overflow.
  Matrix P(d, N);
  double mx = 0;
  for (index_t j = 0; j < N; ++j)
    for (index_t i = 0; i < d; ++i) {
      // (v - y) can overflow when both are near the limits of double; halve first.
      P(i, j) = 0.5 * M(i, j) - 0.5 * yv(i);
      mx = std::max(mx, std::fabs(P(i, j)));
    }
  if (!(mx > 0)) {  // every v_j equals y
    res.lambda[0] = 1;
    res.converged = true;
    res.support = {0};
    return res;
  }
  P /= mx;
  double s = 0;
  for (index_t j = 0; j < N; ++j) s = std::max(s, P.col(j).norm());
  P /= s;
  const WolfeCore core = wolfe(P, opt.gap_tol, res.max_iter);
  for (size_t k = 0; k < core.S.size(); ++k) res.lambda[core.S[k]] = core.wts[k];
  for (index_t j = 0; j < N; ++j)
    if (res.lambda[j] > 0) res.support.push_back(j);
  res.iterations = core.iterations;
  res.converged = core.converged;
  res.distance = norm_ld(residual_ld(M, yv, res.lambda));
  res.lower_bound = core.lower * s * mx * 2;
  return res;
}

}  // namespace detail

/// The point of conv(columns of V) nearest to y (exact Euclidean projection).
template <class T, class U>
HullProjection nearest_in_hull(View<const T, 2> V, View<const U, 1> y, const HullOptions& opt = {},
                               const char* vname = "V", const char* yname = "y") {
  detail::check_problem(V, y, vname, yname);
  return detail::hull_dense(detail::to_matrix(V), detail::to_vector(y), opt);
}

}  // namespace geometry
}  // namespace radargate
