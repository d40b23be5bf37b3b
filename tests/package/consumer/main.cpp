#include <radargate.hpp>

#include <cstdio>
#include <vector>

int main() {
  using namespace radargate;
  const LayerConfig cfg = LayerConfig::make(Variant::radargate);
  Model<float> m = random_model<float>(cfg, Dims{8, 8, 2, 2, 2, 4}, 1);
  Layer<float> layer(m.config, m.params());
  std::vector<float> x(8, 1.0f), y(8);
  layer.forward(make_view(static_cast<const float*>(x.data()), 1, 8), make_view(y.data(), 1, 8));
  std::printf("consumer: y[0] = %g\n", double(y[0]));
  return y[0] == y[0] ? 0 : 1;
}
