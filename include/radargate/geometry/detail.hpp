// radargate/geometry/detail.hpp -- internals shared by the geometry headers (not for users).
//
// Inputs arrive as views of float or double with any strides; every geometric computation runs
// in double on dense Eigen copies, and every quantity a certificate is judged by (residuals, dot
// products) is accumulated in long double, so the check is at least as accurate as the solve.
#pragma once

#include <Eigen/Dense>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../params.hpp"
#include "../view.hpp"

namespace radargate {
namespace geometry {
namespace detail {

using radargate::detail::fail;
using radargate::detail::shape_string;

using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;  // column major
using Vector = Eigen::Matrix<double, Eigen::Dynamic, 1>;
using LVector = Eigen::Matrix<long double, Eigen::Dynamic, 1>;

template <class T>
void require_floating() {
  static_assert(std::is_floating_point<std::remove_const_t<T>>::value,
                "radargate::geometry: views must hold float or double");
}

/// Throws unless V : [d, N] and y : [d] have matching, non-empty extents and finite values.
template <class T, class U>
void check_problem(const View<const T, 2>& V, const View<const U, 1>& y, const char* vname, const char* yname) {
  require_floating<T>();
  require_floating<U>();
  const index_t d = V.shape[0], N = V.shape[1];
  if (d < 1 || N < 1)
    fail("tensor '", vname, "': expected a non-empty matrix [d, N] with d >= 1 and N >= 1, found ", shape_string(V));
  if (y.shape[0] != d)
    fail("tensor '", yname, "': expected shape [", d, "] (the rows of '", vname, "'), found ", shape_string(y));
  if (!V.present()) fail("tensor '", vname, "': null data");
  if (!y.present()) fail("tensor '", yname, "': null data");
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j < N; ++j)
      if (!std::isfinite(static_cast<double>(V(i, j))))
        fail("tensor '", vname, "': expected finite values, found ", static_cast<double>(V(i, j)), " at [", i, ", ", j,
             "]");
  for (index_t i = 0; i < d; ++i)
    if (!std::isfinite(static_cast<double>(y(i))))
      fail("tensor '", yname, "': expected finite values, found ", static_cast<double>(y(i)), " at [", i, "]");
}

template <class T>
Matrix to_matrix(const View<const T, 2>& V) {
  Matrix M(V.shape[0], V.shape[1]);
  for (index_t j = 0; j < V.shape[1]; ++j)
    for (index_t i = 0; i < V.shape[0]; ++i) M(i, j) = static_cast<double>(V(i, j));
  return M;
}

template <class T>
Vector to_vector(const View<const T, 1>& y) {
  Vector v(y.shape[0]);
  for (index_t i = 0; i < y.shape[0]; ++i) v(i) = static_cast<double>(y(i));
  return v;
}

/// Euclidean norm without overflow or underflow for entries anywhere in double's range.
template <class Derived>
double norm(const Eigen::MatrixBase<Derived>& v) {
  return static_cast<double>(v.stableNorm());
}

/// a . b accumulated in long double.
template <class A, class B>
long double dot_ld(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  long double s = 0;
  for (index_t i = 0; i < a.size(); ++i) s += static_cast<long double>(a(i)) * static_cast<long double>(b(i));
  return s;
}

/// r = y - V lam, accumulated in long double (the residual every inside-certificate is judged by).
inline LVector residual_ld(const Matrix& V, const Vector& y, const std::vector<double>& lam) {
  LVector r(V.rows());
  for (index_t i = 0; i < V.rows(); ++i) r(i) = static_cast<long double>(y(i));
  for (index_t j = 0; j < V.cols(); ++j) {
    const long double l = lam[j];
    if (l == 0) continue;
    for (index_t i = 0; i < V.rows(); ++i) r(i) -= l * static_cast<long double>(V(i, j));
  }
  return r;
}

/// ||r|| of a long double vector, scaled so that it neither overflows nor underflows.
inline double norm_ld(const LVector& r) {
  long double mx = 0;
  for (index_t i = 0; i < r.size(); ++i) mx = std::max(mx, std::fabs(r(i)));
  if (mx == 0) return 0.0;
  long double s = 0;
  for (index_t i = 0; i < r.size(); ++i) {
    const long double t = r(i) / mx;
    s += t * t;
  }
  return static_cast<double>(mx * std::sqrt(s));
}

/// Runs f(i) for i in [0, n) on `threads` threads (0: the hardware's count), each taking a
/// contiguous block. Every i is independent, so the results do not depend on the thread count.
template <class F>
void parallel_for(index_t n, int threads, F&& f) {
  int t = threads > 0 ? threads : int(std::thread::hardware_concurrency());
  if (t < 1) t = 1;
  if (index_t(t) > n) t = int(n);
  if (t <= 1) {
    for (index_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(t);
  for (int k = 0; k < t; ++k) {
    const index_t lo = n * k / t, hi = n * (k + 1) / t;
    pool.emplace_back([&, lo, hi, k] {
      try {
        for (index_t i = lo; i < hi; ++i) f(i);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace detail
}  // namespace geometry
}  // namespace radargate
