// radargate/detail/layer_checks.hpp -- the input checks and gradient zeroing every backend's
// host side shares, so no backend includes another to get them.
#pragma once

#include "../error.hpp"
#include "../params.hpp"
#include "../view.hpp"

namespace radargate {

namespace detail {
/// Sets every element of a (possibly strided) view to zero.
template <class T, int R>
void zero_view(const View<T, R>& v) {
  if (!v.present()) return;
  if constexpr (R == 1) {
    for (index_t i = 0; i < v.shape[0]; ++i) v(i) = T(0);
  } else {
    for (index_t i = 0; i < v.shape[0]; ++i) zero_view(v[i]);
  }
}

template <class T>
void check_xy(const Dims& D, const View<const T, 2>& x, const char* xname, index_t xcols, const View<T, 2>* y,
              const char* yname, index_t ycols) {
  if (x.shape[1] != xcols || x.shape[0] < 0)
    fail("tensor '", xname, "': expected shape [T, ", xcols, "], found ", shape_string(x));
  if (x.shape[0] > 0 && !x.present()) fail("tensor '", xname, "': null data for ", x.shape[0], " tokens");
  if (y) {
    const index_t ex[] = {x.shape[0], ycols};
    check_shape(yname, *y, ex);
    if (x.shape[0] > 0 && !y->present()) fail("tensor '", yname, "': null data for ", x.shape[0], " tokens");
  }
  (void)D;
}
}  // namespace detail

}  // namespace radargate
