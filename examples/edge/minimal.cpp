// The smallest program that runs one decode step (T = 1) of a radargate layer: the program whose
// stripped size docs/EDGE.md reports per backend and architecture (scripts/edge-sizes).
//   RG_EDGE_BACKEND = 0: reference backend (core only, no dependency)
//   RG_EDGE_BACKEND = 1: cpu backend (Eigen, xsimd, threads)
#include <cstdio>
#include <vector>

#if RG_EDGE_BACKEND == 1
#include <radargate/cpu.hpp>
using Backend = radargate::backend::cpu;
#else
#include <radargate/reference.hpp>
using Backend = radargate::backend::reference;
#endif

int main() {
  using namespace radargate;
  const index_t d_in = 64, d = 64, N = 4, r = 4, k = 4, P = 32;
  std::vector<float> A(N * r * d_in), B(N * d * r), U(P * k), M(N * N, 0.0f), ws(d, 0.01f), x(d_in, 1.0f), y(d);
  for (std::size_t i = 0; i < A.size(); ++i) A[i] = 0.01f * float(int(i % 7) - 3);
  for (std::size_t i = 0; i < B.size(); ++i) B[i] = 0.02f * float(int(i % 5) - 2);
  for (std::size_t i = 0; i < U.size(); ++i) U[i] = 0.1f * float(int(i % 3) - 1);
  Params<float> p;
  p.lora_A = make_view(static_cast<const float*>(A.data()), N, r, d_in);
  p.lora_B = make_view(static_cast<const float*>(B.data()), N, d, r);
  p.map_M = make_view(static_cast<const float*>(M.data()), N, N);
  p.angle_U = make_view(static_cast<const float*>(U.data()), P, k);
  p.stretch_ws = make_view(static_cast<const float*>(ws.data()), d);
  const Layer<float, Backend> layer(LayerConfig::make(Variant::radargate), p);
  layer.forward(make_view(static_cast<const float*>(x.data()), 1, d_in), make_view(y.data(), 1, d));
  std::printf("y[0] = %.6f\n", double(y[0]));
  return y[0] == y[0] ? 0 : 1;
}
