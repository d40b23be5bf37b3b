// radargate/io/model_file.hpp -- model and activation files (docs/FORMAT.md).
//
// A model file is a safetensors file whose tensors are named after the parameters
//
//   lora.A [N, r, d_in]  lora.B [N, d, r]  lora.scale [N]  map.M [N, N]
//   angle.Wx [k, d_in]  angle.Wv [k, d]  angle.Wc [k, d]  angle.U [P, k]  angle.bias [N, P]
//   stretch.Wg [N, d_in]  stretch.bg [N]  stretch.ws [d]  base.W0 [d, d_in]  base.b0 [d]
//
// all of one floating dtype (F64, F32, F16 or BF16), and whose __metadata__ holds the layer
// configuration as a JSON object under "radargate.config":
//
//   {"variant": "radargate", "map": "learned", "bound": "pi_tanh", "pairing": "adjacent",
//    "normalize": "softmax", "tau": 1, "topk": 2}
//
// Only "variant" is required; the other fields default as in docs/FORMAT.md. An input file holds
// x [T, d_in] and, for backward, dy [T, d], in the model's dtype; an output file holds y [T, d]
// and grad.<name> for each gradient.
//
// Loading checks every name, dtype, shape and value and throws radargate::error naming the file,
// the tensor or field, what was expected and what was found.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../layer_config.hpp"
#include "../model.hpp"
#include "../params.hpp"
#include "safetensors.hpp"

namespace radargate {
namespace io {

/// The __metadata__ key that holds the layer configuration.
inline constexpr const char* config_key = "radargate.config";

// --- configuration <-> JSON ----------------------------------------------------------------------

/// The configuration as JSON: the variant and every field that variant reads (map, bound and
/// pairing when it rotates; normalize and tau when its gate has logits; topk for top-k softmax).
inline nlohmann::json config_to_json(const LayerConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  j["variant"] = to_string(c.variant);
  if (c.rotation) {
    j["map"] = to_string(c.map);
    j["bound"] = to_string(c.bound);
    j["pairing"] = to_string(c.pairing);
  }
  if (c.has_logits()) {
    j["normalize"] = to_string(c.normalize);
    j["tau"] = c.tau;
    if (c.normalize == Normalize::topk_softmax) j["topk"] = c.topk;
  }
  return j;
}

namespace detail {
// The steps of config_from_json.

/// Throws unless j is an object whose every key is a configuration field.
inline void config_check_fields(const nlohmann::json& j) {
  if (!j.is_object())
    detail::fail("config: expected a JSON object, found ", j.type_name(), " (", detail::excerpt(j), ")");
  static const char* const fields[] = {"variant", "map", "bound", "pairing", "normalize", "tau", "topk"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* f : fields) known = known || it.key() == f;
    if (!known)
      detail::fail("config field '", detail::printable(it.key()),
                   "': unknown; expected one of variant, map, bound, pairing, normalize, tau, topk");
  }
}

/// The string field `field` of j, or null when absent.
inline const nlohmann::json* config_text(const nlohmann::json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) return nullptr;
  if (!it->is_string())
    detail::fail("config field '", field, "': expected a string, found ", it->type_name(), " (", detail::excerpt(*it),
                 ")");
  return &*it;
}

// Enumerated values are checked by the parsers of layer_config.hpp; the value is made printable
// first so that a message quoting it stays on one line.
inline std::string config_value(const nlohmann::json* v) { return detail::printable(v->get<std::string>()); }

/// Reads map, bound, pairing and normalize into c, each only where c's variant reads it.
inline void config_read_names(const nlohmann::json& j, const std::string& variant, LayerConfig& c) {
  for (const char* f : {"map", "bound", "pairing"})
    if (!c.rotation && j.contains(f))
      detail::fail("config field '", f, "': variant '", variant,
                   "' does not rotate (only rotation_only and radargate do), so it is not read; found ",
                   detail::excerpt(j.at(f)));
  if (const nlohmann::json* m = config_text(j, "map")) c.map = parse_map_mode(config_value(m));
  if (const nlohmann::json* b = config_text(j, "bound")) c.bound = parse_bound(config_value(b));
  if (const nlohmann::json* p = config_text(j, "pairing")) c.pairing = parse_pairing(config_value(p));
  if (const nlohmann::json* n = config_text(j, "normalize")) {
    if (!c.has_logits())
      detail::fail("config field 'normalize': variant '", variant, "' has a gate without logits (", to_string(c.gate),
                   "), so nothing to normalize; found \"", config_value(n), "\"");
    c.normalize = parse_normalize(config_value(n));
  }
}

/// Reads tau into c where present.
inline void config_read_tau(const nlohmann::json& j, const std::string& variant, LayerConfig& c) {
  auto t = j.find("tau");
  if (t == j.end()) return;
  if (!c.has_logits())
    detail::fail("config field 'tau': variant '", variant, "' has a gate without logits (", to_string(c.gate),
                 "), so no temperature is read; found ", detail::excerpt(*t));
  if (!t->is_number())
    detail::fail("config field 'tau': expected a number, found ", t->type_name(), " (", detail::excerpt(*t), ")");
  c.tau = t->get<double>();
  // A subnormal temperature turns every finite logit into an infinite one.
  if (!std::isnormal(c.tau) || c.tau < 0 || c.tau > 1e300)
    detail::fail("config field 'tau': expected a normal number in [", std::numeric_limits<double>::min(),
                 ", 1e300], found ", detail::excerpt(*t));
}

/// Reads topk into c where present.
inline void config_read_topk(const nlohmann::json& j, const std::string& variant, LayerConfig& c) {
  auto k = j.find("topk");
  if (k == j.end()) return;
  if (!k->is_number_integer())
    detail::fail("config field 'topk': expected an integer, found ", k->type_name(), " (", detail::excerpt(*k), ")");
  if (!c.has_logits() || c.normalize != Normalize::topk_softmax)
    detail::fail("config field 'topk': only read by normalize topk_softmax, but variant '", variant,
                 "' normalizes with ", c.has_logits() ? to_string(c.normalize) : "nothing (a gate without logits)",
                 "; found ", detail::excerpt(*k));
  // Judged on the JSON text, so that 18446744073709551615 is not reported as -1.
  const bool in_range =
      k->is_number_unsigned() ? k->get<std::uint64_t>() >= 1 && k->get<std::uint64_t>() <= 1000000000 : false;
  if (!in_range) detail::fail("config field 'topk': expected a value in 1..N, found ", detail::excerpt(*k));
  c.topk = int(k->get<std::uint64_t>());
}
}  // namespace detail

