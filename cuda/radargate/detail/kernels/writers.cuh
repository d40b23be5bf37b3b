// radargate/detail/kernels/writers.cuh -- the CUDA backend's small kernels: the gradient writers (strided destinations,
// overwrite or accumulate). The rank-space formulas they implement are in ../small.cuh.
#pragma once

#include "../small_common.cuh"

namespace radargate {
namespace detail {
namespace gpu {

// --- writers --------------------------------------------------------------------------------------

/// dst (any strides) = src (dense row-major, dst's shape) [+ dst when accumulating]. src may be
/// offset by a row stride `src_ld` for rank 2 (the rows of a wider matrix).
template <class S, int R>
__global__ void write_grad(View<S, R> dst, const float* src, index_t src_ld, bool accumulate) {
  index_t n = 1;
  for (int k = 0; k < R; ++k) n *= dst.shape[k];
  RG_GRID_STRIDE(idx, n) {
    index_t rem = idx, off = 0;
    index_t last = 0, row = 0;
    for (int k = R - 1; k >= 0; --k) {
      const index_t c = rem % dst.shape[k];
      rem /= dst.shape[k];
      off += c * dst.stride[k];
      if (k == R - 1) last = c;
    }
    row = idx / dst.shape[R - 1];
    const float v = src[src_ld > 0 ? row * src_ld + last : idx];
    S* p = dst.data + off;
    *p = from_float<S>(accumulate ? to_float(*p) + v : v);
  }
}

/// dst (any strides) = 0.
template <class S, int R>
__global__ void zero_grad(View<S, R> dst) {
  index_t n = 1;
  for (int k = 0; k < R; ++k) n *= dst.shape[k];
  RG_GRID_STRIDE(idx, n) {
    index_t rem = idx, off = 0;
    for (int k = R - 1; k >= 0; --k) {
      off += (rem % dst.shape[k]) * dst.stride[k];
      rem /= dst.shape[k];
    }
    dst.data[off] = from_float<S>(0.f);
  }
}

/// Float copy of a 1-D view (scale, bg).
template <class S>
__global__ void vec_to_float(View<const S, 1> v, float* out) {
  RG_GRID_STRIDE(i, v.shape[0]) out[i] = to_float(v(i));
}

#undef RG_GRID_STRIDE

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
