// radargate/geometry/nnls.hpp -- non-negative least squares
//
//   lambda* = argmin_{lambda >= 0} || V lambda - y ||_2 ,      V : [d, N],  y : [d]
//
// Lawson–Hanson active set. Optimality (KKT) at lambda with residual r = y - V lambda:
//
//   lambda >= 0,    V^T r <= 0,    lambda_j (v_j . r) = 0   for every column j.
//
// Scale invariance. The cone {V lambda : lambda >= 0} does not change when a column is multiplied
// by a positive number, and the projection of c y is c times the projection of y. So the solver
// works on unit columns vh_j = v_j / ||v_j|| (zero columns dropped: their lambda is 0) and the unit
// target yh = y / ||y||, and maps back with lambda_j = x_j ||y|| / ||v_j||. Entries near 1e-20 or
// 1e20, or columns whose norms differ by 40 orders of magnitude, give the same answer as O(1) data.
//
// Each least-squares subproblem min ||A_P z - yh|| over the passive columns P is solved with a
// complete orthogonal decomposition (column-pivoted QR), which returns the minimum-norm solution
// when A_P is rank deficient (duplicate, collinear or zero columns, N > d), followed by one step
// of iterative refinement with the residual accumulated in long double.
//
// Stopping rule (relative, scale free): with r the residual of the unit problem, computed as the
// projection of yh onto the orthogonal complement of the passive columns' span, and w_j = vh_j . r,
// stop when no column has
//
//   w_j > c_j (kkt_tol ||r|| + 16 eps),        c_j = the norm of vh_j's part outside that span,
//
// that is, when the residual makes an angle with every column's new direction whose cosine is at
// most kkt_tol (plus its rounding level). Weighting by c_j keeps a column 1e-8 away in angle from
// the passive ones visible, where a plain w_j <= tol test would stop with a wrong answer. A
// column whose subproblem says it cannot enter (its coefficient comes out <= 0, which happens
// only through rounding) is skipped until the iterate moves again, so the method cannot cycle on
// it. Every least-squares solve counts as one
// iteration; at max_iter the solver stops with a feasible lambda and says so (converged = false).
#pragma once

#include <algorithm>
#include <vector>

#include "detail.hpp"

namespace radargate {
namespace geometry {

struct NnlsOptions {
  double kkt_tol = 1e-12;  // relative dual tolerance of the stopping rule (see the header comment)
  index_t max_iter = 0;    // least-squares solves allowed; 0 means max(100, 10 (N + d))
};

struct NnlsResult {
  std::vector<double> lambda;    // [N], >= 0
  double residual = 0;           // ||V lambda - y||, accumulated in long double
  double kkt_violation = 0;      // max_j of (v_j . r)_+ and, for lambda_j > 0, |v_j . r|; over ||v_j|| ||y||
  index_t iterations = 0;        // least-squares solves done
  index_t max_iter = 0;          // the cap that applied
  bool converged = false;        // false: the cap was hit before the stopping rule held
  std::vector<index_t> passive;  // columns with lambda_j > 0 (the final passive set)
};

namespace detail {

/// The unit-scaled problem: columns of V with non-zero norm, each divided by its norm, and y/||y||.
struct UnitCone {
  Matrix A;                   // [d, n] unit columns
  Vector b;                   // [d] unit (or zero when y = 0)
  std::vector<index_t> cols;  // original index of each column of A
  std::vector<double> scale;  // lambda_j = x_k * scale[k] = x_k ||y|| / ||v_j||
  double ynorm = 0;
};

/// v / ||v|| computed as (v / max|v|) / ||v / max|v|||, so neither step overflows or underflows.
/// Returns false for a zero vector. `mx` and `nrm` receive max|v| and ||v / max|v|||.
inline bool unit(const Vector& v, Vector& out, double& mx, double& nrm) {
  mx = v.cwiseAbs().maxCoeff();
  if (!(mx > 0)) return false;
  out = v / mx;
  nrm = out.norm();
  out /= nrm;
  return true;
}

inline UnitCone make_unit_cone(const Matrix& V, const Vector& y) {
  UnitCone u;
  const index_t d = V.rows();
  Vector b;
  double ymx = 0, ynrm = 0;
  if (!unit(y, b, ymx, ynrm)) b = Vector::Zero(d);
  u.b = b;
  u.ynorm = ymx * ynrm;
  u.A.resize(d, V.cols());
  index_t n = 0;
  Vector col;
  for (index_t j = 0; j < V.cols(); ++j) {
    double cmx = 0, cnrm = 0;
    if (!unit(V.col(j), col, cmx, cnrm)) continue;
    u.A.col(n++) = col;
    u.cols.push_back(j);
    u.scale.push_back((ymx / cmx) * (ynrm / cnrm));
  }
  u.A.conservativeResize(d, n);
  return u;
}

/// Least squares on the passive columns A_P: the minimum-norm solution z of min ||A_P z - b||
/// (one refinement step, residual in long double) and the residual of the projection,
/// r = (I - Q1 Q1^T) b, formed with the Householder factors (Q1: an orthonormal basis of
/// range(A_P)). r is orthogonal to range(A_P) to rounding level relative to ||r|| itself, which
/// is what lets the dual values of columns close to that range be resolved.
struct PassiveLS {
  Eigen::CompleteOrthogonalDecomposition<Matrix> cod;
  Vector z, r;

