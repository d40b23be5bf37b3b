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

#include <chrono>
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
  InArray x;                 // keeps x alive while the context points into it
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
      value_fail("params: expected a list of " + std::to_string(names.size()) + " entries (one per parameter name, "
                 "None when absent), found " + std::to_string(params.size()));
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
      value_fail("context: expected one made by this layer's forward since its weights last changed; run forward "
                 "again");
    const View<const S, 2> dyv = in_view<S, 2>(dy, "dy");
    Gradients<S> g;
    std::vector<OutArray> keep;
    if (!grad_x.is_none()) {
      OutArray a;
      if (!nb::try_cast(grad_x, a)) type_fail("grad_x: expected a writable array or None");
      g.x = out_view<S, 2>(a, "grad_x");
      keep.push_back(std::move(a));
    }
    const std::vector<std::string>& names = param_names();
    if (grads.size() != names.size())
      value_fail("grads: expected a list of " + std::to_string(names.size()) + " entries (None when not wanted), found " +
                 std::to_string(grads.size()));
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
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    nb::gil_scoped_release unlocked;
    if (cpu_)
      cpu_->backward(*ctx.cpu, dyv, g, mode);
    else
      ref_->backward(*ctx.ref, dyv, g, mode);
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
  LayerConfig cfg_;
  Params<S> p_;
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
      .def("backward", &PyLayer<S>::backward, nb::arg("ctx"), nb::arg("dy"), nb::arg("grad_x").none(),
           nb::arg("grads"), nb::arg("accumulate") = false)
      .def("time_forward", &PyLayer<S>::time_forward, nb::arg("x"), nb::arg("y"), nb::arg("iters"))
      .def("weights_changed", &PyLayer<S>::weights_changed)
      .def("set_threads", &PyLayer<S>::set_threads, nb::arg("n"))
      .def_prop_ro("threads", &PyLayer<S>::threads)
      .def_prop_ro("backend", &PyLayer<S>::backend)
      .def_prop_ro("dims", &PyLayer<S>::dims);
}

}  // namespace python
}  // namespace radargate
