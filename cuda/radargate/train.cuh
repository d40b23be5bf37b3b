// radargate/train.cuh -- train::CudaLayer<float>: the CUDA backend behind the host-memory interface
// that train::Trainer steps (docs/TRAINING.md).
//
//   Model<float> m = ...;                                       // parameters in host memory
//   const std::vector<std::string> names = {"stretch.Wg", "angle.U"};
//   train::CudaLayer<float> layer(m, names);                    // device copy of m, a stream
//   train::Trainer<float, train::CudaLayer<float>> tr(m, layer, names, options);
//   for (int e = 0; e < epochs; ++e) tr.run_epoch(data);
//
// The model's parameters stay in host memory, where the optimizer updates them. The adapter owns a
// device copy of every tensor, a Layer<float, backend::cuda> over that copy, its workspaces, the
// batch buffers and a stream:
//   forward(x, y)                  uploads x, runs the layer, downloads y; returns a Context
//   backward(ctx, dy, grads, mode) uploads dy, runs the layer into device gradient buffers,
//                                  downloads the gradients that `grads` asks for
//   weights_changed()              uploads the trained tensors (named at construction) from the
//                                  model and rebuilds the layer's kernel copy; frozen tensors are
//                                  uploaded once, by the constructor (reload() uploads them all)
// Every call returns with the device idle (the downloads are waited for), so the host views may be
// reused at once.
//
// Device memory is allocated by the constructor and when a call needs more than it holds: the
// batch buffers and the workspaces are sized for the largest token count seen so far (and for every
// smaller one, so the short last batch of an epoch needs nothing new), the gradient buffers on the
// first request for each tensor. A trainer's step after the first therefore allocates nothing;
// device_allocations() counts the adapter's own allocations, for tests.
//
// The CUDA backend stores and computes in float32 (its other storage types, bf16 and fp16, are not
// types the trainer's optimizer works in), so S is float.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <radargate/detail/layer_checks.hpp>
#include <radargate/error.hpp>
#include <radargate/model.hpp>
#include <radargate/params.hpp>
#include <radargate/view.hpp>
#include <radargate/workspace.hpp>

#include "cuda.cuh"

namespace radargate {
namespace train {

namespace cuda_impl {
/// The number of CUDA devices; throws with the runtime's reason when there is none.
inline int require_device(const char* who) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" state for later calls
    detail::fail(who, ": expected a CUDA device, found none (", cudaGetErrorName(e), ": ", cudaGetErrorString(e), ")");
  }
  if (n < 1) detail::fail(who, ": expected a CUDA device, found none");
  return n;
}

/// An owning device buffer that grows (never shrinks) and counts the allocations it makes.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) {
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  void* data() const { return p_; }
  std::size_t bytes() const { return bytes_; }
  /// Makes the buffer at least `bytes` long (its old contents are lost when it grows).
  void reserve(std::size_t bytes, const char* what, std::size_t& allocations) {
    if (bytes <= bytes_ && p_) return;
    if (p_) {
      detail::gpu::check(cudaFree(p_), "cudaFree (train::CudaLayer, growing a device buffer)");
      p_ = nullptr;
      bytes_ = 0;
    }
    const std::size_t n = std::max<std::size_t>(bytes, 256);
    const cudaError_t e = cudaMalloc(&p_, n);
    if (e != cudaSuccess) {
      p_ = nullptr;
      cudaGetLastError();
      detail::fail("train::CudaLayer: cannot allocate ", n, " bytes of device memory for ", what, " (",
                   cudaGetErrorName(e), ": ", cudaGetErrorString(e), ")");
    }
    bytes_ = n;
    ++allocations;
  }

