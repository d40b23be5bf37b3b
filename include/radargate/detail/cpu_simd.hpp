// radargate/detail/cpu_simd.hpp -- the xsimd vocabulary of the cpu backend.
//
// batch<S> is the widest SIMD register the compiler was told it may use (-march): 8 floats with
// AVX2, 4 with plain x86-64 SSE2. Every buffer the kernels stream through is allocated 64-byte
// aligned and padded to a multiple of the width, so the kernels have no scalar tails.
//
// The angle of a rotation plane, alpha = bound(pre), and its cosine and sine are evaluated with
// the generic per-element maths of math.hpp (bound_value) and xsimd's vectorised sincos/tanh.
#pragma once

#include <vector>
#include <xsimd/xsimd.hpp>

#include "../config.hpp"
#include "../layer_config.hpp"
#include "math.hpp"

namespace radargate {
namespace detail {
namespace simd {

template <class S>
using batch = xsimd::batch<S>;

template <class S>
constexpr index_t width() {
  return index_t(xsimd::batch<S>::size);
}

/// A std::vector whose storage is 64-byte aligned (whole cache lines, any SIMD width).
template <class S>
using avec = std::vector<S, xsimd::aligned_allocator<S, 64>>;

template <class S>
RG_INLINE batch<S> load(const S* p) {
  return batch<S>::load_aligned(p);
}
template <class S>
RG_INLINE void store(S* p, const batch<S>& v) {
  v.store_aligned(p);
}
template <class S>
RG_INLINE S hsum(const batch<S>& v) {
  return xsimd::hadd(v);
}

inline index_t round_up(index_t n, index_t w) { return (n + w - 1) / w * w; }

/// alpha = bound(pre) with its cosine and sine.
template <class S>
RG_INLINE void angle_cos_sin(Bound bound, const batch<S>& pre, batch<S>& alpha, batch<S>& c, batch<S>& s) {
  alpha = bound_value(bound, pre);
  const auto sc = xsimd::sincos(alpha);
  s = sc.first;
  c = sc.second;
}

}  // namespace simd
}  // namespace detail
}  // namespace radargate
