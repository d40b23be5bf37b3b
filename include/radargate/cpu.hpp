// radargate/cpu.hpp -- the fused CPU backend: Layer<S, backend::cpu> (Eigen + xsimd + threads).
//
// Same interface and same results as the reference backend (docs/CPU_BACKEND.md), computed without
// ever forming the [T, N, d] tensor of expert outputs:
//
//   H = X A^T                           shrink: one GEMM over the stacked A [N*r, d_in]
//   z_i = Wx x + s_i (Wv B_i) h_i + sum_j m_ij s_j (Wc B_j) h_j      rank space, O(N r k + N^2 k)
//   per tile of output slots, per block of up to 4 tokens, per expert:
//     v = s_i B_i h_i, alpha = bound(U z_i + bias_i), u = R(alpha) v, then y += g_i u
//   stretch gate with rotation (not top-k): per block of tokens, per expert, u_i over every tile
//     into one row per token, l_i += ws . u_i, then a running (online) softmax sum of the u_i:
//     one pass over the experts, each angle evaluated once (forward_one_pass)
//
// Variants without rotation and with a dense gate are two GEMMs (Y += (g s h) B^T, and the
// stretch logit ws . v_i = s_i (B_i^T ws) . h_i in rank space). A top-k gate without rotation
// computes only the selected experts (grouped GEMMs for the shrink, tiles for the expand).
//
// Backward recomputes u per tile in the same way (the one-pass stretch path stores u, cos, sin
// of one expert and token block between its two sweeps instead) and reduces the parameter
// gradients per thread, then across threads in a fixed order; see docs/CPU_BACKEND.md.
//
// Threads: tokens are split into `threads` contiguous blocks, one per thread. For a fixed thread
// count every result is bit-identical run to run. The rank-space caches are built from the
// parameter views at construction, set_params() and weights_changed(): call weights_changed()
// after writing new values into the parameter memory.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <type_traits>
#include <vector>

#include "backend.hpp"
#include "detail/cpu_arch.hpp"
#include "detail/cpu_half.hpp"
#include "detail/cpu_kernels.hpp"
#include "detail/cpu_matrix.hpp"
#include "detail/cpu_pool.hpp"
#include "detail/cpu_scratch.hpp"
#include "detail/cpu_simd.hpp"
#include "detail/cpu_weights.hpp"
#include "detail/layer_checks.hpp"
#include "detail/math.hpp"
#include "error.hpp"
#include "grad_plan.hpp"
#include "params.hpp"
#include "view.hpp"
#include "workspace.hpp"

// With RADARGATE_USE_BLAS (CMake option of the same name) Eigen hands the backend's matrix products
// to the linked BLAS (EIGEN_USE_BLAS). OpenBLAS's thread control is declared weak so that a
// program without OpenBLAS still links; see use_single_threaded_blas().
#if defined(EIGEN_USE_BLAS) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#define RADARGATE_DETAIL_OPENBLAS_WEAK 1
#endif

namespace radargate {

/// How the cpu backend runs its matrix products: "blas" when compiled with EIGEN_USE_BLAS (the
/// CMake option RADARGATE_USE_BLAS), else "eigen" (Eigen's own GEMM). Everything else is the same.
constexpr const char* cpu_gemm_route() noexcept {
#ifdef EIGEN_USE_BLAS
  return "blas";
#else
  return "eigen";
#endif
}

/// The cpu backend calls the BLAS from each of its own threads (CpuOptions::threads), so the
/// BLAS should run each call on the thread that makes it; a BLAS that starts threads of its own
/// oversubscribes the cores. When an OpenBLAS is linked into the program this asks it to
/// (openblas_set_num_threads(1)) and returns true. Otherwise it changes nothing and returns
/// false: set the BLAS's own control before the program starts (OPENBLAS_NUM_THREADS=1,
/// MKL_NUM_THREADS=1, OMP_NUM_THREADS=1). It is a process-wide setting of the BLAS, so the
/// backend never makes it by itself; the radargate tool and benchmarks call this at start.
inline bool use_single_threaded_blas() noexcept {
#ifdef RADARGATE_DETAIL_OPENBLAS_WEAK
  if (&openblas_set_num_threads != nullptr) {
    openblas_set_num_threads(1);
    return true;
  }
#endif
  return false;
}

/// Options of the cpu backend.
struct CpuOptions {
  int threads = 1;          // threads per call (>= 1); results are bit-identical for a given count
  index_t tile_planes = 0;  // rotation planes per tile (0: chosen from N, r and the L2 size)
  // lora.A and lora.B as the layer keeps them: in Scalar, or (Layer<float> only) rounded to bf16
  // or f16 at construction and weights_changed(), products accumulated in float; see
  // docs/CPU_BACKEND.md, "16-bit weights"
  WeightStorage weights = WeightStorage::scalar;
};

namespace detail {
inline std::uint64_t next_cpu_generation() {
  static std::atomic<std::uint64_t> counter{0};
  return ++counter;
}
}  // namespace detail

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

inline namespace RG_CPU_NS {

/// The cpu backend compiled for the instruction set of this translation unit (cpu_arch.hpp).
template <class S>
class CpuLayer final : public CpuLayerBase<S> {
  static_assert(std::is_floating_point<S>::value, "radargate::Layer: Scalar must be float or double");

 public:
  using Scalar = S;
  using Context = CpuContext<S>;

  CpuLayer(const LayerConfig& config, const Params<S>& params, const CpuOptions& options)
      : cfg_(config), p_(params), opt_(checked(options)), pool_(std::make_unique<detail::ThreadPool>(opt_.threads)) {
    D_ = validate(cfg_, p_);
    weights_changed();
  }

  const LayerConfig& config() const override { return cfg_; }
  const Params<S>& params() const override { return p_; }
  const Dims& dims() const override { return D_; }
  const CpuOptions& options() const override { return opt_; }
  const char* kernels() const override { return detail::simd::kernel_set<S>(); }

  void set_params(const Params<S>& params) override {
    D_ = validate(cfg_, params);
    p_ = params;
    weights_changed();
  }

  void weights_changed() override {
    W_.build(cfg_, p_, D_, opt_.tile_planes, opt_.weights);
    W_.generation = detail::next_cpu_generation();
  }

  void set_threads(int n) override {
    CpuOptions o = opt_;
    o.threads = n;
    opt_ = checked(o);
    pool_->resize(opt_.threads);
  }

  Context forward(View<const S, 2> x, View<S, 2> y) const override {
    Context ctx;
    forward(x, y, ctx);
    return ctx;
  }

  // The calls without a workspace run in one the layer keeps (grown to the largest call so far).
  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx) const override {
    detail::check_xy(D_, x, "x", D_.d_in, &y, "y", D_.d);
    std::lock_guard<std::mutex> lock(own_mutex_);
    forward(x, y, ctx, own_workspace(forward_workspace_bytes(x.shape[0], detail::copy_size(x), y_copy(y))));
  }

  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode) const override {
    std::lock_guard<std::mutex> lock(own_mutex_);
    const std::size_t bytes =
        check_backward(ctx, dy, grads)
            ? backward_workspace_bytes(ctx.tokens, grads, detail::copy_size(ctx.x), detail::copy_size(dy))
            : 0;
    backward(ctx, dy, grads, mode, own_workspace(bytes));
  }

  // Workspace of forward: the staged copies of x and y, then one scratch arena per thread.
  std::size_t forward_workspace_bytes(index_t T, index_t x_copy, index_t y_copy) const override {
    if (T <= 0) return 0;
    const int nt = pool_->size();
    return detail::scratch_align + detail::arena_bytes<S>(x_copy) + detail::arena_bytes<S>(y_copy) +
           std::size_t(nt) * forward_thread_bytes((T + nt - 1) / nt);
  }