  void solve(const Matrix& AP, const Vector& b) {
    cod.setThreshold(std::max(1e-14, 4 * std::numeric_limits<double>::epsilon() * double(AP.rows() + AP.cols())));
    cod.compute(AP);
    z = cod.solve(b);
    LVector res(AP.rows());
    for (index_t i = 0; i < AP.rows(); ++i) res(i) = b(i);
    for (index_t k = 0; k < AP.cols(); ++k)
      for (index_t i = 0; i < AP.rows(); ++i) res(i) -= static_cast<long double>(AP(i, k)) * z(k);
    z += cod.solve(Vector(res.cast<double>()));
    Vector c = cod.householderQ().transpose() * b;
    c.head(cod.rank()).setZero();
    r = cod.householderQ() * c;
  }
  /// ||(I - Q1 Q1^T) a||: the part of a outside range(A_P).
  double outside_norm(const Vector& a) const {
    const Vector c = cod.householderQ().transpose() * a;
    return c.tail(c.size() - cod.rank()).norm();
  }
};

struct NnlsCore {
  Vector x;
  std::vector<char> passive;
  index_t iterations = 0;
  bool converged = false;
};

/// The state of Lawson–Hanson (nnls_core): the iterate x with its passive set, its residual r,
/// and the columns that rounding kept from entering since the iterate last moved.
struct LawsonHanson {
  const Matrix& A;
  const Vector& b;
  index_t d, n;
  double eps = std::numeric_limits<double>::epsilon();
  NnlsCore out;
  Vector& x = out.x;
  std::vector<char>& passive = out.passive;
  std::vector<char> banned;
  Vector r;              // residual of the current iterate (the projection residual when optimal)
  PassiveLS ls, opt_ls;  // opt_ls: factors of the passive set at which x is the least-squares optimum
  bool have_factors = false;
  bool at_optimum = true;  // x = 0 is optimal for the empty passive set
  std::vector<index_t> P;
  index_t it = 0;

  LawsonHanson(const Matrix& A_, const Vector& b_) : A(A_), b(b_), d(A_.rows()), n(A_.cols()), banned(n, 0), r(b_) {
    out.x = Vector::Zero(n);
    out.passive.assign(n, 0);
  }

