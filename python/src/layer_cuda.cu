// python/src/layer_cuda.cu -- radargate._core.CudaLayer32: one float32 layer on the CUDA backend
// (cuda/radargate/cuda.cuh, docs/CUDA.md) over parameter tensors in device memory. Compiled by
// nvcc only when the package is built with RADARGATE_PYTHON_CUDA=ON (python/CMakeLists.txt).
//
//   layer = CudaLayer32(config_json, params, device, stream)   params: 14 entries in file order, None = absent
//   n = layer.forward_workspace_bytes(T)
//   ctx = layer.forward(x, y, ws, stream)                      ws: n bytes of device memory, kept until backward
//   n = layer.backward_workspace_bytes(T, need)
//   layer.backward_flat(ctx, dy, flat, need, ws, stream)       as the CPU layers' backward_flat
//   layer.weights_changed(stream)                              after the parameter memory was written
//
// Arrays cross as DLPack CUDA tensors, without a copy. Every kernel runs on `stream` (the caller
// passes torch's current stream), on the device the parameters live on. The workspaces are
// allocated by the caller (torch's caching allocator), as the C++ API asks.
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <iterator>
#include <memory>
#include <type_traits>
#include <vector>

#include "binding.hpp"
#include "radargate/cuda.cuh"

namespace radargate {
namespace python {

namespace {

/// Makes `device` current for the life of the guard.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ != device) {
      if (cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        value_fail("CUDA device " + std::to_string(device) + ": cannot be made current");
      }
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

/// Checks CUDA memory on `device`, dtype S (float or const float) and rank R; returns the view
/// (strides as they come).
template <class S, int R, class A>
View<S, R> cuda_view(const A& a, const std::string& name, int device) {
  using T = std::remove_const_t<S>;
  if (a.device_type() != nb::device::cuda::value)
    type_fail("array '" + name + "': expected memory on CUDA device " + std::to_string(device) + ", found " +
              device_string(a.device_type()) + " (this layer runs on the CUDA backend)");
  if (a.device_id() != device)
    type_fail("array '" + name + "': expected memory on CUDA device " + std::to_string(device) +
              " (the layer's), found device " + std::to_string(a.device_id()));
  if (a.dtype() != nb::dtype<T>())
    type_fail("array '" + name + "': expected dtype " + dtype_name<T>() + ", found " + dtype_string(a.dtype()));
  if (a.ndim() != size_t(R))
    value_fail("array '" + name + "': expected a rank-" + std::to_string(R) + " array, found shape " + shape_string(a));
  View<S, R> v;
  v.data = static_cast<S*>(const_cast<void*>(static_cast<const void*>(a.data())));
  for (int i = 0; i < R; ++i) {
    v.shape[i] = index_t(a.shape(size_t(i)));
    v.stride[i] = index_t(a.stride(size_t(i)));
  }
  return v;
}

/// A workspace: a 1-D uint8 array of device memory.
template <class A>
Workspace workspace_of(const A& a, int device) {
  if (a.device_type() != nb::device::cuda::value || a.device_id() != device)
    type_fail("workspace: expected memory on CUDA device " + std::to_string(device) + ", found " +
              device_string(a.device_type()));
  if (a.dtype() != nb::dtype<std::uint8_t>() || a.ndim() != 1)
    type_fail("workspace: expected a 1-D uint8 array, found dtype " + dtype_string(a.dtype()) + " and shape " +
              shape_string(a));
  return Workspace{const_cast<void*>(static_cast<const void*>(a.data())), std::size_t(a.shape(0))};
}

cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

struct PyCudaContext {
  Layer<float, backend::cuda>::Context ctx;
  InArray x;   // keeps x alive while the context points into it
  InArray ws;  // the forward workspace: the saved activations
  const void* owner = nullptr;
  std::uint64_t generation = 0;
  index_t tokens = 0;
};

class PyCudaLayer {
  using L = Layer<float, backend::cuda>;

