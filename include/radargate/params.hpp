// radargate/params.hpp -- the parameters of a layer as views over caller memory, their
// gradients, and the one place where their shapes are checked.
//
//   lora.A [N, r, d_in]   lora.B [N, d, r]   lora.scale [N]
//   map.M [N, N]
//   angle.Wx [k, d_in]  angle.Wv [k, d]  angle.Wc [k, d]  angle.U [P, k]  angle.bias [N, P]
//   stretch.Wg [N, d_in]  stretch.bg [N]  stretch.ws [d]
//   base.W0 [d, d_in]  base.b0 [d]
//
// An absent optional tensor (null data) is zero (Wx, Wv, Wc, bias, Wg, bg, ws), one (lora.scale)
// or off (base.W0, base.b0).
#pragma once

#include <array>
#include <cmath>
#include <string>

#include "error.hpp"
#include "layer_config.hpp"
#include "param_table.hpp"
#include "view.hpp"

namespace radargate {

template <class T>
struct Params {
  View<const T, 3> lora_A, lora_B;
  View<const T, 1> lora_scale;
  View<const T, 2> map_M;
  View<const T, 2> angle_Wx, angle_Wv, angle_Wc, angle_U, angle_bias;
  View<const T, 2> stretch_Wg;
  View<const T, 1> stretch_bg, stretch_ws;
  View<const T, 2> base_W0;
  View<const T, 1> base_b0;
};

/// Where backward writes. A present (non-null) view is a gradient that is asked for; an absent
/// one is neither computed nor touched.
template <class T>
struct Gradients {
  View<T, 2> x;
  View<T, 3> lora_A, lora_B;
  View<T, 1> lora_scale;
  View<T, 2> map_M;
  View<T, 2> angle_Wx, angle_Wv, angle_Wc, angle_U, angle_bias;
  View<T, 2> stretch_Wg;
  View<T, 1> stretch_bg, stretch_ws;
  View<T, 2> base_W0;
  View<T, 1> base_b0;
};

/// overwrite: each requested gradient is set to dL/dparam of this call.
/// accumulate: dL/dparam is added to what the buffer already holds.
enum class GradMode { overwrite, accumulate };

/// Calls f(name, member) for every parameter slot, in file order (param_table.hpp). Works for
/// Params and Gradients (the x slot of Gradients is not visited).
template <class P, class F>
void for_each_param(P& p, F&& f) {
#define RADARGATE_VISIT_(member, name, rank, shape, reader, init) f(name, p.member);
  RADARGATE_PARAMETERS(RADARGATE_VISIT_)
#undef RADARGATE_VISIT_
}

/// The layer's dimensions, read off the parameters.
struct Dims {
  index_t d_in = 0, d = 0, N = 0, r = 0, k = 0, P = 0;
};

/// The value of one dimension.
inline index_t dim_value(Dim e, const Dims& D) {
  switch (e) {
    case Dim::N:
      return D.N;
    case Dim::r:
      return D.r;
    case Dim::d_in:
      return D.d_in;
    case Dim::d:
      return D.d;
    case Dim::k:
      return D.k;
    case Dim::P:
      return D.P;
  }
  return 0;
}

/// A parameter's extents for the given dimensions (its table row's shape).
template <int R>
std::array<index_t, R> param_extents(const ParamInfo& info, const Dims& D) {
  std::array<index_t, R> e{};
  for (int i = 0; i < R; ++i) e[i] = dim_value(info.shape[i], D);
  return e;
}

enum class Need { required, optional, unused };

/// The row of param_table with this file name, or null.
inline const ParamInfo* find_param(const std::string& name) {
  for (const ParamInfo& info : param_table)
    if (name == info.name) return &info;
  return nullptr;
}

/// Which parameters a configuration reads. Passing a tensor the configuration does not read is an
/// error, so a mistaken variant never silently ignores trained weights.
inline Need param_need(const LayerConfig& c, const ParamInfo& info) {
  const Need rotating = c.rotation ? Need::optional : Need::unused;
  switch (info.reader) {
    case Reader::experts:
      return Need::required;
    case Reader::always:
      return Need::optional;
    case Reader::learned_map:
      return c.rotation && c.map == MapMode::learned ? Need::required : Need::unused;
    case Reader::rotation:
      return c.rotation ? Need::required : Need::unused;
    case Reader::rotation_optional:
      return rotating;
    case Reader::logits:
      return c.has_logits() ? Need::optional : Need::unused;
    case Reader::gate_weights:
      return c.gate == GateKind::linear || c.gate == GateKind::stretch ? Need::optional : Need::unused;
    case Reader::stretch:
      return c.gate == GateKind::stretch ? Need::optional : Need::unused;
  }
  return Need::unused;
}

inline Need param_need(const LayerConfig& c, const std::string& name) {
  const ParamInfo* info = find_param(name);
  if (!info) detail::fail("unknown parameter name '", name, "'");
  return param_need(c, *info);
}

namespace detail {
template <class V>
std::string shape_string(const V& v) {
  std::string s = "[";
  for (int i = 0; i < V::rank; ++i) s += (i ? ", " : "") + std::to_string(v.shape[i]);
  return s + "]";
}

template <int R>
std::string shape_string(const index_t (&e)[R]) {
  std::string s = "[";
  for (int i = 0; i < R; ++i) s += (i ? ", " : "") + std::to_string(e[i]);
  return s + "]";
}

template <class V, int R>
void check_shape(const std::string& name, const V& v, const index_t (&expect)[R]);

template <class V, std::size_t R>
void check_shape(const std::string& name, const V& v, const std::array<index_t, R>& expect) {
  index_t e[R];
  for (std::size_t i = 0; i < R; ++i) e[i] = expect[i];
  check_shape(name, v, e);
}

template <class V, int R>
void check_shape(const std::string& name, const V& v, const index_t (&expect)[R]) {
  static_assert(V::rank == R, "rank mismatch in check_shape");
  for (int i = 0; i < R; ++i)
    if (v.shape[i] != expect[i])
      fail("tensor '", name, "': expected shape ", shape_string(expect), ", found ", shape_string(v));
}
}  // namespace detail

/// Checks every parameter against the configuration and against each other, and returns the
/// dimensions. Throws radargate::error naming the tensor, the expected and the found value.
template <class T>
Dims validate(const LayerConfig& c, const Params<T>& p) {
  for_each_param(p, [&](const char* name, const auto& v) {
    const Need need = param_need(c, name);
    if (need == Need::required && !v.present())
      detail::fail("tensor '", name, "': required by variant '", to_string(c.variant),
                   c.rotation && std::string(name) == "map.M" ? "' with map \"learned\"" : "'", ", but it is missing");
    if (need == Need::unused && v.present())
      detail::fail("tensor '", name, "': not read by variant '", to_string(c.variant), "'",
                   std::string(name) == "map.M" ? " with map \"mean\"" : "", "; remove it from the model");
    for (int i = 0; i < std::decay_t<decltype(v)>::rank; ++i)
      if (v.present() && v.shape[i] < 0) detail::fail("tensor '", name, "': negative extent");
  });
  Dims D;
  D.N = p.lora_A.shape[0];
  D.r = p.lora_A.shape[1];
  D.d_in = p.lora_A.shape[2];
  D.d = p.lora_B.shape[1];
  if (D.N < 1) detail::fail("tensor 'lora.A': expected at least one expert (N >= 1), found N = ", D.N);
  if (D.r < 1) detail::fail("tensor 'lora.A': expected rank r >= 1, found r = ", D.r);
  if (D.d_in < 1) detail::fail("tensor 'lora.A': expected d_in >= 1, found d_in = ", D.d_in);
  if (D.d < 1) detail::fail("tensor 'lora.B': expected d >= 1, found d = ", D.d);
  detail::check_shape("lora.B", p.lora_B, {D.N, D.d, D.r});
  if (c.rotation) {
    D.P = p.angle_U.shape[0];
    D.k = p.angle_U.shape[1];
    if (D.P < 1 || D.P > D.d / 2)
      detail::fail("tensor 'angle.U': expected P (rows) in 1..floor(d/2) = 1..", D.d / 2, ", found ", D.P);
    if (D.k < 1) detail::fail("tensor 'angle.U': expected angle rank k (columns) >= 1, found ", D.k);
  }
  // lora.A and angle.U define the dimensions; every other present tensor has its table shape.
  int row = 0;
  for_each_param(p, [&](const char* name, const auto& v) {
    const ParamInfo& info = param_table[row++];
    if (v.present() && info.reader != Reader::experts && info.reader != Reader::rotation)
      detail::check_shape(name, v, param_extents<std::decay_t<decltype(v)>::rank>(info, D));
  });
  c.validate(D.N);
  return D;
}

/// Checks the shape of every requested gradient.
template <class T>
void validate_gradients(const Dims& D, index_t T_tokens, const Params<T>& p, const Gradients<T>& g) {
  if (g.x.present()) detail::check_shape("grad.x", g.x, {T_tokens, D.d_in});
  // A gradient for a parameter has the parameter's shape; one for an absent parameter is an error.
  auto check = [&](const char* name, const auto& pv, const auto& gv) {
    if (!gv.present()) return;
    if (!pv.present()) detail::fail("gradient 'grad.", name, "': asked for, but the parameter '", name, "' is absent");
    for (int i = 0; i < std::decay_t<decltype(pv)>::rank; ++i)
      if (pv.shape[i] != gv.shape[i])
        detail::fail("gradient 'grad.", name, "': expected shape ", detail::shape_string(pv), ", found ",
                     detail::shape_string(gv));
  };
#define RADARGATE_CHECK_(member, name, rank, shape, reader, init) check(name, p.member, g.member);
  RADARGATE_PARAMETERS(RADARGATE_CHECK_)
#undef RADARGATE_CHECK_
}

}  // namespace radargate
