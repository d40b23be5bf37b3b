// The smallest complete use of radargate: views over your own memory, forward, backward.
#include <radargate.hpp>

#include <cstdio>
#include <vector>

int main() {
  using namespace radargate;
  const index_t T = 4, d_in = 16, d = 16, N = 3, r = 2, k = 2, P = 8;

  // Your runtime owns the memory; radargate only looks at it through views.
  std::vector<float> A(N * r * d_in, 0.05f), B(N * d * r, 0.1f), U(P * k, 0.3f), M(N * N, 0.0f);
  std::vector<float> ws(d, 0.01f), x(T * d_in, 1.0f), y(T * d), dy(T * d, 1.0f);
  for (index_t i = 0; i < index_t(A.size()); ++i) A[i] *= float(i % 7) - 3.0f;  // distinct experts

  Params<float> p;
  p.lora_A = make_view(static_cast<const float*>(A.data()), N, r, d_in);
  p.lora_B = make_view(static_cast<const float*>(B.data()), N, d, r);
  p.map_M = make_view(static_cast<const float*>(M.data()), N, N);
  p.angle_U = make_view(static_cast<const float*>(U.data()), P, k);
  p.stretch_ws = make_view(static_cast<const float*>(ws.data()), d);

  LayerConfig cfg = LayerConfig::make(Variant::radargate);  // rotation + stretch gate + softmax
  Layer<float> layer(cfg, p);                               // validates every shape once

  auto ctx = layer.forward(make_view(static_cast<const float*>(x.data()), T, d_in), make_view(y.data(), T, d));

  // Ask only for the gradients you train: here the input and the LoRA A matrices.
  std::vector<float> dx(T * d_in), dA(A.size());
  Gradients<float> g;
  g.x = make_view(dx.data(), T, d_in);
  g.lora_A = make_view(dA.data(), N, r, d_in);
  layer.backward(ctx, make_view(static_cast<const float*>(dy.data()), T, d), g);

  std::printf("y[0][0] = %.6f   dL/dx[0][0] = %.6f   dL/dA[0][0][0] = %.6f\n", y[0], dx[0], dA[0]);
  return (y[0] == y[0] && dx[0] == dx[0]) ? 0 : 1;  // finite results
}