 public:
  PyCudaLayer(const std::string& config_json, const nb::list& params, int device, std::uintptr_t stream)
      : device_(device) {
    const LayerConfig cfg = parse_layer_config(config_json);
    const std::vector<std::string>& names = param_names();
    if (params.size() != names.size())
      value_fail("params: expected a list of " + std::to_string(names.size()) +
                 " entries (one per parameter name, "
                 "None when absent), found " +
                 std::to_string(params.size()));
    Params<float> p;
    size_t i = 0;
    for_each_param(p, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      nb::handle h = params[i++];
      if (h.is_none()) return;
      InArray a;
      if (!nb::try_cast(h, a))
        type_fail(std::string("parameter '") + name + "': expected an array (a CUDA torch tensor), found " +
                  std::string(nb::type_name(h.type()).c_str()));
      const auto w = cuda_view<const float, V::rank>(a, name, device_);
      v.data = w.data;
      for (int k = 0; k < V::rank; ++k) {
        v.shape[k] = w.shape[k];
        v.stride[k] = w.stride[k];
      }
      keep_.push_back(std::move(a));
    });
    size_t slot = 0;
    for_each_param(p, [&](const char*, const auto& v) {
      ParamShape& ps = shapes_[slot++];
      ps.present = v.present();
      for (int k = 0; k < int(std::decay_t<decltype(v)>::rank); ++k) ps.shape[k] = v.shape[k];
    });
    for (size_t k = 0; k < shapes_.size(); ++k)
      if (shapes_[k].present) present_.push_back(k);
    DeviceGuard on(device_);
    nb::gil_scoped_release unlocked;
    layer_ = std::make_unique<L>(cfg, p, stream_of(stream));
  }

  std::size_t forward_workspace_bytes(index_t tokens) const { return layer_->forward_workspace_bytes(tokens); }

  PyCudaContext forward(const InArray& x, const OutArray& y, const InArray& ws, std::uintptr_t stream) const {
    PyCudaContext c;
    const View<const float, 2> xv = cuda_view<const float, 2>(x, "x", device_);
    const View<float, 2> yv = cuda_view<float, 2>(y, "y", device_);
    const Workspace w = workspace_of(ws, device_);
    c.x = x;
    c.ws = ws;
    c.owner = this;
    c.generation = generation_;
    c.tokens = xv.shape[0];
    DeviceGuard on(device_);
    nb::gil_scoped_release unlocked;
    c.ctx = layer_->forward(xv, yv, w, stream_of(stream));
    return c;
  }

  std::size_t backward_workspace_bytes(index_t tokens, const nb::tuple& need) const {
    // Only which gradients are present matters here, not where they live.
    static float anchor = 0;
    Gradients<float> g = gradient_views(tokens, need, &anchor, 0, true);
    return layer_->backward_workspace_bytes(tokens, g);
  }

  void backward_flat(const PyCudaContext& ctx, const InArray& dy, const OutArray& flat, const nb::tuple& need,
                     const InArray& ws, std::uintptr_t stream) const {
    if (ctx.owner != this || ctx.generation != generation_)
      value_fail(
          "context: expected one made by this layer's forward since its weights last changed; run forward "
          "again");
    const View<const float, 2> dyv = cuda_view<const float, 2>(dy, "dy", device_);
    const View<float, 1> fv = cuda_view<float, 1>(flat, "flat", device_);
    if (fv.shape[0] > 1 && fv.stride[0] != 1)
      value_fail("flat: expected a contiguous array, found stride " + std::to_string(fv.stride[0]));
    const Gradients<float> g = gradient_views(ctx.tokens, need, fv.data, fv.shape[0], false);
    const Workspace w = workspace_of(ws, device_);
    DeviceGuard on(device_);
    nb::gil_scoped_release unlocked;
    layer_->backward(ctx.ctx, dyv, g, GradMode::overwrite, w, stream_of(stream));
  }

  /// Rebuilds the layer's kernel copy of the weights (after an in-place update), on `stream`.
  void weights_changed(std::uintptr_t stream) {
    ++generation_;
    DeviceGuard on(device_);
    nb::gil_scoped_release unlocked;
    layer_->update(stream_of(stream));
  }

