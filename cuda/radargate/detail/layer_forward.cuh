// radargate/detail/layer_forward.cuh -- Layer<S, backend::cuda>::forward as its steps (docs/MATH.md,
// "Forward"): the shrink GEMM, the rank space per token, the gate, and the fused output
// pass; and the argument structs the forward and backward passes share, each built in one place.
// Included by radargate/cuda.cuh after the class.
#pragma once

namespace radargate {

// --- arguments shared by forward and backward ------------------------------------------------------

/// The forward workspace: the saved activations backward reads, then scratch.
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

/// The fused passes' arguments common to all of them: shapes, weights in kernel layout, the saved
/// rank-space activations and the gate.
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

/// The gate kernels' arguments common to forward and backward; forward adds the logits' sources.
template <class S>
detail::gpu::GateArgs Layer<S, backend::cuda>::gate_args(index_t T, index_t Tpad, float* g) const {
  const State& s = *st_;
  detail::gpu::GateArgs ga;
  ga.T = T;
  ga.Tpad = Tpad;
  ga.N = s.D.N;
  ga.normalize = s.cfg.normalize;
  ga.tau = float(s.cfg.tau);
  ga.g = g;
  return ga;
}

/// The rank-space kernels' arguments: F from the shrink GEMM, the rank products, the map, and the
/// buffer w of (Wc B_i) hs_ti. k is the angle rank the kernels iterate over.
template <class S>
detail::gpu::RankArgs Layer<S, backend::cuda>::rank_args(index_t T, index_t Tpad, const float* F, index_t k,
                                                         float* w) const {
  const State& s = *st_;
  detail::gpu::RankArgs ra;
  ra.T = T;
  ra.Tpad = Tpad;
  ra.N = s.D.N;
  ra.r = s.D.r;
  ra.rpad = s.rpad;
  ra.k = k;
  ra.kpad = s.kpad;
  ra.nF = s.nF;
  ra.kx = s.kx;
  ra.F = F;
  ra.scale = s.scale;
  ra.WvB = s.WvB;
  ra.WcB = s.WcB;
  ra.m = s.m;
  ra.w = w;
  return ra;
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

// --- forward --------------------------------------------------------------------------------------

template <class S>
typename Layer<S, backend::cuda>::Context Layer<S, backend::cuda>::forward(View<const S, 2> x, View<S, 2> y,
                                                                           Workspace ws, cudaStream_t stream) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  check_forward(x, y);
  const index_t T = x.shape[0];
  Context ctx;
  ctx.tokens = T;
  ctx.x = x;
  ctx.workspace = ws;
  if (T == 0) return ctx;
  check_device_pointer("x", x.data);
  check_device_pointer("y", y.data);
  const FwdBufs b = begin_forward(T, ws, stream);

  // 1. The shrink: F [T, nF] = X Wst^T (col-major: F^T = Wst X^T).
  gemm(CUBLAS_OP_T, CUBLAS_OP_N, s.nF, T, D.d_in, s.Wst, D.d_in, x.data, x.stride[0], 0.f, b.F, s.nF);
  // 2. Rank space.
  forward_rank_space(T, b, stream);
  const PassShape ps = pass_shape(T);
  Fused a = fused_args(T, b);
  a.ws = s.wsp;
  // 3-4. Gate.
  forward_gate(T, b, ps, a, stream);
  // 5. Base and the fused output.
  forward_output(x, y, T, b, ps, a, stream);
  return ctx;
}

template <class S>
void Layer<S, backend::cuda>::check_forward(View<const S, 2> x, View<S, 2> y) const {
  const Dims& D = st_->D;
  detail::check_xy(D, x, "x", D.d_in, &y, "y", D.d);
  const index_t T = x.shape[0];
  if (T > 0 && x.stride[1] != 1) detail::fail("tensor 'x': expected unit stride along d_in, found ", x.stride[1]);
  if (T > 0 && y.stride[1] != 1) detail::fail("tensor 'y': expected unit stride along d, found ", y.stride[1]);
}

/// Checks the workspace, carves it and binds cuBLAS to the stream and the workspace's cuBLAS part.
template <class S>
typename Layer<S, backend::cuda>::FwdBufs Layer<S, backend::cuda>::begin_forward(index_t T, Workspace ws,
                                                                                 cudaStream_t stream) const {
  using namespace detail::gpu;
  const std::size_t need = forward_workspace_bytes(T);
  if (ws.bytes < need || !ws.data)
    detail::fail("forward workspace: expected at least ", need, " bytes for ", T, " tokens, found ", ws.bytes,
                 ws.data ? "" : " (null data)");
  Carve c;
  c.base = static_cast<char*>(ws.data);
  FwdBufs b;
  layout_forward(T, c, b);
  blas_begin(stream, b.blas_ws);
  return b;
}

/// hs (and its transpose) per token and expert; with rotation, z (and its transpose) through w.
template <class S>
void Layer<S, backend::cuda>::forward_rank_space(index_t T, const FwdBufs& b, cudaStream_t stream) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t N = D.N;
  const RankArgs ra = rank_args(T, b.Tpad, b.F, D.k, b.w);
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
}

/// The logits (Wg x + bg from F, and for the stretch gate the dot pass ws . u), then
/// g = normalize(l / tau) per token.
template <class S>
void Layer<S, backend::cuda>::forward_gate(index_t T, const FwdBufs& b, const PassShape& ps, Fused& a,
                                           cudaStream_t stream) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t N = D.N;
  GateArgs ga = gate_args(T, b.Tpad, b.g);
  ga.nF = s.nF;
  ga.wg_col = s.ng ? D.N * D.r + s.kx : -1;
  ga.gate = s.cfg.gate;
  ga.topk = s.cfg.topk;
  ga.bg = s.bg;
  ga.F = b.F;
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
}

/// y = W0 x (cuBLAS) + b0 + sum_i g_ti u_ti (the fused output pass).
template <class S>
void Layer<S, backend::cuda>::forward_output(View<const S, 2> x, View<S, 2> y, index_t T, const FwdBufs& b,
                                             const PassShape& ps, Fused& a, cudaStream_t stream) const {
  const State& s = *st_;
  const Dims& D = s.D;
  if (s.W0) gemm(CUBLAS_OP_T, CUBLAS_OP_N, D.d, T, D.d_in, s.W0, s.w0ld, x.data, x.stride[0], 0.f, b.ybase, D.d);
  a.y = y.data;
  a.yld = y.stride[0];
  a.ybase = b.ybase;
  a.b0 = s.b0p;
  a.ypart = b.ypart;
  launch_output(a, ps, stream);
}

}  // namespace radargate
