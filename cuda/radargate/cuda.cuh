// radargate/cuda.cuh -- the CUDA backend: Layer<S, backend::cuda> over device memory.
//
//   Layer<float, backend::cuda>          float32 storage and arithmetic
//   Layer<__nv_bfloat16, backend::cuda>  bf16 storage, tensor-core products, float32 accumulation
//   Layer<__half, backend::cuda>         fp16 storage, tensor-core products, float32 accumulation
//
// Forward for T tokens (x [T, d_in] -> y [T, d]):
//   1. F = X Wst^T, one cuBLAS GEMM over the stacked [A (N r rows); Wx; Wg]   (the shrink)
//   2. rank space per token: hs_ti = s_i h_ti, z_ti = Wx x + (Wv B_i) hs_ti + sum_j m_ij (Wc B_j) hs_tj
//   3. stretch gate only: the dot pass, l_ti += ws . u_ti (u recomputed per tile, never stored)
//   4. g = normalize(l / tau) per token
//   5. the output pass: y = W0 x + b0 + sum_i g_ti u_ti, expand, rotate, gate and sum fused per
//      tile of 16 tokens x 32 columns (W0 x by cuBLAS)
// Backward recomputes u per tile in three passes (gate dot, token, column; see detail/fused.cuh),
// does the rank-space algebra per token, and the d_in-sized products (dx, dA, dWx, dWg, dW0) as
// cuBLAS GEMMs.
//
// Memory: the layer owns a copy of its weights in kernel layout (built by the constructor and by
// update(), the only places that allocate). forward and backward allocate nothing: the caller
// passes a Workspace of at least forward_workspace_bytes(T) / backward_workspace_bytes(T, grads)
// bytes of device memory, as with cuBLAS. The forward workspace holds the saved activations, so it
// must stay untouched until backward returns. Every kernel and cuBLAS call runs on the stream
// passed in; nothing synchronises the host except the constructor and update().
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <radargate/backend.hpp>
#include <radargate/config.hpp>
#include <radargate/detail/layer_checks.hpp>
#include <radargate/error.hpp>
#include <radargate/grad_plan.hpp>
#include <radargate/layer_config.hpp>
#include <radargate/params.hpp>
#include <radargate/view.hpp>
#include <radargate/workspace.hpp>
#include <type_traits>

#include "detail/fused.cuh"
#include "detail/small.cuh"
#include "detail/support.cuh"

namespace radargate {

/// Tile shape of the output and dot passes: chosen from the problem size (automatic), or fixed
/// (for tests and tuning). "large" needs r <= 16 and k <= 16 and falls back to "small" otherwise.
/// Results are the same up to float rounding order.
enum class TileShape { automatic, small, large };

// Workspace (radargate/workspace.hpp): caller-owned device memory for one forward or backward call.

namespace detail {
namespace gpu {
/// Throws unless p is device-accessible memory (device or managed).
inline void check_device_pointer(const char* name, const void* p) {
  if (!p) return;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    detail::fail("tensor '", name, "': expected device memory, found a pointer CUDA does not know");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    detail::fail("tensor '", name, "': expected device memory, found host memory");
}
inline int launch_blocks(index_t n) {
  const index_t b = (n + kThreads - 1) / kThreads;
  return int(b < 1 ? 1 : (b > 4096 ? 4096 : b));
}
}  // namespace gpu
}  // namespace detail

template <class S>
class Layer<S, backend::cuda> {
  static_assert(std::is_same<S, float>::value || std::is_same<S, __nv_bfloat16>::value ||
                    std::is_same<S, __half>::value,
                "radargate::Layer<S, backend::cuda>: S must be float, __nv_bfloat16 or __half");

 public:
  using Scalar = S;

  /// What backward needs: the token count, x (referenced, not copied) and the forward workspace,
  /// which holds the saved activations. Keep x and the workspace unchanged until backward returns.
  struct Context {
    index_t tokens = 0;
    View<const S, 2> x;
    Workspace workspace;
  };

  /// params: views over device memory. The weights are copied into kernel layout on `stream`, and
  /// the constructor waits for that copy.
  Layer(const LayerConfig& config, const Params<S>& params, cudaStream_t stream = nullptr) : st_(new State) {
    st_->cfg = config;
    reset(params, stream);
  }
  ~Layer() {
    if (st_) st_->release();
  }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;
  Layer(Layer&&) noexcept = default;
  Layer& operator=(Layer&&) noexcept = default;

  const LayerConfig& config() const { return st_->cfg; }
  const Params<S>& params() const { return st_->p; }
  const Dims& dims() const { return st_->D; }

  /// New parameter views (same configuration): validated, the kernel copy rebuilt.
  void set_params(const Params<S>& params, cudaStream_t stream = nullptr) { reset(params, stream); }
  /// Overrides the choice of tile shape for the output and dot passes, and whether small problems
  /// may split the experts over several blocks (which adds a final sum over the blocks).
  void set_tile_shape(TileShape t, bool split_experts = true) {
    st_->tiles = t;
    st_->split = split_experts;
  }

  /// Rebuilds the kernel copy after the caller changed the parameter memory (an optimiser step).
  void update(cudaStream_t stream = nullptr) {
    prepare(stream);
    RG_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  std::size_t forward_workspace_bytes(index_t tokens) const {
    detail::gpu::Carve c;
    FwdBufs b;
    layout_forward(tokens, c, b);
    return c.bytes();
  }
  std::size_t backward_workspace_bytes(index_t tokens, const Gradients<S>& grads) const {
    detail::gpu::Carve c;
    BwdBufs b;
    layout_backward(tokens, needs(grads), c, b);
    return c.bytes();
  }

  Context forward(View<const S, 2> x, View<S, 2> y, Workspace ws, cudaStream_t stream = nullptr) const;
  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode, Workspace ws,
                cudaStream_t stream = nullptr) const;

 private:
  using Fused = detail::gpu::FusedArgs<S>;