  int device() const { return device_; }

  nb::dict dims() const {
    const Dims& D = layer_->dims();
    nb::dict d;
    d["d_in"] = D.d_in;
    d["d"] = D.d;
    d["N"] = D.N;
    d["r"] = D.r;
    d["k"] = D.k;
    d["P"] = D.P;
    return d;
  }

 private:
  struct ParamShape {
    bool present = false;
    index_t shape[3] = {0, 0, 0};
  };

  /// The gradients asked for by `need` (x, then each parameter the layer has), laid one after the
  /// other, each contiguous, from `base` (`size` elements), or (sizing) all at a dummy `base`: for
  /// the workspace size, where only which gradients are present matters.
  Gradients<float> gradient_views(index_t tokens, const nb::tuple& need, float* base, index_t size, bool sizing) const {
    if (need.size() != 1 + present_.size())
      value_fail("need: expected " + std::to_string(1 + present_.size()) + " flags (x and each parameter), found " +
                 std::to_string(need.size()));
    float* at = base;
    index_t left = size;
    auto take = [&](index_t n) {
      if (sizing) return base;
      if (n > left)
        value_fail("flat: expected room for every gradient asked for, found " + std::to_string(size) + " elements");
      float* p = at;
      at += n;
      left -= n;
      return p;
    };
    const Dims& D = layer_->dims();
    Gradients<float> g;
    if (need[0].ptr() == Py_True) {
      g.x.shape[0] = tokens;
      g.x.shape[1] = D.d_in;
      g.x.stride[0] = D.d_in;
      g.x.stride[1] = 1;
      g.x.data = take(tokens * D.d_in);
    }
    size_t slot = 0, j = 1;
    for_each_param(g, [&](const char*, auto& v) {
      const ParamShape& ps = shapes_[slot++];
      if (!ps.present) return;
      if (need[j++].ptr() != Py_True) return;
      index_t n = 1;
      for (int i = int(std::decay_t<decltype(v)>::rank) - 1; i >= 0; --i) {
        v.shape[i] = ps.shape[i];
        v.stride[i] = n;
        n *= ps.shape[i];
      }
      v.data = take(n);
    });
    return g;
  }

  int device_;
  std::vector<InArray> keep_;
  std::array<ParamShape, std::size(param_table)> shapes_;
  std::vector<size_t> present_;
  std::unique_ptr<L> layer_;
  std::uint64_t generation_ = 0;
};

void bind_layer_cuda(nb::module_& m) {
  nb::class_<PyCudaContext>(m, "CudaContext32", "What backward needs from one forward call on CUDA (opaque).")
      .def_ro("tokens", &PyCudaContext::tokens);
  nb::class_<PyCudaLayer>(m, "CudaLayer32",
                          "One float32 layer on the CUDA backend over caller-owned device tensors "
                          "(see python/src/layer_cuda.cu).")
      .def(nb::init<const std::string&, const nb::list&, int, std::uintptr_t>(), nb::arg("config"), nb::arg("params"),
           nb::arg("device"), nb::arg("stream"))
      .def("forward_workspace_bytes", &PyCudaLayer::forward_workspace_bytes, nb::arg("tokens"))
      .def("forward", &PyCudaLayer::forward, nb::arg("x"), nb::arg("y"), nb::arg("ws"), nb::arg("stream"))
      .def("backward_workspace_bytes", &PyCudaLayer::backward_workspace_bytes, nb::arg("tokens"), nb::arg("need"))
      .def("backward_flat", &PyCudaLayer::backward_flat, nb::arg("ctx"), nb::arg("dy"), nb::arg("flat"),
           nb::arg("need"), nb::arg("ws"), nb::arg("stream"))
      .def("weights_changed", &PyCudaLayer::weights_changed, nb::arg("stream"))
      .def_prop_ro("device", &PyCudaLayer::device)
      .def_prop_ro("dims", &PyCudaLayer::dims);
}

}  // namespace python
}  // namespace radargate