  /// The column to enter the passive set: the largest dual value above its threshold (-1: none).
  index_t entering(double kkt_tol) const {
    const double rn = r.norm();
    index_t t = -1;
    double best = 0;
    for (index_t j = 0; j < n; ++j) {
      if (passive[j] || banned[j]) continue;
      const double wj = static_cast<double>(dot_ld(A.col(j), r));
      if (!(wj > 0)) continue;
      const double cj = have_factors ? opt_ls.outside_norm(A.col(j)) : 1.0;
      if (wj > cj * (kkt_tol * rn + 16 * eps) && wj > best) {
        best = wj;
        t = j;
      }
    }
    return t;
  }

  /// Least squares on the passive columns (into ls; P lists them).
  void solve_passive() {
    P.clear();
    for (index_t j = 0; j < n; ++j)
      if (passive[j]) P.push_back(j);
    Matrix AP(d, index_t(P.size()));
    for (size_t k = 0; k < P.size(); ++k) AP.col(index_t(k)) = A.col(P[k]);
    ls.solve(AP, b);
  }

  /// Moves from x towards z until the first passive coefficient reaches zero; the columns at zero
  /// leave the passive set.
  void step_towards(const Vector& z) {
    double alpha = std::numeric_limits<double>::infinity();
    index_t jmin = -1;
    for (size_t k = 0; k < P.size(); ++k) {
      const double zk = z(index_t(k)), xk = x(P[k]);
      if (!(zk > 0)) {
        const double a = xk / (xk - zk);
        if (a < alpha) {
          alpha = a;
          jmin = P[k];
        }
      }
    }
    for (size_t k = 0; k < P.size(); ++k) x(P[k]) += alpha * (z(index_t(k)) - x(P[k]));
    x(jmin) = 0;
    for (index_t j : P)
      if (!(x(j) > 0)) {
        x(j) = 0;
        passive[j] = 0;
      }
  }

  /// r = b - A x, accumulated in long double.
  void plain_residual() {
    LVector rr(d);
    for (index_t i = 0; i < d; ++i) rr(i) = b(i);
    for (index_t j = 0; j < n; ++j)
      if (x(j) != 0)
        for (index_t i = 0; i < d; ++i) rr(i) -= static_cast<long double>(A(i, j)) * x(j);
    r = rr.cast<double>();
  }

