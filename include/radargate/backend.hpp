// radargate/backend.hpp -- backends are tag types resolved at compile time.
//
//   Layer<float, backend::reference>  the plainest correct code; materialises every v_i; the oracle
//   Layer<float, backend::cpu>        fused and vectorised (Eigen + xsimd), multithreaded
//   Layer<float, backend::cuda>       CUDA kernels over device memory (cuda/radargate/cuda.cuh)
//
// All share one interface: construct from (LayerConfig, Params), forward(x, y) -> Context,
// backward(ctx, dy, Gradients, GradMode). Choosing a backend at run time, if at all, happens once
// at the entry point (see tools/main.cpp and tools/cmd_run.cpp), never inside a loop.
#pragma once

namespace radargate {
namespace backend {
struct reference {
  static constexpr const char* name = "reference";
};
struct cpu : reference {
  static constexpr const char* name = "cpu";
};
struct cuda {
  static constexpr const char* name = "cuda";
};
}  // namespace backend

template <class Scalar, class Backend = backend::reference>
class Layer;

}  // namespace radargate
