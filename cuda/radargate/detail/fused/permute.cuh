// radargate/detail/fused/permute.cuh -- dy into slot rows, the layout the backward passes read.
#pragma once

#include "unit.cuh"

namespace radargate {
namespace detail {
namespace gpu {

/// dyp[t][R] = dy[t][coord(R)] (zero past T and for empty slots).
template <class S>
__global__ void permute_dy(const S* dy, index_t ld, index_t T, index_t Tpad, index_t Spad, index_t d, Pairing pairing,
                           S* dyp) {
  const index_t S2 = 2 * Spad;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < Tpad * S2;
       idx += index_t(gridDim.x) * blockDim.x) {
    const index_t R = idx % S2, t = idx / S2;
    index_t plane;
    int side;
    slot_row_plane(R, plane, side);
    const index_t c = slot_coord(pairing, plane, side, d);
    dyp[idx] = (t < T && c >= 0) ? dy[t * ld + c] : from_float<S>(0.f);
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
