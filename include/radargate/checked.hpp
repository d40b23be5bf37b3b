// radargate/checked.hpp -- overflow-checked size arithmetic, in one place.
//
// Every product of extents the library forms from a shape that came from outside (a file, an
// option) goes through these functions, so a shape such as [2^62, 4, 0] or [0, 2^62, 4] never
// reaches signed-overflow undefined behaviour, and both are judged by the same rule:
//
//   a shape is representable when every extent is >= 0 and the product of its NON-ZERO extents
//   fits in index_t.
//
// The rule looks past zero extents on purpose: the strides of a row-major view are products of the
// trailing extents, so [0, 2^62, 4] would need a stride of 2^64 although it holds no element.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "config.hpp"
#include "error.hpp"

namespace radargate {
namespace checked {

/// a * b for a, b >= 0; false (and out untouched) when the product does not fit in index_t.
inline bool mul(index_t a, index_t b, index_t& out) {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > std::numeric_limits<index_t>::max() / a) return false;
  out = a * b;
  return true;
}

/// a + b for a, b >= 0; false when the sum does not fit in index_t.
inline bool add(index_t a, index_t b, index_t& out) {
  if (a < 0 || b < 0 || a > std::numeric_limits<index_t>::max() - b) return false;
  out = a + b;
  return true;
}

/// The same for unsigned 64-bit byte counts.
inline bool mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}
inline bool add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a > std::numeric_limits<std::uint64_t>::max() - b) return false;
  out = a + b;
  return true;
}

/// Element count of a shape under the rule above; false when the shape is not representable.
inline bool numel(const index_t* shape, std::size_t rank, index_t& out) {
  index_t nonzero = 1;
  bool empty = false;
  for (std::size_t i = 0; i < rank; ++i) {
    if (shape[i] < 0) return false;
    if (shape[i] == 0) {
      empty = true;
      continue;
    }
    if (!mul(nonzero, shape[i], nonzero)) return false;
  }
  out = empty ? 0 : nonzero;
  return true;
}
inline bool numel(const std::vector<index_t>& shape, index_t& out) { return numel(shape.data(), shape.size(), out); }

/// "[2, 3]"
inline std::string shape_text(const index_t* shape, std::size_t rank) {
  std::string r = "[";
  for (std::size_t i = 0; i < rank; ++i) r += (i ? ", " : "") + std::to_string(shape[i]);
  return r + "]";
}

/// Element count of a shape; throws radargate::error naming `what` when it is not representable.
inline index_t numel_or_throw(const std::vector<index_t>& shape, const char* what = "tensor") {
  index_t n = 0;
  if (!numel(shape, n)) {
    for (index_t e : shape)
      if (e < 0)
        detail::fail(what, ": expected non-negative extents, found shape ", shape_text(shape.data(), shape.size()));
    detail::fail(what, ": shape ", shape_text(shape.data(), shape.size()),
                 " is too large: the product of its non-zero extents exceeds ", std::numeric_limits<index_t>::max());
  }
  return n;
}

/// Sum of element counts plus products, for memory estimates: adds a * b to acc; false on overflow.
inline bool add_product(std::uint64_t& acc, std::uint64_t a, std::uint64_t b) {
  std::uint64_t p = 0;
  return mul(a, b, p) && add(acc, p, acc);
}

}  // namespace checked
}  // namespace radargate
