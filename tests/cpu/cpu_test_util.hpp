// Helpers for the cpu backend tests: random cases, gradient buffers, and the comparison of the
// cpu backend against the reference backend on the same inputs.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "radargate.hpp"
#include "radargate/cpu.hpp"

namespace rgtest {
using namespace radargate;

/// The agreement required between the cpu and the reference backend (relative to the largest
/// magnitude of the reference tensor, so it turns absolute where the values are near zero).
template <class S>
constexpr double tolerance() {
  return sizeof(S) == 4 ? 1e-5 : 1e-10;
}

/// A float model and float inputs, widened exactly to double.
template <class S>
Model<double> widen(const Model<S>& m) {
  Model<double> w;
  w.config = m.config;
  for (const auto& kv : m.tensors) {
    Tensor<double> t;
    t.shape = kv.second.shape;
    t.data.assign(kv.second.data.begin(), kv.second.data.end());
    w.tensors.emplace(kv.first, std::move(t));
  }
  return w;
}

template <class S>
double rel_err(const std::vector<S>& a, const std::vector<S>& b) {
  REQUIRE(a.size() == b.size());
  double scale = 0, err = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(double(b[i])));
    err = std::max(err, std::abs(double(a[i]) - double(b[i])));
    if (std::isnan(double(a[i])) != std::isnan(double(b[i]))) return INFINITY;
  }
  return scale > 0 ? err / scale : err;
}

template <class S>
std::vector<S> random_vector(std::size_t n, std::uint64_t seed, double sd = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, sd);
  std::vector<S> v(n);
  for (S& e : v) e = S(normal(rng));
  return v;
}

/// A test case: configuration, dimensions, tokens and the model's seed.
struct Case {
  LayerConfig cfg = LayerConfig::make(Variant::radargate);
  Dims D;
  index_t T = 3;
  std::uint64_t seed = 1;
  RandomModelOptions opt;
  std::string describe() const {
    return detail::concat(to_string(cfg.variant), " map=", to_string(cfg.map), " bound=", to_string(cfg.bound),
                          " pairing=", to_string(cfg.pairing), " normalize=", to_string(cfg.normalize),
                          " tau=", cfg.tau, " topk=", cfg.topk, " T=", T, " d_in=", D.d_in, " d=", D.d, " N=", D.N,
                          " r=", D.r, " k=", D.k, " P=", D.P, " optional=", opt.optional_tensors, " base=", opt.base,
                          " seed=", seed);
  }
};

/// A random case for a variant: small random extents, odd ones included.
inline Case random_case(Variant v, std::uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 13);
  auto pick = [&](index_t lo, index_t hi) { return lo + index_t(rng() % std::uint64_t(hi - lo + 1)); };
  Case c;
  c.seed = seed;
  c.cfg = LayerConfig::make(v);
  c.D.N = pick(1, 5);
  c.D.r = pick(1, 5);
  c.D.d_in = pick(1, 23);
  c.D.d = pick(2, 37);
  c.D.k = pick(1, 4);
  c.D.P = pick(1, c.D.d / 2);
  c.T = pick(0, 10);
  if (c.T == 0 && rng() % 3) c.T = 7;  // mostly non-empty
  c.cfg.pairing = rng() % 2 ? Pairing::adjacent : Pairing::half;
  c.cfg.bound = rng() % 4 ? Bound::pi_tanh : Bound::none;
  c.cfg.map = rng() % 3 ? MapMode::learned : MapMode::mean;
  c.cfg.tau = rng() % 2 ? 1.0 : 0.7;
  if (c.cfg.normalize == Normalize::topk_softmax) c.cfg.topk = int(pick(1, c.D.N));
  if (c.cfg.has_logits() && rng() % 4 == 0) {  // another normalisation than the default
    const Normalize all[] = {Normalize::softmax, Normalize::sigmoid, Normalize::identity, Normalize::topk_softmax};
    c.cfg.normalize = all[rng() % 4];
    c.cfg.topk = int(pick(1, c.D.N));
  }
  c.opt.optional_tensors = rng() % 5 != 0;
  c.opt.base = rng() % 2 == 0;
  c.opt.angle_scale = 1.5;
  return c;
}