  std::size_t backward_workspace_bytes(index_t T, const Gradients<S>& grads, index_t x_copy,
                                       index_t dy_copy) const override {
    if (T <= 0) return 0;
    const detail::BackwardNeeds need = detail::backward_needs(cfg_, grads);
    Bwd b(grads, need);
    b.T = T;
    detail::Arena count;
    carve_backward(count, b, x_copy, dy_copy, nullptr);
    return detail::scratch_align + count.used();
  }

  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx, Workspace ws) const override {
    detail::check_xy(D_, x, "x", D_.d_in, &y, "y", D_.d);
    const index_t T = x.shape[0], N = D_.N, r = D_.r, k = D_.k;
    ctx.tokens = T;
    ctx.x = x;
    ctx.generation = W_.generation;
    ctx.h.assign(std::size_t(T * N * r), S(0));
    ctx.g.assign(std::size_t(T * N), S(0));
    ctx.sel.assign(std::size_t(T * N), 1);
    ctx.z.clear();
    ctx.mix.clear();
    if (cfg_.rotation) ctx.z.assign(std::size_t(T * N * k), S(0));
    if (one_pass() && cfg_.normalize == Normalize::softmax) ctx.mix.assign(std::size_t(T * D_.d), S(0));
    if (T == 0) return;
    const index_t x_copy = detail::copy_size(x), y_copy_n = y_copy(y);
    check_workspace("forward", ws, forward_workspace_bytes(T, x_copy, y_copy_n), T);
    detail::Arena A(ws.data, ws.bytes);
    const detail::MatRef<S> X = detail::matrix_of(x, A.take<S>(x_copy));
    detail::OutMatrix<S, 2> Y(y, A.take<S>(y_copy_n));
    const int nt = pool_->size();
    const std::size_t tb = forward_thread_bytes((T + nt - 1) / nt);
    unsigned char* tbase = A.take<unsigned char>(index_t(std::size_t(nt) * tb));
    pool_->run([&](int th) {
      index_t t0, t1;
      detail::token_range(T, nt, th, t0, t1);
      detail::Arena ar(tbase + std::size_t(th) * tb, tb);
      if (t0 < t1) forward_rows(ctx, X, Y.mat(), t0, t1, ar);
    });
    Y.finish(false);
  }

  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode,
                Workspace ws) const override {
    const index_t T = ctx.tokens;
    const bool work = check_backward(ctx, dy, grads);
    if (mode == GradMode::overwrite) {
      detail::zero_view(grads.x);
      for_each_param(grads, [](const char*, const auto& g) { detail::zero_view(g); });
    }
    if (!work) return;
    const detail::BackwardNeeds need = detail::backward_needs(cfg_, grads);
    const index_t x_copy = detail::copy_size(ctx.x), dy_copy = detail::copy_size(dy);
    check_workspace("backward", ws, backward_workspace_bytes(T, grads, x_copy, dy_copy), T);

    Bwd b(grads, need);
    b.T = T;
    b.BP = W_.bp_widened(b.BPwide);  // allocates only with 16-bit storage
    detail::Arena A(ws.data, ws.bytes);
    Outs out;
    carve_backward(A, b, x_copy, dy_copy, &out);
    b.X = detail::matrix_of(ctx.x, out.xstore);
    b.DY = detail::matrix_of(dy, out.dystore);
    std::optional<detail::OutMatrix<S, 2>> DX;
    if (grads.x.present()) DX.emplace(grads.x, out.dx);
    const int nt = pool_->size();
    pool_->run([&](int th) {
      index_t t0, t1;
      detail::token_range(T, nt, th, t0, t1);
      Partial& part = b.part[std::size_t(th)];
      zero_partial(part);
      detail::Arena ar(out.tbase + std::size_t(th) * out.tb, out.tb);
      if (t0 < t1) backward_rows(ctx, b, part, DX ? &DX->mat() : nullptr, t0, t1, ar);
    });
    std::optional<detail::OutMatrix<S, 3>> dA;
    std::optional<detail::OutMatrix<S, 2>> dWg, dWx, dW0;
    if (grads.lora_A.present()) dA.emplace(grads.lora_A, out.dA);
    if (grads.stretch_Wg.present()) dWg.emplace(grads.stretch_Wg, out.dWg);
    if (grads.angle_Wx.present()) dWx.emplace(grads.angle_Wx, out.dWx);
    if (grads.base_W0.present()) dW0.emplace(grads.base_W0, out.dW0);
    pool_->run([&](int th) {
      detail::Arena ar(out.tbase + std::size_t(th) * out.tb, out.tb);
      reduce_gradients(ctx, b, th, nt, dA ? &dA->mat() : nullptr, dWg ? &dWg->mat() : nullptr,
                       dWx ? &dWx->mat() : nullptr, dW0 ? &dW0->mat() : nullptr, ar);
    });
    for (auto* m : {&dWg, &dWx, &dW0, &DX})
      if (*m) (*m)->finish(true);
    if (dA) dA->finish(true);
  }

 private:
  using Tile = detail::Tile;
  template <class T>
  using avec = detail::simd::avec<T>;
  // tiles: the maths of dense, with B applied by the tile kernels (16-bit B has no GEMM)
  enum class Path { dense, sparse, fused, tiles };

  static CpuOptions checked(const CpuOptions& o) {
    if (o.threads < 1) detail::fail("cpu option 'threads': expected a value >= 1, found ", o.threads);
    if (o.tile_planes < 0) detail::fail("cpu option 'tile_planes': expected a value >= 0, found ", o.tile_planes);
    if (o.weights != WeightStorage::scalar && !std::is_same<S, float>::value)
      detail::fail(
          "cpu option 'weights': expected scalar for a Layer<double> (bf16 and f16 storage are for "
          "Layer<float>), found ",
          to_string(o.weights));
    return o;
  }

  // ---- workspace -------------------------------------------------------------------------------

  static index_t y_copy(const View<S, 2>& y) { return detail::OutMatrix<S, 2>::scratch_size(y); }

  static void check_workspace(const char* call, const Workspace& ws, std::size_t need, index_t T) {
    if (ws.bytes < need || (need > 0 && !ws.data))
      detail::fail("cpu ", call, " workspace: expected at least ", need, " bytes for ", T, " tokens (", call,
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
    if (dy.shape[0] != T || dy.shape[1] != D_.d)
      detail::fail("tensor 'dy': expected shape [", T, ", ", D_.d, "], found ", detail::shape_string(dy));
    if (T > 0 && !dy.present()) detail::fail("tensor 'dy': null data for ", T, " tokens");
    if (ctx.generation != W_.generation)
      detail::fail(
          "context: expected one produced by this layer's forward with the current weights, found one "
          "from another layer or from before the last weights_changed(); run forward again");
    validate_gradients(D_, T, p_, grads);
    const detail::BackwardNeeds need = detail::backward_needs(cfg_, grads);
    return T > 0 && (need.dv || need.dz || need.dlogits || grads.base_W0.present() || grads.base_b0.present());
  }

  // Scratch of one thread's forward_rows over n tokens: the largest of its steps' buffers (each
  // step gives its buffers back) plus the packing buffers of the largest matrix product.
  std::size_t forward_thread_bytes(index_t n) const {
    constexpr index_t TB = detail::kernels::max_block;
    const index_t N = D_.N, r = D_.r, k = D_.k, Nr = N * r, d = D_.d, din = D_.d_in, L = W_.max_len, dp = W_.dpad;
    auto B = [](index_t m) { return detail::arena_bytes<S>(m); };
    auto G = [](index_t a, index_t b, index_t c) { return detail::gemm_bytes<S>(a, b, c); };
    const std::size_t tile_scratch = 6 * B(TB * L);
    const Path pth = path();
    const bool fused = pth == Path::fused;
    const std::size_t bufs =
        std::max({pth != Path::dense ? B(n * Nr) + 2 * B(TB * L) + tile_scratch : 0,  // tiles_forward
                  one_pass() ? B(n * Nr) + 2 * B(TB * dp) + tile_scratch : 0,         // forward_one_pass
                  pth == Path::sparse ? detail::arena_bytes<index_t>(n) + B(n * din) + B(n * r) : 0,  // sparse_shrink
                  pth == Path::dense ? B(n * Nr) : 0,                                                 // dense expand
                  fused ? B(n * k) + 2 * B(N * n * k) : 0});                                          // angle_inputs
    const std::size_t gemms = std::max({G(n, d, din), G(n, N, din), G(n, Nr, din), G(n, d, Nr), G(n, r, din),
                                        G(n, k, din), G(n, k, r), G(N, n * k, N)});
    return detail::round_bytes(bufs + gemms);
  }

  // Scratch of one thread of backward: backward_rows over n tokens, then reduce_gradients.
  std::size_t backward_thread_bytes(index_t n, index_t T, int nt) const {
    constexpr index_t TB = detail::kernels::max_block;
    const index_t N = D_.N, r = D_.r, k = D_.k, Nr = N * r, d = D_.d, din = D_.d_in, L = W_.max_len, dp = W_.dpad,
                  Pp = W_.Ppad;
    auto B = [](index_t m) { return detail::arena_bytes<S>(m); };
    auto G = [](index_t a, index_t b, index_t c) { return detail::gemm_bytes<S>(a, b, c); };
    const std::size_t tile_scratch = 6 * B(TB * L);
    const index_t SG = std::min<index_t>(n, 8 * TB), GR = (SG + TB - 1) / TB * TB;
    const Path pth = path();
    const bool fused = pth == Path::fused;
    const std::size_t rows =
        (pth == Path::dense ? 2 * B(n * Nr) : B(n * Nr) + B(n * N * k)) +             // E and e, or e and dz
        std::max({pth != Path::dense ? B(n * Nr) + 2 * B(TB * L) + tile_scratch : 0,  // tiles_backward
                  one_pass() ? B(n * Nr) + 3 * B(GR * dp) + 3 * B(GR * Pp) + 3 * B(TB * L) + B(SG) +
                                   detail::arena_bytes<detail::kernels::Block<S>>(GR / TB)
                             : 0,                   // backward_one_pass
                  fused ? 2 * B(N * k) + B(r) : 0,  // rank_space_backward
                  pth == Path::sparse ? detail::arena_bytes<index_t>(n) + B(n * r) + B(n * din) : 0}) +  // sparse_dx
        std::max({G(n, Nr, d), G(n, din, Nr), G(n, din, k), G(n, din, N), G(n, din, d), G(n, din, r)});
    const index_t nc = (din + nt - 1) / nt, ni = (N + nt - 1) / nt;
    const std::size_t reduce =
        (pth == Path::sparse ? detail::arena_bytes<index_t>(T) + B(T * r) + B(T * nc) : 0) +  // sparse dA
        (fused ? 2 * B(k * ni * r) + B(ni * r * d) : 0) +                                     // reduce_dB
        (pth == Path::dense ? B(T * ni * r) + B(ni * r * d) : 0) + B(N) + B(N * N) + B(k * Pp) + B(N * Pp) + B(N * r) +
        2 * B(dp) +  // reduce_small
        2 * (2 * B(N * k * r) + B(k * dp)) +
        std::max({G(Nr, nc, T), G(r, nc, T), G(N, nc, T), G(k, nc, T), G(d, nc, T), G(ni * r, d, k), G(ni * r, d, T),
                  G(k, dp, Nr)});
    return detail::round_bytes(std::max(rows, reduce));
  }

  Path path() const {
    if (cfg_.rotation) return Path::fused;
    if (cfg_.has_logits() && !cfg_.gate_reads_experts() && cfg_.normalize == Normalize::topk_softmax)
      return Path::sparse;
    return W_.half() ? Path::tiles : Path::dense;
  }
  bool stretch() const { return cfg_.gate_reads_experts(); }
  // The stretch gate with rotation in one pass over the experts (every normalisation but top-k,
  // which needs all logits before any weight is known).
  bool one_pass() const { return cfg_.rotation && stretch() && cfg_.normalize != Normalize::topk_softmax; }
  S scale(index_t i) const { return W_.scale[std::size_t(i)]; }

  detail::kernels::Args<S> kargs() const {
    detail::kernels::Args<S> a;
    a.BP = W_.BP.data();
    a.r = D_.r;
    a.pass0 = W_.pass0;
    a.UP = W_.UP.data();
    a.k = D_.k;
    a.ws = W_.ws.data();
    a.bound = cfg_.bound;
    return a;
  }

  // The expand weights as the matrix [N*r, d] (rotation off: slot s is coordinate s).
  detail::CMap<S> bt_matrix() const {
    return detail::CMap<S>(W_.BT.data(), D_.N * D_.r, D_.d, Eigen::OuterStride<>(W_.dpad));
  }

  // s_i h_i for tokens [t0, t1): [n, N, r].
  detail::Buf<S> scaled_h(const Context& ctx, index_t t0, index_t t1, detail::Arena& ar) const {
    const index_t N = D_.N, r = D_.r;
    const detail::Buf<S> hs = ar.buf<S>((t1 - t0) * N * r);
    std::copy(ctx.h.begin() + t0 * N * r, ctx.h.begin() + t1 * N * r, hs.begin());
    for (index_t t = 0; t < t1 - t0; ++t)
      for (index_t i = 0; i < N; ++i)
        for (index_t q = 0; q < r; ++q) hs[std::size_t((t * N + i) * r + q)] *= scale(i);
    return hs;
  }

  void normalize_rows(S* g, unsigned char* sel, index_t n) const {
    for (index_t t = 0; t < n; ++t)
      detail::normalize_forward(cfg_.normalize, index_t(cfg_.topk), S(cfg_.tau), g + t * D_.N, D_.N, sel + t * D_.N);
  }

  // ---- forward ---------------------------------------------------------------------------------

  void forward_rows(Context& ctx, const detail::MatRef<S>& X, const detail::MatMut<S>& Y, index_t t0, index_t t1,
                    detail::Arena& ar) const {
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, Nr = N * r, d = D_.d;
    const auto Xr = X.rows_of(t0, n);
    auto Yr = Y.rows_of(t0, n);
    // y = W0 x + b0
    if (W_.W0.present())
      detail::gemm(Yr, Xr, W_.W0.map().transpose(), false, ar);
    else
      Yr.setZero();
    if (p_.base_b0.present())
      for (index_t t = 0; t < n; ++t)
        for (index_t o = 0; o < d; ++o) Yr(t, o) += p_.base_b0(o);

    S* g = &ctx.g[std::size_t(t0 * N)];
    unsigned char* sel = &ctx.sel[std::size_t(t0 * N)];
    S* h = &ctx.h[std::size_t(t0 * Nr)];
    const Path pth = path();

    // Logits that do not read the experts: (Wg x + bg), or bg alone for a static gate.
    if (cfg_.has_logits()) {
      detail::MMap<S> L(g, n, N, Eigen::OuterStride<>(N));
      if (cfg_.gate != GateKind::static_ && W_.Wg.present())
        detail::gemm(L, Xr, W_.Wg.map().transpose(), false, ar);
      else
        L.setZero();
      if (p_.stretch_bg.present())
        for (index_t t = 0; t < n; ++t)
          for (index_t i = 0; i < N; ++i) L(t, i) += p_.stretch_bg(i);
    }
    if (cfg_.has_logits() && !stretch()) {
      normalize_rows(g, sel, n);
      if (pth != Path::sparse) std::fill(sel, sel + n * N, 1);
    }
    if (cfg_.gate == GateKind::none) std::fill(g, g + n * N, S(1));
    if (cfg_.gate == GateKind::uniform) std::fill(g, g + n * N, S(1) / S(N));

    // Shrink: h = A x for all experts in one GEMM (top-k: the selected ones only).
    if (pth == Path::sparse)
      sparse_shrink(X, t0, t1, h, sel, ar);
    else if (W_.half())
      half_shrink(X, t0, t1, h);
    else
      detail::gemm(detail::MMap<S>(h, n, Nr, Eigen::OuterStride<>(Nr)), Xr, W_.A.map().transpose(), false, ar);

    if (pth == Path::dense || pth == Path::tiles) {
      if (stretch()) {  // l_i += ws . v_i = s_i (B_i^T ws) . h_i
        for (index_t t = 0; t < n; ++t)
          for (index_t i = 0; i < N; ++i) {
            S acc = S(0);
            for (index_t q = 0; q < r; ++q) acc += W_.wsB[std::size_t(i * r + q)] * h[(t * N + i) * r + q];
            g[t * N + i] += scale(i) * acc;
          }
        normalize_rows(g, sel, n);
        std::fill(sel, sel + n * N, 1);
      }
      if (pth == Path::tiles) {  // y += sum_i g_i s_i B_i h_i by the tile kernels
        tiles_forward<detail::kernels::Put::add, false>(ctx, t0, t1, Y, nullptr, ar);
        return;
      }
      // y += sum_i g_i s_i B_i h_i = (g s h) B^T
      detail::Arena::Mark keep(ar);
      const detail::Buf<S> wt = ar.buf<S>(n * Nr);
      for (index_t t = 0; t < n; ++t)
        for (index_t i = 0; i < N; ++i)
          for (index_t q = 0; q < r; ++q)
            wt[std::size_t((t * N + i) * r + q)] = g[t * N + i] * scale(i) * h[(t * N + i) * r + q];
      detail::gemm(Yr, detail::CMap<S>(wt.data(), n, Nr, Eigen::OuterStride<>(Nr)), bt_matrix(), true, ar);
      return;
    }
    if (pth == Path::fused) {
      angle_inputs(X, t0, t1, h, &ctx.z[std::size_t(t0 * N * k)], ar);
      if (one_pass()) {
        forward_one_pass(ctx, t0, t1, Y, g, ar);  // g: logits without ws . u in, complete logits out
        normalize_rows(g, sel, n);
        std::fill(sel, sel + n * N, 1);
        return;
      }
      if (stretch()) {
        tiles_forward<detail::kernels::Put::none, true>(ctx, t0, t1, Y, g, ar);  // g holds the logits: l_i += ws . u_i
        normalize_rows(g, sel, n);
        std::fill(sel, sel + n * N, 1);
      }
    }
    tiles_forward<detail::kernels::Put::add, false>(ctx, t0, t1, Y, nullptr, ar);
  }

  // h_i = A_i x for the selected (token, expert) pairs only, one GEMM per expert.
  void sparse_shrink(const detail::MatRef<S>& X, index_t t0, index_t t1, S* h, const unsigned char* sel,
                     detail::Arena& ar) const {
    const index_t n = t1 - t0, N = D_.N, r = D_.r, din = D_.d_in;
    detail::Arena::Mark keep(ar);
    index_t* idx = ar.take<index_t>(n);
    S* xg = ar.take<S>(n * din);
    S* hg = ar.take<S>(n * r);
    std::vector<S> astore;  // used only with 16-bit storage
    for (index_t i = 0; i < N; ++i) {
      index_t ni = 0;
      for (index_t t = 0; t < n; ++t)
        if (sel[t * N + i]) idx[ni++] = t;
      if (ni == 0) continue;
      detail::MMap<S> Xg(xg, ni, din, Eigen::OuterStride<>(std::max<index_t>(din, 1)));
      detail::MMap<S> Hg(hg, ni, r, Eigen::OuterStride<>(r));
      for (index_t a = 0; a < ni; ++a) Xg.row(a) = X.rows_of(t0 + idx[std::size_t(a)], 1);
      detail::gemm(Hg, Xg, W_.a_rows(i * r, r, astore).map().transpose(), false, ar);
      for (index_t a = 0; a < ni; ++a)
        for (index_t q = 0; q < r; ++q) h[(idx[std::size_t(a)] * N + i) * r + q] = Hg(a, q);
    }
  }

  // h = A x with 16-bit A, for tokens [t0, t1): a few tokens read each row of A once
  // (kernels::shrink_rows); more widen A a block of rows at a time for a GEMM.
  void half_shrink(const detail::MatRef<S>& X, index_t t0, index_t t1, S* h) const {
    const index_t n = t1 - t0, Nr = D_.N * D_.r, din = D_.d_in;
    if constexpr (std::is_same<S, float>::value) {
      if (n <= 2 * detail::kernels::max_block) {
        constexpr int TB = detail::kernels::max_block;
        for (index_t tb = 0; tb < n; tb += TB) {
          const int nb = int(std::min<index_t>(TB, n - tb));
          const float* xs[TB];
          float* hs[TB];
          for (int u = 0; u < nb; ++u) {
            xs[u] = X.row(t0 + tb + u);
            hs[u] = h + (tb + u) * Nr;
          }
          W_.with_a(0, [&](const auto* a, index_t ld) {
            using WB = std::remove_const_t<std::remove_pointer_t<decltype(a)>>;
            if constexpr (detail::is_half<WB>::value)
              detail::kernels::with_block_size(
                  nb, [&](auto C) { detail::kernels::shrink_rows<decltype(C)::value>(a, ld, Nr, din, xs, hs); });
          });
        }
        return;
      }
    }
    const index_t rows = std::max<index_t>(1, std::min<index_t>(Nr, (index_t(1) << 18) / std::max<index_t>(din, 1)));
    std::vector<S> astore;
    const auto Xr = X.rows_of(t0, n);
    for (index_t j0 = 0; j0 < Nr; j0 += rows) {
      const index_t nr = std::min(rows, Nr - j0);
      detail::MMap<S>(h + j0, n, nr, Eigen::OuterStride<>(Nr)).noalias() =
          Xr * W_.a_rows(j0, nr, astore).map().transpose();
    }
  }

  // z_i = Wx x + s_i (Wv B_i) h_i + sum_j m_ij s_j (Wc B_j) h_j, for tokens [t0, t1), as matrix
  // products over all the tokens at once:
  //   V_i [n, k] = s_i H_i (Wv B_i)^T,  Q_j [n, k] = s_j H_j (Wc B_j)^T   (H_i = h of expert i)
  //   C = M Q, with Q stacked as [N, n k]                                (the map, one GEMM)
  //   z_i = Wx x + V_i + C_i
  void angle_inputs(const detail::MatRef<S>& X, index_t t0, index_t t1, const S* h, S* z, detail::Arena& ar) const {
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, nk = n * k;
    detail::Arena::Mark keep(ar);
    detail::MMap<S> wx(ar.zeros<S>(n * k).data(), n, k, Eigen::OuterStride<>(k));
    if (W_.Wx.present()) detail::gemm(wx, X.rows_of(t0, n), W_.Wx.map().transpose(), false, ar);
    detail::MMap<S> V(ar.take<S>(N * nk), N, nk, Eigen::OuterStride<>(nk)),
        Q(ar.take<S>(N * nk), N, nk, Eigen::OuterStride<>(nk));
    for (index_t i = 0; i < N; ++i) {
      const detail::CMap<S> Hi(h + i * r, n, r, Eigen::OuterStride<>(N * r));
      detail::gemm(detail::MMap<S>(V.data() + i * nk, n, k, Eigen::OuterStride<>(k)), scale(i) * Hi,
                   detail::CMap<S>(&W_.WvB[std::size_t(i * k * r)], k, r, Eigen::OuterStride<>(r)).transpose(), false,
                   ar);
      detail::gemm(detail::MMap<S>(Q.data() + i * nk, n, k, Eigen::OuterStride<>(k)), scale(i) * Hi,
                   detail::CMap<S>(&W_.WcB[std::size_t(i * k * r)], k, r, Eigen::OuterStride<>(r)).transpose(), false,
                   ar);
    }
    detail::gemm(V, detail::CMap<S>(W_.m.data(), N, N, Eigen::OuterStride<>(N)), Q, true, ar);
    for (index_t t = 0; t < n; ++t)
      for (index_t i = 0; i < N; ++i)
        for (index_t a = 0; a < k; ++a) z[(t * N + i) * k + a] = wx(t, a) + V(i, t * k + a);
  }

  // Scratch of one thread for the tile kernels.
  struct TileScratch {
    detail::Buf<S> cb, sb, db, dva, dvb, dpre;
    detail::kernels::Scratch<S> sc;
    TileScratch(const CpuLayer& l, detail::Arena& ar) {
      constexpr index_t TB = detail::kernels::max_block;
      const index_t L = TB * l.W_.max_len;
      for (detail::Buf<S>* v : {&cb, &sb, &db, &dva, &dvb, &dpre}) *v = ar.zeros<S>(L);
      sc.dstride = l.W_.max_len;
      sc.cb = cb.data();
      sc.sb = sb.data();
      sc.db = db.data();
      sc.dva = dva.data();
      sc.dvb = dvb.data();
      sc.dpre = dpre.data();
    }
  };

  const S* bias_row(index_t i) const { return W_.bias.empty() ? nullptr : W_.bias.data() + i * W_.Ppad; }

  // One pass over the tiles for tokens [t0, t1), in blocks of up to max_block tokens.
  // Out: y += sum_i g_i u_i. Dot: l_i += ws . u_i.
  template <detail::kernels::Put Out, bool Dot>
  void tiles_forward(const Context& ctx, index_t t0, index_t t1, const detail::MatMut<S>& Y, S* l,
                     detail::Arena& ar) const {
    constexpr int TB = detail::kernels::max_block;
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, L = W_.max_len;
    const auto K = kargs();
    detail::Arena::Mark keep(ar);
    const detail::Buf<S> hs = scaled_h(ctx, t0, t1, ar);
    const detail::Buf<S> ya = ar.zeros<S>(TB * L), yb = ar.zeros<S>(TB * L);
    const TileScratch ts(*this, ar);
    const S* z = cfg_.rotation ? &ctx.z[std::size_t(t0 * N * k)] : nullptr;
    const S* g = &ctx.g[std::size_t(t0 * N)];
    const unsigned char* sel = &ctx.sel[std::size_t(t0 * N)];
    for (const Tile& tl : n < TB ? W_.long_tiles : W_.tiles)
      for (index_t tb = 0; tb < n; tb += TB) {
        const int nb = int(std::min<index_t>(TB, n - tb));
        if (Out == detail::kernels::Put::add) {
          std::fill(ya.begin(), ya.begin() + nb * L, S(0));
          std::fill(yb.begin(), yb.begin() + nb * L, S(0));
        }
        for (index_t i = 0; i < N; ++i) {
          detail::kernels::Block<S> b;
          index_t who[TB];
          for (int u = 0; u < nb; ++u) {
            const index_t ti = (tb + u) * N + i;
            if (!sel[ti]) continue;
            const int c = b.n++;
            b.hs[c] = &hs[std::size_t(ti * r)];
            b.z[c] = z ? z + ti * k : nullptr;
            b.g[c] = g[ti];
            b.ya[c] = ya.data() + u * L;
            b.yb[c] = yb.data() + u * L;
            b.wa[c] = K.ws + tl.a0;
            b.wb[c] = K.ws + tl.b0;
            who[c] = ti;
          }
          if (b.n == 0) continue;
          W_.with_bp(i, [&](const auto* bpi) {
            detail::kernels::with_block_size(b.n, [&](auto C) {
              constexpr int Cn = decltype(C)::value;
              if (tl.rot)
                detail::kernels::rot_forward<S, Cn, Out, Dot>(K, tl, bpi, bias_row(i), b, ts.sc);
              else
                detail::kernels::pass_forward<S, Cn, Out, Dot>(K, tl, bpi, b);
            });
          });
          if (Dot)
            for (int c = 0; c < b.n; ++c) l[who[c]] += b.dot[c];
        }
        if (Out == detail::kernels::Put::add)
          for (int u = 0; u < nb; ++u) {
            S* yrow = Y.row(t0 + tb + u);
            const S* pa = ya.data() + u * L;
            const S* pb = yb.data() + u * L;
            for (index_t j = 0; j < tl.len; ++j) {
              const index_t c = W_.coord[std::size_t(tl.a0 + j)];
              if (c >= 0) yrow[c] += pa[j];
            }
            if (tl.rot)
              for (index_t j = 0; j < tl.len; ++j) {
                const index_t c = W_.coord[std::size_t(tl.b0 + j)];
                if (c >= 0) yrow[c] += pb[j];
              }
          }
      }
  }

  // The stretch gate in one pass (one_pass()): per block of tokens, expert after expert, u_i over
  // every tile into one row per token, then l_i += ws . u_i, and the running weighted sum
  // acc = a acc + w u_i; for softmax w = exp(l_i/tau - max) and a rescales acc whenever the
  // maximum grows (as in an online softmax), and y += acc / sum at the end.
  void forward_one_pass(Context& ctx, index_t t0, index_t t1, const detail::MatMut<S>& Y, S* l,
                        detail::Arena& ar) const {
    using detail::kernels::Put;
    constexpr int TB = detail::kernels::max_block;
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, d = D_.d, dp = W_.dpad;
    const auto K = kargs();
    detail::Arena::Mark keep(ar);
    const detail::Buf<S> hs = scaled_h(ctx, t0, t1, ar);
    const detail::Buf<S> ub = ar.zeros<S>(TB * dp), acc = ar.zeros<S>(TB * dp);
    const TileScratch ts(*this, ar);
    const S* z = &ctx.z[std::size_t(t0 * N * k)];
    const S inv_tau = S(1) / S(cfg_.tau);
    const bool softmax = cfg_.normalize == Normalize::softmax;
    for (index_t tb = 0; tb < n; tb += TB) {
      const int nb = int(std::min<index_t>(TB, n - tb));
      S mx[TB] = {}, sum[TB] = {};
      for (index_t i = 0; i < N; ++i) {
        detail::kernels::Block<S> b;
        b.n = nb;
        S dot[TB] = {};
        for (int c = 0; c < nb; ++c) {
          const index_t ti = (tb + c) * N + i;
          b.hs[c] = &hs[std::size_t(ti * r)];
          b.z[c] = z + ti * k;
        }
        for (const Tile& tl : W_.long_tiles) {
          for (int c = 0; c < nb; ++c) {
            b.ya[c] = ub.data() + c * dp + tl.a0;
            b.yb[c] = ub.data() + c * dp + tl.b0;
            b.wa[c] = K.ws + tl.a0;
            b.wb[c] = K.ws + tl.b0;
          }
          W_.with_bp(i, [&](const auto* bpi) {
            detail::kernels::with_block_size(nb, [&](auto C) {
              constexpr int Cn = decltype(C)::value;
              if (tl.rot)
                detail::kernels::rot_forward<S, Cn, Put::set, true>(K, tl, bpi, bias_row(i), b, ts.sc);
              else
                detail::kernels::pass_forward<S, Cn, Put::set, true>(K, tl, bpi, b);
            });
          });
          for (int c = 0; c < nb; ++c) dot[c] += b.dot[c];
        }
        for (int c = 0; c < nb; ++c) {
          S& lt = l[(tb + c) * N + i];
          lt += dot[c];
          const S x = lt * inv_tau;
          S a = S(1), w = S(1);
          if (softmax) {
            if (i == 0) {
              mx[c] = x;
              sum[c] = S(1);
            } else if (x > mx[c]) {
              a = std::exp(mx[c] - x);
              sum[c] = sum[c] * a + S(1);
              mx[c] = x;
            } else {
              w = std::exp(x - mx[c]);
              sum[c] += w;
            }
          } else {
            w = cfg_.normalize == Normalize::sigmoid ? detail::sigmoid(x) : x;
          }
          if (i == 0) a = S(0);
          detail::kernels::scale_add(acc.data() + c * dp, ub.data() + c * dp, dp, a, w);
        }
      }
      for (int c = 0; c < nb; ++c) {
        const S f = softmax ? S(1) / sum[c] : S(1);
        S* yrow = Y.row(t0 + tb + c);
        S* mrow = ctx.mix.empty() ? nullptr : &ctx.mix[std::size_t((t0 + tb + c) * d)];
        const S* pa = acc.data() + c * dp;
        for (index_t s = 0; s < dp; ++s) {
          const index_t o = W_.coord[std::size_t(s)];
          if (o < 0) continue;
          const S v = pa[s] * f;
          yrow[o] += v;
          if (mrow) mrow[o] = v;
        }
      }
    }
  }

  // ---- backward --------------------------------------------------------------------------------

  // Per-thread partial sums of the parameter gradients, reduced in thread order.
  // Per-thread partial sums of the parameter gradients, reduced in thread order (in the workspace).
  struct Partial {
    const S* BP = nullptr;                // the packed expand weights (CpuWeights::BP, or widened from 16 bits)
    detail::Buf<S> dBP, dUP, dbias, dws;  // slot space; dBP, dUP packed like BP, UP
    detail::Buf<S> ds, dm, Gv, Gc;        // [N], [N, N], [N, k, r], [N, k, r]
    detail::Buf<S> Cws;                   // [N, r]: sum_t dl_i s_i h_i (dense stretch)
  };

  struct Bwd {
    Bwd(const Gradients<S>& g, const detail::BackwardNeeds& n) : G(g), need(n) {}
    const Gradients<S>& G;
    detail::BackwardNeeds need;
    index_t T = 0;
    detail::MatRef<S> X, DY;
    detail::Buf<S> DH;   // [T, N, r]  dL/dh
    detail::Buf<S> DL;   // [T, N]     dL/d(raw logits)
    detail::Buf<S> DZS;  // [T, k]     sum_i dL/dz_i
    detail::Buf<Partial> part;
    const S* BP = nullptr;  // the packed expand weights in S (W_.BP, or BPwide for 16-bit storage)
    avec<S> BPwide;         // allocated only with 16-bit storage
    bool want_dh() const { return G.x.present() || G.lora_A.present() || G.lora_scale.present(); }
  };

  void alloc_partial(const Bwd& b, Partial& p, detail::Arena& ar) const {
    const index_t N = D_.N, r = D_.r, k = D_.k;
    const auto& G = b.G;
    const Path pth = path();
    p.BP = b.BP;
    if (G.lora_B.present() && pth != Path::dense) p.dBP = ar.buf<S>(N * r * W_.dpad);
    if (G.angle_U.present()) p.dUP = ar.buf<S>(k * W_.Ppad);
    if (G.angle_bias.present()) p.dbias = ar.buf<S>(N * W_.Ppad);
    if (G.stretch_ws.present() && pth != Path::dense) p.dws = ar.buf<S>(W_.dpad);
    if (G.lora_scale.present()) p.ds = ar.buf<S>(N);
    if (G.map_M.present()) p.dm = ar.buf<S>(N * N);
    if (pth == Path::fused && (G.lora_B.present() || G.angle_Wv.present())) p.Gv = ar.buf<S>(N * k * r);
    if (pth == Path::fused && (G.lora_B.present() || G.angle_Wc.present())) p.Gc = ar.buf<S>(N * k * r);
    if (pth == Path::dense && stretch() && (G.lora_B.present() || G.stretch_ws.present())) p.Cws = ar.buf<S>(N * r);
  }

  static void zero_partial(Partial& p) {
    for (detail::Buf<S>* v : {&p.dBP, &p.dUP, &p.dbias, &p.dws, &p.ds, &p.dm, &p.Gv, &p.Gc, &p.Cws})
      std::fill(v->begin(), v->end(), S(0));
  }

  // Where backward's shared buffers lie in its workspace.
  struct Outs {
    S *xstore = nullptr, *dystore = nullptr, *dx = nullptr, *dA = nullptr, *dWg = nullptr, *dWx = nullptr,
      *dW0 = nullptr;
    unsigned char* tbase = nullptr;
    std::size_t tb = 0;
  };

  // Backward's workspace, in order: staged x and dy, dh, dl, sum dz, the scratch of outputs that
  // are not row-major matrices, the per-thread partial sums, the per-thread arenas. With a
  // counting arena (out null) it only measures.
  void carve_backward(detail::Arena& A, Bwd& b, index_t x_copy, index_t dy_copy, Outs* out) const {
    const index_t T = b.T, N = D_.N, r = D_.r, k = D_.k;
    const auto& G = b.G;
    const int nt = pool_->size();
    S* xs = A.take<S>(x_copy);
    S* dys = A.take<S>(dy_copy);
    if (b.need.dv) b.DH = A.zeros<S>(T * N * r);
    if (b.need.dlogits) b.DL = A.zeros<S>(T * N);
    if (cfg_.rotation && (G.angle_Wx.present() || G.x.present())) b.DZS = A.zeros<S>(T * k);
    S* dx = A.take<S>(detail::OutMatrix<S, 2>::scratch_size(G.x));
    S* dA = A.take<S>(detail::OutMatrix<S, 3>::scratch_size(G.lora_A));
    S* dWg = A.take<S>(detail::OutMatrix<S, 2>::scratch_size(G.stretch_Wg));
    S* dWx = A.take<S>(detail::OutMatrix<S, 2>::scratch_size(G.angle_Wx));
    S* dW0 = A.take<S>(detail::OutMatrix<S, 2>::scratch_size(G.base_W0));
    b.part = A.buf<Partial>(nt);
    for (int th = 0; th < nt; ++th) {
      Partial scratch;
      Partial* p = b.part.data() ? new (b.part.data() + th) Partial() : &scratch;
      alloc_partial(b, *p, A);
    }
    const std::size_t tb = backward_thread_bytes((T + nt - 1) / nt, T, nt);
    unsigned char* tbase = A.take<unsigned char>(index_t(std::size_t(nt) * tb));
    if (out) *out = Outs{xs, dys, dx, dA, dWg, dWx, dW0, tbase, tb};
  }

  void backward_rows(const Context& ctx, Bwd& b, Partial& part, const detail::MatMut<S>* DX, index_t t0, index_t t1,
                     detail::Arena& ar) const {
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, Nr = N * r;
    const auto& G = b.G;
    const auto& need = b.need;
    const S* g = &ctx.g[std::size_t(t0 * N)];
    const unsigned char* sel = &ctx.sel[std::size_t(t0 * N)];
    const S* h = &ctx.h[std::size_t(t0 * Nr)];
    S* DL = need.dlogits ? &b.DL[std::size_t(t0 * N)] : nullptr;
    S* DH = need.dv ? &b.DH[std::size_t(t0 * Nr)] : nullptr;
    const Path pth = path();
    const bool want_dh = b.want_dh();

    auto normalize_back = [&] {
      for (index_t t = 0; t < n; ++t) detail::normalize_backward(cfg_.normalize, S(cfg_.tau), g + t * N, DL + t * N, N);
    };
    // dh_i = s_i e_i (e_i = B_i^T dv_i), ds_i += e_i . h_i
    auto finish_dh = [&](const S* e) {
      for (index_t t = 0; t < n; ++t)
        for (index_t i = 0; i < N; ++i) {
          const index_t ti = t * N + i;
          S dsacc = S(0);
          for (index_t q = 0; q < r; ++q) {
            DH[ti * r + q] = scale(i) * e[ti * r + q];
            dsacc += e[ti * r + q] * h[ti * r + q];
          }
          if (G.lora_scale.present()) part.ds[std::size_t(i)] += dsacc;
        }
    };

    if (pth == Path::dense) {
      detail::MMap<S> E(ar.take<S>(n * Nr), n, Nr, Eigen::OuterStride<>(Nr));  // E_ti = B_i^T dy_t
      if (need.dv || need.dlogits) detail::gemm(E, b.DY.rows_of(t0, n), bt_matrix().transpose(), false, ar);
      if (need.dlogits) {
        for (index_t t = 0; t < n; ++t)
          for (index_t i = 0; i < N; ++i) {
            S acc = S(0);
            for (index_t q = 0; q < r; ++q) acc += E(t, i * r + q) * h[(t * N + i) * r + q];
            DL[t * N + i] = scale(i) * acc;  // dg_i = dy . v_i
          }
        normalize_back();
      }
      if (need.dv) {
        const detail::Buf<S> e = ar.buf<S>(n * Nr);
        for (index_t t = 0; t < n; ++t)
          for (index_t i = 0; i < N; ++i)
            for (index_t q = 0; q < r; ++q) {
              S v = g[t * N + i] * E(t, i * r + q);
              if (stretch()) v += DL[t * N + i] * W_.wsB[std::size_t(i * r + q)];
              e[std::size_t((t * N + i) * r + q)] = v;
            }
        finish_dh(e.data());
      }
      if (!part.Cws.empty())
        for (index_t t = 0; t < n; ++t)
          for (index_t i = 0; i < N; ++i)
            for (index_t q = 0; q < r; ++q)
              part.Cws[std::size_t(i * r + q)] += DL[t * N + i] * scale(i) * h[(t * N + i) * r + q];
    } else {
      const bool st = stretch();
      const bool one = st && need.dlogits && one_pass();
      // Pass 1 (stretch, tile-major): dg_i = dy . u_i over all tiles, then dl.
      if (st && need.dlogits && !one) {
        tiles_backward(ctx, b.DY, t0, t1, true, detail::kernels::BwdWant{}, nullptr, DL, nullptr, nullptr, part, ar);
        normalize_back();
      }
      detail::kernels::BwdWant w;
      w.dg = !st && need.dlogits;
      w.dU = G.angle_U.present();
      w.dbias = G.angle_bias.present();
      w.dz = pth == Path::fused && (want_dh || G.lora_B.present() || G.map_M.present() || G.angle_Wx.present() ||
                                    G.angle_Wv.present() || G.angle_Wc.present());
      w.dpre = pth == Path::fused && (w.dz || w.dU || w.dbias);
      w.dws = st && G.stretch_ws.present();
      w.e = want_dh;
      w.dB = G.lora_B.present();
      w.dv = w.e || w.dB;
      detail::Buf<S> e, dz;
      if (w.e) e = ar.zeros<S>(n * Nr);
      if (w.dz) dz = ar.zeros<S>(n * N * k);
      if (one)
        backward_one_pass(ctx, b, part, t0, t1, w, DL, w.e ? e.data() : nullptr, w.dz ? dz.data() : nullptr, ar);
      else if (w.dg || w.dpre || w.dws || w.dv)
        tiles_backward(ctx, b.DY, t0, t1, false, w, st ? DL : nullptr, w.dg ? DL : nullptr, w.e ? e.data() : nullptr,
                       w.dz ? dz.data() : nullptr, part, ar);
      if (w.dg) normalize_back();
      if (w.dz)
        rank_space_backward(ctx, b, part, t0, t1, e.data(), dz.data(), ar);
      else if (w.e)
        finish_dh(e.data());
    }

    // dx = A^T dh + Wx^T sum_i dz_i + Wg^T dl + W0^T dy
    if (!DX) return;
    auto DXr = DX->rows_of(t0, n);
    if (need.dv) {
      if (pth == Path::sparse) {
        sparse_dx(DX, t0, t1, DH, sel, ar);
      } else if (W_.half()) {  // 16-bit A: widened a block of rows at a time
        const index_t din = D_.d_in;
        const index_t rows =
            std::max<index_t>(1, std::min<index_t>(Nr, (index_t(1) << 18) / std::max<index_t>(din, 1)));
        std::vector<S> astore;
        for (index_t j0 = 0; j0 < Nr; j0 += rows) {
          const index_t nr = std::min(rows, Nr - j0);
          DXr.noalias() += detail::CMap<S>(DH + j0, n, nr, Eigen::OuterStride<>(Nr)) * W_.a_rows(j0, nr, astore).map();
        }
      } else {
        detail::gemm(DXr, detail::CMap<S>(DH, n, Nr, Eigen::OuterStride<>(Nr)), W_.A.map(), true, ar);
      }
    }
    if (!b.DZS.empty() && W_.Wx.present())
      detail::gemm(DXr, detail::CMap<S>(&b.DZS[std::size_t(t0 * k)], n, k, Eigen::OuterStride<>(k)), W_.Wx.map(), true,
                   ar);
    if (need.dlogits && cfg_.gate != GateKind::static_ && W_.Wg.present())
      detail::gemm(DXr, detail::CMap<S>(DL, n, N, Eigen::OuterStride<>(N)), W_.Wg.map(), true, ar);
    if (W_.W0.present()) detail::gemm(DXr, b.DY.rows_of(t0, n), W_.W0.map(), true, ar);
  }

  // Rank-space part of backward for tokens [t0, t1), from e_i = B_i^T R_i^T du_i and dz_i:
  //   dzc_j = sum_i m_ij dz_i                 (through c_i = sum_j m_ij v_j)
  //   dh_i  = s_i (e_i + WvB_i^T dz_i + WcB_i^T dzc_i),   ds_i += (e_i + ...) . h_i
  //   Gv_i += dz_i h_i^T,  Gc_i += dzc_i h_i^T  (then dB_i += s_i (Wv^T Gv_i + Wc^T Gc_i),
  //                                              dWv = sum_i s_i Gv_i B_i^T, dWc likewise)
  //   dm_ij += dz_i . (s_j WcB_j h_j),  sum_i dz_i for Wx and x
  void rank_space_backward(const Context& ctx, Bwd& b, Partial& part, index_t t0, index_t t1, const S* e, const S* dz,
                           detail::Arena& ar) const {
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, Nr = N * r;
    const auto& G = b.G;
    const S* h = &ctx.h[std::size_t(t0 * Nr)];
    const bool want_dh = b.want_dh();
    detail::Arena::Mark keep(ar);
    const detail::Buf<S> dzc = ar.zeros<S>(N * k), qv = ar.zeros<S>(N * k), dh = ar.zeros<S>(r);
    for (index_t t = 0; t < n; ++t) {
      const S* ht = h + t * Nr;
      const S* dzt = dz + t * N * k;
      std::fill(dzc.begin(), dzc.end(), S(0));
      for (index_t i = 0; i < N; ++i)
        for (index_t j = 0; j < N; ++j) {
          const S mij = W_.m[std::size_t(i * N + j)];
          for (index_t a = 0; a < k; ++a) dzc[std::size_t(j * k + a)] += mij * dzt[i * k + a];
        }
      if (want_dh)
        for (index_t i = 0; i < N; ++i) {
          for (index_t q = 0; q < r; ++q) {
            S acc = e[(t * N + i) * r + q];
            for (index_t a = 0; a < k; ++a)
              acc += W_.WvB[std::size_t((i * k + a) * r + q)] * dzt[i * k + a] +
                     W_.WcB[std::size_t((i * k + a) * r + q)] * dzc[std::size_t(i * k + a)];
            dh[std::size_t(q)] = acc;
          }
          S dsacc = S(0);
          for (index_t q = 0; q < r; ++q) {
            b.DH[std::size_t((t0 + t) * Nr + i * r + q)] = scale(i) * dh[std::size_t(q)];
            dsacc += dh[std::size_t(q)] * ht[i * r + q];
          }
          if (G.lora_scale.present()) part.ds[std::size_t(i)] += dsacc;
        }
      if (!part.Gv.empty())
        for (index_t i = 0; i < N; ++i)
          for (index_t a = 0; a < k; ++a)
            for (index_t q = 0; q < r; ++q) part.Gv[std::size_t((i * k + a) * r + q)] += dzt[i * k + a] * ht[i * r + q];
      if (!part.Gc.empty())
        for (index_t i = 0; i < N; ++i)
          for (index_t a = 0; a < k; ++a)
            for (index_t q = 0; q < r; ++q)
              part.Gc[std::size_t((i * k + a) * r + q)] += dzc[std::size_t(i * k + a)] * ht[i * r + q];
      if (!part.dm.empty()) {
        for (index_t j = 0; j < N; ++j)
          for (index_t a = 0; a < k; ++a) {
            S acc = S(0);
            for (index_t q = 0; q < r; ++q) acc += W_.WcB[std::size_t((j * k + a) * r + q)] * ht[j * r + q];
            qv[std::size_t(j * k + a)] = scale(j) * acc;
          }
        for (index_t i = 0; i < N; ++i)
          for (index_t j = 0; j < N; ++j) {
            if (j == i) continue;
            S acc = S(0);
            for (index_t a = 0; a < k; ++a) acc += dzt[i * k + a] * qv[std::size_t(j * k + a)];
            part.dm[std::size_t(i * N + j)] += acc;
          }
      }
      if (!b.DZS.empty())
        for (index_t a = 0; a < k; ++a) {
          S acc = S(0);
          for (index_t i = 0; i < N; ++i) acc += dzt[i * k + a];
          b.DZS[std::size_t((t0 + t) * k + a)] = acc;
        }
    }
  }

  // Gathers dy of token row `t` on the slots of a tile.
  void gather_dy(const detail::MatRef<S>& DY, index_t t, const Tile& tl, S* dya, S* dyb) const {
    const S* row = DY.row(t);
    for (index_t j = 0; j < tl.len; ++j) {
      const index_t c = W_.coord[std::size_t(tl.a0 + j)];
      dya[j] = c >= 0 ? row[c] : S(0);
    }
    if (tl.rot)
      for (index_t j = 0; j < tl.len; ++j) {
        const index_t c = W_.coord[std::size_t(tl.b0 + j)];
        dyb[j] = c >= 0 ? row[c] : S(0);
      }
  }

  // Backward passes over the tiles for tokens [t0, t1), in blocks of up to max_block tokens.
  // Dot pass (dot_dy): dg_i += dy . u_i. Main pass: everything `w` asks for.
  void tiles_backward(const Context& ctx, const detail::MatRef<S>& DY, index_t t0, index_t t1, bool dot_dy,
                      const detail::kernels::BwdWant& w, const S* dl, S* dg, S* e, S* dz, Partial& part,
                      detail::Arena& ar) const {
    constexpr int TB = detail::kernels::max_block;
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, L = W_.max_len;
    const auto K = kargs();
    detail::Arena::Mark keep(ar);
    const detail::Buf<S> hs = scaled_h(ctx, t0, t1, ar);
    const detail::Buf<S> dya = ar.zeros<S>(TB * L), dyb = ar.zeros<S>(TB * L);
    const TileScratch ts(*this, ar);
    const S* z = cfg_.rotation ? &ctx.z[std::size_t(t0 * N * k)] : nullptr;
    const S* g = &ctx.g[std::size_t(t0 * N)];
    const unsigned char* sel = &ctx.sel[std::size_t(t0 * N)];
    detail::kernels::BwdOut<S> o;
    o.dUP = part.dUP.empty() ? nullptr : part.dUP.data();
    o.dws = part.dws.empty() ? nullptr : part.dws.data();
    for (const Tile& tl : n < TB ? W_.long_tiles : W_.tiles)
      for (index_t tb = 0; tb < n; tb += TB) {
        const int nb = int(std::min<index_t>(TB, n - tb));
        for (int u = 0; u < nb; ++u) gather_dy(DY, t0 + tb + u, tl, dya.data() + u * L, dyb.data() + u * L);
        for (index_t i = 0; i < N; ++i) {
          detail::kernels::Block<S> b;
          index_t who[TB];
          for (int u = 0; u < nb; ++u) {
            const index_t ti = (tb + u) * N + i;
            if (!sel[ti]) continue;
            const int c = b.n++;
            b.hs[c] = &hs[std::size_t(ti * r)];
            b.z[c] = z ? z + ti * k : nullptr;
            b.g[c] = g[ti];
            b.dl[c] = dl ? dl[ti] : S(0);
            b.wa[c] = b.dya[c] = dya.data() + u * L;
            b.wb[c] = b.dyb[c] = dyb.data() + u * L;
            b.e[c] = e ? e + ti * r : nullptr;
            b.dz[c] = dz ? dz + ti * k : nullptr;
            b.dg[c] = dg ? dg + ti : nullptr;
            who[c] = ti;
          }
          if (b.n == 0) continue;
          o.dbias_i = part.dbias.empty() ? nullptr : &part.dbias[std::size_t(i * W_.Ppad)];
          o.dBPi = part.dBP.empty() ? nullptr : &part.dBP[std::size_t(i * r * W_.dpad)];
          detail::kernels::with_block_size(b.n, [&](auto C) {
            constexpr int Cn = decltype(C)::value;
            if (dot_dy) {
              if (tl.rot)
                detail::kernels::rot_forward<S, Cn, detail::kernels::Put::none, true>(K, tl, part.BP + i * r * W_.dpad,
                                                                                      bias_row(i), b, ts.sc);
              else
                detail::kernels::pass_forward<S, Cn, detail::kernels::Put::none, true>(K, tl, part.BP + i * r * W_.dpad,
                                                                                       b);
            } else {
              if (tl.rot)
                detail::kernels::rot_backward<S, Cn>(K, tl, part.BP + i * r * W_.dpad, bias_row(i), b, w, o, ts.sc);
              else
                detail::kernels::pass_backward<S, Cn>(K, tl, part.BP + i * r * W_.dpad, b, w, o, ts.sc);
            }
          });
          if (dot_dy)
            for (int c = 0; c < b.n; ++c) dg[who[c]] += b.dot[c];
        }
      }
  }

  // Backward of the one-pass stretch path for tokens [t0, t1), in groups of 32 tokens (8 blocks):
  // per group, expert after expert, a first sweep writes u_i, cos, sin and bound' of every plane
  // into one row per token and gives dg_i = dy . u_i, so dl_i is known at once; a second sweep
  // reads them back for the rest of the chain. Both sweeps are tile-major (W_.expert_tiles):
  // every block of the group passes over one short tile before the next tile, so the expert's
  // packed B and partial dB for that tile (16 KiB together) are read from L1 by all 32 tokens.
  // Softmax needs dg_i - sum_j g_j dg_j = dy . (u_i - mix), and takes it as that dot product:
  // the difference is formed before the sum, so an expert that carries most of the weight
  // (u_i close to mix) loses no digits to cancellation.
  void backward_one_pass(const Context& ctx, const Bwd& bw, Partial& part, index_t t0, index_t t1,
                         const detail::kernels::BwdWant& w, S* DL, S* e, S* dz, detail::Arena& ar) const {
    using detail::kernels::Put;
    constexpr int TB = detail::kernels::max_block;
    constexpr index_t SW = detail::simd::width<S>();
    const index_t n = t1 - t0, N = D_.N, r = D_.r, k = D_.k, d = D_.d, dp = W_.dpad, Pp = W_.Ppad;
    const auto& tiles = W_.expert_tiles;
    const index_t LT = W_.max_len;
    const auto K = kargs();
    detail::Arena::Mark keep(ar);
    const detail::Buf<S> hs = scaled_h(ctx, t0, t1, ar);
    const bool rest = w.dpre || w.dws || w.dv;
    const bool centered = cfg_.normalize == Normalize::softmax;
    // tokens per group: 8 blocks, so each tile of one expert's B and dB is reused by 32 tokens
    // from L1; the group's rows (dy, mixture, u, cos, sin, bound': about 2 MiB at d = 4096)
    // stay in L3 between the two sweeps
    constexpr index_t NBk = 8;
    const index_t SG = std::min<index_t>(n, NBk * TB);
    // dy, the mixture and u of a group are stored interleaved (kernels::at): the four tokens of
    // a block alternate every W slots
    const index_t GR = (SG + TB - 1) / TB * TB;  // rows, a whole number of blocks
    const detail::Buf<S> mxs = ar.zeros<S>(centered ? GR * dp : 0), dys = ar.zeros<S>(GR * dp);
    const detail::Buf<S> ub = ar.zeros<S>(GR * dp), cb = ar.zeros<S>(GR * Pp), sb = ar.zeros<S>(GR * Pp),
                         db = ar.zeros<S>(GR * Pp), dva = ar.zeros<S>(TB * LT), dvb = ar.zeros<S>(TB * LT),
                         dpre = ar.zeros<S>(TB * LT);
    const detail::Buf<S> dg = ar.zeros<S>(SG);
    const S* z = &ctx.z[std::size_t(t0 * N * k)];
    const S* g = &ctx.g[std::size_t(t0 * N)];
    const S inv_tau = S(1) / S(cfg_.tau);
    const Normalize nz = cfg_.normalize;
    detail::kernels::BwdOut<S> o;
    o.dUP = part.dUP.empty() ? nullptr : part.dUP.data();
    o.dws = part.dws.empty() ? nullptr : part.dws.data();
    const detail::Buf<detail::kernels::Block<S>> blocks = ar.buf<detail::kernels::Block<S>>(GR / TB);
    for (auto& bl : blocks) new (&bl) detail::kernels::Block<S>();
    // offset of token c of block bi at slot s0 in the interleaved rows (a multiple of SW)
    auto il = [&](index_t bi, int c, index_t s0) { return bi * TB * dp + s0 * TB + c * SW; };
    for (index_t g0 = 0; g0 < n; g0 += SG) {
      const index_t g1 = std::min(n, g0 + SG);
      for (index_t t = g0; t < g1; ++t) {
        const S* row = bw.DY.row(t0 + t);
        const S* mrow = centered ? &ctx.mix[std::size_t((t0 + t) * d)] : nullptr;
        const index_t tg = t - g0;
        const index_t base = tg / TB * TB * dp + tg % TB * SW;
        for (index_t s = 0; s < dp; ++s) {
          const index_t oc = W_.coord[std::size_t(s)];
          const std::size_t at = std::size_t(base + s / SW * TB * SW + s % SW);
          dys[at] = oc >= 0 ? row[oc] : S(0);
          if (centered) mxs[at] = oc >= 0 ? mrow[oc] : S(0);
        }
      }
      const index_t nblk = (g1 - g0 + TB - 1) / TB;
      for (index_t i = 0; i < N; ++i) {
        o.dbias_i = part.dbias.empty() ? nullptr : &part.dbias[std::size_t(i * W_.Ppad)];
        o.dBPi = part.dBP.empty() ? nullptr : &part.dBP[std::size_t(i * r * W_.dpad)];
        for (index_t bi = 0; bi < nblk; ++bi) {
          const index_t tb = g0 + bi * TB;
          auto& b = blocks[std::size_t(bi)];
          b = detail::kernels::Block<S>{};
          b.n = int(std::min<index_t>(TB, g1 - tb));
          for (int c = 0; c < b.n; ++c) {
            const index_t ti = (tb + c) * N + i;
            b.hs[c] = &hs[std::size_t(ti * r)];
            b.z[c] = z + ti * k;
            b.g[c] = g[ti];
            b.e[c] = e ? e + ti * r : nullptr;
            b.dz[c] = dz ? dz + ti * k : nullptr;
          }
        }
        auto tile_scratch = [&](const Tile& tl, index_t bi) {
          detail::kernels::Scratch<S> sc;
          sc.dstride = LT;
          if (tl.rot) {
            const index_t off = bi * TB * Pp + tl.a0 * TB;  // interleaved (kernels::Scratch)
            sc.cb = cb.data() + off;
            sc.sb = sb.data() + off;
            sc.db = db.data() + off;
          }
          sc.dva = dva.data();
          sc.dvb = dvb.data();
          sc.dpre = dpre.data();
          return sc;
        };
        // sweep 1, tile-major over the group's blocks: u, cos, sin, bound', dg = dy . u
        std::fill(dg.begin(), dg.end(), S(0));
        for (const Tile& tl : tiles)
          for (index_t bi = 0; bi < nblk; ++bi) {
            auto& b = blocks[std::size_t(bi)];
            const index_t row0 = bi * TB;
            for (int c = 0; c < b.n; ++c) {
              const index_t oa = il(bi, c, tl.a0), ob = il(bi, c, tl.b0);
              b.ya[c] = ub.data() + oa;
              b.yb[c] = ub.data() + ob;
              b.wa[c] = dys.data() + oa;
              b.wb[c] = dys.data() + ob;
              if (centered) {
                b.ma[c] = mxs.data() + oa;
                b.mb[c] = mxs.data() + ob;
              }
            }
            const auto sc = tile_scratch(tl, bi);
            detail::kernels::with_block_size(b.n, [&](auto C) {
              constexpr int Cn = decltype(C)::value;
              auto sweep = [&](auto deriv, auto ctr) {
                constexpr bool Dv = decltype(deriv)::value, Ct = decltype(ctr)::value;
                if (tl.rot)
                  detail::kernels::rot_forward<S, Cn, Put::set, true, Dv, Ct, true>(K, tl, part.BP + i * r * W_.dpad,
                                                                                    bias_row(i), b, sc);
                else
                  detail::kernels::pass_forward<S, Cn, Put::set, true, Ct, true>(K, tl, part.BP + i * r * W_.dpad, b);
              };
              detail::kernels::with_flags(sweep, w.dpre, centered);
            });
            for (int c = 0; c < b.n; ++c) dg[std::size_t(row0 + c)] += b.dot[c];
          }
        for (index_t bi = 0; bi < nblk; ++bi) {
          auto& b = blocks[std::size_t(bi)];
          for (int c = 0; c < b.n; ++c) {
            const index_t t = g0 + bi * TB + c, ti = t * N + i;
            const S gi = g[ti], dgt = dg[std::size_t(t - g0)];
            S dl;
            if (centered)
              dl = gi * dgt * inv_tau;  // dg holds dy . (u_i - mix)
            else if (nz == Normalize::sigmoid)
              dl = gi * (S(1) - gi) * dgt * inv_tau;
            else
              dl = dgt * inv_tau;
            DL[ti] = dl;
            b.dl[c] = dl;
          }
        }
        if (!rest) continue;
        // sweep 2, tile-major: the rest of the chain from the stored rows
        for (const Tile& tl : tiles)
          for (index_t bi = 0; bi < nblk; ++bi) {
            auto& b = blocks[std::size_t(bi)];
            for (int c = 0; c < b.n; ++c) {
              const index_t oa = il(bi, c, tl.a0), ob = il(bi, c, tl.b0);
              b.ua[c] = ub.data() + oa;
              b.ub[c] = ub.data() + ob;
              b.dya[c] = dys.data() + oa;
              b.dyb[c] = dys.data() + ob;
            }
            const auto sc = tile_scratch(tl, bi);
            detail::kernels::with_block_size(b.n, [&](auto C) {
              constexpr int Cn = decltype(C)::value;
              if (tl.rot)
                detail::kernels::rot_backward<S, Cn, true, true>(K, tl, part.BP + i * r * W_.dpad, bias_row(i), b, w, o,
                                                                 sc);
              else
                detail::kernels::pass_backward<S, Cn, true, true>(K, tl, part.BP + i * r * W_.dpad, b, w, o, sc);
            });
          }
      }
    }
  }

  // dx += sum_{i selected} A_i^T dh_i, grouped per expert.
  void sparse_dx(const detail::MatMut<S>* DX, index_t t0, index_t t1, const S* DH, const unsigned char* sel,
                 detail::Arena& ar) const {
    const index_t n = t1 - t0, N = D_.N, r = D_.r, din = D_.d_in;
    detail::Arena::Mark keep(ar);
    index_t* idx = ar.take<index_t>(n);
    S* dg = ar.take<S>(n * r);
    S* xg = ar.take<S>(n * din);
    std::vector<S> astore;  // used only with 16-bit storage
    for (index_t i = 0; i < N; ++i) {
      index_t ni = 0;
      for (index_t t = 0; t < n; ++t)
        if (sel[t * N + i]) idx[ni++] = t;
      if (ni == 0) continue;
      detail::MMap<S> Dg(dg, ni, r, Eigen::OuterStride<>(r));
      detail::MMap<S> Xg(xg, ni, din, Eigen::OuterStride<>(std::max<index_t>(din, 1)));
      for (index_t a = 0; a < ni; ++a)
        for (index_t q = 0; q < r; ++q) Dg(a, q) = DH[(idx[std::size_t(a)] * N + i) * r + q];
      detail::gemm(Xg, Dg, W_.a_rows(i * r, r, astore).map(), false, ar);
      for (index_t a = 0; a < ni; ++a) DX->rows_of(t0 + idx[std::size_t(a)], 1) += Xg.row(a);
    }
  }

  // ---- reductions ------------------------------------------------------------------------------

  // Thread th of nt: a block of d_in columns of the GEMM gradients (A, Wg, Wx, W0), a block of
  // experts of dB, and (last thread) the small gradients. Partial sums are added in thread order.
  void reduce_gradients(const Context& ctx, const Bwd& b, int th, int nt, const detail::MatMut<S>* dA,
                        const detail::MatMut<S>* dWg, const detail::MatMut<S>* dWx, const detail::MatMut<S>* dW0,
                        detail::Arena& ar) const {
    const index_t T = b.T, N = D_.N, r = D_.r, k = D_.k, Nr = N * r, din = D_.d_in;
    const auto& G = b.G;
    const Path pth = path();
    index_t c0, c1;
    detail::token_range(din, nt, th, c0, c1);
    const index_t nc = c1 - c0;
    if (nc > 0) {
      const detail::CMap<S> Xm = b.X.map();
      const auto Xc = Xm.middleCols(c0, nc);
      if (dA) {
        if (pth == Path::sparse) {
          detail::Arena::Mark keep(ar);
          index_t* idx = ar.take<index_t>(T);
          S* dg = ar.take<S>(T * r);
          S* xg = ar.take<S>(T * nc);
          for (index_t i = 0; i < N; ++i) {
            index_t ni = 0;
            for (index_t t = 0; t < T; ++t)
              if (ctx.sel[std::size_t(t * N + i)]) idx[ni++] = t;
            if (ni == 0) continue;
            detail::MMap<S> Dg(dg, ni, r, Eigen::OuterStride<>(r)), Xg(xg, ni, nc, Eigen::OuterStride<>(nc));
            for (index_t a = 0; a < ni; ++a) {
              for (index_t q = 0; q < r; ++q) Dg(a, q) = b.DH[std::size_t((idx[std::size_t(a)] * N + i) * r + q)];
              Xg.row(a) = Xc.row(idx[std::size_t(a)]);
            }
            detail::gemm(dA->map().block(i * r, c0, r, nc), Dg.transpose(), Xg, true, ar);
          }
        } else {
          detail::gemm(dA->map().middleCols(c0, nc),
                       detail::CMap<S>(b.DH.data(), T, Nr, Eigen::OuterStride<>(Nr)).transpose(), Xc, true, ar);
        }
      }
      if (dWg)
        detail::gemm(dWg->map().middleCols(c0, nc),
                     detail::CMap<S>(b.DL.data(), T, N, Eigen::OuterStride<>(N)).transpose(), Xc, true, ar);
      if (dWx)
        detail::gemm(dWx->map().middleCols(c0, nc),
                     detail::CMap<S>(b.DZS.data(), T, k, Eigen::OuterStride<>(k)).transpose(), Xc, true, ar);
      if (dW0) detail::gemm(dW0->map().middleCols(c0, nc), b.DY.map().transpose(), Xc, true, ar);
    }
    if (G.lora_B.present()) {
      index_t i0, i1;
      detail::token_range(N, nt, th, i0, i1);
      if (i0 < i1) reduce_dB(ctx, b, i0, i1, ar);
    }
    if (th == nt - 1) reduce_small(b, ar);
  }

  // dB for experts [i0, i1): the thread partials (slot space) summed in thread order, plus (rotation)
  // the rank-space term s_i (Wv^T Gv_i + Wc^T Gc_i), added straight into the caller's view.
  void reduce_dB(const Context& ctx, const Bwd& b, index_t i0, index_t i1, detail::Arena& ar) const {
    const index_t T = b.T, N = D_.N, r = D_.r, k = D_.k, d = D_.d, dpad = W_.dpad, ni = i1 - i0;
    const auto& G = b.G;
    const Path pth = path();
    const View<S, 3>& dB = G.lora_B;
    // rank-space term of every expert of the range at once, transposed so that each expert reads
    // its own r rows in order: Rt [ni r, d] = Gv^T Wv + Gc^T Wc (columns of G scaled by s_i)
    detail::Arena::Mark keep(ar);
    const S* Rtp = nullptr;
    if (pth == Path::fused && (W_.Wv.present() || W_.Wc.present())) {
      detail::MMap<S> Gv(ar.zeros<S>(k * ni * r).data(), k, ni * r, Eigen::OuterStride<>(ni * r)),
          Gc(ar.zeros<S>(k * ni * r).data(), k, ni * r, Eigen::OuterStride<>(ni * r));
      for (const Partial& p : b.part)
        for (index_t i = i0; i < i1; ++i)
          for (index_t a = 0; a < k; ++a)
            for (index_t q = 0; q < r; ++q) {
              Gv(a, (i - i0) * r + q) += p.Gv[std::size_t((i * k + a) * r + q)];
              Gc(a, (i - i0) * r + q) += p.Gc[std::size_t((i * k + a) * r + q)];
            }
      for (index_t i = i0; i < i1; ++i) {
        Gv.middleCols((i - i0) * r, r) *= scale(i);
        Gc.middleCols((i - i0) * r, r) *= scale(i);
      }
      detail::MMap<S> Rt(ar.zeros<S>(ni * r * d).data(), ni * r, d, Eigen::OuterStride<>(d));
      if (W_.Wv.present()) detail::gemm(Rt, Gv.transpose(), W_.Wv.map(), true, ar);
      if (W_.Wc.present()) detail::gemm(Rt, Gc.transpose(), W_.Wc.map(), true, ar);
      Rtp = Rt.data();
    }
    if (pth == Path::dense) {
      // dB_i = s_i sum_t (g_i dy + dl_i ws) h_i^T, one GEMM for the range
      detail::MMap<S> wt(ar.take<S>(T * ni * r), T, ni * r, Eigen::OuterStride<>(ni * r));
      for (index_t t = 0; t < T; ++t)
        for (index_t i = i0; i < i1; ++i)
          for (index_t q = 0; q < r; ++q)
            wt(t, (i - i0) * r + q) =
                ctx.g[std::size_t(t * N + i)] * scale(i) * ctx.h[std::size_t((t * N + i) * r + q)];
      detail::MMap<S> acc(ar.take<S>(ni * r * d), ni * r, d, Eigen::OuterStride<>(d));  // [ni r, d]
      detail::gemm(acc, wt.transpose(), b.DY.map(), false, ar);
      for (index_t i = i0; i < i1; ++i)
        for (index_t q = 0; q < r; ++q) {
          S cws = S(0);
          if (stretch())
            for (const Partial& p : b.part) cws += p.Cws[std::size_t(i * r + q)];
          const S* row = acc.data() + ((i - i0) * r + q) * d;
          S* out = dB.data + i * dB.stride[0] + q * dB.stride[2];
          for (index_t o = 0; o < d; ++o) out[o * dB.stride[1]] += row[o] + cws * W_.ws[std::size_t(o)];
        }
      return;
    }
    constexpr index_t Wd = detail::simd::width<S>();
    for (index_t i = i0; i < i1; ++i) {
      S* out = dB.data + i * dB.stride[0];
      for (index_t s = 0; s < dpad; s += Wd) {
        const index_t off = i * r * dpad + W_.group_offset(s);
        for (index_t l = 0; l < Wd; ++l) {
          const index_t o = W_.coord[std::size_t(s + l)];
          if (o < 0) continue;
          S* dst = out + o * dB.stride[1];
          const S* rcol = Rtp ? Rtp + (i - i0) * r * d + o : nullptr;
          for (index_t q = 0; q < r; ++q) {
            S v = rcol ? rcol[q * d] : S(0);
            for (const Partial& p : b.part) v += p.dBP[std::size_t(off + q * Wd + l)];
            dst[q * dB.stride[2]] += v;
          }
        }
      }
    }
  }

  void reduce_small(const Bwd& b, detail::Arena& ar) const {
    const index_t T = b.T, N = D_.N, r = D_.r, k = D_.k, d = D_.d, dpad = W_.dpad, Ppad = W_.Ppad;
    const auto& G = b.G;
    const Path pth = path();
    auto sum_parts = [&](auto member, std::size_t size) {
      const detail::Buf<S> acc = ar.zeros<S>(index_t(size));
      for (const Partial& p : b.part) {
        const auto& v = p.*member;
        for (std::size_t e = 0; e < size; ++e) acc[e] += v[e];
      }
      return acc;
    };
    if (G.lora_scale.present()) {
      const auto ds = sum_parts(&Partial::ds, std::size_t(N));
      for (index_t i = 0; i < N; ++i) G.lora_scale(i) += ds[std::size_t(i)];
    }
    if (G.map_M.present()) {
      auto dm = sum_parts(&Partial::dm, std::size_t(N * N));
      if (cfg_.map == MapMode::learned && N > 1)
        for (index_t i = 0; i < N; ++i) {
          detail::map_weights_backward(&W_.m[std::size_t(i * N)], &dm[std::size_t(i * N)], i, N);
          for (index_t j = 0; j < N; ++j) G.map_M(i, j) += dm[std::size_t(i * N + j)];
        }
    }
    if (G.angle_U.present()) {
      constexpr index_t Wd = detail::simd::width<S>();
      const auto dUP = sum_parts(&Partial::dUP, std::size_t(k * Ppad));
      for (index_t m = 0; m < D_.P; ++m)
        for (index_t q = 0; q < k; ++q) G.angle_U(m, q) += dUP[std::size_t(m / Wd * k * Wd + q * Wd + m % Wd)];
    }
    if (G.angle_bias.present()) {
      const auto db = sum_parts(&Partial::dbias, std::size_t(N * Ppad));
      for (index_t i = 0; i < N; ++i)
        for (index_t m = 0; m < D_.P; ++m) G.angle_bias(i, m) += db[std::size_t(i * Ppad + m)];
    }
    if (G.stretch_ws.present()) {
      detail::Buf<S> dws;
      if (pth == Path::dense) {  // dws = sum_i B_i (sum_t dl_i s_i h_i)
        const auto C = sum_parts(&Partial::Cws, std::size_t(N * r));
        dws = ar.zeros<S>(dpad);
        Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(dws.data(), d).noalias() =
            Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(C.data(), N * r) * bt_matrix();
      } else {
        dws = sum_parts(&Partial::dws, std::size_t(dpad));
      }
      for (index_t s = 0; s < dpad; ++s)
        if (W_.coord[std::size_t(s)] >= 0) G.stretch_ws(W_.coord[std::size_t(s)]) += dws[std::size_t(s)];
    }
    // dWv = sum_i s_i Gv_i B_i^T, dWc = sum_i s_i Gc_i B_i^T: one GEMM [k, N r] x [N r, d]
    auto rank_weight_grad = [&](auto member, const View<S, 2>& out) {
      detail::Arena::Mark keep(ar);
      const auto Gs = sum_parts(member, std::size_t(N * k * r));
      detail::MMap<S> Gcat(ar.take<S>(k * N * r), k, N * r, Eigen::OuterStride<>(N * r));
      for (index_t i = 0; i < N; ++i)
        for (index_t a = 0; a < k; ++a)
          for (index_t q = 0; q < r; ++q) Gcat(a, i * r + q) = scale(i) * Gs[std::size_t((i * k + a) * r + q)];
      avec<S> btstore;  // BT, unpacked from the packed weights when only 16-bit B is kept
      detail::MMap<S> acc(ar.take<S>(k * dpad), k, dpad, Eigen::OuterStride<>(dpad));
      detail::gemm(acc, Gcat, detail::CMap<S>(W_.bt_unpacked(b.BP, btstore), N * r, dpad, Eigen::OuterStride<>(dpad)),
                   false, ar);
      for (index_t s = 0; s < dpad; ++s) {
        const index_t o = W_.coord[std::size_t(s)];
        if (o < 0) continue;
        for (index_t a = 0; a < k; ++a) out(a, o) += acc(a, s);
      }
    };
    if (G.angle_Wv.present()) rank_weight_grad(&Partial::Gv, G.angle_Wv);
    if (G.angle_Wc.present()) rank_weight_grad(&Partial::Gc, G.angle_Wc);
    if (G.stretch_bg.present())
      for (index_t t = 0; t < T; ++t)
        for (index_t i = 0; i < N; ++i) G.stretch_bg(i) += b.DL[std::size_t(t * N + i)];
    if (G.base_b0.present())
      for (index_t t = 0; t < T; ++t) {
        const S* row = b.DY.row(t);
        for (index_t o = 0; o < d; ++o) G.base_b0(o) += row[o];
      }
  }

  LayerConfig cfg_;
  Params<S> p_;
  CpuOptions opt_;
  std::unique_ptr<detail::ThreadPool> pool_;
  Dims D_;
  detail::CpuWeights<S> W_;
  mutable std::unique_ptr<unsigned char[]> own_ws_;  // the workspace of the calls that take none
  mutable std::size_t own_bytes_ = 0;
  mutable std::mutex own_mutex_;
};

}  // namespace RG_CPU_NS

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
#if defined(RADARGATE_CPU_DISPATCH)
      : impl_(detail::make_dispatched_cpu_layer(config, params, options)){}
#else
      : impl_(std::make_unique<detail::CpuLayer<S>>(config, params, options)) {
  }
#endif

        const LayerConfig
        &
        config() const {
    return impl_->config();
  }
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
  std::unique_ptr<detail::CpuLayerBase<S>> impl_;
#else
  std::unique_ptr<detail::CpuLayer<S>> impl_;
#endif
};

}  // namespace radargate