 private:
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Copies `rows` rows of `cols` elements between a strided host view and dense device rows.
template <class S>
void copy_rows(S* dst, std::size_t dst_pitch, const S* src, std::size_t src_pitch, index_t rows, index_t cols,
               cudaMemcpyKind kind, cudaStream_t stream, const char* what) {
  if (rows < 1 || cols < 1) return;
  detail::gpu::check(cudaMemcpy2DAsync(dst, dst_pitch * sizeof(S), src, src_pitch * sizeof(S),
                                       std::size_t(cols) * sizeof(S), std::size_t(rows), kind, stream),
                     what);
}

/// The row pitch of a host [rows, cols] view for copy_rows, or a failure naming the tensor.
template <class T>
std::size_t host_pitch(const View<T, 2>& v, const char* name) {
  const index_t rows = v.shape[0], cols = v.shape[1];
  if (rows < 1 || cols < 1) return std::size_t(cols > 0 ? cols : 1);
  if (cols > 1 && v.stride[1] != 1)
    detail::fail("tensor '", name, "': expected unit stride along its last dimension, found ", v.stride[1]);
  if (rows == 1) return std::size_t(cols);
  if (v.stride[0] < cols)
    detail::fail("tensor '", name, "': expected a row stride of at least ", cols, ", found ", v.stride[0]);
  return std::size_t(v.stride[0]);
}
}  // namespace cuda_impl

template <class S>
class CudaLayer {
  static_assert(std::is_same<S, float>::value,
                "radargate::train::CudaLayer: S must be float (the CUDA backend computes in float32 and the "
                "trainer's optimizer works in float or double)");

 public:
  using Scalar = S;
  using Device = Layer<S, backend::cuda>;

  /// What backward needs: the token count and which forward call it came from (the saved
  /// activations live in the adapter's forward workspace, which the next forward overwrites).
  struct Context {
    index_t tokens = 0;
    std::uint64_t call = 0;
  };

  /// `model` must outlive the adapter; `trained` names the tensors an optimizer changes (uploaded by
  /// weights_changed()). Every tensor of the model is copied to the device now.
  CudaLayer(Model<S>& model, const std::vector<std::string>& trained) : model_(model), trained_(trained) {
    cuda_impl::require_device("train::CudaLayer");
    for (const std::string& n : trained_) {
      if (!model_.has(n)) {
        std::string have;
        for (const std::string& p : param_names())
          if (model_.has(p)) have += (have.empty() ? "" : ",") + p;
        detail::fail("train::CudaLayer: tensor '", n, "' is not in the model (variant '",
                     radargate::to_string(model_.config.variant), "'); expected some of ", have);
      }
    }
    D_ = radargate::validate(model_.config, model_.params());
    detail::gpu::check(cudaStreamCreateWithFlags(&stream_.s, cudaStreamNonBlocking),
                       "cudaStreamCreateWithFlags (train::CudaLayer)");
    // One block for every tensor, each 256-byte aligned; the device views keep the host strides.
    std::size_t total = 0;
    for (const auto& kv : model_.tensors) total += (kv.second.data.size() * sizeof(S) + 255) & ~std::size_t(255);
    params_mem_.reserve(total, "the parameters", allocations_);
    char* base = static_cast<char*>(params_mem_.data());
    std::size_t off = 0;
    for (const auto& kv : model_.tensors) {
      slots_.emplace_back(kv.first, reinterpret_cast<S*>(base + off), kv.second.data.size());
      off += (kv.second.data.size() * sizeof(S) + 255) & ~std::size_t(255);
    }
    dparams_ = model_.params();
    for_each_param(dparams_, [&](const char* name, auto& v) {
      if (!v.present()) return;
      v.data = slot(name).device;
    });
    for (const Slot& s : slots_) upload(s);
    detail::gpu::check(cudaStreamSynchronize(stream_.s), "cudaStreamSynchronize (train::CudaLayer, parameter upload)");
    layer_.reset(new Device(model_.config, dparams_, stream_.s));
  }
  CudaLayer(const CudaLayer&) = delete;
  CudaLayer& operator=(const CudaLayer&) = delete;

  const Dims& dims() const { return D_; }
  const LayerConfig& config() const { return model_.config; }
  const std::vector<std::string>& trained() const { return trained_; }
  /// The wrapped device layer (tile shape choices and the like).
  Device& device_layer() { return *layer_; }
  cudaStream_t stream() const { return stream_.s; }
  /// Device allocations the adapter has made (the layer's own kernel copy not included).
  std::size_t device_allocations() const { return allocations_; }