  /// Column t enters the passive set; the inner loop then steps until the least-squares solution
  /// on the passive set is positive (or the iterations run out).
  void inner_loop(index_t t, index_t max_iter) {
    passive[t] = 1;
    bool first = true, moved = false;
    for (;;) {
      ++it;
      solve_passive();
      const Vector& z = ls.z;
      bool all_positive = true;
      for (size_t k = 0; k < P.size(); ++k)
        if (!(z(index_t(k)) > 0)) all_positive = false;
      if (all_positive) {
        for (size_t k = 0; k < P.size(); ++k) x(P[k]) = z(index_t(k));
        std::swap(opt_ls, ls);
        have_factors = true;
        r = opt_ls.r;
        at_optimum = true;
        moved = true;
        break;
      }
      if (first) {
        const auto kt = index_t(std::find(P.begin(), P.end(), t) - P.begin());
        if (!(z(kt) > 0)) {  // rounding says t cannot enter: skip it until the iterate moves
          passive[t] = 0;
          banned[t] = 1;
          break;
        }
      }
      first = false;
      step_towards(z);
      moved = true;
      if (it >= max_iter) {  // stopped between optima: x is feasible, r its plain residual
        at_optimum = false;
        plain_residual();
        break;
      }
    }
    if (moved) std::fill(banned.begin(), banned.end(), 0);
  }
};

/// Lawson–Hanson on unit columns A and target b.
///
/// Dual values w_j = a_j . r use the projection residual r of the current passive set, and a
/// column j may enter only when
///     w_j > c_j (kkt_tol ||r|| + 16 eps),      c_j = ||(I - Q1 Q1^T) a_j|| <= 1,
/// i.e. when the cosine between the residual and the part of a_j that is new to the passive span
/// exceeds kkt_tol plus its rounding level eps / ||r||. Scaling by c_j keeps columns nearly
/// parallel to the passive ones (c_j ~ 1e-8) visible: their w_j is small, but so is its error.
inline NnlsCore nnls_core(const Matrix& A, const Vector& b, double kkt_tol, index_t max_iter) {
  LawsonHanson lh(A, b);
  if (lh.n == 0 || b.squaredNorm() == 0) {
    lh.out.converged = true;
    return lh.out;
  }
  for (;;) {
    if (!lh.at_optimum) break;  // the iteration cap stopped a step half way
    const index_t t = lh.entering(kkt_tol);
    if (t < 0) {
      lh.out.converged = true;
      break;
    }
    if (lh.it >= max_iter) break;
    lh.inner_loop(t, max_iter);
  }
  lh.out.iterations = lh.it;
  return lh.out;
}

/// NNLS on dense double data; also hands back the unit problem and the solver state, which the
/// membership test uses to build its certificate.
inline NnlsResult nnls_dense(const Matrix& M, const Vector& yv, const NnlsOptions& opt, UnitCone* unit_out = nullptr,
                             NnlsCore* core_out = nullptr) {
  const index_t d = M.rows(), N = M.cols();
  NnlsResult res;
  res.max_iter = opt.max_iter > 0 ? opt.max_iter : std::max<index_t>(100, 10 * (N + d));
  res.lambda.assign(N, 0.0);
  UnitCone u = make_unit_cone(M, yv);
  NnlsCore core = nnls_core(u.A, u.b, opt.kkt_tol, res.max_iter);
  for (index_t k = 0; k < index_t(u.cols.size()); ++k)
    if (core.passive[k] && core.x(k) > 0) {
      res.lambda[u.cols[k]] = core.x(k) * u.scale[k];
      res.passive.push_back(u.cols[k]);
    }
  std::sort(res.passive.begin(), res.passive.end());
  res.iterations = core.iterations;
  res.converged = core.converged;
  const LVector r = residual_ld(M, yv, res.lambda);
  res.residual = norm_ld(r);
  // KKT violation of the unit problem: r / ||y|| against unit columns.
  if (u.ynorm > 0) {
    double viol = 0;
    LVector rh = r;
    for (index_t i = 0; i < d; ++i) rh(i) /= static_cast<long double>(u.ynorm);
    for (index_t k = 0; k < index_t(u.cols.size()); ++k) {
      const double wk = static_cast<double>(dot_ld(u.A.col(k), rh));
      viol = std::max(viol, res.lambda[u.cols[k]] > 0 ? std::fabs(wk) : wk);
    }
    res.kkt_violation = viol;
  }
  if (unit_out) *unit_out = std::move(u);
  if (core_out) *core_out = std::move(core);
  return res;
}

}  // namespace detail

/// Solves min ||V lambda - y|| subject to lambda >= 0. V : [d, N] and y : [d] are views of float or
/// double (any strides); the solve runs in double. Throws radargate::error on empty, mismatched
/// or non-finite input, naming `vname` / `yname`.
template <class T, class U>
NnlsResult nnls(View<const T, 2> V, View<const U, 1> y, const NnlsOptions& opt = {}, const char* vname = "V",
                const char* yname = "y") {
  detail::check_problem(V, y, vname, yname);
  return detail::nnls_dense(detail::to_matrix(V), detail::to_vector(y), opt);
}

/// Dense row-major convenience overload: V holds d*N values (row i, column j at V[i*N + j]).
inline NnlsResult nnls(const double* V, const double* y, index_t d, index_t N, const NnlsOptions& opt = {}) {
  return nnls(View<const double, 2>(make_view(V, d, N)), View<const double, 1>(make_view(y, d)), opt);
}

}  // namespace geometry
}  // namespace radargate