/// Owning storage for every gradient a model can have (same names and shapes), plus x.
template <class S>
struct GradStore {
  Model<S> g;
  std::vector<S> dx;
  GradStore(const Model<S>& m, index_t T, index_t d_in, std::uint64_t fill_seed = 0) : g(m) {
    std::uint64_t s = fill_seed;
    for (auto& kv : g.tensors)
      kv.second.data = fill_seed ? random_vector<S>(kv.second.data.size(), ++s) : std::vector<S>(kv.second.data.size());
    dx = fill_seed ? random_vector<S>(std::size_t(T * d_in), ++s) : std::vector<S>(std::size_t(T * d_in));
  }
  /// Views of the gradients whose name passes `want` ("x" for the input).
  Gradients<S> views(index_t T, index_t d_in, const std::function<bool(const std::string&)>& want) {
    Gradients<S> G;
    if (want("x")) G.x = make_view(dx.data(), T, d_in);
    for_each_param(G, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      if (g.has(name) && want(name)) v = g.tensors[name].template mutable_view<V::rank>();
    });
    return G;
  }
};

inline bool all_grads(const std::string&) { return true; }

/// Runs the reference and the cpu backend on the same case and checks y and every requested
/// gradient. `want` filters the gradients; `accumulate` starts from random gradient buffers.
/// lora.A and lora.B rounded as the cpu backend stores them (WeightStorage bf16 or f16).
template <class S>
Model<S> rounded_experts(Model<S> m, WeightStorage storage) {
  if (storage == WeightStorage::scalar) return m;
  for (const char* name : {"lora.A", "lora.B"})
    for (S& v : m.tensors.at(name).data)
      v = storage == WeightStorage::bf16 ? S(detail::to_float(detail::to_bf16(float(v))))
                                         : S(detail::to_float(detail::to_f16(float(v))));
  return m;
}

