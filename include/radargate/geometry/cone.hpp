// radargate/geometry/cone.hpp -- cone and hull membership, with a certificate either way
//
//   cone(V) = { V lambda : lambda >= 0 }          conv(V) = { V lambda : lambda >= 0, sum lambda = 1 }
//
// Every answer is derived from a certificate that is re-checked from V and y alone (never from
// the solver's own residual or status); `Membership::certificate` says which one verified.
//
// Inside (both sets): a combination lambda with
//     lambda >= 0,  (hull: |sum lambda - 1| <= tol),   ||V lambda - y|| <= tol * scale,
//   the residual accumulated in long double. scale = ||y|| for the cone (the cone is invariant
//   under y -> c y) and max(||y||, max_j ||v_j||) for the hull (the size of the configuration).
//
// Outside the cone: a unit direction w with
//     v_j . w <= dual_tol ||v_j||  for every j,       y . w > tol ||y||.
//   Proof: move each column by at most dual_tol ||v_j||, v'_j = v_j - max(0, v_j . w) w; then
//   V'^T w <= 0 holds exactly, so every point p of cone(V') has w . p <= 0 < w . y, and
//   dist(y, cone(V')) >= w . y. The answer "outside" is thus exact for a matrix within relative
//   dual_tol of V, column by column; with dual_tol = 0 it is exact for V itself. w is the
//   optimal NNLS residual direction, computed as the projection of y onto the orthogonal
//   complement of the optimal face with the Householder factors of its columns, so that
//   v_j . w is at rounding level for the columns of the face whatever the distance.
//
// Outside the hull: a separating hyperplane (w, b), ||w|| = 1, with
//     b = max_j w . v_j   (so w . v_j <= b for every j, by construction),   w . y - b > tol * scale.
//   Proof: every point of the hull is a convex combination of the v_j, so w . p <= b < w . y;
//   moreover dist(y, conv(V)) >= w . y - b (the margin), so the margin is a proven lower bound
//   and ||V lambda - y|| a proven upper bound on the distance. w is the direction from the nearest
//   point to y, computed as the component of y - v_s0 orthogonal to the affine hull of the
//   support of lambda (Householder factors), so it stays accurate for points very close to the
//   hull; b is rounded up when stored, so w . v_j <= b holds for the stored double.
//
// When neither certificate verifies (a solver stopped by its iteration cap, or a point within
// rounding of the boundary), the verdict is `undetermined`, never a guess. A residual, scale or
// margin that is not finite (finite data whose norms overflow double, e.g. entries near 1.7e308)
// verifies nothing either: inf <= tol * inf is never read as "inside".
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

#include "detail.hpp"
#include "hull.hpp"
#include "nnls.hpp"

namespace radargate {
namespace geometry {

enum class Set { cone, hull };
enum class Verdict { inside, outside, undetermined };
enum class Certificate { none, combination, separating_direction, separating_hyperplane };

inline const char* to_string(Set s) { return s == Set::cone ? "cone" : "hull"; }
inline const char* to_string(Verdict v) {
  return v == Verdict::inside ? "inside" : v == Verdict::outside ? "outside" : "undetermined";
}
inline const char* to_string(Certificate c) {
  switch (c) {
    case Certificate::none:
      return "none";
    case Certificate::combination:
      return "combination";
    case Certificate::separating_direction:
      return "separating_direction";
    case Certificate::separating_hyperplane:
      return "separating_hyperplane";
  }
  return "?";
}

struct MembershipOptions {
  double tol = 1e-9;       // inside: relative residual <= tol; outside: relative margin > tol
  double dual_tol = 1e-9;  // cone outside: max_j (v_j . w) / ||v_j|| <= dual_tol
  NnlsOptions nnls;
  HullOptions hull;
  int threads = 1;  // batched forms: worker threads (0: one per hardware thread)
};

struct Membership {
  Set set = Set::cone;
  Verdict verdict = Verdict::undetermined;
  Certificate certificate = Certificate::none;  // the certificate that verified (none: undetermined)
  std::vector<double> lambda;                   // [N] best combination found: >= 0 (hull: sums to 1)
  double distance = 0;                          // ||V lambda - y||: the distance to the set when the solver converged
  double scale = 0;                             // cone: ||y||; hull: max(||y||, max_j ||v_j||)
  double relative_distance = 0;                 // distance / scale (0 when scale is 0)
  std::vector<double> direction;                // [d] unit w of the separating certificate (empty when inside)
  double offset = 0;                            // hull: b = max_j w . v_j; cone: 0
  double margin = 0;                            // w . y - offset (hull: a proven lower bound on the distance)
  double dual_violation = 0;  // cone: max_j (v_j . w) / ||v_j|| of the direction (<= dual_tol if verified)
  index_t iterations = 0;     // solver iterations
  bool converged = false;     // the solver's own stopping rule held (informative only)

