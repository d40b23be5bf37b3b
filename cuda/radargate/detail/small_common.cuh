// radargate/detail/small_common.cuh -- what every small-kernel family shares: the block size and
// the grid-stride loop.
#pragma once

#include <radargate/detail/math.hpp>
#include <radargate/layer_config.hpp>
#include <radargate/view.hpp>

#include "fused.cuh"
#include "support.cuh"

namespace radargate {
namespace detail {
namespace gpu {

constexpr int kThreads = 256;

#define RG_GRID_STRIDE(idx, n) \
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < (n); idx += index_t(gridDim.x) * blockDim.x)

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