  /// x [T, d_in] and y [T, d] in host memory (unit stride along the last dimension).
  Context forward(View<const S, 2> x, View<S, 2> y) {
    detail::check_xy(D_, x, "x", D_.d_in, &y, "y", D_.d);
    const index_t T = x.shape[0];
    const std::size_t xp = cuda_impl::host_pitch(x, "x"), yp = cuda_impl::host_pitch(y, "y");
    Context ctx;
    ctx.tokens = T;
    ctx.call = ++calls_;
    if (T == 0) return ctx;
    reserve_tokens(T);
    S* xd = static_cast<S*>(x_.data());
    S* yd = static_cast<S*>(y_.data());
    cuda_impl::copy_rows(xd, std::size_t(D_.d_in), x.data, xp, T, D_.d_in, cudaMemcpyHostToDevice, stream_.s,
                         "cudaMemcpy2DAsync (train::CudaLayer, uploading x)");
    dctx_ = layer_->forward(make_view(static_cast<const S*>(xd), T, D_.d_in), make_view(yd, T, D_.d),
                            Workspace{fws_.data(), fws_.bytes()}, stream_.s);
    cuda_impl::copy_rows(y.data, yp, static_cast<const S*>(yd), std::size_t(D_.d), T, D_.d, cudaMemcpyDeviceToHost,
                         stream_.s, "cudaMemcpy2DAsync (train::CudaLayer, downloading y)");
    detail::gpu::check(cudaStreamSynchronize(stream_.s), "cudaStreamSynchronize (train::CudaLayer forward)");
    return ctx;
  }

