// The cpu backend over sizes: forward and forward + backward side by side, float and double.
//
// Counters: FLOPS = essential FLOPs per second (radargate/flops.hpp; compare with the SGEMM
// ceiling of bench_sgemm), bytes_per_second = essential bytes (each parameter, input, output
// and gradient touched once) per second. The sweeps move one axis at a time around the target
// shape T = 256, N = 40, d_in = d = 4096, r = k = 8, P = d / 2 (variant radargate):
//   T in {1, 16, 256, 2048},  N in {5, 10, 20, 40},  d in {256, 1024, 4096},  threads in {1, 2}
// plus the other variants at the target shape.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "radargate.hpp"
#include "radargate/cpu.hpp"
#include "radargate/flops.hpp"

namespace {
using namespace radargate;

struct Shape {
  index_t T, N, d;
  int threads;
  Variant variant;
};

template <class S>
struct Setup {
  LayerConfig cfg;
  Dims D;
  index_t T;
  Model<S> model, grads;
  std::vector<S> x, y, dy, dx;
  Gradients<S> G;

  explicit Setup(const Shape& s) : cfg(LayerConfig::make(s.variant)), T(s.T) {
    D.N = s.N;
    D.d = D.d_in = s.d;
    D.r = 8;
    D.k = 8;
    D.P = s.d / 2;
    RandomModelOptions opt;
    opt.base = false;  // the LoRA part; a frozen base is a plain GEMM
    model = random_model<S>(cfg, D, 1, opt);
    grads = model;
    std::mt19937_64 rng(2);
    std::normal_distribution<double> normal(0.0, 1.0);
    x.resize(std::size_t(T * D.d_in));
    dy.resize(std::size_t(T * D.d));
    y.resize(dy.size());
    dx.resize(x.size());
    for (S& e : x) e = S(normal(rng));
    for (S& e : dy) e = S(normal(rng));
    G.x = make_view(dx.data(), T, D.d_in);
    for_each_param(G, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      if (grads.has(name)) v = grads.tensors[name].template mutable_view<V::rank>();
    });
  }
};

template <class S, bool Backward>
void BM_layer(benchmark::State& state, Shape shape) {
  Setup<S> s(shape);
  CpuOptions o;
  o.threads = shape.threads;
  Layer<S, backend::cpu> layer(s.cfg, s.model.params(), o);
  const auto xv = make_view(static_cast<const S*>(s.x.data()), s.T, s.D.d_in);
  const auto yv = make_view(s.y.data(), s.T, s.D.d);
  const auto dyv = make_view(static_cast<const S*>(s.dy.data()), s.T, s.D.d);
  for (auto _ : state) {
    auto ctx = layer.forward(xv, yv);
    if (Backward) layer.backward(ctx, dyv, s.G);
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  const WorkCount w = essential_work(s.cfg, s.D, s.T, Backward, false);
  state.counters["FLOPS"] = benchmark::Counter(w.flops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(w.elements * double(sizeof(S))));
  state.SetLabel(to_string(shape.variant));
}

template <class S>
void register_shape(const char* scalar, const Shape& s) {
  const std::string name = std::string(scalar) + "/" + to_string(s.variant) + "/T:" + std::to_string(s.T) +
                           "/N:" + std::to_string(s.N) + "/d:" + std::to_string(s.d) +
                           "/threads:" + std::to_string(s.threads);
  benchmark::RegisterBenchmark(("forward/" + name).c_str(), BM_layer<S, false>, s)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark(("forward_backward/" + name).c_str(), BM_layer<S, true>, s)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

template <class S>
void register_all(const char* scalar) {
  const Shape target{256, 40, 4096, 1, Variant::radargate};
  for (index_t T : {1, 16, 256, 2048}) register_shape<S>(scalar, Shape{T, target.N, target.d, 1, target.variant});
  for (index_t N : {5, 10, 20}) register_shape<S>(scalar, Shape{target.T, N, target.d, 1, target.variant});
  for (index_t d : {256, 1024}) register_shape<S>(scalar, Shape{target.T, target.N, d, 1, target.variant});
  register_shape<S>(scalar, Shape{target.T, target.N, target.d, 2, target.variant});
  for (Variant v : all_variants)
    if (v != Variant::radargate) register_shape<S>(scalar, Shape{target.T, target.N, target.d, 1, v});
}
}  // namespace

int main(int argc, char** argv) {
  use_single_threaded_blas();  // the backend's threads are the only ones (RADARGATE_USE_BLAS)
  benchmark::AddCustomContext("radargate_gemm", cpu_gemm_route());
  register_all<float>("f32");
  register_all<double>("f64");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