/// With storage bf16 or f16, the cpu backend keeps lora.A and lora.B in 16 bits and is compared
/// with the reference on the same rounded weights.
template <class S>
void check_against_reference(const Case& c, int threads, index_t tile_planes,
                             const std::function<bool(const std::string&)>& want = all_grads, bool accumulate = false,
                             WeightStorage storage = WeightStorage::scalar) {
  INFO(c.describe() << " threads=" << threads << " tile_planes=" << tile_planes << " accumulate=" << accumulate
                    << " weights=" << to_string(storage));
  const Model<S> m_in = random_model<S>(c.cfg, c.D, c.seed, c.opt);
  const Model<S> m = rounded_experts(m_in, storage);  // what the reference computes with
  const Params<S> p = m.params();
  Layer<S> ref(c.cfg, p);
  CpuOptions o;
  o.threads = threads;
  o.tile_planes = tile_planes;
  o.weights = storage;
  Layer<S, backend::cpu> cpu(c.cfg, storage == WeightStorage::scalar ? p : m_in.params(), o);
  const index_t T = c.T;
  const std::vector<S> x = random_vector<S>(std::size_t(T * c.D.d_in), c.seed + 101);
  const std::vector<S> dy = random_vector<S>(std::size_t(T * c.D.d), c.seed + 202);
  std::vector<S> y_ref(std::size_t(T * c.D.d), S(-7)), y_cpu(std::size_t(T * c.D.d), S(-9));
  const auto xv = make_view(x.data(), T, c.D.d_in);
  const auto dyv = make_view(dy.data(), T, c.D.d);
  auto ctx_ref = ref.forward(xv, make_view(y_ref.data(), T, c.D.d));
  auto ctx_cpu = cpu.forward(xv, make_view(y_cpu.data(), T, c.D.d));
  const std::uint64_t fill = accumulate ? c.seed + 303 : 0;
  GradStore<S> g_ref(m, T, c.D.d_in, fill), g_cpu(m, T, c.D.d_in, fill);
  const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
  ref.backward(ctx_ref, dyv, g_ref.views(T, c.D.d_in, want), mode);
  cpu.backward(ctx_cpu, dyv, g_cpu.views(T, c.D.d_in, want), mode);

  // In float, a gradient that sums many terms of both signs (say a one-element angle.U) can
  // differ from the float reference by more than 1e-5 of its size while both are within float
  // rounding of the exact value. Such a tensor passes when the cpu result is within 2e-5 of a
  // float64 evaluation of the same inputs, or at least as close to it (within a factor 3) as the
  // float reference is. Two summation orders of the same cancelling sum differ by several times
  // eps * (sum of |terms|) / |sum|: over the float cases, the cpu's error against float64 has a
  // median of 9e-8 and a largest value of 1.1e-5 with Eigen's GEMM and 1.3e-5 with OpenBLAS's
  // (RADARGATE_USE_BLAS), which is why the absolute allowance is 2e-5 and not 1e-5.
  // Where the maths amplifies rounding (a softmax gate at tau = 0.01 multiplies each logit's
  // rounding error by 1 / tau = 100), both float results land further out, each a sample of that
  // amplified rounding, in either direction: the reference's error says how ill-conditioned the
  // tensor is, not how far another float evaluation may be. On targets whose compiler fuses
  // multiplies and adds in plain C++ (GCC's default -ffp-contract=fast: riscv64, aarch64, x86-64
  // with -mfma), the scalar kernels and Eigen's unvectorised products round differently from the
  // reference, and the cpu's error reached 2.2 times the reference's (x86-64 built with -mfma
  // -DRADARGATE_CPU_SCALAR -DEIGEN_DONT_VECTORIZE, which reproduces riscv64's results: the 12
  // tensors that failed, all of one case at tau = 0.01, errors 3e-5 to 8e-5 on either side of float64);
  // with SSE2 kernels the largest ratio among the tensors that get here is 0.35, with AVX2+FMA 0.61.
  // Hence 3.
  std::vector<double> y64;
  GradStore<double>* g64 = nullptr;
  std::unique_ptr<GradStore<double>> g64_store;
  if (std::is_same<S, float>::value) {
    const Model<double> m64 = widen(m);
    Layer<double> ref64(c.cfg, m64.params());
    const std::vector<double> x64(x.begin(), x.end()), dy64(dy.begin(), dy.end());
    y64.resize(y_ref.size());
    auto ctx64 = ref64.forward(make_view(x64.data(), T, c.D.d_in), make_view(y64.data(), T, c.D.d));
    g64_store = std::make_unique<GradStore<double>>(m64, T, c.D.d_in);
    g64 = g64_store.get();
    GradStore<S> start(m, T, c.D.d_in, fill);  // the float buffers' starting values, widened
    g64->dx.assign(start.dx.begin(), start.dx.end());
    for (auto& kv : g64->g.tensors) {
      const auto& f = start.g.tensors.at(kv.first).data;
      kv.second.data.assign(f.begin(), f.end());
    }
    ref64.backward(ctx64, make_view(dy64.data(), T, c.D.d), g64->views(T, c.D.d_in, want), mode);
  }
  auto agree = [&](const std::vector<S>& got, const std::vector<S>& want_ref, const std::vector<double>* exact) {
    const double e = rel_err(got, want_ref);
    if (e <= tolerance<S>() || !exact) return e <= tolerance<S>();
    const std::vector<double> got64(got.begin(), got.end()), ref64(want_ref.begin(), want_ref.end());
    const double e_cpu = rel_err(got64, *exact), e_ref = rel_err(ref64, *exact);
    UNSCOPED_INFO("float: cpu vs reference " << e << ", cpu vs float64 " << e_cpu << ", reference vs float64 "
                                             << e_ref);
    return e_cpu <= std::max(2 * tolerance<S>(), 3 * e_ref);
  };
  {
    INFO("tensor y");
    CHECK(agree(y_cpu, y_ref, g64 ? &y64 : nullptr));
  }
  {
    INFO("gradient x");
    CHECK(agree(g_cpu.dx, g_ref.dx, g64 ? &g64->dx : nullptr));
  }
  for (const auto& kv : g_ref.g.tensors) {
    INFO("gradient " << kv.first);
    CHECK(agree(g_cpu.g.tensors.at(kv.first).data, kv.second.data, g64 ? &g64->g.tensors.at(kv.first).data : nullptr));
  }
}

}  // namespace rgtest
