// radargate/view.hpp -- non-owning views over caller memory: a pointer, a shape and strides.
//
//   element(i0, ..., i_{R-1}) = data[i0 * stride[0] + ... + i_{R-1} * stride[R-1]]
//
// Strides are counted in elements, so any row-major, column-major or padded layout can be
// described without a copy. A view whose data pointer is null is "absent"; optional parameters
// are passed that way.
#pragma once

#include <type_traits>

#include "config.hpp"

namespace radargate {

template <class T, int Rank>
struct View {
  static_assert(Rank >= 1 && Rank <= 4, "radargate::View supports ranks 1 to 4");
  using value_type = std::remove_const_t<T>;
  static constexpr int rank = Rank;

  T* data = nullptr;
  index_t shape[Rank] = {};
  index_t stride[Rank] = {};

  RG_HOST_DEVICE bool present() const { return data != nullptr; }
  RG_HOST_DEVICE index_t extent(int dim) const { return shape[dim]; }
  RG_HOST_DEVICE index_t size() const {
    index_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= shape[i];
    return n;
  }
  /// True when the elements are stored densely in row-major order.
  RG_HOST_DEVICE bool contiguous() const {
    index_t expect = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      if (shape[i] != 1 && stride[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }

  template <class... I>
  RG_HOST_DEVICE T& operator()(I... idx) const {
    static_assert(sizeof...(I) == Rank, "radargate::View: wrong number of indices");
    const index_t ii[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (int k = 0; k < Rank; ++k) off += ii[k] * stride[k];
    return data[off];
  }

  /// Pointer to the first element of the sub-view obtained by fixing the leading index.
  RG_HOST_DEVICE T* ptr(index_t i0) const { return data + i0 * stride[0]; }

  /// The view with the leading index fixed (rank drops by one).
  template <int R = Rank, class = std::enable_if_t<(R > 1)>>
  RG_HOST_DEVICE View<T, Rank - 1> operator[](index_t i0) const {
    View<T, Rank - 1> v;
    v.data = data ? data + i0 * stride[0] : nullptr;
    for (int k = 1; k < Rank; ++k) {
      v.shape[k - 1] = shape[k];
      v.stride[k - 1] = stride[k];
    }
    return v;
  }

  /// Views convert implicitly to views of const elements.
  template <class U = T, class = std::enable_if_t<!std::is_const<U>::value>>
  RG_HOST_DEVICE operator View<const U, Rank>() const {
    View<const U, Rank> v;
    v.data = data;
    for (int k = 0; k < Rank; ++k) {
      v.shape[k] = shape[k];
      v.stride[k] = stride[k];
    }
    return v;
  }
};

template <class T>
using View1 = View<T, 1>;
template <class T>
using View2 = View<T, 2>;
template <class T>
using View3 = View<T, 3>;

/// A dense row-major view of `data` with the given extents.
template <class T, class... E>
RG_HOST_DEVICE View<T, int(sizeof...(E))> make_view(T* data, E... extents) {
  constexpr int R = int(sizeof...(E));
  View<T, R> v;
  v.data = data;
  const index_t ext[] = {static_cast<index_t>(extents)...};
  index_t s = 1;
  for (int k = R - 1; k >= 0; --k) {
    v.shape[k] = ext[k];
    v.stride[k] = s;
    s *= ext[k];
  }
  return v;
}

}  // namespace radargate
