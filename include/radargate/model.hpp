// radargate/model.hpp -- an owning model: a configuration plus named tensors, with Params views
// over them. A convenience on top of the view API, used by the file I/O, the command-line tool
// and the tests; runtimes that own their memory use Params directly.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "checked.hpp"
#include "error.hpp"
#include "layer_config.hpp"
#include "params.hpp"

namespace radargate {

template <class S>
struct Tensor {
  std::vector<index_t> shape;
  std::vector<S> data;

  /// Element count; throws radargate::error for a shape that is not representable (checked.hpp).
  index_t numel() const { return checked::numel_or_throw(shape); }
  template <int R>
  View<const S, R> view() const {
    if (int(shape.size()) != R) detail::fail("tensor view: expected rank ", R, ", found rank ", shape.size());
    (void)numel();  // the strides below are products of extents: representable, or throw
    View<const S, R> v;
    // An empty tensor is present, not absent: point it at a valid address so that validation
    // reports its extents rather than calling it missing.
    static const S empty_tensor_anchor{};
    v.data = data.empty() ? &empty_tensor_anchor : data.data();
    index_t s = 1;
    for (int k = R - 1; k >= 0; --k) {
      v.shape[k] = shape[k];
      v.stride[k] = s;
      s *= shape[k];
    }
    return v;
  }
  template <int R>
  View<S, R> mutable_view() {
    View<const S, R> c = view<R>();
    View<S, R> v;
    v.data = const_cast<S*>(c.data);
    for (int k = 0; k < R; ++k) {
      v.shape[k] = c.shape[k];
      v.stride[k] = c.stride[k];
    }
    return v;
  }
};

template <class S>
Tensor<S> make_tensor(std::vector<index_t> shape, S fill = S(0)) {
  Tensor<S> t;
  t.shape = std::move(shape);
  t.data.assign(std::size_t(t.numel()), fill);
  return t;
}

/// The expected shape of every named parameter, for the given dimensions.
inline std::vector<index_t> param_shape(const std::string& name, const Dims& D) {
  const ParamInfo* info = find_param(name);
  if (!info) detail::fail("unknown parameter name '", name, "'");
  std::vector<index_t> shape;
  for (int i = 0; i < info->rank; ++i) shape.push_back(dim_value(info->shape[i], D));
  return shape;
}

/// Every parameter name, in file order.
inline const std::vector<std::string>& param_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const ParamInfo& info : param_table) v.push_back(info.name);
    return v;
  }();
  return names;
}

template <class S>
struct Model {
  LayerConfig config = LayerConfig::make(Variant::radargate);
  std::map<std::string, Tensor<S>> tensors;

  bool has(const std::string& name) const { return tensors.count(name) != 0; }

  /// Views over the owned tensors (absent names give absent views). Ranks are checked here;
  /// extents are checked by radargate::validate.
  Params<S> params() const {
    Params<S> p;
    for_each_param(p, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      auto it = tensors.find(name);
      if (it == tensors.end()) return;
      if (int(it->second.shape.size()) != V::rank) {
        std::string found = "[";
        for (size_t i = 0; i < it->second.shape.size(); ++i)
          found += (i ? ", " : "") + std::to_string(it->second.shape[i]);
        detail::fail("tensor '", name, "': expected a rank-", V::rank, " tensor, found shape ", found, "]");
      }
      v = it->second.template view<V::rank>();
    });
    return p;
  }
};

/// Options for a random model.
struct RandomModelOptions {
  bool optional_tensors = true;  // also create every optional tensor the configuration reads
  bool base = true;              // create base.W0 and base.b0
  double angle_scale = 1.0;      // multiplies U (larger = larger angles)
};

/// A random model of any configuration: every required tensor and (by default) every optional
/// one the configuration reads, with scales that keep activations of order one.
template <class S>
Model<S> random_model(const LayerConfig& cfg, const Dims& D, std::uint64_t seed, const RandomModelOptions& opt = {}) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Model<S> m;
  m.config = cfg;
  for (const ParamInfo& info : param_table) {
    const std::string name = info.name;
    const Need need = param_need(cfg, info);
    if (need == Need::unused) continue;
    const bool is_base = name.rfind("base.", 0) == 0;
    if (need == Need::optional && (!opt.optional_tensors || (is_base && !opt.base))) continue;
    Tensor<S> t = make_tensor<S>(param_shape(name, D));
    double sd = 1.0;
    switch (info.init) {
      case Init::inv_sqrt_d_in:
        sd = 1.0 / std::sqrt(double(D.d_in));
        break;
      case Init::inv_sqrt_r:
        sd = 1.0 / std::sqrt(double(D.r));
        break;
      case Init::inv_sqrt_d:
        sd = 1.0 / std::sqrt(double(D.d));
        break;
      case Init::angle:
        sd = opt.angle_scale / std::sqrt(double(D.k));
        break;
      case Init::half:
        sd = 0.5;
        break;
      case Init::unit:
      case Init::around_one:
        sd = 1.0;
        break;
    }
    for (S& e : t.data) e = S(sd * normal(rng));
    // A positive scale; drawn after the normal draws above, so every seed keeps its model.
    if (info.init == Init::around_one)
      for (S& e : t.data) e = S(0.5 + std::abs(normal(rng)) * 0.5);
    m.tensors.emplace(name, std::move(t));
  }
  return m;
}

}  // namespace radargate
