// radargate bench --backend cuda: the request cmd_bench.cpp passes to the CUDA timing code
// (tools/bench_cuda.cu, compiled by nvcc as part of tools/cuda.cu when RADARGATE_ENABLE_CUDA is on,
// which also defines RADARGATE_WITH_CUDA for the tool's C++ sources).
#pragma once

#include <cstdint>
#include <string>

#include "radargate/layer_config.hpp"
#include "radargate/params.hpp"

namespace radargate {
namespace cli {

struct CudaBenchRequest {
  LayerConfig cfg;
  Dims D;
  index_t T = 0;
  bool backward = false, base = false, json = false;
  int repeat = 5, warmup = 1;
  std::uint64_t seed = 1;
  std::string dtype = "bf16";  // bf16 | f16 | f32
};

/// Times forward (or forward + backward of every gradient) of the CUDA backend on a random model;
/// prints like the other backends of radargate bench. Returns the exit code.
int bench_cuda(const CudaBenchRequest& request);

}  // namespace cli
}  // namespace radargate
