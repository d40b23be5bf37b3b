// radargate/cpu.hpp -- the fused CPU backend: Layer<S, backend::cpu> (Eigen + xsimd + threads).
//
// Same interface and same results as the reference backend (docs/CPU_BACKEND.md), computed without
// ever forming the [T, N, d] tensor of expert outputs (docs/MATH.md):
//
//   H = X A^T                           shrink: one GEMM over the stacked A [N*r, d_in]
//   z_i = Wx x + s_i (Wv B_i) h_i + sum_j m_ij s_j (Wc B_j) h_j      rank space, O(N r k + N^2 k)
//   per tile of output slots, per block of up to 4 tokens, per expert:
//     v = s_i B_i h_i, alpha = bound(U z_i + bias_i), u = R(alpha) v, then y += g_i u
//
// The layer chooses its strategy once, at construction, from the configuration and the weight
// storage; each lives in its own file of radargate/cpu/:
//   dense.hpp      rotation off, every expert: two GEMMs
//   tiles.hpp      rotation off with 16-bit B: the maths of dense by the tile kernels
//   sparse.hpp     rotation off, top-k gate: the selected experts only
//   rotation.hpp   rotation on: angles in rank space, experts by the tile kernels
//   one_pass.hpp   rotation on, stretch gate other than top-k: one pass over the experts
// layer.hpp holds the per-instruction-set CpuLayer that checks calls, splits tokens over the
// threads and dispatches to the strategy; reduce.hpp sums the threads' gradients in a fixed order.
//
// Threads: tokens are split into `threads` contiguous blocks, one per thread. For a fixed thread
// count every result is bit-identical run to run. The rank-space caches are built from the
// parameter views at construction, set_params() and weights_changed(): call weights_changed()
// after writing new values into the parameter memory.
#pragma once

#include <memory>
#include <type_traits>

#include "backend.hpp"
#include "cpu/layer.hpp"
#include "cpu/options.hpp"

namespace radargate {
namespace detail {

/// With RADARGATE_CPU_DISPATCH (the radargate::cpu_dispatch target, src/cpu_dispatch.cpp): the
/// CpuLayer of the best instruction set of the running CPU, for Layer<S, backend::cpu>.
std::unique_ptr<CpuLayerBase<float>> make_dispatched_cpu_layer(const LayerConfig& config, const Params<float>& params,
                                                               const CpuOptions& options);
std::unique_ptr<CpuLayerBase<double>> make_dispatched_cpu_layer(const LayerConfig& config, const Params<double>& params,
                                                                const CpuOptions& options);
}  // namespace detail

#if defined(RADARGATE_CPU_DISPATCH)
/// The instruction set of the kernels that runtime dispatch chose for this CPU ("avx512bw",
/// "fma3<avx2>", "sse2", "neon64", ...; RADARGATE_CPU_KERNELS overrides the choice).
const char* cpu_kernel_set();
#else
/// The instruction set of the kernels the cpu backend uses: the one this translation unit is
/// compiled for ("avx512bw", "fma3<avx2>", "sse2", "neon64", "scalar", ...).
inline const char* cpu_kernel_set() { return detail::simd::kernel_set<float>(); }
#endif

template <class S>
class Layer<S, backend::cpu> {
  static_assert(std::is_floating_point<S>::value, "radargate::Layer: Scalar must be float or double");

 public:
  using Scalar = S;
  using Context = detail::CpuContext<S>;

  Layer(const LayerConfig& config, const Params<S>& params, const CpuOptions& options = {})
      : impl_(make_impl(config, params, options)) {}

  const LayerConfig& config() const { return impl_->config(); }
  const Params<S>& params() const { return impl_->params(); }
  const Dims& dims() const { return impl_->dims(); }
  const CpuOptions& options() const { return impl_->options(); }
  int threads() const { return impl_->options().threads; }
  /// The instruction set of the kernels this layer runs (see cpu_kernel_set).
  const char* kernels() const { return impl_->kernels(); }

  /// Replaces the parameter views (same configuration) and rebuilds the caches.
  void set_params(const Params<S>& params) { impl_->set_params(params); }

  /// Rebuilds the rank-space caches (Wv B_i, Wc B_i, the slot-space copies of B, U, bias, ws,
  /// the map weights) from the current parameter memory. Call it after changing parameter
  /// values in place; contexts from before are then rejected by backward.
  void weights_changed() { impl_->weights_changed(); }

  void set_threads(int n) { impl_->set_threads(n); }

  /// y = layer(x); the returned context is what backward needs. Scratch memory comes from a
  /// workspace the layer keeps and grows to the largest call so far.
  Context forward(View<const S, 2> x, View<S, 2> y) const { return impl_->forward(x, y); }
  /// As above, refilling `ctx` in place: once ctx and the layer's workspace have grown to a
  /// call's size, the call allocates nothing.
  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx) const { impl_->forward(x, y, ctx); }
  /// As above, with scratch memory from the caller: ws.bytes >= forward_workspace_bytes(x, y).
  /// Nothing is allocated once ctx has grown to the call's size. The workspace is free again
  /// when the call returns (the context holds what backward needs).
  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx, Workspace ws) const { impl_->forward(x, y, ctx, ws); }

  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads,
                GradMode mode = GradMode::overwrite) const {
    impl_->backward(ctx, dy, grads, mode);
  }
  /// backward with scratch memory from the caller: ws.bytes >= backward_workspace_bytes(ctx, dy,
  /// grads). Allocates nothing.
  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode, Workspace ws) const {
    impl_->backward(ctx, dy, grads, mode, ws);
  }

  /// Bytes of workspace forward needs for T tokens with row-major x and y (unit stride along a
  /// row, as make_view gives), at the current thread count.
  std::size_t forward_workspace_bytes(index_t T) const { return impl_->forward_workspace_bytes(T, 0, 0); }
  /// Bytes of workspace forward(x, y, ...) needs: the above plus a copy of x or y when that view
  /// is not a row-major matrix.
  std::size_t forward_workspace_bytes(View<const S, 2> x, View<S, 2> y) const {
    return impl_->forward_workspace_bytes(x.shape[0], detail::copy_size(x), detail::OutMatrix<S, 2>::scratch_size(y));
  }
  /// Bytes of workspace backward needs for T tokens and these gradients (which and their layout),
  /// with row-major x and dy, at the current thread count.
  std::size_t backward_workspace_bytes(index_t T, const Gradients<S>& grads) const {
    return impl_->backward_workspace_bytes(T, grads, 0, 0);
  }
  /// Bytes of workspace backward(ctx, dy, grads, ...) needs.
  std::size_t backward_workspace_bytes(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads) const {
    return impl_->backward_workspace_bytes(ctx.tokens, grads, detail::copy_size(ctx.x), detail::copy_size(dy));
  }

 private:
#if defined(RADARGATE_CPU_DISPATCH)
  using Impl = detail::CpuLayerBase<S>;  // the build of the instruction set chosen at run time
  static std::unique_ptr<Impl> make_impl(const LayerConfig& c, const Params<S>& p, const CpuOptions& o) {
    return detail::make_dispatched_cpu_layer(c, p, o);
  }
#else
  using Impl = detail::CpuLayer<S>;  // this translation unit's build: calls are direct
  static std::unique_ptr<Impl> make_impl(const LayerConfig& c, const Params<S>& p, const CpuOptions& o) {
    return std::make_unique<Impl>(c, p, o);
  }
#endif
  std::unique_ptr<Impl> impl_;
};

}  // namespace radargate