  struct State {
    LayerConfig cfg;
    Params<S> p;
    Dims D;
    index_t rpad = 0, kpad = 0, Spad = 0, units = 0, kx = 0, ng = 0, nF = 0;
    int sms = 1;
    TileShape tiles = TileShape::automatic;
    bool split = true;
    std::size_t smem_optin = 48 * 1024;
    void* mem = nullptr;
    S *Bp = nullptr, *BpT = nullptr, *Up = nullptr, *UpT = nullptr, *Wst = nullptr, *W0p = nullptr;
    float *biasp = nullptr, *wsp = nullptr, *b0p = nullptr, *WvB = nullptr, *WcB = nullptr, *Mf = nullptr, *m = nullptr,
          *scale = nullptr, *bg = nullptr;
    int* slot_of = nullptr;
    const S* W0 = nullptr;
    index_t w0ld = 0;
    cublasHandle_t blas = nullptr;
    void release() {
      if (mem) cudaFree(mem);
      mem = nullptr;
      if (blas) cublasDestroy(blas);
      blas = nullptr;
    }
  };

  struct FwdBufs {
    index_t Tpad = 0;
    float* F = nullptr;
    S *hs = nullptr, *hsT = nullptr, *z = nullptr, *zT = nullptr;
    float* g = nullptr;
    unsigned char* sel = nullptr;
    float *w = nullptr, *part = nullptr, *ybase = nullptr, *ypart = nullptr;
    void* blas_ws = nullptr;
  };

  struct Needs {
    bool x = false, A = false, B = false, scale = false, M = false, Wx = false, Wv = false, Wc = false, U = false,
         bias = false, Wg = false, bg = false, ws = false, W0 = false, b0 = false;
    bool dot = false, token = false, token_dz = false, column = false, dF = false, stack_grad = false;
  };

  struct BwdBufs {
    int CB = 0, G = 0, EG = 1;
    S* dyp = nullptr;
    float *partg = nullptr, *dl = nullptr, *part2 = nullptr, *dz = nullptr, *bdu = nullptr, *dzc = nullptr,
          *w = nullptr, *dscale_t = nullptr, *dm_t = nullptr;
    S* dF = nullptr;
    float *dBrot = nullptr, *dbiasp = nullptr, *dUTp = nullptr, *dwsp = nullptr;
    float *dxf = nullptr, *dWst = nullptr, *dW0f = nullptr;
    float *dscale = nullptr, *dbg = nullptr, *dMs = nullptr, *Gv = nullptr, *Gc = nullptr, *Gpart = nullptr,
          *dWv = nullptr, *dWc = nullptr, *dBf = nullptr, *dUf = nullptr, *dbiasf = nullptr, *dwsf = nullptr,
          *db0 = nullptr;
    void* blas_ws = nullptr;
  };

  static constexpr std::size_t kBlasWorkspace = std::size_t(32) << 20;
  static constexpr index_t kOuterChunks = 16;

  // Output / dot pass shapes: "large" tiles (64 tokens x 4 units per block of 4 warps) when they
  // give at least two blocks per multiprocessor, else "small" (16 tokens x 2 units, 2 warps); when
  // even that leaves multiprocessors idle (decoding), the experts are split over blockIdx.z.
  // fix: r <= 16 and k <= 16, the rank-space fragments are held in registers.
  struct PassShape {
    bool fix = false, large = false;
    unsigned gx = 1, gy = 1, gz = 1;
    int EG = 1, parts = 1;
  };
  PassShape pass_shape(index_t T) const {
    const State& s = *st_;
    PassShape p;
    p.fix = s.rpad == 16 && s.kpad <= 16;
    const bool auto_large = ((T + 63) / 64) * ((s.units + 3) / 4) >= 2 * index_t(s.sms);
    p.large = p.fix && (s.tiles == TileShape::automatic ? auto_large : s.tiles == TileShape::large);
    if (p.large) {
      p.gx = unsigned((T + 63) / 64);
      p.gy = unsigned((s.units + 3) / 4);
      p.parts = int(p.gy);
    } else {
      p.gx = unsigned((T + 15) / 16);
      p.gy = unsigned((s.units + 1) / 2);
      p.parts = int(p.gy) * 2;
    }
    const index_t blocks = index_t(p.gx) * p.gy, N = s.D.N;
    const index_t G0 = !s.split || blocks >= 2 * s.sms ? 1 : std::min<index_t>(N, (2 * s.sms + blocks - 1) / blocks);
    p.EG = int((N + G0 - 1) / G0);
    p.gz = unsigned((N + p.EG - 1) / p.EG);
    return p;
  }
  bool fix() const { return st_->rpad == 16 && st_->kpad <= 16; }

