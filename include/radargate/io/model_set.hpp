// radargate/io/model_set.hpp -- model files of many named layers (docs/FORMAT.md, "Model files of
// many layers").
//
// A file of many layers names each layer after the module it adapts (as the base model names it,
// e.g. "model.layers.0.self_attn.q_proj"). Layer L's parameter p is the tensor "L.p":
//
//   model.layers.0.self_attn.q_proj.lora.A [N, r, d_in]
//   model.layers.0.self_attn.q_proj.lora.B [N, d, r]   ...
//
// and __metadata__["radargate.layers"] lists the layers in order, each with its configuration
// (the object a one-layer file keeps under "radargate.config"):
//
//   [{"name": "model.layers.0.self_attn.q_proj", "config": {"variant": "sum"}}, ...]
//
// A one-layer file (no "radargate.layers", tensors named "lora.A", ..., "radargate.config") opens as
// a set of one layer whose name is empty, so every reader of sets reads today's files unchanged.
//
// Each layer is checked as a one-layer file is: known parameter names, one floating dtype per layer,
// shapes against each other and the configuration, finite values. Every tensor of the file belongs
// to exactly one listed layer.
//
// No copy where none is needed: an F32 tensor opened as float (F64 as double) whose bytes are aligned
// is viewed in place, in the file's bytes held by the set; other tensors are decoded once into
// storage the set owns. Params views stay valid as long as the ModelSet (moves included) lives.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "model_file.hpp"

namespace radargate {
namespace io {

/// The __metadata__ key that lists the layers of a file of many layers.
inline constexpr const char* layers_key = "radargate.layers";

namespace detail {
inline bool host_is_little_endian() {
  const std::uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

/// "model.layers.0.q_proj" -> checks a layer name: non-empty, no control characters, and not a
/// parameter name itself (so "L.p" always parses back to one layer and one parameter).
inline void check_layer_name(const std::string& name) {
  if (name.empty()) fail("layer name: expected a non-empty name, found \"\"");
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f) fail("layer name '", name, "': expected printable characters, found byte ", int(c));
  if (name.front() == '.' || name.back() == '.') fail("layer name '", name, "': expected no leading or trailing '.'");
}
}  // namespace detail

/// One layer of a set: its name, configuration, dimensions, the file dtype of its tensors, and
/// Params views (in the file's bytes or in storage the set owns).
template <class S>
struct ModelLayer {
  std::string name;  // empty for the one layer of a one-layer file
  LayerConfig config = LayerConfig::make(Variant::sum);
  Dims dims;
  DType dtype = DType::F32;
  Params<S> params;
  std::vector<std::string> tensors;                    // parameter names present, in file order
  std::map<std::string, std::vector<index_t>> shapes;  // parameter name -> shape
  std::size_t in_place = 0;                            // how many tensors are viewed in the file's bytes

  /// The number of values of every tensor of the layer.
  index_t parameter_count() const {
    index_t n = 0;
    for (const auto& kv : shapes) {
      index_t e = 1;
      for (index_t x : kv.second) e *= x;
      n += e;
    }
    return n;
  }

  /// The file tensor name of parameter p ("L.p", or "p" in a one-layer file).
  std::string tensor_name(const std::string& p) const { return name.empty() ? p : name + "." + p; }

  /// An owning copy (for code that wants a Model, e.g. to train or save it).
  Model<S> to_model() const {
    Model<S> m;
    m.config = config;
    for_each_param(params, [&](const char* n, const auto& v) {
      if (!v.data) return;
      auto it = shapes.find(n);
      if (it == shapes.end()) return;
      Tensor<S> t;
      t.shape = it->second;
      t.data.assign(v.data, v.data + t.numel());
      m.tensors.emplace(n, std::move(t));
    });
    return m;
  }
};

/// A model file opened as a set of layers by name.
///
///   io::ModelSet<float> set = io::ModelSet<float>::open("model.safetensors");
///   const io::ModelLayer<float>& q = set.layer("model.layers.0.self_attn.q_proj");
///   radargate::Layer<float> layer(q.config, q.params);
///   for (const io::ModelLayer<float>& l : set) ...
template <class S>
class ModelSet {
  static_assert(std::is_floating_point<S>::value, "ModelSet<S>: S must be float or double");