/// Parses a configuration object. Unknown fields, wrong types, unknown names, and a field the
/// variant does not read (map, bound or pairing without rotation; normalize or tau for a gate
/// without logits; topk unless normalize is topk_softmax) are errors
/// ("config field 'tau': expected a number, found string (\"1\")").
inline LayerConfig config_from_json(const nlohmann::json& j) {
  detail::config_check_fields(j);
  const nlohmann::json* v = detail::config_text(j, "variant");
  if (!v) detail::fail("config field 'variant': required, but it is missing");
  LayerConfig c = LayerConfig::make(parse_variant(detail::config_value(v)));
  const std::string variant = to_string(c.variant);
  detail::config_read_names(j, variant, c);
  detail::config_read_tau(j, variant, c);
  detail::config_read_topk(j, variant, c);
  c.validate();
  return c;
}

/// Parses the text of a "radargate.config" entry (at most 16 levels deep, no repeated key).
inline LayerConfig parse_config(const std::string& text) {
  return config_from_json(detail::parse_json_checked(text, "config"));
}

// --- value checks --------------------------------------------------------------------------------

/// Throws unless every element is finite: "tensor 'x': expected finite values, found nan at index [2, 5]".
template <class S>
void require_finite(const std::string& name, const Tensor<S>& t) {
  for (std::size_t i = 0; i < t.data.size(); ++i) {
    if (std::isfinite(t.data[i])) continue;
    std::vector<index_t> idx(t.shape.size());
    std::size_t rest = i;
    for (std::size_t k = t.shape.size(); k-- > 0;) {
      idx[k] = index_t(rest % std::size_t(t.shape[k]));
      rest /= std::size_t(t.shape[k]);
    }
    detail::fail("tensor '", detail::printable(name), "': expected finite values, found ", t.data[i], " at index ",
                 detail::shape_str(idx));
  }
}

namespace detail {
/// Runs f and prefixes any radargate::error it throws with "file '<source>': ".
template <class F>
auto in_file(const std::string& source, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const radargate::error& e) {
    const std::string what = e.what();
    if (what.rfind("file '", 0) == 0) throw;
    fail("file '", printable(source), "': ", what);
  }
}

inline std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}
}  // namespace detail

// --- model files ---------------------------------------------------------------------------------

/// The one floating dtype every tensor of a model file shares.
inline DType model_dtype(const SafetensorsFile& f) {
  const std::vector<TensorInfo>& ts = f.tensors();
  if (ts.empty()) f.fail_file("no tensors: expected a model with at least lora.A and lora.B");
  // Name the reference tensor by file order of the parameter list, so messages are stable.
  const TensorInfo* first = nullptr;
  for (const std::string& n : param_names())
    if (f.has(n)) {
      first = &f.info(n);
      break;
    }
  if (!first) first = &ts.front();
  if (!is_floating(first->dtype))
    f.fail_tensor(first->name, "expected a floating-point dtype (F64, F32, F16 or BF16), found ",
                  to_string(first->dtype));
  for (const TensorInfo& t : ts)
    if (t.dtype != first->dtype)
      f.fail_tensor(t.name, "expected dtype ", to_string(first->dtype), " (the dtype of '", first->name, "'), found ",
                    to_string(t.dtype));
  return first->dtype;
}

