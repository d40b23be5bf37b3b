// radargate/layer_config.hpp -- what a layer computes, chosen at run time.
//
// A variant is a rotation switch plus a gate kind (docs/MATH.md, "Forward"). With u_i = vt_i when rotation
// is on and u_i = v_i when it is off:
//
//   gate none     g_i = 1
//   gate uniform  g_i = 1/N
//   gate static   g = normalize(bg / tau)
//   gate linear   g = normalize((Wg x + bg) / tau)
//   gate stretch  g = normalize((Wg x + bg + [ws . u_i]_i) / tau)
//
//   y = W0 x + b0 + sum_i g_i u_i
#pragma once

#include <string>
#include <string_view>

#include "config.hpp"
#include "error.hpp"

namespace radargate {

enum class Variant { sum, uniform, static_, softmax, topk, stretch_only, rotation_only, radargate };
enum class GateKind { none, uniform, static_, linear, stretch };
enum class Normalize { softmax, sigmoid, topk_softmax, identity };
enum class MapMode { learned, mean };
enum class Bound { none, pi_tanh };
enum class Pairing { adjacent, half };

inline constexpr Variant all_variants[] = {Variant::sum,           Variant::uniform,  Variant::static_,
                                           Variant::softmax,       Variant::topk,     Variant::stretch_only,
                                           Variant::rotation_only, Variant::radargate};

inline const char* to_string(Variant v) {
  switch (v) {
    case Variant::sum:
      return "sum";
    case Variant::uniform:
      return "uniform";
    case Variant::static_:
      return "static";
    case Variant::softmax:
      return "softmax";
    case Variant::topk:
      return "topk";
    case Variant::stretch_only:
      return "stretch_only";
    case Variant::rotation_only:
      return "rotation_only";
    case Variant::radargate:
      return "radargate";
  }
  return "?";
}
inline const char* to_string(GateKind g) {
  switch (g) {
    case GateKind::none:
      return "none";
    case GateKind::uniform:
      return "uniform";
    case GateKind::static_:
      return "static";
    case GateKind::linear:
      return "linear";
    case GateKind::stretch:
      return "stretch";
  }
  return "?";
}
inline const char* to_string(Normalize n) {
  switch (n) {
    case Normalize::softmax:
      return "softmax";
    case Normalize::sigmoid:
      return "sigmoid";
    case Normalize::topk_softmax:
      return "topk_softmax";
    case Normalize::identity:
      return "identity";
  }
  return "?";
}
inline const char* to_string(MapMode m) { return m == MapMode::learned ? "learned" : "mean"; }
inline const char* to_string(Bound b) { return b == Bound::none ? "none" : "pi_tanh"; }
inline const char* to_string(Pairing p) { return p == Pairing::adjacent ? "adjacent" : "half"; }

namespace detail {
template <class E, std::size_t K>
E parse_enum(std::string_view field, std::string_view text, const E (&values)[K]) {
  std::string allowed;
  for (E v : values) {
    if (text == to_string(v)) return v;
    allowed += allowed.empty() ? "" : " | ";
    allowed += to_string(v);
  }
  fail("config field '", field, "': expected one of ", allowed, ", found \"", text, "\"");
}
}  // namespace detail

inline Variant parse_variant(std::string_view s) { return detail::parse_enum("variant", s, all_variants); }
inline Normalize parse_normalize(std::string_view s) {
  constexpr Normalize v[] = {Normalize::softmax, Normalize::sigmoid, Normalize::topk_softmax, Normalize::identity};
  return detail::parse_enum("normalize", s, v);
}
inline MapMode parse_map_mode(std::string_view s) {
  constexpr MapMode v[] = {MapMode::learned, MapMode::mean};
  return detail::parse_enum("map", s, v);
}
inline Bound parse_bound(std::string_view s) {
  constexpr Bound v[] = {Bound::none, Bound::pi_tanh};
  return detail::parse_enum("bound", s, v);
}
inline Pairing parse_pairing(std::string_view s) {
  constexpr Pairing v[] = {Pairing::adjacent, Pairing::half};
  return detail::parse_enum("pairing", s, v);
}

/// The run-time configuration of one layer. Build it with LayerConfig::make(variant) and then
/// change the free fields (map, bound, pairing, normalize, tau, topk).
struct LayerConfig {
  Variant variant = Variant::radargate;
  bool rotation = true;                      // fixed by the variant
  GateKind gate = GateKind::stretch;         // fixed by the variant
  Normalize normalize = Normalize::softmax;  // default per variant; used by static/linear/stretch
  MapMode map = MapMode::learned;
  Bound bound = Bound::pi_tanh;
  Pairing pairing = Pairing::adjacent;
  double tau = 1.0;
  int topk = 2;

  static LayerConfig make(Variant v) {
    LayerConfig c;
    c.variant = v;
    switch (v) {
      case Variant::sum:
        c.rotation = false;
        c.gate = GateKind::none;
        break;
      case Variant::uniform:
        c.rotation = false;
        c.gate = GateKind::uniform;
        break;
      case Variant::static_:
        c.rotation = false;
        c.gate = GateKind::static_;
        c.normalize = Normalize::identity;
        break;
      case Variant::softmax:
        c.rotation = false;
        c.gate = GateKind::linear;
        c.normalize = Normalize::softmax;
        break;
      case Variant::topk:
        c.rotation = false;
        c.gate = GateKind::linear;
        c.normalize = Normalize::topk_softmax;
        break;
      case Variant::stretch_only:
        c.rotation = false;
        c.gate = GateKind::stretch;
        c.normalize = Normalize::softmax;
        break;
      case Variant::rotation_only:
        c.rotation = true;
        c.gate = GateKind::uniform;
        break;
      case Variant::radargate:
        c.rotation = true;
        c.gate = GateKind::stretch;
        c.normalize = Normalize::softmax;
        break;
    }
    return c;
  }

  /// True when the gate computes logits and passes them through `normalize`.
  bool has_logits() const { return gate == GateKind::static_ || gate == GateKind::linear || gate == GateKind::stretch; }
  /// True when the gate weights depend on the expert outputs (the stretch term ws . u_i).
  bool gate_reads_experts() const { return gate == GateKind::stretch; }

  /// Checks the fields against each other and against the number of experts N (pass N <= 0 to
  /// skip the checks that need it). Throws radargate::error.
  void validate(index_t N = 0) const {
    if (!(tau > 0.0) || tau != tau || tau > 1e300)
      detail::fail("config field 'tau': expected a finite number > 0, found ", tau);
    if (normalize == Normalize::topk_softmax) {
      if (topk < 1) detail::fail("config field 'topk': expected a value in 1..N, found ", topk);
      if (N > 0 && topk > N) detail::fail("config field 'topk': expected a value in 1..", N, " (N), found ", topk);
    }
  }
};

}  // namespace radargate