 public:
  using const_iterator = typename std::vector<ModelLayer<S>>::const_iterator;

  static ModelSet open(const std::string& path) {
    return ModelSet(std::make_shared<const SafetensorsFile>(SafetensorsFile::read(path)));
  }

  /// Opens a file already read (shared, so its bytes outlive every view into them).
  explicit ModelSet(std::shared_ptr<const SafetensorsFile> file) : file_(std::move(file)) { build(); }

  const SafetensorsFile& file() const { return *file_; }
  /// True for a file of many layers ("radargate.layers"); false for a one-layer file.
  bool named() const { return named_; }
  std::size_t size() const { return layers_.size(); }
  const_iterator begin() const { return layers_.begin(); }
  const_iterator end() const { return layers_.end(); }
  const ModelLayer<S>& operator[](std::size_t i) const { return layers_.at(i); }

  /// Layer names in file order.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const ModelLayer<S>& l : layers_) n.push_back(l.name);
    return n;
  }
  bool has(const std::string& name) const { return find(name) != nullptr; }
  const ModelLayer<S>* find(const std::string& name) const {
    for (const ModelLayer<S>& l : layers_)
      if (l.name == name) return &l;
    return nullptr;
  }
  /// The layer called `name`; an error lists the names the file holds.
  const ModelLayer<S>& layer(const std::string& name) const {
    if (const ModelLayer<S>* l = find(name)) return *l;
    if (!named_)
      file_->fail_file("layer '", name,
                       "': this is a one-layer file (its layer has no name); leave out the layer name");
    file_->fail_file("no layer '", name, "'; the file holds ", layers_.size(), " layers: ", detail::join(names()));
  }
  /// The layer a command-line tool means: `name` when given; with no name, the only layer, or an
  /// error listing the names when there are several.
  const ModelLayer<S>& select(const std::string& name) const {
    if (!name.empty()) return layer(name);
    if (layers_.size() == 1) return layers_.front();
    file_->fail_file("holds ", layers_.size(), " layers; choose one with --layer NAME: ", detail::join(names()));
  }

 private:
  std::shared_ptr<const SafetensorsFile> file_;
  bool named_ = false;
  std::vector<ModelLayer<S>> layers_;
  std::vector<std::unique_ptr<std::vector<S>>> owned_;  // decoded tensors (stable addresses)

  void build() {
    const SafetensorsFile& f = *file_;
    const auto& md = f.metadata();
    auto lk = md.find(layers_key);
    auto ck = md.find(config_key);
    std::vector<std::pair<std::string, LayerConfig>> list;
    if (lk == md.end()) {
      if (ck == md.end())
        f.fail_file("missing __metadata__ entry '", config_key, "' (one layer) or '", layers_key,
                    "' (many layers); not a radargate model file?");
      const LayerConfig c = detail::in_file(f.source(), [&] {
        try {
          return parse_config(ck->second);
        } catch (const radargate::error& e) {
          radargate::detail::fail("__metadata__ '", config_key, "': ", e.what());
        }
      });
      list.emplace_back(std::string(), c);
    } else {
      named_ = true;
      if (ck != md.end())
        f.fail_file("__metadata__ holds both '", config_key, "' (one layer) and '", layers_key,
                    "' (many layers); expected one of them");
      list = parse_layer_list(lk->second);
    }
    // Which tensor belongs to which layer.
    std::map<std::string, std::pair<std::size_t, std::string>> owner;  // tensor -> (layer, param)
    for (std::size_t i = 0; i < list.size(); ++i)
      for (const std::string& p : param_names()) owner[list[i].first.empty() ? p : list[i].first + "." + p] = {i, p};
    for (const TensorInfo& t : f.tensors())
      if (!owner.count(t.name)) {
        if (named_)
          f.fail_tensor(t.name, "belongs to no layer: expected '<layer>.<parameter>' with a layer listed in '",
                        layers_key, "' (", detail::join(layer_names(list)), ") and a parameter among ",
                        detail::join(param_names()));
        f.fail_tensor(t.name, "unknown parameter name; expected one of ", detail::join(param_names()));
      }
    layers_.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) layers_.push_back(load_layer(list[i].first, list[i].second));
  }

