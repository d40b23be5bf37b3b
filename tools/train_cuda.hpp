// radargate train --backend cuda: the layer cmd_train.cpp's trainer steps, train::CudaLayer<float>
// (cuda/radargate/train.cuh) behind virtual calls, so that the tool's C++ sources need no CUDA
// headers. tools/train_cuda.cu, compiled by nvcc as part of tools/cuda.cu when
// RADARGATE_ENABLE_CUDA is on (which also defines RADARGATE_WITH_CUDA for the tool's C++ sources),
// makes it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "radargate/model.hpp"
#include "radargate/params.hpp"
#include "radargate/view.hpp"

namespace radargate {
namespace cli {

/// The host-memory interface train::Trainer steps (forward, backward, weights_changed), over the
/// CUDA backend in float32.
class CudaTrainLayer {
 public:
  struct Context {
    index_t tokens = 0;
    std::uint64_t call = 0;
  };
  virtual ~CudaTrainLayer() = default;
  virtual const Dims& dims() const = 0;
  virtual Context forward(View<const float, 2> x, View<float, 2> y) = 0;
  virtual void backward(const Context& ctx, View<const float, 2> dy, const Gradients<float>& grads, GradMode mode) = 0;
  /// Uploads the trained tensors from the model after the optimizer changed them.
  virtual void weights_changed() = 0;
  /// The device's name, for the tool's first line.
  virtual std::string device_name() const = 0;
};

/// A device copy of `model` (which must outlive the layer); `trained` names the tensors the
/// optimizer changes. Throws radargate::error when there is no CUDA device.
std::unique_ptr<CudaTrainLayer> make_cuda_train_layer(Model<float>& model, const std::vector<std::string>& trained);

}  // namespace cli
}  // namespace radargate
