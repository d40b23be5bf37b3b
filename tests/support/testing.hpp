// Test support: tolerances per scalar type, relative error that turns absolute near zero, random
// models and inputs for every variant, and a generic central-difference gradient checker.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <radargate.hpp>

namespace rgtest {

/// The message of the radargate::error that f() throws, or "(no error)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const radargate::error& e) {
    return e.what();
  }
  return "(no error)";
}
using radargate::index_t;

/// Tolerance trait, as Eigen's test_precision<T>().
template <class T>
struct precision;
template <>
struct precision<double> {
  static double grad_fd() { return 1e-6; }
};
template <>
struct precision<float> {
  static double grad_fd() { return 1e-2; }
};

/// |a - b| / max(|a|, |b|, floor): relative where values are large, absolute (scaled by floor)
/// near zero, so a gradient entry that is exactly zero in one and 1e-17 in the other passes.
inline double rel_err(double a, double b, double floor) {
  const double den = std::max({std::abs(a), std::abs(b), floor});
  return std::abs(a - b) / den;
}

/// Largest elementwise relative error between two arrays; the floor is `floor_frac` times the
/// largest magnitude of `ref` (with an absolute floor of 1e-300).
template <class A, class B>
double max_rel_err(const A& got, const B& ref, double floor_frac = 1e-3) {
  double scale = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) scale = std::max(scale, std::abs(double(ref[i])));
  const double floor = std::max(scale * floor_frac, 1e-300);
  double e = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) e = std::max(e, rel_err(double(got[i]), double(ref[i]), floor));
  return e;
}

struct Case {
  radargate::LayerConfig cfg;
  radargate::Dims dims;
  index_t tokens = 3;
  std::uint64_t seed = 1;
  radargate::RandomModelOptions opt;
  std::string name() const {
    using namespace radargate;
    return detail::concat(to_string(cfg.variant), " N=", dims.N, " r=", dims.r, " d_in=", dims.d_in, " d=", dims.d,
                          " k=", dims.k, " P=", dims.P, " T=", tokens, " map=", to_string(cfg.map),
                          " bound=", to_string(cfg.bound), " pairing=", to_string(cfg.pairing),
                          " normalize=", to_string(cfg.normalize), " tau=", cfg.tau, " topk=", cfg.topk,
                          " optional=", opt.optional_tensors, " base=", opt.base, " seed=", seed);
  }
};

/// A spread of shapes and options for every variant: N = 1, r = 1, odd d, P < d/2, both pairings,
/// both bounds, both map modes, normalize overrides, tau != 1, absent optional tensors.
inline std::vector<Case> variant_cases() {
  using namespace radargate;
  struct Shape {
    index_t N, r, d_in, d, k, P;
  };
  const Shape shapes[] = {
      {3, 2, 5, 6, 2, 3},  // full planes
      {1, 1, 4, 5, 1, 2},  // N = 1, r = 1, odd d
      {4, 3, 3, 7, 2, 1},  // odd d, P < d/2
      {2, 1, 6, 8, 3, 2},  // P < d/2
  };
  std::vector<Case> out;
  std::uint64_t seed = 100;
  for (Variant v : all_variants) {
    int si = 0;
    for (const Shape& s : shapes) {
      Case c;
      c.cfg = LayerConfig::make(v);
      c.dims = Dims{s.d_in, s.d, s.N, s.r, c.cfg.rotation ? s.k : 0, c.cfg.rotation ? s.P : 0};
      c.seed = ++seed;
      c.cfg.pairing = (si % 2) ? Pairing::half : Pairing::adjacent;
      c.cfg.bound = (si % 3 == 2) ? Bound::none : Bound::pi_tanh;
      c.cfg.map = (si == 1 || si == 3) ? MapMode::mean : MapMode::learned;
      c.cfg.tau = si == 2 ? 0.7 : 1.0;
      c.cfg.topk = int(std::min<index_t>(2, s.N));
      if (v == Variant::topk && s.N == 4) c.cfg.topk = 3;
      c.opt.optional_tensors = si != 3;
      c.opt.base = si != 2;
      out.push_back(c);
      ++si;
    }
  }
  // Normalize overrides on the gates that have logits.
  const Normalize norms[] = {Normalize::sigmoid, Normalize::identity, Normalize::topk_softmax, Normalize::softmax};
  for (Variant v : {Variant::static_, Variant::softmax, Variant::stretch_only, Variant::radargate})
    for (Normalize n : norms) {
      Case c;
      c.cfg = LayerConfig::make(v);
      c.cfg.normalize = n;
      c.cfg.topk = 2;
      c.cfg.tau = 1.3;
      c.dims = Dims{4, 6, 3, 2, c.cfg.rotation ? 2 : 0, c.cfg.rotation ? 3 : 0};
      c.seed = ++seed;
      out.push_back(c);
    }
  return out;
}

template <class S>
std::vector<S> random_vector(size_t n, std::uint64_t seed, double sd = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<S> v(n);
  for (S& e : v) e = S(nd(rng));
  return v;
}

/// Converts a model to another scalar type.
template <class To, class From>
radargate::Model<To> cast_model(const radargate::Model<From>& m) {
  radargate::Model<To> out;
  out.config = m.config;
  for (const auto& kv : m.tensors) {
    radargate::Tensor<To> t;
    t.shape = kv.second.shape;
    t.data.assign(kv.second.data.begin(), kv.second.data.end());
    out.tensors.emplace(kv.first, std::move(t));
  }
  return out;
}

/// Owning storage for every gradient of a model (x included), with the matching Gradients views.
template <class S>
struct GradStore {
  std::vector<S> x;
  std::map<std::string, radargate::Tensor<S>> t;
  radargate::Gradients<S> views;

  GradStore(const radargate::Model<S>& m, index_t tokens, index_t d_in) : x(size_t(tokens * d_in), S(0)) {
    views.x = radargate::make_view(x.data(), tokens, d_in);
    for (const auto& kv : m.tensors) t[kv.first] = radargate::make_tensor<S>(kv.second.shape);
    radargate::for_each_param(views, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      auto it = t.find(name);
      if (it != t.end()) v = it->second.template mutable_view<V::rank>();
    });
  }
};

}  // namespace rgtest