  static std::vector<std::string> layer_names(const std::vector<std::pair<std::string, LayerConfig>>& list) {
    std::vector<std::string> n;
    for (const auto& e : list) n.push_back(e.first);
    return n;
  }

  std::vector<std::pair<std::string, LayerConfig>> parse_layer_list(const std::string& text) const {
    const SafetensorsFile& f = *file_;
    const std::string where = std::string("__metadata__ '") + layers_key + "'";
    // Depth-limited and duplicate-checked, so that the dump() of a bad entry below stays bounded.
    const nlohmann::json j = detail::in_file(f.source(), [&] { return detail::parse_json_checked(text, where); });
    if (!j.is_array() || j.empty())
      f.fail_file(where, ": expected a non-empty array of {\"name\": ..., \"config\": {...}}, found ",
                  detail::excerpt(j));
    std::vector<std::pair<std::string, LayerConfig>> out;
    std::set<std::string> seen;
    for (std::size_t i = 0; i < j.size(); ++i) {
      const nlohmann::json& e = j[i];
      if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("config"))
        f.fail_file(where, " entry ", i, ": expected {\"name\": \"<layer>\", \"config\": {...}}, found ",
                    detail::excerpt(e));
      for (auto it = e.begin(); it != e.end(); ++it)
        if (it.key() != "name" && it.key() != "config")
          f.fail_file(where, " entry ", i, ": unknown field '", detail::excerpt(it.key()),
                      "'; expected name and config");
      const std::string name = e["name"].get<std::string>();
      detail::in_file(f.source(), [&] { detail::check_layer_name(name); });
      if (!seen.insert(name).second) f.fail_file(where, ": layer '", name, "' listed more than once");
      const LayerConfig c = detail::in_file(f.source(), [&] {
        try {
          return config_from_json(e["config"]);
        } catch (const radargate::error& x) {
          radargate::detail::fail("layer '", name, "': ", x.what());
        }
      });
      out.emplace_back(name, c);
    }
    return out;
  }

  ModelLayer<S> load_layer(const std::string& name, const LayerConfig& config) {
    const SafetensorsFile& f = *file_;
    ModelLayer<S> l;
    l.name = name;
    l.config = config;
    const TensorInfo* first = nullptr;
    for (const std::string& p : param_names()) {
      const std::string tn = l.tensor_name(p);
      if (!f.has(tn)) continue;
      const TensorInfo& ti = f.info(tn);
      if (!first) {
        first = &ti;
        if (!is_floating(ti.dtype))
          f.fail_tensor(tn, "expected a floating-point dtype (F64, F32, F16 or BF16), found ", to_string(ti.dtype));
      } else if (ti.dtype != first->dtype) {
        f.fail_tensor(tn, "expected dtype ", to_string(first->dtype), " (the dtype of '", first->name, "'), found ",
                      to_string(ti.dtype));
      }
      l.tensors.push_back(p);
      l.shapes[p] = ti.shape;
    }
    if (!first)
      f.fail_file(name.empty() ? std::string("no tensors") : "layer '" + name + "': no tensors",
                  ": expected at least lora.A and lora.B");
    l.dtype = first->dtype;
    for_each_param(l.params, [&](const char* p, auto& view) {
      using V = std::decay_t<decltype(view)>;
      auto it = l.shapes.find(p);
      if (it == l.shapes.end()) return;
      const std::string tn = l.tensor_name(p);
      if (int(it->second.size()) != V::rank)
        f.fail_tensor(tn, "expected a rank-", V::rank, " tensor, found shape ", detail::shape_str(it->second));
      const S* data = tensor_data(tn, l.in_place);
      view.data = data;
      index_t s = 1;
      for (int k = V::rank - 1; k >= 0; --k) {
        view.shape[k] = it->second[std::size_t(k)];
        view.stride[k] = s;
        s *= it->second[std::size_t(k)];
      }
      for (index_t i = 0, n = f.info(tn).numel(); i < n; ++i)
        if (!std::isfinite(data[i])) {
          Tensor<S> t;  // only to name the index
          t.shape = it->second;
          t.data.assign(data, data + n);
          detail::in_file(f.source(), [&] { require_finite(tn, t); });
        }
    });
    l.dims = detail::in_file(f.source(), [&] {
      try {
        return validate(l.config, l.params);
      } catch (const radargate::error& e) {
        if (name.empty()) throw;
        radargate::detail::fail("layer '", name, "': ", e.what());
      }
    });
    return l;
  }

  /// A pointer to the values of a tensor as S: in the file's bytes when they already are S
  /// (matching dtype, little-endian host, aligned), else in a decoded copy the set owns.
  const S* tensor_data(const std::string& tn, std::size_t& in_place) {
    const SafetensorsFile& f = *file_;
    const TensorInfo& ti = f.info(tn);
    const DType same = std::is_same<S, double>::value ? DType::F64 : DType::F32;
    const unsigned char* raw = f.raw(tn);
    static const S empty_anchor{};
    if (ti.numel() == 0) return &empty_anchor;
    if (ti.dtype == same && detail::host_is_little_endian() &&
        reinterpret_cast<std::uintptr_t>(raw) % alignof(S) == 0) {
      ++in_place;
      return reinterpret_cast<const S*>(raw);
    }
    owned_.push_back(std::make_unique<std::vector<S>>(std::size_t(ti.numel())));
    detail::decode(raw, ti.dtype, owned_.back()->size(), owned_.back()->data());
    return owned_.back()->data();
  }
};

