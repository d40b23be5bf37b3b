// python/src/layer.hpp -- radargate._core.Layer32 / Layer64: one layer over parameter arrays owned
// by Python (NumPy arrays or torch tensors), on the reference or the cpu backend.
//
//   layer = Layer32(config_json, params, backend, threads)   params: 14 entries in file order
//                                                             (radargate::param_names), None = absent
//   ctx = layer.forward(x, y)            x [T, d_in] (any strides), y [T, d] written
//   layer.backward(ctx, dy, grad_x, grads, accumulate)      grads: 14 entries, None = not wanted
//   layer.weights_changed()              after the parameter memory was written in place
//
// The layer holds references to the parameter arrays, the context to x, so neither memory can go
// away while the library points into it. Computation runs with the GIL released.
#pragma once

#include <array>
#include <chrono>
#include <iterator>
#include <memory>

#include "binding.hpp"
#include "radargate/cpu.hpp"
#include "radargate/io/model_file.hpp"

namespace radargate {
namespace python {

template <class S>
struct PyContext {
  std::unique_ptr<typename Layer<S, backend::reference>::Context> ref;
  std::unique_ptr<typename Layer<S, backend::cpu>::Context> cpu;
  InArray x;  // keeps x alive while the context points into it
  const void* owner = nullptr;
  std::uint64_t generation = 0;
  index_t tokens = 0;
};

template <class S>
class PyLayer {
 public:
  PyLayer(const std::string& config_json, const nb::list& params, const std::string& backend, int threads) {
    cfg_ = io::parse_config(config_json);
    if (backend != "cpu" && backend != "reference")
      value_fail("backend: expected \"cpu\" or \"reference\", found \"" + backend + "\"");
    if (threads < 1) value_fail("threads: expected an integer >= 1, found " + std::to_string(threads));
    const std::vector<std::string>& names = param_names();
    if (params.size() != names.size())
      value_fail("params: expected a list of " + std::to_string(names.size()) +
                 " entries (one per parameter name, "
                 "None when absent), found " +
                 std::to_string(params.size()));
    size_t i = 0;
    for_each_param(p_, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      nb::handle h = params[i++];
      if (h.is_none()) return;
      InArray a;
      if (!nb::try_cast(h, a))
        type_fail(std::string("parameter '") + name + "': expected an array (NumPy array or torch tensor), found " +
                  std::string(nb::type_name(h.type()).c_str()));
      v = in_view<S, V::rank>(a, name);
      keep_.push_back(std::move(a));
    });
    size_t slot = 0;
    for_each_param(p_, [&](const char*, const auto& v) {
      ParamShape& ps = shapes_[slot++];
      ps.present = v.present();
      for (int i = 0; i < int(v.rank); ++i) ps.shape[i] = v.shape[i];
    });
    for (size_t i = 0; i < shapes_.size(); ++i)
      if (shapes_[i].present) present_.push_back(i);
    if (backend == "cpu") {
      CpuOptions o;
      o.threads = threads;
      cpu_ = std::make_unique<Layer<S, backend::cpu>>(cfg_, p_, o);
    } else {
      ref_ = std::make_unique<Layer<S, backend::reference>>(cfg_, p_);
    }
    dims_ = cpu_ ? cpu_->dims() : ref_->dims();
  }

  PyContext<S> forward(const InArray& x, const OutArray& y) const {
    const View<const S, 2> xv = in_view<S, 2>(x, "x");
    const View<S, 2> yv = out_view<S, 2>(y, "y");
    PyContext<S> ctx;
    ctx.x = x;
    ctx.owner = this;
    ctx.generation = generation_;
    ctx.tokens = xv.shape[0];
    nb::gil_scoped_release unlocked;
    if (cpu_)
      ctx.cpu = std::make_unique<typename Layer<S, backend::cpu>::Context>(cpu_->forward(xv, yv));
    else
      ctx.ref = std::make_unique<typename Layer<S, backend::reference>::Context>(ref_->forward(xv, yv));
    return ctx;
  }

  void backward(const PyContext<S>& ctx, const InArray& dy, const nb::object& grad_x, const nb::list& grads,
                bool accumulate) const {
    if (ctx.owner != this || ctx.generation != generation_ || (!ctx.cpu && !ctx.ref))
      value_fail(
          "context: expected one made by this layer's forward since its weights last changed; run forward "
          "again");
    const View<const S, 2> dyv = in_view<S, 2>(dy, "dy");
    std::vector<OutArray> keep;
    const Gradients<S> g = gradient_views(grad_x, grads, keep);
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    nb::gil_scoped_release unlocked;
    if (cpu_)
      cpu_->backward(*ctx.cpu, dyv, g, mode);
    else
      ref_->backward(*ctx.ref, dyv, g, mode);
  }