  bool inside() const { return verdict == Verdict::inside; }
  bool outside() const { return verdict == Verdict::outside; }
};

/// What re-checking a certificate found.
struct CertificateCheck {
  bool ok = false;
  double residual = 0;        // combination: relative residual ||V lambda - y|| / scale
  double sum_error = 0;       // combination (hull): |sum lambda - 1|
  double dual_violation = 0;  // cone direction: max_j (v_j . w) / ||v_j||
  double margin = 0;          // separating certificates: (w . y - b) / scale
};

namespace detail {

inline double hull_scale(const Matrix& M, const Vector& y) {
  double s = norm(y);
  for (index_t j = 0; j < M.cols(); ++j) s = std::max(s, norm(M.col(j)));
  return s;
}

/// Re-checks a certificate from V, y and the certificate's data only.
inline CertificateCheck check_dense(Set set, const Matrix& M, const Vector& y, Certificate cert,
                                    const std::vector<double>& lambda, const std::vector<double>& direction,
                                    double offset, const MembershipOptions& opt) {
  CertificateCheck c;
  const index_t d = M.rows(), N = M.cols();
  const double scale = set == Set::cone ? norm(y) : hull_scale(M, y);
  if (cert == Certificate::combination) {
    if (index_t(lambda.size()) != N) return c;
    long double sum = 0;
    for (double l : lambda) {
      if (!(l >= 0) || !std::isfinite(l)) return c;
      sum += l;
    }
    c.sum_error = set == Set::hull ? static_cast<double>(std::fabs(sum - 1)) : 0.0;
    const double res = norm_ld(residual_ld(M, y, lambda));
    c.residual = scale > 0 ? res / scale : res;
    // A residual or scale that overflowed proves nothing: inf <= tol * inf must not read as inside.
    c.ok = std::isfinite(res) && std::isfinite(scale) && (set == Set::cone || c.sum_error <= opt.tol) &&
           (scale > 0 ? res <= opt.tol * scale : res == 0);
    return c;
  }
  if (cert == Certificate::separating_direction || cert == Certificate::separating_hyperplane) {
    if (index_t(direction.size()) != d || !(scale > 0) || !std::isfinite(scale)) return c;
    if ((set == Set::cone) != (cert == Certificate::separating_direction)) return c;
    Vector w(d);
    for (index_t i = 0; i < d; ++i) w(i) = direction[i];
    if (!w.allFinite()) return c;
    const double wn = norm(w);
    if (!(wn > 0)) return c;
    if (set == Set::cone) {
      w /= wn;
      const long double wy = dot_ld(w, y);
      double viol = -std::numeric_limits<double>::infinity();
      for (index_t j = 0; j < N; ++j) {
        const double cn = norm(M.col(j));
        if (cn == 0) continue;
        viol = std::max(viol, static_cast<double>(dot_ld(w, M.col(j)) / static_cast<long double>(cn)));
      }
      c.dual_violation = std::max(viol, 0.0);
      c.margin = static_cast<double>(wy / static_cast<long double>(scale));
      c.ok = std::isfinite(c.margin) && c.dual_violation <= opt.dual_tol && c.margin > opt.tol;
    } else {
      // The hyperplane is judged exactly as stored (w is not renormalised): the stated offset must
      // dominate every w . v_j, and the margin is measured in units of ||w||.
      if (!std::isfinite(offset)) return c;
      const long double wy = dot_ld(w, y);
      long double mx = -std::numeric_limits<long double>::infinity();
      for (index_t j = 0; j < N; ++j) mx = std::max(mx, dot_ld(w, M.col(j)));
      const long double b = static_cast<long double>(offset);
      const long double unit = static_cast<long double>(scale) * static_cast<long double>(wn);
      c.margin = static_cast<double>((wy - b) / unit);
      c.dual_violation = std::max(0.0, static_cast<double>((mx - b) / unit));
      c.ok = std::isfinite(c.margin) && std::isfinite(c.dual_violation) && mx <= b && c.margin > opt.tol;
    }
    return c;
  }
  return c;
}

/// Unit direction of the cone's optimal residual: the component of y orthogonal to the span of
/// the passive (optimal-face) columns, from the Householder factors of those columns.
inline Vector cone_direction(const UnitCone& u, const NnlsCore& core) {
  const index_t d = u.A.rows();
  std::vector<index_t> P;
  for (index_t k = 0; k < index_t(core.passive.size()); ++k)
    if (core.passive[k] && core.x(k) > 0) P.push_back(k);
  Vector r = u.b;
  if (!P.empty()) {
    Matrix AP(d, index_t(P.size()));
    for (size_t k = 0; k < P.size(); ++k) AP.col(index_t(k)) = u.A.col(P[k]);
    Eigen::CompleteOrthogonalDecomposition<Matrix> cod;
    cod.setThreshold(std::max(1e-14, 4 * std::numeric_limits<double>::epsilon() * double(AP.rows() + AP.cols())));
    cod.compute(AP);
    Vector c = cod.householderQ().transpose() * u.b;
    c.head(cod.rank()).setZero();
    r = cod.householderQ() * c;
  }
  const double rn = norm(r);
  if (rn > 0) r /= rn;
  return r;
}

template <class Lambda, class Direction>
void finish(Membership& m, Set set, const Matrix& M, const Vector& y, const MembershipOptions& opt, Lambda&& lam,
            Direction&& make_direction) {
  const index_t d = M.rows(), N = M.cols();
  m.set = set;
  m.lambda = std::forward<Lambda>(lam);
  m.scale = set == Set::cone ? norm(y) : hull_scale(M, y);
  m.distance = norm_ld(residual_ld(M, y, m.lambda));
  m.relative_distance = m.scale > 0 ? m.distance / m.scale : 0.0;
  const CertificateCheck in = check_dense(set, M, y, Certificate::combination, m.lambda, {}, 0.0, opt);
  if (in.ok) {
    m.verdict = Verdict::inside;
    m.certificate = Certificate::combination;
    return;
  }
  // Outside candidate.
  Vector w = make_direction(m.lambda);
  m.direction.assign(w.data(), w.data() + d);
  const Certificate cert = set == Set::cone ? Certificate::separating_direction : Certificate::separating_hyperplane;
  if (set == Set::hull) {
    long double mx = -std::numeric_limits<long double>::infinity();
    for (index_t j = 0; j < N; ++j) mx = std::max(mx, dot_ld(w, M.col(j)));
    // Round the offset up so that w . v_j <= b holds for the stored double b.
    double b = static_cast<double>(mx);
    if (static_cast<long double>(b) < mx) b = std::nextafter(b, std::numeric_limits<double>::infinity());
    m.offset = b;
  }
  const CertificateCheck out = check_dense(set, M, y, cert, m.lambda, m.direction, m.offset, opt);
  m.margin = out.margin * m.scale;
  m.dual_violation = out.dual_violation;
  if (out.ok) {
    m.verdict = Verdict::outside;
    m.certificate = cert;
  } else {
    m.verdict = Verdict::undetermined;
    m.certificate = Certificate::none;
  }
}

inline Membership membership_dense(Set set, const Matrix& M, const Vector& y, const MembershipOptions& opt) {
  Membership m;
  if (set == Set::cone) {
    UnitCone u;
    NnlsCore core;
    NnlsResult r = nnls_dense(M, y, opt.nnls, &u, &core);
    m.iterations = r.iterations;
    m.converged = r.converged;
    finish(m, set, M, y, opt, std::move(r.lambda), [&](const std::vector<double>&) { return cone_direction(u, core); });
  } else {
    HullProjection h = hull_dense(M, y, opt.hull);
    m.iterations = h.iterations;
    m.converged = h.converged;
    finish(m, set, M, y, opt, std::move(h.lambda),
           [&](const std::vector<double>& lam) { return hull_direction(M, y, lam); });
  }
  return m;
}

}  // namespace detail

/// Is y in cone(V) (Set::cone) or conv(V) (Set::hull)? V : [d, N], y : [d], float or double.
template <class T, class U>
Membership membership(Set set, View<const T, 2> V, View<const U, 1> y, const MembershipOptions& opt = {},
                      const char* vname = "V", const char* yname = "y") {
  detail::check_problem(V, y, vname, yname);
  return detail::membership_dense(set, detail::to_matrix(V), detail::to_vector(y), opt);
}

template <class T, class U>
Membership cone_membership(View<const T, 2> V, View<const U, 1> y, const MembershipOptions& opt = {}) {
  return membership(Set::cone, V, y, opt);
}

template <class T, class U>
Membership hull_membership(View<const T, 2> V, View<const U, 1> y, const MembershipOptions& opt = {}) {
  return membership(Set::hull, V, y, opt);
}

/// Euclidean distance from y to cone(V): ||V lambda* - y|| at the NNLS optimum.
template <class T, class U>
double cone_distance(View<const T, 2> V, View<const U, 1> y, const NnlsOptions& opt = {}) {
  return nnls(V, y, opt).residual;
}

/// Euclidean distance from y to conv(V): the exact projection, not a penalised approximation.
template <class T, class U>
double hull_distance(View<const T, 2> V, View<const U, 1> y, const HullOptions& opt = {}) {
  return nearest_in_hull(V, y, opt).distance;
}

/// Re-checks a membership answer from V and y alone: the certificate it names must verify and
/// must support its verdict. Use it on answers that crossed a process or file boundary.
template <class T, class U>
CertificateCheck check_certificate(View<const T, 2> V, View<const U, 1> y, const Membership& m,
                                   const MembershipOptions& opt = {}) {
  detail::check_problem(V, y, "V", "y");
  CertificateCheck c = detail::check_dense(m.set, detail::to_matrix(V), detail::to_vector(y), m.certificate, m.lambda,
                                           m.direction, m.offset, opt);
  const bool consistent = (m.verdict == Verdict::inside && m.certificate == Certificate::combination) ||
                          (m.verdict == Verdict::outside && (m.certificate == Certificate::separating_direction ||
                                                             m.certificate == Certificate::separating_hyperplane));
  c.ok = c.ok && consistent;
  return c;
}

/// Batched membership: problem b is (V[b] : [d, N], Y[b] : [d]). Inputs are validated up front
/// (the message names the batch index); problems run on opt.threads threads and the answers do
/// not depend on the thread count.
template <class T, class U>
std::vector<Membership> membership_batch(Set set, View<const T, 3> V, View<const U, 2> Y,
                                         const MembershipOptions& opt = {}, const char* vname = "V",
                                         const char* yname = "y") {
  const index_t B = V.shape[0];
  if (Y.shape[0] != B || Y.shape[1] != V.shape[1])
    detail::fail("tensor '", yname, "': expected shape [", B, ", ", V.shape[1], "] (from '", vname, "' ",
                 detail::shape_string(V), "), found ", detail::shape_string(Y));
  if (V.shape[1] < 1 || V.shape[2] < 1)
    detail::fail("tensor '", vname, "': expected shape [B, d, N] with d >= 1 and N >= 1, found ",
                 detail::shape_string(V));
  for (index_t b = 0; b < B; ++b) {
    const std::string vn = std::string(vname) + "[" + std::to_string(b) + "]";
    const std::string yn = std::string(yname) + "[" + std::to_string(b) + "]";
    detail::check_problem(V[b], Y[b], vn.c_str(), yn.c_str());
  }
  std::vector<Membership> out(B);
  detail::parallel_for(B, opt.threads, [&](index_t b) {
    out[b] = detail::membership_dense(set, detail::to_matrix(View<const T, 2>(V[b])),
                                      detail::to_vector(View<const U, 1>(Y[b])), opt);
  });
  return out;
}

/// Batched membership of many points Y : [B, d] against one V : [d, N].
template <class T, class U>
std::vector<Membership> membership_batch(Set set, View<const T, 2> V, View<const U, 2> Y,
                                         const MembershipOptions& opt = {}, const char* vname = "V",
                                         const char* yname = "y") {
  const index_t B = Y.shape[0];
  if (Y.shape[1] != V.shape[0])
    detail::fail("tensor '", yname, "': expected shape [B, ", V.shape[0], "] (the rows of '", vname, "'), found ",
                 detail::shape_string(Y));
  for (index_t b = 0; b < B; ++b) {
    const std::string yn = std::string(yname) + "[" + std::to_string(b) + "]";
    detail::check_problem(V, Y[b], vname, yn.c_str());
  }
  const detail::Matrix M = detail::to_matrix(V);
  std::vector<Membership> out(B);
  detail::parallel_for(B, opt.threads, [&](index_t b) {
    out[b] = detail::membership_dense(set, M, detail::to_vector(View<const U, 1>(Y[b])), opt);
  });
  return out;
}

}  // namespace geometry
}  // namespace radargate
