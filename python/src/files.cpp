// radargate._core: model files, configurations and random models (radargate/io/model_file.hpp,
// radargate/model.hpp), so Python reads, writes and initialises exactly as the CLI does.
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "binding.hpp"
#include "radargate/io/model_file.hpp"
#include "radargate/io/model_set.hpp"

namespace radargate {
namespace python {
namespace {

/// A NumPy array that owns a moved std::vector.
template <class S>
nb::object to_numpy(std::vector<S>&& data, const std::vector<index_t>& shape) {
  auto* heap = new std::vector<S>(std::move(data));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<S>*>(p); });
  std::vector<size_t> shp(shape.begin(), shape.end());
  return nb::cast(nb::ndarray<nb::numpy, S>(heap->data(), shp.size(), shp.data(), owner));
}

template <class S>
nb::dict tensors_to_numpy(std::map<std::string, Tensor<S>>& tensors) {
  nb::dict d;
  for (const std::string& n : param_names()) {
    auto it = tensors.find(n);
    if (it == tensors.end()) continue;
    d[n.c_str()] = to_numpy<S>(std::move(it->second.data), it->second.shape);
  }
  return d;
}

template <class S>
nb::tuple load_typed(const io::SafetensorsFile& f, const std::string& layer, io::DType dtype) {
  io::LoadedModel<S> lm = io::load_layer<S>(f, layer);
  const std::string cfg = io::config_to_json(lm.model.config).dump();
  nb::dict tensors = tensors_to_numpy<S>(lm.model.tensors);
  return nb::make_tuple(cfg, std::string(io::to_string(dtype)), tensors);
}

/// (config JSON, file dtype, {name: array}) of one layer: float64 arrays for F64 files, float32
/// otherwise. `layer` names a layer of a file of many layers ("" for a one-layer file, or for the
/// only layer; an error lists the names when there are several).
nb::tuple load_model(const std::string& path, const std::string& layer) {
  const io::SafetensorsFile f = io::SafetensorsFile::read(path);
  const io::DType dtype = io::layer_dtype(f, layer);
  if (dtype == io::DType::F64) return load_typed<double>(f, layer, dtype);
  return load_typed<float>(f, layer, dtype);
}

template <class S>
void fill(Tensor<double>& t, const View<const S, 4>& v, int rank) {
  (void)rank;
  t.data.resize(size_t(t.numel()));
  size_t o = 0;
  for (index_t a = 0; a < v.shape[0]; ++a)
    for (index_t b = 0; b < v.shape[1]; ++b)
      for (index_t c = 0; c < v.shape[2]; ++c)
        for (index_t e = 0; e < v.shape[3]; ++e) t.data[o++] = double(v(a, b, c, e));
}

/// Writes {name: float32 or float64 array} with the configuration, atomically, in `dtype`.
void save_model(const std::string& path, const std::string& config_json, const nb::dict& tensors,
                const std::string& dtype) {
  Model<double> m;
  m.config = io::parse_config(config_json);
  for (auto [key, value] : tensors) {
    const std::string name = nb::cast<std::string>(key);
    InArray a;
    if (!nb::try_cast(value, a)) type_fail("tensor '" + name + "': expected an array");
    if (a.device_type() != nb::device::cpu::value)
      type_fail("tensor '" + name + "': expected memory on the CPU, found " + device_string(a.device_type()));
    const std::vector<index_t> expect_rank = param_shape(name, Dims{});  // unknown names throw
    if (a.ndim() != expect_rank.size() || a.ndim() < 1 || a.ndim() > 4)
      value_fail("tensor '" + name + "': expected a rank-" + std::to_string(expect_rank.size()) +
                 " array, found shape " + shape_string(a));
    Tensor<double> t;
    for (size_t i = 0; i < a.ndim(); ++i) t.shape.push_back(index_t(a.shape(i)));
    // Seen as rank 4 with leading extents of one, so one loop serves every rank.
    auto as4 = [&](auto tag) {
      using S = decltype(tag);
      View<const S, 4> v;
      v.data = static_cast<const S*>(a.data());
      const size_t lead = 4 - a.ndim();
      for (size_t i = 0; i < 4; ++i) {
        v.shape[i] = i < lead ? 1 : index_t(a.shape(i - lead));
        v.stride[i] = i < lead ? 0 : index_t(a.stride(i - lead));
      }
      fill<S>(t, v, int(a.ndim()));
    };
    if (a.dtype() == nb::dtype<double>())
      as4(double{});
    else if (a.dtype() == nb::dtype<float>())
      as4(float{});
    else
      type_fail("tensor '" + name + "': expected dtype float32 or float64, found " + dtype_string(a.dtype()));
    io::require_finite(name, t);
    m.tensors.emplace(name, std::move(t));
  }
  io::save_model(path, m, io::parse_float_dtype(dtype, "dtype"));
}

/// The tensors `radargate init` writes for this configuration, dimensions and seed (float64).
nb::dict random_model(const std::string& config_json, index_t d_in, index_t d, index_t N, index_t r, index_t k,
                      index_t P, std::uint64_t seed, bool base) {
  const LayerConfig cfg = io::parse_config(config_json);
  Dims D;
  D.d_in = d_in;
  D.d = d;
  D.N = N;
  D.r = r;
  D.k = k;
  D.P = P;
  RandomModelOptions opt;
  opt.base = base;
  Model<double> m = radargate::random_model<double>(cfg, D, seed, opt);
  validate(m.config, m.params());
  return tensors_to_numpy<double>(m.tensors);
}

/// The configuration's canonical JSON (every field its variant reads), after validation.
std::string normalize_config(const std::string& config_json) {
  return io::config_to_json(io::parse_config(config_json)).dump();
}

}  // namespace

LayerConfig parse_layer_config(const std::string& json) { return io::parse_config(json); }

void bind_files(nb::module_& m) {
  m.def("load_model", &load_model, nb::arg("path"), nb::arg("layer") = "");
  m.def("save_model", &save_model, nb::arg("path"), nb::arg("config"), nb::arg("tensors"), nb::arg("dtype"));
  m.def("random_model", &random_model, nb::arg("config"), nb::arg("d_in"), nb::arg("d"), nb::arg("N"), nb::arg("r"),
        nb::arg("k"), nb::arg("P"), nb::arg("seed"), nb::arg("base"));
  m.def("normalize_config", &normalize_config, nb::arg("config"));
  m.def("param_names", [] { return param_names(); });
}

}  // namespace python
}  // namespace radargate