  /// dy [T, d] and the gradients in host memory; each requested parameter gradient dense, of its
  /// tensor's shape; grad.x [T, d_in] with unit stride along d_in. accumulate adds to the host values.
  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode) {
    const std::size_t mask = check_backward(ctx, dy, grads);
    const index_t T = ctx.tokens;
    const bool acc = mode == GradMode::accumulate;
    if (T == 0) {
      if (!acc) zero_host(grads);
      return;
    }
    const std::size_t dyp = cuda_impl::host_pitch(dy, "dy");
    const Gradients<S> dg = device_gradients(grads, T);
    if (mask != bws_mask_ || T > bws_tokens_) reserve_backward(T, dg, mask);
    S* dyd = static_cast<S*>(dy_.data());
    cuda_impl::copy_rows(dyd, std::size_t(D_.d), dy.data, dyp, T, D_.d, cudaMemcpyHostToDevice, stream_.s,
                         "cudaMemcpy2DAsync (train::CudaLayer, uploading dy)");
    if (acc) transfer(grads, dg, T, cudaMemcpyHostToDevice);
    const std::size_t need = layer_->backward_workspace_bytes(T, dg);
    if (need > bws_.bytes()) bws_.reserve(need, "the backward workspace", allocations_);
    layer_->backward(dctx_, make_view(static_cast<const S*>(dyd), T, D_.d), dg, mode,
                     Workspace{bws_.data(), bws_.bytes()}, stream_.s);
    transfer(grads, dg, T, cudaMemcpyDeviceToHost);
    detail::gpu::check(cudaStreamSynchronize(stream_.s), "cudaStreamSynchronize (train::CudaLayer backward)");
  }

  /// Uploads the trained tensors from the model (after an optimizer step or a restored state) and
  /// rebuilds the layer's kernel copy.
  void weights_changed() {
    for (const std::string& n : trained_) upload(slot(n));
    layer_->update(stream_.s);
  }
  /// Uploads every tensor from the model (after the caller changed frozen ones too).
  void reload() {
    for (const Slot& s : slots_) upload(s);
    layer_->update(stream_.s);
  }

  /// The name of the device the adapter runs on.
  std::string device_name() const {
    int dev = 0;
    detail::gpu::check(cudaGetDevice(&dev), "cudaGetDevice (train::CudaLayer)");
    cudaDeviceProp prop{};
    detail::gpu::check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties (train::CudaLayer)");
    return prop.name;
  }

 private:
  struct Slot {
    std::string name;
    S* device = nullptr;
    std::size_t count = 0;
    cuda_impl::DeviceBuffer grad;
    Slot(std::string n, S* d, std::size_t c) : name(std::move(n)), device(d), count(c) {}
  };

  Model<S>& model_;
  std::vector<std::string> trained_;
  Dims D_;
  struct Stream {
    cudaStream_t s = nullptr;
    Stream() = default;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    ~Stream() {
      if (s) cudaStreamDestroy(s);
    }
  };
  Stream stream_;  // destroyed after the layer and the buffers (declared before them)
  std::size_t allocations_ = 0;
  cuda_impl::DeviceBuffer params_mem_, x_, y_, dy_, gx_, fws_, bws_;
  std::vector<Slot> slots_;  // every tensor of the model, in the model's (name) order
  Params<S> dparams_;
  std::unique_ptr<Device> layer_;
  typename Device::Context dctx_;
  std::uint64_t calls_ = 0;
  index_t tokens_cap_ = 0, bws_tokens_ = 0;
  std::size_t bws_mask_ = 0;

  // Everything backward checks before it runs: the context, dy's shape, and host gradients the
  // copies can serve. Returns the set of requested gradients as bits (x, then each parameter).
  std::size_t check_backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads) {
    if (ctx.call != calls_ || ctx.call == 0) {
      detail::fail("train::CudaLayer backward: expected the context of the adapter's latest forward (call ", calls_,
                   "), found one of call ", ctx.call, "; the device keeps only the latest forward's activations");
    }
    const index_t T = ctx.tokens;
    if (dy.shape[0] != T || dy.shape[1] != D_.d)
      detail::fail("tensor 'dy': expected shape [", T, ", ", D_.d, "], found ", detail::shape_string(dy));
    if (T > 0 && !dy.present()) detail::fail("tensor 'dy': null data for ", T, " tokens");
    std::size_t mask = 0;
    if (grads.x.present()) {
      if (grads.x.shape[0] != T || grads.x.shape[1] != D_.d_in) {
        detail::fail("gradient 'grad.x': expected shape [", T, ", ", D_.d_in, "], found ",
                     detail::shape_string(grads.x));
      }
      (void)cuda_impl::host_pitch(grads.x, "grad.x");
      mask |= 1;
    }
    std::size_t bit = 2;
    for_each_param(grads, [&](const char* name, const auto& v) {
      if (v.present()) {
        check_host_gradient(name, std::size_t(v.size()), v.contiguous());
        mask |= bit;
      }
      bit <<= 1;
    });
    return mask;
  }
  void check_host_gradient(const char* name, std::size_t size, bool dense) {
    const Slot* s = find(name);
    if (!s) detail::fail("gradient 'grad.", name, "': the model has no tensor '", name, "' to take it");
    if (size != s->count)
      detail::fail("gradient 'grad.", name, "': expected ", s->count, " elements (the tensor's), found ", size);
    if (!dense) detail::fail("gradient 'grad.", name, "': expected dense row-major host memory, found a strided view");
  }

  // Device views of the requested gradients, dense (each buffer made on its first request).
  Gradients<S> device_gradients(const Gradients<S>& grads, index_t T) {
    Gradients<S> dg = grads;
    if (grads.x.present()) {
      gx_.reserve(std::size_t(tokens_cap_) * std::size_t(D_.d_in) * sizeof(S), "grad.x", allocations_);
      dg.x = make_view(static_cast<S*>(gx_.data()), T, D_.d_in);
    }
    for_each_param(dg, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      if (!v.present()) return;
      Slot& s = *find(name);
      s.grad.reserve(s.count * sizeof(S), "a parameter gradient", allocations_);
      v.data = static_cast<S*>(s.grad.data());
      index_t st = 1;
      for (int k = V::rank - 1; k >= 0; --k) {
        v.stride[k] = st;
        st *= v.shape[k];
      }
    });
    return dg;
  }

  Slot* find(const char* name) {
    for (Slot& s : slots_)
      if (s.name == name) return &s;
    return nullptr;
  }
  Slot& slot(const char* name) {
    if (Slot* s = find(name)) return *s;
    detail::fail("train::CudaLayer: the model has no tensor '", name, "'");
  }
  Slot& slot(const std::string& name) { return slot(name.c_str()); }

  void upload(const Slot& s) {
    auto it = model_.tensors.find(s.name);
    if (it == model_.tensors.end() || it->second.data.size() != s.count) {
      detail::fail("train::CudaLayer: tensor '", s.name, "': expected ", s.count,
                   " elements as when the adapter was built, found ",
                   it == model_.tensors.end() ? std::string("none (removed from the model)")
                                              : std::to_string(it->second.data.size()));
    }
    if (s.count == 0) return;
    detail::gpu::check(
        cudaMemcpyAsync(s.device, it->second.data.data(), s.count * sizeof(S), cudaMemcpyHostToDevice, stream_.s),
        "cudaMemcpyAsync (train::CudaLayer, uploading a parameter)");
  }

  // Largest of f(t) over 1 <= t <= T. The workspaces grow with t between multiples of 16 tokens
  // (the tile counts, and with them the tile shapes and partial sums, change only there), so the
  // largest is at a multiple of 16 or at T.
  template <class F>
  static std::size_t peak(index_t T, F&& f) {
    std::size_t m = f(T);
    for (index_t t = 1; t < T; t += 16) m = std::max(m, f(std::min<index_t>(T, t + 15)));
    return m;
  }

  void reserve_tokens(index_t T) {
    if (T <= tokens_cap_) {
      // Covered by the sizing below; checked anyway, so a layer whose needs are not covered still works.
      const std::size_t need = layer_->forward_workspace_bytes(T);
      if (need > fws_.bytes()) fws_.reserve(need, "the forward workspace", allocations_);
      return;
    }
    tokens_cap_ = T;
    x_.reserve(std::size_t(T) * std::size_t(D_.d_in) * sizeof(S), "x", allocations_);
    y_.reserve(std::size_t(T) * std::size_t(D_.d) * sizeof(S), "y", allocations_);
    dy_.reserve(std::size_t(T) * std::size_t(D_.d) * sizeof(S), "dy", allocations_);
    if (gx_.data()) gx_.reserve(std::size_t(T) * std::size_t(D_.d_in) * sizeof(S), "grad.x", allocations_);
    const Device& L = *layer_;
    fws_.reserve(peak(T, [&](index_t t) { return L.forward_workspace_bytes(t); }), "the forward workspace",
                 allocations_);
  }

  void reserve_backward(index_t T, const Gradients<S>& dg, std::size_t mask) {
    const Device& L = *layer_;
    const index_t upto = std::max(T, tokens_cap_);
    bws_.reserve(peak(upto, [&](index_t t) { return L.backward_workspace_bytes(t, dg); }), "the backward workspace",
                 allocations_);
    bws_tokens_ = upto;
    bws_mask_ = mask;
  }

  // Copies every requested gradient between the host views and the device buffers.
  void transfer(const Gradients<S>& host, const Gradients<S>& dev, index_t T, cudaMemcpyKind kind) {
    const bool down = kind == cudaMemcpyDeviceToHost;
    if (host.x.present()) {
      const std::size_t hp = cuda_impl::host_pitch(host.x, "grad.x");
      if (down)
        cuda_impl::copy_rows(host.x.data, hp, static_cast<const S*>(dev.x.data), std::size_t(D_.d_in), T, D_.d_in, kind,
                             stream_.s, "cudaMemcpy2DAsync (train::CudaLayer, downloading grad.x)");
      else
        cuda_impl::copy_rows(dev.x.data, std::size_t(D_.d_in), static_cast<const S*>(host.x.data), hp, T, D_.d_in, kind,
                             stream_.s, "cudaMemcpy2DAsync (train::CudaLayer, uploading grad.x)");
    }
    for_each_param(host, [&](const char* name, const auto& v) {
      if (!v.present() || v.size() == 0) return;
      S* d = static_cast<S*>(find(name)->grad.data());
      const std::size_t bytes = std::size_t(v.size()) * sizeof(S);
      if (down)
        detail::gpu::check(cudaMemcpyAsync(v.data, d, bytes, kind, stream_.s),
                           "cudaMemcpyAsync (train::CudaLayer, downloading a gradient)");
      else
        detail::gpu::check(cudaMemcpyAsync(d, v.data, bytes, kind, stream_.s),
                           "cudaMemcpyAsync (train::CudaLayer, uploading a gradient to accumulate into)");
    });
  }

  static void zero_host(const Gradients<S>& g) {
    auto zero = [](const auto& v) {
      using V = std::decay_t<decltype(v)>;
      if (!v.present()) return;
      if constexpr (V::rank == 1) {
        for (index_t i = 0; i < v.shape[0]; ++i) v(i) = S(0);
      } else if constexpr (V::rank == 2) {
        for (index_t i = 0; i < v.shape[0]; ++i)
          for (index_t j = 0; j < v.shape[1]; ++j) v(i, j) = S(0);
      } else {
        for (index_t i = 0; i < v.size(); ++i) v.data[i] = S(0);  // dense (checked by backward)
      }
    };
    zero(g.x);
    for_each_param(g, [&](const char*, const auto& v) { zero(v); });
  }
};

}  // namespace train
}  // namespace radargate