template <class S>
struct LoadedModel {
  Model<S> model;
  DType dtype = DType::F32;  // the file's dtype
  Dims dims;                 // read off the validated tensors
};

/// Loads and validates a model: the configuration, every tensor name (unknown names are errors),
/// one common dtype, every shape against the configuration, and finite values.
template <class S>
LoadedModel<S> load_model(const SafetensorsFile& f) {
  LoadedModel<S> lm;
  auto it = f.metadata().find(config_key);
  if (it == f.metadata().end())
    f.fail_file("missing __metadata__ entry '", config_key,
                "' (the layer configuration, a JSON object with at least \"variant\"); not a radargate model file?");
  lm.model.config = detail::in_file(f.source(), [&] {
    try {
      return parse_config(it->second);
    } catch (const radargate::error& e) {
      detail::fail("__metadata__ '", config_key, "': ", e.what());
    }
  });
  for (const TensorInfo& t : f.tensors()) {
    bool known = false;
    for (const std::string& n : param_names()) known = known || n == t.name;
    if (!known) f.fail_tensor(t.name, "unknown parameter name; expected one of ", detail::join(param_names()));
  }
  lm.dtype = model_dtype(f);
  for (const TensorInfo& t : f.tensors()) {
    Tensor<S> v = f.get<S>(t.name);
    detail::in_file(f.source(), [&] { require_finite(t.name, v); });
    lm.model.tensors.emplace(t.name, std::move(v));
  }
  lm.dims = detail::in_file(f.source(), [&] { return validate(lm.model.config, lm.model.params()); });
  return lm;
}

template <class S>
LoadedModel<S> load_model(const std::string& path) {
  return load_model<S>(SafetensorsFile::read(path));
}

/// The file image of a model (validated first; an invalid model is never written).
template <class S>
SafetensorsWriter model_writer(const Model<S>& m, DType dtype) {
  validate(m.config, m.params());
  for (const auto& kv : m.tensors) (void)param_shape(kv.first, Dims{});  // unknown names throw
  SafetensorsWriter w;
  w.set_metadata(config_key, config_to_json(m.config).dump());
  for (const std::string& n : param_names()) {
    auto it = m.tensors.find(n);
    if (it != m.tensors.end()) w.add(n, it->second, dtype);
  }
  return w;
}

/// Writes a model atomically in the given dtype (F64, F32, F16 or BF16).
template <class S>
void save_model(const std::string& path, const Model<S>& m, DType dtype) {
  model_writer(m, dtype).write_atomic(path);
}

// --- activation files ----------------------------------------------------------------------------

/// Reads the [T, cols] matrix `name` from an activation file: present, of dtype `dtype`, rank 2,
/// `cols` columns (`what` names the dimension in messages, e.g. "d_in"), finite.
template <class S>
Tensor<S> read_matrix(const SafetensorsFile& f, const std::string& name, DType dtype, index_t cols, const char* what) {
  if (!f.has(name)) f.fail_tensor(name, "missing from the file (expected shape [T, ", cols, "])");
  const TensorInfo& ti = f.info(name);
  if (ti.dtype != dtype)
    f.fail_tensor(name, "expected dtype ", to_string(dtype), " (the model's dtype), found ", to_string(ti.dtype));
  if (ti.shape.size() != 2 || ti.shape[1] != cols)
    f.fail_tensor(name, "expected shape [T, ", cols, "] (", what, " = ", cols, "), found ",
                  detail::shape_str(ti.shape));
  Tensor<S> t = f.get<S>(name);
  detail::in_file(f.source(), [&] { require_finite(name, t); });
  return t;
}

template <class S>
struct Activations {
  Tensor<S> x;   // [T, d_in]
  Tensor<S> dy;  // [T, d], empty unless asked for
};

/// Reads an input file for a model of dimensions D stored as `dtype`: x, and dy (required when
/// `with_dy`; checked whenever present). Names other than x and dy are errors, so a misspelt
/// tensor is never silently ignored.
template <class S>
Activations<S> load_activations(const SafetensorsFile& f, const Dims& D, DType dtype, bool with_dy) {
  for (const TensorInfo& t : f.tensors())
    if (t.name != "x" && t.name != "dy") f.fail_tensor(t.name, "unknown input name; expected x [T, d_in] or dy [T, d]");
  Activations<S> a;
  a.x = read_matrix<S>(f, "x", dtype, D.d_in, "d_in");
  if (with_dy && !f.has("dy"))
    f.fail_tensor("dy", "missing from the file (backward needs dy [", a.x.shape[0], ", ", D.d, "])");
  // A dy that is present is checked even when it is not used: a file with a bad tensor is a bad file.
  if (f.has("dy")) {
    a.dy = read_matrix<S>(f, "dy", dtype, D.d, "d");
    if (a.dy.shape[0] != a.x.shape[0])
      f.fail_tensor("dy", "expected shape [", a.x.shape[0], ", ", D.d, "] (T from x), found ",
                    detail::shape_str(a.dy.shape));
  }
  return a;
}

}  // namespace io
}  // namespace radargate
