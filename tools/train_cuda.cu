// radargate train --backend cuda: train::CudaLayer<float> behind the tool's CudaTrainLayer
// interface (tools/train_cuda.hpp).
#include <memory>
#include <string>
#include <vector>

#include "radargate/train.cuh"
#include "train_cuda.hpp"

namespace radargate {
namespace cli {
namespace {

class CudaTrainLayerImpl final : public CudaTrainLayer {
 public:
  CudaTrainLayerImpl(Model<float>& model, const std::vector<std::string>& trained) : layer_(model, trained) {}
  const Dims& dims() const override { return layer_.dims(); }
  Context forward(View<const float, 2> x, View<float, 2> y) override {
    const train::CudaLayer<float>::Context c = layer_.forward(x, y);
    Context out;
    out.tokens = c.tokens;
    out.call = c.call;
    return out;
  }
  void backward(const Context& ctx, View<const float, 2> dy, const Gradients<float>& grads, GradMode mode) override {
    train::CudaLayer<float>::Context c;
    c.tokens = ctx.tokens;
    c.call = ctx.call;
    layer_.backward(c, dy, grads, mode);
  }
  void weights_changed() override { layer_.weights_changed(); }
  std::string device_name() const override { return layer_.device_name(); }

 private:
  train::CudaLayer<float> layer_;
};

}  // namespace

std::unique_ptr<CudaTrainLayer> make_cuda_train_layer(Model<float>& model, const std::vector<std::string>& trained) {
  train::cuda_impl::require_device("--backend cuda");
  return std::make_unique<CudaTrainLayerImpl>(model, trained);
}

}  // namespace cli
}  // namespace radargate
