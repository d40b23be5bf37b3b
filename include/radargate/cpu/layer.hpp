// radargate/cpu/layer.hpp -- CpuLayer, the cpu backend compiled for the instruction set of this
// translation unit (detail/cpu_arch.hpp): it checks each call, carves the workspace, splits the
// tokens over the threads, and hands each thread's rows to the strategy chosen once at
// construction (state.hpp: dense, tiles, sparse, rotation or one-pass).
#pragma once

#include <mutex>
#include <optional>

#include "../detail/layer_checks.hpp"
#include "reduce.hpp"
#include "scratch_plan.hpp"
#include "tile_backward.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

template <class S>
class CpuLayer final : public CpuLayerBase<S> {
  static_assert(std::is_floating_point<S>::value, "radargate::Layer: Scalar must be float or double");

 public:
  using Scalar = S;
  using Context = CpuContext<S>;

  CpuLayer(const LayerConfig& config, const Params<S>& params, const CpuOptions& options)
      : st_(config, params, options) {}

  const LayerConfig& config() const override { return st_.cfg; }
  const Params<S>& params() const override { return st_.p; }
  const Dims& dims() const override { return st_.D; }
  const CpuOptions& options() const override { return st_.opt; }
  const char* kernels() const override { return simd::kernel_set<S>(); }

  void set_params(const Params<S>& params) override {
    st_.D = validate(st_.cfg, params);
    st_.p = params;
    st_.rebuild();
  }

  void weights_changed() override { st_.rebuild(); }

  void set_threads(int n) override {
    CpuOptions o = st_.opt;
    o.threads = n;
    st_.opt = checked_cpu_options<S>(o);
    st_.pool->resize(st_.opt.threads);
  }

  Context forward(View<const S, 2> x, View<S, 2> y) const override {
    Context ctx;
    forward(x, y, ctx);
    return ctx;
  }

