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

  /// One backward call, built in one place (begin_backward): the token count, the gradients it
  /// needs, the forward and backward workspace carve-ups, the pass shape, and the fused-pass
  /// arguments, which the steps fill in as the chain goes (dy in slot rows, dl, the partial sums).
  struct BackwardRun {
    index_t T = 0;
    Needs n;
    FwdBufs fb;
    BwdBufs b;
    PassShape ps;
    Fused a;
    View<const S, 2> x, dy;
    cudaStream_t stream = nullptr;
  };

  // Construction (detail/layer_setup.cuh).
  void reset(const Params<S>& params, cudaStream_t stream);
  void query_device();
  void carve_weights(detail::gpu::Carve& c, const Params<S>& params);
  void prepare(cudaStream_t stream);
  void prepare_rotation(cudaStream_t stream);
  void prepare_base(cudaStream_t stream);

  // Arguments shared by forward and backward (detail/layer_forward.cuh).
  void layout_forward(index_t T, detail::gpu::Carve& c, FwdBufs& b) const;
  Fused fused_args(index_t T, const FwdBufs& b) const;
  detail::gpu::GateArgs gate_args(index_t T, index_t Tpad, float* g) const;
  detail::gpu::RankArgs rank_args(index_t T, index_t Tpad, const float* F, index_t k, float* w) const;
  void launch_output(Fused a, const PassShape& p, cudaStream_t s) const;
  void launch_dot(Fused a, const PassShape& p, bool with_dy, cudaStream_t s) const;

  // Forward steps (detail/layer_forward.cuh).
  void check_forward(View<const S, 2> x, View<S, 2> y) const;
  FwdBufs begin_forward(index_t T, Workspace ws, cudaStream_t stream) const;
  void forward_rank_space(index_t T, const FwdBufs& b, cudaStream_t stream) const;
  void forward_gate(index_t T, const FwdBufs& b, const PassShape& ps, Fused& a, cudaStream_t stream) const;
  void forward_output(View<const S, 2> x, View<S, 2> y, index_t T, const FwdBufs& b, const PassShape& ps, Fused& a,
                      cudaStream_t stream) const;

  // Backward steps, in the order they run (detail/layer_backward.cuh).
  Needs needs(const Gradients<S>& g) const;
  void layout_backward(index_t T, const Needs& n, detail::gpu::Carve& c, BwdBufs& b) const;
  void check_backward(index_t T, View<const S, 2> dy, const Gradients<S>& grads) const;
  void zero_gradients(const Gradients<S>& grads, cudaStream_t stream) const;
  BackwardRun begin_backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, Workspace ws,
                             cudaStream_t stream) const;
  void backward_permute_dy(BackwardRun& run) const;
  void backward_gate(BackwardRun& run) const;
  void backward_token_pass(BackwardRun& run) const;
  void backward_rank_space(BackwardRun& run) const;
  void backward_column_pass(BackwardRun& run) const;
  void backward_gemms(BackwardRun& run) const;
  void backward_token_sums(BackwardRun& run) const;
  void backward_assemble(BackwardRun& run) const;
  void write_gradients(const BackwardRun& run, const Gradients<S>& grads, bool acc) const;
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

}  // namespace radargate

#include "detail/layer_backward.cuh"
#include "detail/layer_forward.cuh"
#include "detail/layer_setup.cuh"
