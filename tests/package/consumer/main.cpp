#include <radargate.hpp>
#ifdef CONSUMER_HAS_CPU
#include <radargate/cpu.hpp>
#endif
#ifdef CONSUMER_HAS_GEOMETRY
#include <radargate/geometry.hpp>
#endif

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

int main() {
  using namespace radargate;
  const LayerConfig cfg = LayerConfig::make(Variant::radargate);
  Model<float> m = random_model<float>(cfg, Dims{8, 8, 2, 2, 2, 4}, 1);
  Layer<float> layer(m.config, m.params());
  std::vector<float> x(8, 1.0f), y(8);
  layer.forward(make_view(static_cast<const float*>(x.data()), 1, 8), make_view(y.data(), 1, 8));
  std::printf("consumer: y[0] = %g\n", double(y[0]));
  if (!(y[0] == y[0])) return 1;
#ifdef CONSUMER_HAS_CPU
  // The cpu backend through the installed target, with the GEMM route it was built with.
  use_single_threaded_blas();
  Layer<float, backend::cpu> fast(m.config, m.params());
  std::vector<float> yc(8);
  fast.forward(make_view(static_cast<const float*>(x.data()), 1, 8), make_view(yc.data(), 1, 8));
  std::printf("consumer: cpu backend (GEMM route %s): y[0] = %g\n", cpu_gemm_route(), double(yc[0]));
  for (int j = 0; j < 8; ++j)
    if (std::fabs(yc[std::size_t(j)] - y[std::size_t(j)]) > 1e-5f * (1.0f + std::fabs(y[std::size_t(j)]))) return 1;
#ifdef CONSUMER_EXPECT_ROUTE
  if (std::strcmp(cpu_gemm_route(), CONSUMER_EXPECT_ROUTE) != 0) return 1;
#endif
#endif
#ifdef CONSUMER_HAS_GEOMETRY
  // The geometry through its own target: (1, 1) is inside the cone of e1 and e2, (-1, 1) is not.
  const double V[4] = {1, 0, 0, 1}, in[2] = {1, 1}, out[2] = {-1, 1};
  const auto a = geometry::cone_membership(make_view(V, 2, 2), make_view(in, 2));
  const auto b = geometry::cone_membership(make_view(V, 2, 2), make_view(out, 2));
  std::printf("consumer: geometry: (1, 1) %s, (-1, 1) %s\n", geometry::to_string(a.verdict),
              geometry::to_string(b.verdict));
  if (!a.inside() || !b.outside()) return 1;
#endif
  return 0;
}