  void reset(const Params<S>& params, cudaStream_t stream);
  void prepare(cudaStream_t stream);
  void layout_forward(index_t T, detail::gpu::Carve& c, FwdBufs& b) const;
  Needs needs(const Gradients<S>& g) const;
  void layout_backward(index_t T, const Needs& n, detail::gpu::Carve& c, BwdBufs& b) const;
  Fused fused_args(index_t T, const FwdBufs& b) const;
  void launch_output(Fused a, const PassShape& p, cudaStream_t s) const;
  void launch_dot(Fused a, const PassShape& p, bool with_dy, cudaStream_t s) const;
  void blas_begin(cudaStream_t s, void* ws) const {
    RG_CUDA_CHECK(cublasSetStream(st_->blas, s));
    RG_CUDA_CHECK(cublasSetWorkspace(st_->blas, ws, kBlasWorkspace));
  }
  /// Column-major C[m, n] (float, ldc) = op(A) op(B) (+ C when beta is 1), A and B of type S.
  void gemm(cublasOperation_t ta, cublasOperation_t tb, index_t m, index_t n, index_t k, const S* A, index_t lda,
            const S* B, index_t ldb, float beta, float* C, index_t ldc) const {
    const float alpha = 1.0f;
    const cudaDataType_t t = detail::gpu::storage<S>::cuda_type;
    RG_CUDA_CHECK(cublasGemmEx(st_->blas, ta, tb, int(m), int(n), int(k), &alpha, A, t, int(lda), B, t, int(ldb), &beta,
                               C, CUDA_R_32F, int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  std::unique_ptr<State> st_;
};

// --- construction -------------------------------------------------------------------------------

template <class S>
void Layer<S, backend::cuda>::reset(const Params<S>& params, cudaStream_t stream) {
  using namespace detail::gpu;
  State& s = *st_;
  const Dims D = validate(s.cfg, params);
  for_each_param(params, [](const char* name, const auto& v) { check_device_pointer(name, v.data); });
  s.release();
  s.p = params;
  s.D = D;
  const bool rot = s.cfg.rotation;
  s.rpad = round_up(D.r, 16);
  s.kpad = rot ? round_up(D.k, 16) : 0;
  s.Spad = round_up(detail::num_slots(D.d), 16);
  s.units = s.Spad / 16;
  s.kx = rot && params.angle_Wx.present() ? D.k : 0;
  s.ng = (s.cfg.gate == GateKind::linear || s.cfg.gate == GateKind::stretch) && params.stretch_Wg.present() ? D.N : 0;
  s.nF = D.N * D.r + s.kx + s.ng;

  int dev = 0;
  RG_CUDA_CHECK(cudaGetDevice(&dev));
  RG_CUDA_CHECK(cudaDeviceGetAttribute(&s.sms, cudaDevAttrMultiProcessorCount, dev));
  int optin = 0;
  RG_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  s.smem_optin = std::size_t(optin);
  const std::size_t need_smem = std::max(token_pass_smem(16, s.kpad, s.rpad), ColumnLayout<4, 2>::smem(s.rpad, s.kpad));
  if (need_smem > s.smem_optin)
    detail::fail("CUDA backend: rank r = ", D.r, " with angle rank k = ", D.k, " needs ", need_smem,
                 " bytes of shared memory per block, this device allows ", s.smem_optin, " (r and k up to 64 fit)");

  const index_t N = D.N, S2 = 2 * s.Spad;
  auto carve = [&](Carve& c) {
    s.Bp = c.take<S>(N * S2 * s.rpad);
    s.BpT = c.take<S>(N * S2 * s.rpad);
    s.Up = rot ? c.take<S>(s.Spad * s.kpad) : nullptr;
    s.UpT = rot ? c.take<S>(s.Spad * s.kpad) : nullptr;
    s.biasp = rot ? c.take<float>(N * s.Spad) : nullptr;
    s.wsp = s.cfg.gate == GateKind::stretch && params.stretch_ws.present() ? c.take<float>(S2) : nullptr;
    s.b0p = params.base_b0.present() ? c.take<float>(D.d) : nullptr;
    s.slot_of = c.take<int>(D.d);
    s.Wst = c.take<S>(s.nF * D.d_in);
    s.WvB = rot && params.angle_Wv.present() ? c.take<float>(N * D.k * D.r) : nullptr;
    s.WcB = rot && params.angle_Wc.present() ? c.take<float>(N * D.k * D.r) : nullptr;
    s.Mf = rot ? c.take<float>(N * N) : nullptr;
    s.m = rot ? c.take<float>(N * N) : nullptr;
    s.scale = params.lora_scale.present() ? c.take<float>(N) : nullptr;
    s.bg = s.cfg.has_logits() && params.stretch_bg.present() ? c.take<float>(N) : nullptr;
    const bool pack_w0 = params.base_W0.present() && params.base_W0.stride[1] != 1;
    s.W0p = pack_w0 ? c.take<S>(D.d * D.d_in) : nullptr;
  };
  Carve count;
  carve(count);
  RG_CUDA_CHECK(cudaMalloc(&s.mem, count.bytes()));
  Carve real;
  real.base = static_cast<char*>(s.mem);
  carve(real);
  RG_CUDA_CHECK(cublasCreate(&s.blas));
  prepare(stream);
  RG_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <class S>
void Layer<S, backend::cuda>::prepare(cudaStream_t stream) {
  using namespace detail::gpu;
  State& s = *st_;
  const Params<S>& p = s.p;
  const Dims& D = s.D;
  const index_t N = D.N;
  launch("prep_B", prep_B<S>, launch_blocks(N * 2 * s.Spad * s.rpad), kThreads, 0, stream, p.lora_B, s.cfg.pairing, D.d,
         D.r, s.rpad, s.Spad, s.Bp, s.BpT);
  if (s.cfg.rotation) {
    launch("prep_U", prep_U<S>, launch_blocks(std::max(s.Spad * s.kpad, N * s.Spad)), kThreads, 0, stream, p.angle_U,
           p.angle_bias, N, s.Spad, s.kpad, s.Up, s.UpT, s.biasp);
    launch("prep_map", prep_map<S>, 1, kThreads, 0, stream, p.map_M, s.cfg.map, N, s.Mf, s.m);
    if (s.WvB) {
      launch("prep_rank_product", prep_rank_product<S>, launch_blocks(N * D.k * D.r), kThreads, 0, stream, p.angle_Wv,
             p.lora_B, s.WvB);
    }
    if (s.WcB) {
      launch("prep_rank_product", prep_rank_product<S>, launch_blocks(N * D.k * D.r), kThreads, 0, stream, p.angle_Wc,
             p.lora_B, s.WcB);
    }
  }
  launch("prep_vectors", prep_vectors<S>, launch_blocks(std::max(2 * s.Spad, D.d)), kThreads, 0, stream, p.stretch_ws,
         p.base_b0, s.cfg.pairing, D.d, s.Spad, s.wsp, s.b0p, s.slot_of);
  launch("prep_stack", prep_stack<S>, launch_blocks(s.nF * D.d_in), kThreads, 0, stream, p.lora_A, p.angle_Wx,
         p.stretch_Wg, s.kx, s.ng, s.Wst);
  if (s.scale) {
    launch("vec_to_float", vec_to_float<S>, launch_blocks(N), kThreads, 0, stream, p.lora_scale, s.scale);
  }
  if (s.bg) {
    launch("vec_to_float", vec_to_float<S>, launch_blocks(N), kThreads, 0, stream, p.stretch_bg, s.bg);
  }
  s.W0 = nullptr;
  if (p.base_W0.present()) {
    if (s.W0p) {
      launch("pack_2d", pack_2d<S>, launch_blocks(D.d * D.d_in), kThreads, 0, stream, p.base_W0, s.W0p);
      s.W0 = s.W0p;
      s.w0ld = D.d_in;
    } else {
      s.W0 = p.base_W0.data;
      s.w0ld = p.base_W0.stride[0];
    }
  }
}

// --- forward --------------------------------------------------------------------------------------

template <class S>
void Layer<S, backend::cuda>::layout_forward(index_t T, detail::gpu::Carve& c, FwdBufs& b) const {
  using detail::gpu::round_up;
  const State& s = *st_;
  const index_t N = s.D.N;
  const bool rot = s.cfg.rotation;
  b.Tpad = round_up(std::max<index_t>(T, 1), 64);
  const PassShape ps = pass_shape(T);
  b.F = c.take<float>(T * s.nF);
  b.hs = c.take<S>(b.Tpad * N * s.rpad);
  b.hsT = c.take<S>(b.Tpad * N * s.rpad);
  b.z = rot ? c.take<S>(b.Tpad * N * s.kpad) : nullptr;
  b.zT = rot ? c.take<S>(b.Tpad * N * s.kpad) : nullptr;
  b.g = c.take<float>(b.Tpad * N);
  b.sel = c.take<unsigned char>(b.Tpad * N);
  b.w = s.WcB ? c.take<float>(T * N * s.D.k) : nullptr;
  b.part = s.wsp ? c.take<float>(index_t(ps.parts) * b.Tpad * N) : nullptr;
  b.ybase = s.W0 ? c.take<float>(T * s.D.d) : nullptr;
  b.ypart = ps.gz > 1 ? c.take<float>(index_t(ps.gz) * b.Tpad * 2 * s.Spad) : nullptr;
  b.blas_ws = c.take<char>(kBlasWorkspace);
}

template <class S>
typename Layer<S, backend::cuda>::Fused Layer<S, backend::cuda>::fused_args(index_t T, const FwdBufs& b) const {
  const State& s = *st_;
  Fused a;
  a.T = T;
  a.Tpad = b.Tpad;
  a.N = s.D.N;
  a.d = s.D.d;
  a.rpad = s.rpad;
  a.kpad = s.kpad;
  a.Spad = s.Spad;
  a.units = s.units;
  a.pairing = s.cfg.pairing;
  a.bound = s.cfg.bound;
  a.rot = s.cfg.rotation;
  a.hs = b.hs;
  a.z = b.z;
  a.hsT = b.hsT;
  a.zT = b.zT;
  a.Bp = s.Bp;
  a.BpT = s.BpT;
  a.Up = s.Up;
  a.UpT = s.UpT;
  a.bias = s.biasp;
  a.g = b.g;
  return a;
}

template <class S>
void Layer<S, backend::cuda>::launch_output(Fused a, const PassShape& p, cudaStream_t st) const {
  using namespace detail::gpu;
  a.EG = p.EG;
  const dim3 grid(p.gx, p.gy, p.gz);
  if (p.large)
    launch("output_pass", output_pass<S, 4, 1, 2, true>, dim3(p.gx, unsigned((a.units + 1) / 2), p.gz), 128, 0, st, a);
  else if (p.fix)
    launch("output_pass", output_pass<S, 1, 2, 1, true>, grid, 64, 0, st, a);
  else
    launch("output_pass", output_pass<S, 1, 2, 1, false>, grid, 64, 0, st, a);
  if (p.gz > 1) {
    launch("output_finalize", output_finalize<S>, launch_blocks(a.T * a.d), kThreads, 0, st, a, int(p.gz),
           st_->slot_of);
  }
}

template <class S>
void Layer<S, backend::cuda>::launch_dot(Fused a, const PassShape& p, bool with_dy, cudaStream_t st) const {
  using namespace detail::gpu;
  a.EG = p.EG;
  const dim3 grid(p.gx, p.gy, p.gz);
  const bool skip = with_dy && st_->cfg.normalize != Normalize::identity;
  if (p.large)
    launch("dot_pass", dot_pass<S, 4, 1, 4, true>, grid, 128, 0, st, a, with_dy, skip);
  else if (p.fix)
    launch("dot_pass", dot_pass<S, 1, 2, 1, true>, grid, 64, 0, st, a, with_dy, skip);
  else
    launch("dot_pass", dot_pass<S, 1, 2, 1, false>, grid, 64, 0, st, a, with_dy, skip);
}

template <class S>
typename Layer<S, backend::cuda>::Context Layer<S, backend::cuda>::forward(View<const S, 2> x, View<S, 2> y,
                                                                           Workspace ws, cudaStream_t stream) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  detail::check_xy(D, x, "x", D.d_in, &y, "y", D.d);
  const index_t T = x.shape[0], N = D.N;
  if (T > 0 && x.stride[1] != 1) detail::fail("tensor 'x': expected unit stride along d_in, found ", x.stride[1]);
  if (T > 0 && y.stride[1] != 1) detail::fail("tensor 'y': expected unit stride along d, found ", y.stride[1]);
  Context ctx;
  ctx.tokens = T;
  ctx.x = x;
  ctx.workspace = ws;
  if (T == 0) return ctx;
  check_device_pointer("x", x.data);
  check_device_pointer("y", y.data);
  const std::size_t need = forward_workspace_bytes(T);
  if (ws.bytes < need || !ws.data)
    detail::fail("forward workspace: expected at least ", need, " bytes for ", T, " tokens, found ", ws.bytes,
                 ws.data ? "" : " (null data)");
  Carve c;
  c.base = static_cast<char*>(ws.data);
  FwdBufs b;
  layout_forward(T, c, b);
  blas_begin(stream, b.blas_ws);

  // 1. The shrink: F [T, nF] = X Wst^T (col-major: F^T = Wst X^T).
  gemm(CUBLAS_OP_T, CUBLAS_OP_N, s.nF, T, D.d_in, s.Wst, D.d_in, x.data, x.stride[0], 0.f, b.F, s.nF);

  // 2. Rank space.
  RankArgs ra;
  ra.T = T;
  ra.Tpad = b.Tpad;
  ra.N = N;
  ra.r = D.r;
  ra.rpad = s.rpad;
  ra.k = D.k;
  ra.kpad = s.kpad;
  ra.nF = s.nF;
  ra.kx = s.kx;
  ra.F = b.F;
  ra.scale = s.scale;
  ra.WvB = s.WvB;
  ra.WcB = s.WcB;
  ra.m = s.m;
  ra.w = b.w;
  launch("rank_forward_h", rank_forward_h<S>, launch_blocks(b.Tpad * N * s.rpad), kThreads, 0, stream, ra, b.hs, b.hsT);
  if (s.cfg.rotation) {
    const std::size_t zsm = std::size_t(N * D.k) * sizeof(float);
    if (zsm <= 48 * 1024) {
      launch("rank_forward_z_block", rank_forward_z_block<S>, unsigned(b.Tpad), kThreads, zsm, stream, ra, b.z, b.zT);
    } else {
      if (s.WcB) {
        launch("rank_forward_w", rank_forward_w, launch_blocks(T * N * D.k), kThreads, 0, stream, ra);
      }
      launch("rank_forward_z", rank_forward_z<S>, launch_blocks(b.Tpad * N * s.kpad), kThreads, 0, stream, ra, b.z,
             b.zT);
    }
  }
  const PassShape ps = pass_shape(T);

  Fused a = fused_args(T, b);
  a.ws = s.wsp;

  // 3-4. Gate.
  GateArgs ga;
  ga.T = T;
  ga.Tpad = b.Tpad;
  ga.N = N;
  ga.nF = s.nF;
  ga.wg_col = s.ng ? D.N * D.r + s.kx : -1;
  ga.gate = s.cfg.gate;
  ga.normalize = s.cfg.normalize;
  ga.topk = s.cfg.topk;
  ga.tau = float(s.cfg.tau);
  ga.bg = s.bg;
  ga.F = b.F;
  ga.g = b.g;
  ga.sel = b.sel;
  if (s.wsp) {
    a.part = b.part;
    launch_dot(a, ps, false, stream);
    ga.part = b.part;
    ga.nparts = ps.parts;
  }
  if (s.cfg.has_logits()) {
    if (ga.nparts > 64)
      launch("gate_sum_warp", gate_sum_warp, launch_blocks(32 * b.Tpad * N), kThreads, 0, stream, ga, true, b.g);
    else
      launch("gate_sum", gate_sum, launch_blocks(b.Tpad * N), kThreads, 0, stream, ga, true, b.g);
  }
  launch("gate_forward", gate_forward, launch_blocks(b.Tpad), kThreads, 0, stream, ga);

  // 5. Base and the fused output.
  if (s.W0) gemm(CUBLAS_OP_T, CUBLAS_OP_N, D.d, T, D.d_in, s.W0, s.w0ld, x.data, x.stride[0], 0.f, b.ybase, D.d);
  a.y = y.data;
  a.yld = y.stride[0];
  a.ybase = b.ybase;
  a.b0 = s.b0p;
  a.ypart = b.ypart;
  launch_output(a, ps, stream);
  return ctx;
}

// --- backward -------------------------------------------------------------------------------------

template <class S>
typename Layer<S, backend::cuda>::Needs Layer<S, backend::cuda>::needs(const Gradients<S>& g) const {
  const State& s = *st_;
  const LayerConfig& c = s.cfg;
  Needs n;
  n.x = g.x.present();
  n.A = g.lora_A.present();
  n.B = g.lora_B.present();
  n.scale = g.lora_scale.present();
  n.M = g.map_M.present();
  n.Wx = g.angle_Wx.present();
  n.Wv = g.angle_Wv.present();
  n.Wc = g.angle_Wc.present();
  n.U = g.angle_U.present();
  n.bias = g.angle_bias.present();
  n.Wg = g.stretch_Wg.present();
  n.bg = g.stretch_bg.present();
  n.ws = g.stretch_ws.present();
  n.W0 = g.base_W0.present();
  n.b0 = g.base_b0.present();
  const bool rot = c.rotation;
  const GradPlan plan = plan_gradients(c, g);
  const bool need_dv = plan.dv;
  n.dot = plan.dlogits;
  n.token_dz = rot && (need_dv || n.M || n.Wx || n.Wv || n.Wc);
  n.token = n.token_dz || n.x || n.A || n.scale;
  n.column = n.B || (rot && (n.U || n.bias)) || (c.gate == GateKind::stretch && n.ws);
  n.stack_grad = n.A || (n.Wx && s.kx) || (n.Wg && s.ng);
  n.dF = n.x || n.stack_grad;
  return n;
}

template <class S>
void Layer<S, backend::cuda>::layout_backward(index_t T, const Needs& n, detail::gpu::Carve& c, BwdBufs& b) const {
  using detail::gpu::round_up;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t N = D.N, k = D.k, r = D.r;
  const index_t Tpad = round_up(std::max<index_t>(T, 1), 64);
  const bool rot = s.cfg.rotation;
  const PassShape ps = pass_shape(T);
  const index_t tblocks = (T + 63) / 64;
  b.CB = int(std::max<index_t>(1, std::min<index_t>({(2 * s.sms + tblocks - 1) / tblocks, 8, (s.units + 3) / 4})));
  const index_t cblocks = (s.units + 3) / 4;
  const index_t G0 = std::max<index_t>(1, std::min<index_t>(N, (2 * s.sms + cblocks - 1) / cblocks));
  b.EG = int((N + G0 - 1) / G0);
  b.G = int((N + b.EG - 1) / b.EG);
  const index_t width = s.kpad + s.rpad;
  b.dyp = n.dot || n.token || n.column ? c.take<S>(Tpad * 2 * s.Spad) : nullptr;
  b.partg = n.dot ? c.take<float>(index_t(ps.parts) * Tpad * N) : nullptr;
  b.dl = n.dot ? c.take<float>(Tpad * N) : nullptr;
  b.part2 = n.token ? c.take<float>(index_t(b.CB) * Tpad * N * width) : nullptr;
  b.dz = n.token && rot ? c.take<float>(T * N * k) : nullptr;
  b.bdu = n.token ? c.take<float>(T * N * r) : nullptr;
  b.dzc = n.token && rot && s.WcB ? c.take<float>(T * N * k) : nullptr;
  b.w = n.token && n.M && s.WcB ? c.take<float>(T * N * k) : nullptr;
  b.dscale_t = n.scale ? c.take<float>(T * N) : nullptr;
  b.dm_t = n.M && s.WcB ? c.take<float>(T * N * N) : nullptr;
  b.dF = n.dF ? c.take<S>(T * s.nF) : nullptr;
  b.dBrot = n.column && n.B ? c.take<float>(N * 2 * s.Spad * s.rpad) : nullptr;
  b.dbiasp = n.column && n.bias && rot ? c.take<float>(N * s.Spad) : nullptr;
  b.dUTp = n.column && n.U && rot ? c.take<float>(index_t(b.G) * s.kpad * s.Spad) : nullptr;
  b.dwsp = n.column && n.ws && s.wsp ? c.take<float>(index_t(b.G) * 2 * s.Spad) : nullptr;
  b.dxf = n.x ? c.take<float>(T * D.d_in) : nullptr;
  b.dWst = n.stack_grad ? c.take<float>(s.nF * D.d_in) : nullptr;
  b.dW0f = n.W0 ? c.take<float>(D.d * D.d_in) : nullptr;
  b.dscale = n.scale ? c.take<float>(N) : nullptr;
  b.dbg = n.bg ? c.take<float>(N) : nullptr;
  b.dMs = n.M ? c.take<float>(N * N) : nullptr;
  b.Gv = rot && s.WvB && (n.B || n.Wv) ? c.take<float>(N * k * r) : nullptr;
  b.Gc = rot && s.WcB && (n.B || n.Wc) ? c.take<float>(N * k * r) : nullptr;
  b.Gpart = b.Gv || b.Gc ? c.take<float>(kOuterChunks * N * k * r) : nullptr;
  b.dWv = n.Wv ? c.take<float>(k * D.d) : nullptr;
  b.dWc = n.Wc ? c.take<float>(k * D.d) : nullptr;
  b.dBf = n.B ? c.take<float>(N * D.d * r) : nullptr;
  b.dUf = n.U ? c.take<float>(D.P * k) : nullptr;
  b.dbiasf = n.bias ? c.take<float>(N * D.P) : nullptr;
  b.dwsf = n.ws ? c.take<float>(D.d) : nullptr;
  b.db0 = n.b0 ? c.take<float>(D.d) : nullptr;
  b.blas_ws = c.take<char>(kBlasWorkspace);
}

template <class S>
void Layer<S, backend::cuda>::backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads,
                                       GradMode mode, Workspace ws, cudaStream_t stream) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t T = ctx.tokens, N = D.N, k = D.k, r = D.r;
  if (dy.shape[0] != T || dy.shape[1] != D.d)
    detail::fail("tensor 'dy': expected shape [", T, ", ", D.d, "], found ", detail::shape_string(dy));
  if (T > 0 && !dy.present()) detail::fail("tensor 'dy': null data for ", T, " tokens");
  if (T > 0 && dy.stride[1] != 1) detail::fail("tensor 'dy': expected unit stride along d, found ", dy.stride[1]);
  validate_gradients(D, T, s.p, grads);
  if (grads.x.present() && T > 0 && grads.x.stride[1] != 1 && grads.x.shape[1] > 1)
    detail::fail("gradient 'grad.x': expected unit stride along d_in, found ", grads.x.stride[1]);
  check_device_pointer("dy", dy.data);
  check_device_pointer("grad.x", grads.x.data);
  for_each_param(grads, [](const char* name, const auto& v) { check_device_pointer(name, v.data); });
  const bool acc = mode == GradMode::accumulate;

  auto zero_all = [&]() {
    if (acc) return;
    if (grads.x.present())
      launch("zero_grad", zero_grad<S, 2>, launch_blocks(grads.x.size()), kThreads, 0, stream, grads.x);
    for_each_param(grads, [&](const char*, const auto& v) {
      using V = std::decay_t<decltype(v)>;
      if (v.present() && v.size() > 0)
        launch("zero_grad", zero_grad<S, V::rank>, launch_blocks(v.size()), kThreads, 0, stream, v);
    });
  };
  if (T == 0) {
    zero_all();
    return;
  }
  const Needs n = needs(grads);
  const std::size_t need = backward_workspace_bytes(T, grads);
  if (ws.bytes < need || !ws.data)
    detail::fail("backward workspace: expected at least ", need, " bytes for ", T, " tokens, found ", ws.bytes,
                 ws.data ? "" : " (null data)");
  Carve cf;
  cf.base = static_cast<char*>(ctx.workspace.data);
  FwdBufs fb;
  layout_forward(T, cf, fb);
  if (!ctx.workspace.data || ctx.workspace.bytes < cf.bytes())
    detail::fail("backward: the context's forward workspace is missing or too small");
  Carve cb;
  cb.base = static_cast<char*>(ws.data);
  BwdBufs b;
  layout_backward(T, n, cb, b);
  blas_begin(stream, b.blas_ws);
  const bool rot = s.cfg.rotation;
  const View<const S, 2> x = ctx.x;

  Fused a = fused_args(T, fb);
  const PassShape ps = pass_shape(T);
  if (b.dyp) {
    launch("permute_dy", permute_dy<S>, launch_blocks(fb.Tpad * 2 * s.Spad), kThreads, 0, stream, dy.data, dy.stride[0],
           T, fb.Tpad, s.Spad, D.d, s.cfg.pairing, b.dyp);
  }
  a.dyp = b.dyp;

  // Gate backward: dg_ti = dy_t . u_ti, dl = J^T dg.
  GateArgs ga;
  ga.T = T;
  ga.Tpad = fb.Tpad;
  ga.N = N;
  ga.normalize = s.cfg.normalize;
  ga.tau = float(s.cfg.tau);
  ga.g = fb.g;
  if (n.dot) {
    a.part = b.partg;
    launch_dot(a, ps, true, stream);
    ga.part = b.partg;
    ga.nparts = ps.parts;
    if (ga.nparts > 64)
      launch("gate_sum_warp", gate_sum_warp, launch_blocks(32 * fb.Tpad * N), kThreads, 0, stream, ga, false, b.dl);
    else
      launch("gate_sum", gate_sum, launch_blocks(fb.Tpad * N), kThreads, 0, stream, ga, false, b.dl);
    launch("gate_backward", gate_backward, launch_blocks(T), kThreads, 0, stream, ga, b.dl);
  }
  // dl flows into du only through the stretch term dl_i ws.
  if (s.cfg.gate == GateKind::stretch && s.wsp) {
    a.ws = s.wsp;
    a.dl = b.dl;
  }

  // Token pass: dz and B^T R^T du per token and expert.
  if (n.token) {
    a.part = b.part2;
    const std::size_t sm = token_pass_smem(16, s.kpad, s.rpad);
    const dim3 grid(unsigned((T + 63) / 64), unsigned(b.CB));
    if (ps.fix) {
      RG_CUDA_CHECK(
          cudaFuncSetAttribute(token_pass<S, 4, 4, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
      launch("token_pass", token_pass<S, 4, 4, true>, grid, 512, sm, stream, a, n.token_dz);
    } else {
      RG_CUDA_CHECK(
          cudaFuncSetAttribute(token_pass<S, 4, 4, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
      launch("token_pass", token_pass<S, 4, 4, false>, grid, 512, sm, stream, a, n.token_dz);
    }
  }

  // Rank space.
  RankBackArgs rb;
  rb.f.T = T;
  rb.f.Tpad = fb.Tpad;
  rb.f.N = N;
  rb.f.r = r;
  rb.f.rpad = s.rpad;
  rb.f.k = rot ? k : 0;
  rb.f.kpad = s.kpad;
  rb.f.nF = s.nF;
  rb.f.kx = s.kx;
  rb.f.F = fb.F;
  rb.f.scale = s.scale;
  rb.f.WvB = s.WvB;
  rb.f.WcB = s.WcB;
  rb.f.m = s.m;
  rb.f.w = b.w;
  rb.width = s.kpad + s.rpad;
  rb.nparts = b.CB;
  rb.part = b.part2;
  rb.dz = b.dz;
  rb.bdu = b.bdu;
  rb.dzc = b.dzc;
  rb.dscale_t = b.dscale_t;
  rb.dm_t = b.dm_t;
  rb.dl = b.dl;
  rb.ng = s.ng;
  if (n.token) {
    const index_t kk = rb.f.k;
    launch("rank_backward_sum", rank_backward_sum, launch_blocks(T * N * (kk + r)), kThreads, 0, stream, rb);
    const std::size_t bsm = 2 * std::size_t(N * (kk + 1)) * sizeof(float);
    const bool block_ok = kk > 0 && bsm <= 48 * 1024;
    if (b.w && !block_ok) {
      launch("rank_forward_w", rank_forward_w, launch_blocks(T * N * kk), kThreads, 0, stream, rb.f);
    }
    if (block_ok && (b.dzc || b.dm_t)) {
      launch("rank_backward_block", rank_backward_block, unsigned(T), kThreads, bsm, stream, rb, b.dzc != nullptr,
             b.dm_t != nullptr);
    } else if (b.dzc) {
      launch("rank_backward_dzc", rank_backward_dzc, launch_blocks(T * N * kk), kThreads, 0, stream, rb);
    }
    launch("rank_backward_dh", rank_backward_dh<S>, launch_blocks(T * N * r), kThreads, 0, stream, rb, b.dF);
    if (b.dscale_t) {
      launch("rank_backward_dscale", rank_backward_dscale, launch_blocks(T * N), kThreads, 0, stream, rb);
    }
    if (b.dm_t && !block_ok) {
      launch("rank_backward_dm", rank_backward_dm, launch_blocks(T * N * N), kThreads, 0, stream, rb);
    }
  } else if (b.dF) {
    launch("fill_zero", fill_zero<S>, launch_blocks(T * s.nF), kThreads, 0, stream, b.dF, T * s.nF);
  }
  if (b.dF && (s.kx || s.ng)) {
    launch("rank_backward_tail", rank_backward_tail<S>, launch_blocks(T * (s.kx + s.ng)), kThreads, 0, stream, rb,
           b.dF);
  }

  // Column pass: dB (rotation part), dbias, dU, dws.
  if (n.column) {
    ColumnFlags f;
    f.need_B = n.B;
    f.need_bias = rot && n.bias;
    f.need_U = rot && n.U;
    f.need_ws = n.ws && s.wsp;
    f.EG = b.EG;
    f.dBrot = b.dBrot;
    f.dbias = b.dbiasp;
    f.dUTp = b.dUTp;
    f.dwsp = b.dwsp;
    const std::size_t sm = ColumnLayout<4, 2>::smem(s.rpad, s.kpad);
    const dim3 grid(unsigned((s.units + 3) / 4), unsigned(b.G));
    if (ps.fix) {
      RG_CUDA_CHECK(
          cudaFuncSetAttribute(column_pass<S, 4, 2, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
      launch("column_pass", column_pass<S, 4, 2, true>, grid, 256, sm, stream, a, f);
    } else {
      RG_CUDA_CHECK(
          cudaFuncSetAttribute(column_pass<S, 4, 2, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
      launch("column_pass", column_pass<S, 4, 2, false>, grid, 256, sm, stream, a, f);
    }
  }

  // GEMMs over d_in (col-major views of the row-major buffers).
  if (n.x) {
    float beta = 0.f;
    if (s.W0) {
      gemm(CUBLAS_OP_N, CUBLAS_OP_N, D.d_in, T, D.d, s.W0, s.w0ld, dy.data, dy.stride[0], 0.f, b.dxf, D.d_in);
      beta = 1.f;
    }
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, D.d_in, T, s.nF, s.Wst, D.d_in, b.dF, s.nF, beta, b.dxf, D.d_in);
  }
  if (n.stack_grad)
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, D.d_in, s.nF, T, x.data, x.stride[0], b.dF, s.nF, 0.f, b.dWst, D.d_in);
  if (n.W0)
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, D.d_in, D.d, T, x.data, x.stride[0], dy.data, dy.stride[0], 0.f, b.dW0f, D.d_in);

  // Reductions over tokens.
  auto token_sum = [&](auto f, index_t J, float* out) {
    launch("sum_over_tokens", sum_over_tokens<decltype(f)>, unsigned(std::min<index_t>(J, 65535)), kThreads, 0, stream,
           f, T, J, out);
  };
  if (b.dscale) token_sum(RowsOf{b.dscale_t, N}, N, b.dscale);
  if (b.dbg) token_sum(RowsOf{b.dl, N}, N, b.dbg);
  if (b.dMs) {
    if (b.dm_t) {
      token_sum(RowsOf{b.dm_t, N * N}, N * N, b.dMs);
      launch("map_backward", map_backward, launch_blocks(N), kThreads, 0, stream, s.m, b.dMs, N);
    } else {
      launch("fill_zero", fill_zero<float>, launch_blocks(N * N), kThreads, 0, stream, b.dMs, N * N);
    }
  }
  // G_i = sum_t d_ti h_ti^T ([k, r] per expert, over h = F's first N r columns; the consumers
  // multiply by s_i), summed over token chunks and then over the chunks in order.
  auto rank_outer = [&](const float* dmat, float* G) {
    const index_t chunk = (T + kOuterChunks - 1) / kOuterChunks;
    launch("rank_outer_part", rank_outer_part, dim3(unsigned(N), unsigned(kOuterChunks)), kThreads, 0, stream, dmat,
           fb.F, T, N, k, r, s.nF, chunk, b.Gpart);
    launch("rank_outer_sum", rank_outer_sum, launch_blocks(N * k * r), kThreads, 0, stream, b.Gpart, kOuterChunks,
           N * k * r, G);
  };
  if (b.Gv) rank_outer(b.dz, b.Gv);
  if (b.Gc) rank_outer(b.dzc, b.Gc);
  if (b.db0) token_sum(DyRows<S>{dy.data, dy.stride[0]}, D.d, b.db0);
  // dWv and dWc in one pass over B (a gradient whose G is absent is zero).
  if (b.dWv || b.dWc) {
    launch("rank_to_full", rank_to_full<S>, launch_blocks(k * D.d), kThreads, 0, stream, b.dWv ? b.Gv : nullptr,
           b.dWc ? b.Gc : nullptr, s.scale, s.p.lora_B, k, b.dWv, b.dWc);
  }
  if (b.dBf) {
    launch("assemble_dB", assemble_dB<S>, launch_blocks(N * D.d * r), kThreads, 0, stream, b.dBrot, s.slot_of, s.Spad,
           s.rpad, s.p.angle_Wv, b.Gv, s.p.angle_Wc, b.Gc, s.scale, N, D.d, r, k, b.dBf);
  }
  if (b.dUf) {
    launch("assemble_dU", assemble_dU, launch_blocks(D.P * k), kThreads, 0, stream, b.dUTp, b.G, s.kpad, s.Spad, D.P, k,
           b.dUf);
  }
  if (b.dbiasf) {
    launch("assemble_dbias", assemble_dbias, launch_blocks(N * D.P), kThreads, 0, stream, b.dbiasp, N, s.Spad, D.P,
           b.dbiasf);
  }
  if (b.dwsf) {
    if (b.dwsp) {
      launch("assemble_dws", assemble_dws, launch_blocks(D.d), kThreads, 0, stream, b.dwsp, b.G, s.slot_of, s.Spad, D.d,
             b.dwsf);
    } else {
      launch("fill_zero", fill_zero<float>, launch_blocks(D.d), kThreads, 0, stream, b.dwsf, D.d);
    }
  }

  // Write every requested gradient (overwrite or accumulate), converting to the storage type.
  auto put = [&](const auto& dst, const float* src, index_t src_ld) {
    using V = std::decay_t<decltype(dst)>;
    if (!dst.present() || dst.size() == 0) return;
    launch("write_grad", write_grad<S, V::rank>, launch_blocks(dst.size()), kThreads, 0, stream, dst, src, src_ld, acc);
  };
  put(grads.x, b.dxf, 0);
  if (b.dWst) {
    if (n.A) put(grads.lora_A, b.dWst, 0);  // lora.A [N, r, d_in] = the first N r rows
    if (n.Wx && s.kx) put(grads.angle_Wx, b.dWst + D.N * D.r * D.d_in, 0);
    if (n.Wg && s.ng) put(grads.stretch_Wg, b.dWst + (D.N * D.r + s.kx) * D.d_in, 0);
  }
  put(grads.lora_B, b.dBf, 0);
  put(grads.lora_scale, b.dscale, 0);
  put(grads.map_M, b.dMs, 0);
  put(grads.angle_Wv, b.dWv, 0);
  put(grads.angle_Wc, b.dWc, 0);
  put(grads.angle_U, b.dUf, 0);
  put(grads.angle_bias, b.dbiasf, 0);
  put(grads.stretch_bg, b.dbg, 0);
  put(grads.stretch_ws, b.dwsf, 0);
  put(grads.base_W0, b.dW0f, 0);
  put(grads.base_b0, b.db0, 0);
}

}  // namespace radargate