/// Writes files of many layers: add layers by name, then write. Layer tensors are stored in the
/// order they were added, each layer's parameters in file order.
class ModelSetWriter {
 public:
  /// Adds a layer (validated first: an invalid layer is never written).
  template <class S>
  void add(const std::string& name, const Model<S>& m, DType dtype) {
    detail::check_layer_name(name);
    for (const auto& e : list_)
      if (e["name"] == name) radargate::detail::fail("layer '", name, "': added twice");
    try {
      validate(m.config, m.params());
      for (const auto& kv : m.tensors) (void)param_shape(kv.first, Dims{});
      for (const auto& kv : m.tensors) require_finite(kv.first, kv.second);
    } catch (const radargate::error& e) {
      radargate::detail::fail("layer '", name, "': ", e.what());
    }
    for (const std::string& n : param_names()) {
      auto it = m.tensors.find(n);
      if (it != m.tensors.end()) w_.add(name + "." + n, it->second, dtype);
    }
    list_.push_back({{"name", name}, {"config", config_to_json(m.config)}});
  }
  /// Extra metadata (any key other than radargate.layers and radargate.config).
  void set_metadata(const std::string& key, const std::string& value) {
    if (key == layers_key || key == config_key)
      radargate::detail::fail("metadata key '", key, "' is written by ModelSetWriter itself");
    w_.set_metadata(key, value);
  }
  std::size_t size() const { return list_.size(); }

  std::vector<unsigned char> serialize() {
    if (list_.empty()) radargate::detail::fail("model set: expected at least one layer, found none");
    w_.set_metadata(layers_key, list_.dump());
    return w_.serialize();
  }
  void write_atomic(const std::string& path) { write_file_atomic(path, serialize()); }

 private:
  SafetensorsWriter w_;
  nlohmann::json list_ = nlohmann::json::array();
};

/// The dtype of the layer a command means (see ModelSet::select) without decoding anything else:
/// one-layer files answer as model_dtype does.
inline DType layer_dtype(const SafetensorsFile& f, const std::string& layer) {
  if (!f.metadata().count(layers_key) && layer.empty()) return model_dtype(f);
  const ModelSet<float> set(std::make_shared<const SafetensorsFile>(f));
  return set.select(layer).dtype;
}

/// Loads the layer a command means as a LoadedModel: a one-layer file through load_model (so its
/// messages are unchanged), a file of many layers through ModelSet (`layer` may be empty only when
/// the file holds one layer).
template <class S>
LoadedModel<S> load_layer(const SafetensorsFile& f, const std::string& layer) {
  if (!f.metadata().count(layers_key) && layer.empty()) return load_model<S>(f);
  const ModelSet<S> set(std::make_shared<const SafetensorsFile>(f));
  const ModelLayer<S>& l = set.select(layer);
  LoadedModel<S> lm;
  lm.model = l.to_model();
  lm.dtype = l.dtype;
  lm.dims = l.dims;
  return lm;
}

}  // namespace io
}  // namespace radargate
