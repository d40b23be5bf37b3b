// radargate/detail/cpu_matrix.hpp -- Eigen matrices over radargate views, without copies where
// the layout allows.
//
// A 2-D view whose last dimension has unit stride is a row-major matrix with an outer stride
// (Eigen::Map<..., OuterStride<>>); a 3-D view [n, m, c] whose first two dimensions are evenly
// spaced is the stacked matrix [n*m, c] (lora.A as [N*r, d_in]). Any other layout is copied into
// dense storage once (parameters: per weight update; inputs and outputs: per call).
#pragma once

#include "cpu_arch.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "../view.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

template <class S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using CMap = Eigen::Map<const RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using MMap = Eigen::Map<RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// A read-only row-major matrix: pointer, extents and leading dimension (row stride).
template <class S>
struct MatRef {
  const S* p = nullptr;
  index_t rows = 0, cols = 0, ld = 0;
  bool present() const { return p != nullptr; }
  CMap<S> map() const { return CMap<S>(p, rows, cols, Eigen::OuterStride<>(ld)); }
  CMap<S> rows_of(index_t r0, index_t n) const { return CMap<S>(p + r0 * ld, n, cols, Eigen::OuterStride<>(ld)); }
  const S* row(index_t r) const { return p + r * ld; }
};

/// A writable row-major matrix.
template <class S>
struct MatMut {
  S* p = nullptr;
  index_t rows = 0, cols = 0, ld = 0;
  MMap<S> map() const { return MMap<S>(p, rows, cols, Eigen::OuterStride<>(ld)); }
  MMap<S> rows_of(index_t r0, index_t n) const { return MMap<S>(p + r0 * ld, n, cols, Eigen::OuterStride<>(ld)); }
  S* row(index_t r) const { return p + r * ld; }
};

/// True when rows x cols elements at (i * rs + j * cs) form a row-major matrix Eigen can map.
inline bool mappable(index_t rows, index_t cols, index_t rs, index_t cs) {
  return (cols <= 1 || cs == 1) && (rows <= 1 || rs >= cols);
}

/// Values matrix_of copies a 2-D view into (0: it maps the view in place).
template <class S>
index_t copy_size(const View<S, 2>& v) {
  if (!v.present() || mappable(v.shape[0], v.shape[1], v.stride[0], v.stride[1])) return 0;
  return v.shape[0] * v.shape[1];
}

/// The matrix of a 2-D view, mapped in place when possible, else copied into `store`
/// (copy_size(v) values).
template <class S>
MatRef<S> matrix_of(const View<const S, 2>& v, S* store) {
  MatRef<S> m;
  m.rows = v.shape[0];
  m.cols = v.shape[1];
  if (!v.present()) return m;
  if (mappable(m.rows, m.cols, v.stride[0], v.stride[1])) {
    m.p = v.data;
    m.ld = m.rows <= 1 ? std::max<index_t>(m.cols, 1) : v.stride[0];
    return m;
  }
  for (index_t i = 0; i < m.rows; ++i)
    for (index_t j = 0; j < m.cols; ++j) store[std::size_t(i * m.cols + j)] = v(i, j);
  m.p = store;
  m.ld = std::max<index_t>(m.cols, 1);
  return m;
}

/// The matrix of a 2-D view, mapped in place when possible, else copied into `store`.
template <class S>
MatRef<S> matrix_of(const View<const S, 2>& v, std::vector<S>& store) {
  store.resize(std::size_t(copy_size(v)));
  return matrix_of(v, store.data());
}

/// The stacked matrix [n*m, c] of a 3-D view [n, m, c], mapped in place when possible.
template <class S>
MatRef<S> stacked_matrix_of(const View<const S, 3>& v, std::vector<S>& store) {
  MatRef<S> m;
  const index_t n = v.shape[0], k = v.shape[1], c = v.shape[2];
  m.rows = n * k;
  m.cols = c;
  if (!v.present()) return m;
  const bool even = n <= 1 || k == 0 || v.stride[0] == k * v.stride[1];
  if (even && mappable(m.rows, c, v.stride[1], v.stride[2])) {
    m.p = v.data;
    m.ld = m.rows <= 1 ? std::max<index_t>(c, 1) : v.stride[1];
    return m;
  }
  store.resize(std::size_t(m.rows * c));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < k; ++j)
      for (index_t a = 0; a < c; ++a) store[std::size_t((i * k + j) * c + a)] = v(i, j, a);
  m.p = store.data();
  m.ld = std::max<index_t>(c, 1);
  return m;
}

/// A writable matrix over an output view (rank 2, or rank 3 [n, m, c] as [n*m, c]): the view
/// itself when Eigen can map it, else zeroed dense scratch that finish() adds or copies into it.
template <class S, int R>
class OutMatrix {
  static_assert(R == 2 || R == 3, "OutMatrix: rank 2 or 3");

 public:
  explicit OutMatrix(const View<S, R>& v) : OutMatrix(v, nullptr) {}
  /// With `store` (scratch_size(v) values) for the scratch instead of memory of its own.
  OutMatrix(const View<S, R>& v, S* store) : v_(v) {
    m_.cols = v.shape[R - 1];
    m_.rows = R == 2 ? v.shape[0] : v.shape[0] * v.shape[1];
    if (direct(v)) {
      m_.p = v.data;
      m_.ld = m_.rows <= 1 ? std::max<index_t>(m_.cols, 1) : v.stride[R - 2];
      direct_ = true;
    } else {
      const std::size_t n = std::size_t(m_.rows * m_.cols);
      if (!store) {
        own_.resize(n);
        store = own_.data();
      }
      store_ = store;
      std::fill(store_, store_ + n, S(0));
      m_.p = store_;
      m_.ld = std::max<index_t>(m_.cols, 1);
    }
  }
  /// Values of scratch an OutMatrix over v needs (0: it writes into v directly).
  static index_t scratch_size(const View<S, R>& v) {
    if (direct(v)) return 0;
    return v.shape[R - 1] * (R == 2 ? v.shape[0] : v.shape[0] * v.shape[1]);
  }
  const MatMut<S>& mat() const { return m_; }
  /// Adds (add) or copies the scratch into the view. Nothing to do when the view was mapped.
  void finish(bool add) {
    if (direct_ || !v_.present()) return;
    for (index_t i = 0; i < m_.rows; ++i)
      for (index_t j = 0; j < m_.cols; ++j) {
        const S val = store_[std::size_t(i * m_.cols + j)];
        S* dst;
        if constexpr (R == 2)
          dst = &v_(i, j);
        else
          dst = &v_(i / v_.shape[1], i % v_.shape[1], j);
        *dst = add ? *dst + val : val;
      }
  }

 private:
  static bool direct(const View<S, R>& v) {
    const index_t cols = v.shape[R - 1], rows = R == 2 ? v.shape[0] : v.shape[0] * v.shape[1];
    bool ok = v.present() && mappable(rows, cols, v.stride[R - 2], v.stride[R - 1]);
    if (R == 3) ok = ok && (v.shape[0] <= 1 || v.shape[1] == 0 || v.stride[0] == v.shape[1] * v.stride[1]);
    return ok;
  }

  View<S, R> v_;
  MatMut<S> m_;
  S* store_ = nullptr;
  std::vector<S> own_;
  bool direct_ = false;
};

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