  /// backward into one caller-allocated buffer: `need` is (x, then each parameter the layer has,
  /// in file order) as autograd's needs_input_grad; `flat` is a contiguous 1-D array holding the
  /// wanted gradients one after the other, each contiguous, in that order (what
  /// torch._utils._unflatten_dense_tensors makes views of). One array crosses instead of one per
  /// gradient.
  void backward_flat(const PyContext<S>& ctx, const InArray& dy, const OutArray& flat, const nb::tuple& need) const {
    if (ctx.owner != this || ctx.generation != generation_ || (!ctx.cpu && !ctx.ref))
      value_fail(
          "context: expected one made by this layer's forward since its weights last changed; run forward "
          "again");
    const View<const S, 2> dyv = in_view<S, 2>(dy, "dy");
    const View<S, 1> fv = out_view<S, 1>(flat, "flat");
    if (need.size() != 1 + present_.size())
      value_fail("need: expected " + std::to_string(1 + present_.size()) + " flags (x and each parameter), found " +
                 std::to_string(need.size()));
    if (fv.shape[0] > 1 && fv.stride[0] != 1)
      value_fail("flat: expected a contiguous array, found stride " + std::to_string(fv.stride[0]));
    S* at = fv.data;
    index_t left = fv.shape[0];
    auto take = [&](index_t n) {
      if (n > left)
        value_fail("flat: expected room for every gradient asked for, found " + std::to_string(fv.shape[0]) +
                   " elements");
      S* p = at;
      at += n;
      left -= n;
      return p;
    };
    Gradients<S> g;
    if (need[0].ptr() == Py_True) {
      g.x.shape[0] = ctx.tokens;
      g.x.shape[1] = dims_.d_in;
      g.x.stride[0] = dims_.d_in;
      g.x.stride[1] = 1;
      g.x.data = take(ctx.tokens * dims_.d_in);
    }
    size_t slot = 0, j = 1;
    for_each_param(g, [&](const char*, auto& v) {
      const ParamShape& ps = shapes_[slot++];
      if (!ps.present) return;
      if (need[j++].ptr() != Py_True) return;
      index_t n = 1;
      for (int i = int(v.rank) - 1; i >= 0; --i) {
        v.shape[i] = ps.shape[i];
        v.stride[i] = n;
        n *= ps.shape[i];
      }
      v.data = take(n);
    });
    // An empty x (T = 0) may come with no memory at all: present all the same.
    static S anchor{};
    if (need[0].ptr() == Py_True && !g.x.data) g.x.data = &anchor;
    nb::gil_scoped_release unlocked;
    if (cpu_)
      cpu_->backward(*ctx.cpu, dyv, g, GradMode::overwrite);
    else
      ref_->backward(*ctx.ref, dyv, g, GradMode::overwrite);
  }

  /// Seconds per forward + backward call pair (overwriting the gradients asked for), over `iters`
  /// pairs made from C++ with the GIL released: the library's own time for a training call.
  double time_forward_backward(const InArray& x, const OutArray& y, const InArray& dy, const nb::object& grad_x,
                               const nb::list& grads, int iters) const {
    const View<const S, 2> xv = in_view<S, 2>(x, "x");
    const View<S, 2> yv = out_view<S, 2>(y, "y");
    const View<const S, 2> dyv = in_view<S, 2>(dy, "dy");
    std::vector<OutArray> keep;
    const Gradients<S> g = gradient_views(grad_x, grads, keep);
    if (iters < 1) value_fail("iters: expected an integer >= 1, found " + std::to_string(iters));
    nb::gil_scoped_release unlocked;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) {
      if (cpu_)
        cpu_->backward(cpu_->forward(xv, yv), dyv, g, GradMode::overwrite);
      else
        ref_->backward(ref_->forward(xv, yv), dyv, g, GradMode::overwrite);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  }

  /// Seconds per forward call, over `iters` calls made from C++ with the GIL released: the
  /// library's own time, against which benchmarks measure what the Python binding adds.
  double time_forward(const InArray& x, const OutArray& y, int iters) const {
    const View<const S, 2> xv = in_view<S, 2>(x, "x");
    const View<S, 2> yv = out_view<S, 2>(y, "y");
    if (iters < 1) value_fail("iters: expected an integer >= 1, found " + std::to_string(iters));
    nb::gil_scoped_release unlocked;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) {
      if (cpu_)
        (void)cpu_->forward(xv, yv);
      else
        (void)ref_->forward(xv, yv);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  }