  // The calls without a workspace run in one the layer keeps (grown to the largest call so far).
  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx) const override {
    check_xy(st_.D, x, "x", st_.D.d_in, &y, "y", st_.D.d);
    std::lock_guard<std::mutex> lock(own_mutex_);
    forward(x, y, ctx, own_workspace(forward_workspace_bytes(x.shape[0], copy_size(x), y_copy(y))));
  }

  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode) const override {
    std::lock_guard<std::mutex> lock(own_mutex_);
    const std::size_t bytes = check_backward(ctx, dy, grads)
                                  ? backward_workspace_bytes(ctx.tokens, grads, copy_size(ctx.x), copy_size(dy))
                                  : 0;
    backward(ctx, dy, grads, mode, own_workspace(bytes));
  }

  // Workspace of forward: the staged copies of x and y, then one scratch arena per thread.
  std::size_t forward_workspace_bytes(index_t T, index_t x_copy, index_t y_copy) const override {
    if (T <= 0) return 0;
    const int nt = st_.pool->size();
    return scratch_align + arena_bytes<S>(x_copy) + arena_bytes<S>(y_copy) +
           std::size_t(nt) * forward_thread_bytes(st_, (T + nt - 1) / nt);
  }

  std::size_t backward_workspace_bytes(index_t T, const Gradients<S>& grads, index_t x_copy,
                                       index_t dy_copy) const override {
    if (T <= 0) return 0;
    Bwd<S> b(grads, backward_needs(st_.cfg, grads));
    b.T = T;
    Arena count;
    carve_backward(st_, count, b, x_copy, dy_copy, nullptr);
    return scratch_align + count.used();
  }

  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx, Workspace ws) const override {
    check_xy(st_.D, x, "x", st_.D.d_in, &y, "y", st_.D.d);
    const index_t T = x.shape[0];
    reset_context(ctx, x);
    if (T == 0) return;
    const index_t x_copy = copy_size(x), y_copy_n = y_copy(y);
    check_workspace("forward", ws, forward_workspace_bytes(T, x_copy, y_copy_n), T);
    Arena A(ws.data, ws.bytes);
    const MatRef<S> X = matrix_of(x, A.take<S>(x_copy));
    OutMatrix<S, 2> Y(y, A.take<S>(y_copy_n));
    const int nt = st_.pool->size();
    const std::size_t tb = forward_thread_bytes(st_, (T + nt - 1) / nt);
    unsigned char* tbase = A.take<unsigned char>(index_t(std::size_t(nt) * tb));
    st_.pool->run([&](int th) {
      index_t t0, t1;
      token_range(T, nt, th, t0, t1);
      Arena ar(tbase + std::size_t(th) * tb, tb);
      if (t0 < t1) forward_rows(ctx, X, Y.mat(), t0, t1, ar);
    });
    Y.finish(false);
  }

  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode,
                Workspace ws) const override {
    const index_t T = ctx.tokens;
    const bool work = check_backward(ctx, dy, grads);
    if (mode == GradMode::overwrite) {
      zero_view(grads.x);
      for_each_param(grads, [](const char*, const auto& g) { zero_view(g); });
    }
    if (!work) return;
    const index_t x_copy = copy_size(ctx.x), dy_copy = copy_size(dy);
    check_workspace("backward", ws, backward_workspace_bytes(T, grads, x_copy, dy_copy), T);
    Bwd<S> b(grads, backward_needs(st_.cfg, grads));
    b.T = T;
    b.BP = st_.W.bp_widened(b.BPwide);  // allocates only with 16-bit storage
    Arena A(ws.data, ws.bytes);
    Outs<S> out;
    carve_backward(st_, A, b, x_copy, dy_copy, &out);
    b.X = matrix_of(ctx.x, out.xstore);
    b.DY = matrix_of(dy, out.dystore);
    std::optional<OutMatrix<S, 2>> DX;
    if (grads.x.present()) DX.emplace(grads.x, out.dx);
    const int nt = st_.pool->size();
    st_.pool->run([&](int th) {
      index_t t0, t1;
      token_range(T, nt, th, t0, t1);
      Partial<S>& part = b.part[std::size_t(th)];
      zero_partial(part);
      Arena ar(out.tbase + std::size_t(th) * out.tb, out.tb);
      if (t0 < t1) backward_rows(ctx, b, part, DX ? &DX->mat() : nullptr, t0, t1, ar);
    });
    reduce(ctx, b, out, DX);
  }

 private:
  // ---- per call --------------------------------------------------------------------------------

  // The context of a forward over x, refilled in place.
  void reset_context(Context& ctx, const View<const S, 2>& x) const {
    const index_t T = x.shape[0], N = st_.D.N, r = st_.D.r, k = st_.D.k;
    ctx.tokens = T;
    ctx.x = x;
    ctx.generation = st_.W.generation;
    ctx.h.assign(std::size_t(T * N * r), S(0));
    ctx.g.assign(std::size_t(T * N), S(0));
    ctx.sel.assign(std::size_t(T * N), 1);
    ctx.z.clear();
    ctx.mix.clear();
    if (st_.cfg.rotation) ctx.z.assign(std::size_t(T * N * k), S(0));
    if (st_.strategy == Strategy::one_pass && st_.cfg.normalize == Normalize::softmax)
      ctx.mix.assign(std::size_t(T * st_.D.d), S(0));
  }

  // Forward of tokens [t0, t1) on one thread: the base output and the gate, then the experts.
  void forward_rows(Context& ctx, const MatRef<S>& X, const MatMut<S>& Y, index_t t0, index_t t1, Arena& ar) const {
    const index_t n = t1 - t0, N = st_.D.N;
    const auto Xr = X.rows_of(t0, n);
    auto Yr = Y.rows_of(t0, n);
    base_output(st_, Yr, Xr, n, ar);
    gate_before_experts(st_, Xr, &ctx.g[std::size_t(t0 * N)], &ctx.sel[std::size_t(t0 * N)], n, ar);
    switch (st_.strategy) {
      case Strategy::dense:
        return dense_forward(st_, ctx, X, Y, t0, t1, ar);
      case Strategy::tiles:
        return tiles_strategy_forward(st_, ctx, X, Y, t0, t1, ar);
      case Strategy::sparse:
        return sparse_forward(st_, ctx, X, Y, t0, t1, ar);
      case Strategy::rotation:
        return rotation_forward(st_, ctx, X, Y, t0, t1, ar);
      case Strategy::one_pass:
        return one_pass_strategy_forward(st_, ctx, X, Y, t0, t1, ar);
    }
  }

  // Backward of tokens [t0, t1) on one thread: the experts, then dx.
  void backward_rows(const Context& ctx, Bwd<S>& b, Partial<S>& part, const MatMut<S>* DX, index_t t0, index_t t1,
                     Arena& ar) const {
    if (st_.dense())
      dense_backward_rows(st_, ctx, b, part, t0, t1, ar);
    else
      tile_backward_rows(st_, ctx, b, part, t0, t1, ar);
    if (DX) backward_dx(ctx, b, *DX, t0, t1, ar);
  }

  // dx = A^T dh + Wx^T sum_i dz_i + Wg^T dl + W0^T dy for tokens [t0, t1).
  void backward_dx(const Context& ctx, const Bwd<S>& b, const MatMut<S>& DX, index_t t0, index_t t1, Arena& ar) const {
    const index_t n = t1 - t0, N = st_.D.N, Nr = N * st_.D.r;
    auto DXr = DX.rows_of(t0, n);
    if (b.need.dv) {
      const S* DH = &b.DH[std::size_t(t0 * Nr)];
      if (st_.sparse())
        sparse_dx(st_, &DX, t0, t1, DH, &ctx.sel[std::size_t(t0 * N)], ar);
      else
        shrink_backward_all(st_, DXr, DH, n, ar);
    }
    dx_beyond_experts(st_, b, DXr, t0, n, ar);
  }

  // The parameter gradients from the threads' results, into the caller's views (and dx).
  void reduce(const Context& ctx, const Bwd<S>& b, const Outs<S>& out, std::optional<OutMatrix<S, 2>>& DX) const {
    const auto& grads = b.G;
    std::optional<OutMatrix<S, 3>> dA;
    std::optional<OutMatrix<S, 2>> dWg, dWx, dW0;
    if (grads.lora_A.present()) dA.emplace(grads.lora_A, out.dA);
    if (grads.stretch_Wg.present()) dWg.emplace(grads.stretch_Wg, out.dWg);
    if (grads.angle_Wx.present()) dWx.emplace(grads.angle_Wx, out.dWx);
    if (grads.base_W0.present()) dW0.emplace(grads.base_W0, out.dW0);
    GemmGrads<S> gg;
    gg.dA = dA ? &dA->mat() : nullptr;
    gg.dWg = dWg ? &dWg->mat() : nullptr;
    gg.dWx = dWx ? &dWx->mat() : nullptr;
    gg.dW0 = dW0 ? &dW0->mat() : nullptr;
    const int nt = st_.pool->size();
    st_.pool->run([&](int th) {
      Arena ar(out.tbase + std::size_t(th) * out.tb, out.tb);
      reduce_gradients(st_, ctx, b, th, nt, gg, ar);
    });
    for (auto* m : {&dWg, &dWx, &dW0, &DX})
      if (*m) (*m)->finish(true);
    if (dA) dA->finish(true);
  }

  // ---- checks and the layer's own workspace ----------------------------------------------------

  static index_t y_copy(const View<S, 2>& y) { return OutMatrix<S, 2>::scratch_size(y); }

  static void check_workspace(const char* call, const Workspace& ws, std::size_t need, index_t T) {
    if (ws.bytes < need || (need > 0 && !ws.data))
      fail("cpu ", call, " workspace: expected at least ", need, " bytes for ", T, " tokens (", call,
           "_workspace_bytes), found ", ws.data ? ws.bytes : 0, " bytes", ws.data ? "" : " (null data)");
  }

  // The layer's own workspace, grown to `bytes` (callers hold own_mutex_).
  // Not zeroed: its pages are touched only as far as calls use them.
  Workspace own_workspace(std::size_t bytes) const {
    if (own_bytes_ < bytes) {
      own_ws_.reset();
      own_ws_.reset(new unsigned char[bytes]);
      own_bytes_ = bytes;
    }
    return Workspace{own_ws_.get(), own_bytes_};
  }

  // Validates a backward call; true when it has anything to compute.
  bool check_backward(const Context& ctx, const View<const S, 2>& dy, const Gradients<S>& grads) const {
    const index_t T = ctx.tokens;
    if (dy.shape[0] != T || dy.shape[1] != st_.D.d)
      fail("tensor 'dy': expected shape [", T, ", ", st_.D.d, "], found ", shape_string(dy));
    if (T > 0 && !dy.present()) fail("tensor 'dy': null data for ", T, " tokens");
    if (ctx.generation != st_.W.generation)
      fail(
          "context: expected one produced by this layer's forward with the current weights, found one "
          "from another layer or from before the last weights_changed(); run forward again");
    validate_gradients(st_.D, T, st_.p, grads);
    const BackwardNeeds need = backward_needs(st_.cfg, grads);
    return T > 0 && (need.dv || need.dz || need.dlogits || grads.base_W0.present() || grads.base_b0.present());
  }

  CpuState<S> st_;
  mutable std::unique_ptr<unsigned char[]> own_ws_;  // the workspace of the calls that take none
  mutable std::size_t own_bytes_ = 0;
  mutable std::mutex own_mutex_;
};

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
