// radargate/cpu/interface.hpp -- what crosses the line between Layer<S, backend::cpu> and one
// instruction set's build of the backend: the context forward leaves for backward (CpuContext)
// and the virtual interface of a build (CpuLayerBase).
#pragma once

#include <cstdint>
#include <vector>

#include "../grad_plan.hpp"
#include "../layer_config.hpp"
#include "../params.hpp"
#include "../view.hpp"
#include "../workspace.hpp"
#include "options.hpp"

namespace radargate {
namespace detail {

/// What backward needs: per token and expert only rank-space quantities, and per token at most
/// one vector of length d (the mixture, for the softmax stretch gate); never one per expert.
/// x is referenced, not copied: keep it alive and unchanged until backward returns. A context
/// passed back to forward is refilled in place: once its vectors have grown to a call's size,
/// forward allocates nothing for it.
template <class S>
struct CpuContext {
  index_t tokens = 0;
  View<const S, 2> x;
  std::vector<S> h;                // [T, N, r]  h_i = A_i x (zero for experts a top-k gate skips)
  std::vector<S> z;                // [T, N, k]  angle-generator outputs (rotation on)
  std::vector<S> g;                // [T, N]     gate weights
  std::vector<unsigned char> sel;  // [T, N]     experts computed
  std::vector<S> mix;              // [T, d]     sum_i g_i u_i (one-pass stretch path, softmax)
  std::uint64_t generation = 0;    // which weights produced it
};

/// The interface of one instruction set's build of the cpu backend (CpuLayer), through which
/// Layer<S, backend::cpu> reaches the build that runtime dispatch chose (cpu_dispatch.hpp).
/// Without dispatch, Layer holds the CpuLayer of its own translation unit, whose class is final,
/// so every call is direct.
template <class S>
class CpuLayerBase {
 public:
  using Context = CpuContext<S>;
  virtual ~CpuLayerBase() = default;
  virtual const LayerConfig& config() const = 0;
  virtual const Params<S>& params() const = 0;
  virtual const Dims& dims() const = 0;
  virtual const CpuOptions& options() const = 0;
  virtual const char* kernels() const = 0;
  virtual void set_params(const Params<S>& params) = 0;
  virtual void weights_changed() = 0;
  virtual void set_threads(int n) = 0;
  virtual Context forward(View<const S, 2> x, View<S, 2> y) const = 0;
  virtual void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode) const = 0;
  // Caller-owned memory (radargate::Workspace): the sizes, for T tokens, x_copy / y_copy values of
  // inputs and outputs that are not row-major matrices (detail::copy_size), then the calls.
  virtual std::size_t forward_workspace_bytes(index_t T, index_t x_copy, index_t y_copy) const = 0;
  virtual std::size_t backward_workspace_bytes(index_t T, const Gradients<S>& grads, index_t x_copy,
                                               index_t dy_copy) const = 0;
  virtual void forward(View<const S, 2> x, View<S, 2> y, Context& ctx) const = 0;
  virtual void forward(View<const S, 2> x, View<S, 2> y, Context& ctx, Workspace ws) const = 0;
  virtual void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode,
                        Workspace ws) const = 0;
};

}  // namespace detail
}  // namespace radargate