  /// Re-reads the parameter memory (after an in-place update, e.g. an optimizer step).
  void weights_changed() {
    ++generation_;
    if (cpu_) {
      nb::gil_scoped_release unlocked;
      cpu_->weights_changed();
    }
  }

  void set_threads(int n) {
    if (n < 1) value_fail("threads: expected an integer >= 1, found " + std::to_string(n));
    if (cpu_ && cpu_->threads() != n) cpu_->set_threads(n);
  }
  int threads() const { return cpu_ ? cpu_->threads() : 1; }
  std::string backend() const { return cpu_ ? "cpu" : "reference"; }

  nb::dict dims() const {
    nb::dict d;
    d["d_in"] = dims_.d_in;
    d["d"] = dims_.d;
    d["N"] = dims_.N;
    d["r"] = dims_.r;
    d["k"] = dims_.k;
    d["P"] = dims_.P;
    return d;
  }

 private:
  /// The gradient views of backward's arguments: grad_x (None or an array) and one entry per
  /// parameter name (None when not wanted). The imported arrays go into `keep`.
  static Gradients<S> gradient_views(const nb::object& grad_x, const nb::list& grads, std::vector<OutArray>& keep) {
    Gradients<S> g;
    if (!grad_x.is_none()) {
      OutArray a;
      if (!nb::try_cast(grad_x, a)) type_fail("grad_x: expected a writable array or None");
      g.x = out_view<S, 2>(a, "grad_x");
      keep.push_back(std::move(a));
    }
    const std::vector<std::string>& names = param_names();
    if (grads.size() != names.size())
      value_fail("grads: expected a list of " + std::to_string(names.size()) +
                 " entries (None when not wanted), found " + std::to_string(grads.size()));
    size_t i = 0;
    for_each_param(g, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      nb::handle h = grads[i++];
      if (h.is_none()) return;
      OutArray a;
      if (!nb::try_cast(h, a))
        type_fail(std::string("gradient '") + name + "': expected a writable array (NumPy array or torch tensor)");
      v = out_view<S, V::rank>(a, std::string("grad.") + name);
      keep.push_back(std::move(a));
    });
    return g;
  }

  struct ParamShape {
    bool present = false;
    index_t shape[3] = {0, 0, 0};
  };
  LayerConfig cfg_;
  Params<S> p_;
  std::array<ParamShape, std::size(param_table)> shapes_;  // per parameter slot, in file order
  std::vector<size_t> present_;                            // the slots the layer has
  std::vector<InArray> keep_;
  std::unique_ptr<Layer<S, backend::reference>> ref_;
  std::unique_ptr<Layer<S, backend::cpu>> cpu_;
  Dims dims_;
  std::uint64_t generation_ = 0;
};

template <class S>
void bind_layer(nb::module_& m, const char* name, const char* ctx_name) {
  nb::class_<PyContext<S>>(m, ctx_name, "What backward needs from one forward call (opaque).")
      .def_ro("tokens", &PyContext<S>::tokens);
  nb::class_<PyLayer<S>>(m, name, "One RadarGate layer over caller-owned parameter arrays (see python/src/layer.hpp).")
      .def(nb::init<const std::string&, const nb::list&, const std::string&, int>(), nb::arg("config"),
           nb::arg("params"), nb::arg("backend") = "cpu", nb::arg("threads") = 1)
      .def("forward", &PyLayer<S>::forward, nb::arg("x"), nb::arg("y"))
      .def("backward", &PyLayer<S>::backward, nb::arg("ctx"), nb::arg("dy"), nb::arg("grad_x").none(), nb::arg("grads"),
           nb::arg("accumulate") = false)
      .def("backward_flat", &PyLayer<S>::backward_flat, nb::arg("ctx"), nb::arg("dy"), nb::arg("flat"), nb::arg("need"))
      .def("time_forward", &PyLayer<S>::time_forward, nb::arg("x"), nb::arg("y"), nb::arg("iters"))
      .def("time_forward_backward", &PyLayer<S>::time_forward_backward, nb::arg("x"), nb::arg("y"), nb::arg("dy"),
           nb::arg("grad_x").none(), nb::arg("grads"), nb::arg("iters"))
      .def("weights_changed", &PyLayer<S>::weights_changed)
      .def("set_threads", &PyLayer<S>::set_threads, nb::arg("n"))
      .def_prop_ro("threads", &PyLayer<S>::threads)
      .def_prop_ro("backend", &PyLayer<S>::backend)
      .def_prop_ro("dims", &PyLayer<S>::dims);
}

}  // namespace python
}  // namespace radargate
