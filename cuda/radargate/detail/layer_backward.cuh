// radargate/detail/layer_backward.cuh -- Layer<S, backend::cuda>::backward as its steps, in the
// order they run (docs/MATH.md, "Backward"): dy into slot rows, the gate's gradients, the
// token pass (reductions over d), the rank-space gradients, the column pass (reductions over
// tokens), the d_in-sized GEMMs, the reductions over tokens, the assembly of the LoRA and angle
// weight gradients, and the writers. Only the steps the requested gradients need run (Needs).
// Included by radargate/cuda.cuh after the class.
#pragma once

namespace radargate {

// --- what the requested gradients need, and the backward workspace ---------------------------------

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

// --- backward -------------------------------------------------------------------------------------

template <class S>
void Layer<S, backend::cuda>::backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads,
                                       GradMode mode, Workspace ws, cudaStream_t stream) const {
  check_backward(ctx.tokens, dy, grads);
  const bool acc = mode == GradMode::accumulate;
  if (ctx.tokens == 0) {
    if (!acc) zero_gradients(grads, stream);
    return;
  }
  BackwardRun run = begin_backward(ctx, dy, grads, ws, stream);
  backward_permute_dy(run);
  backward_gate(run);
  backward_token_pass(run);
  backward_rank_space(run);
  backward_column_pass(run);
  backward_gemms(run);
  backward_token_sums(run);
  backward_assemble(run);
  write_gradients(run, grads, acc);
}

template <class S>
void Layer<S, backend::cuda>::check_backward(index_t T, View<const S, 2> dy, const Gradients<S>& grads) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
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
}

/// With no tokens, overwrite mode sets every requested gradient to zero.
template <class S>
void Layer<S, backend::cuda>::zero_gradients(const Gradients<S>& grads, cudaStream_t stream) const {
  using namespace detail::gpu;
  if (grads.x.present())
    launch("zero_grad", zero_grad<S, 2>, launch_blocks(grads.x.size()), kThreads, 0, stream, grads.x);
  for_each_param(grads, [&](const char*, const auto& v) {
    using V = std::decay_t<decltype(v)>;
    if (v.present() && v.size() > 0)
      launch("zero_grad", zero_grad<S, V::rank>, launch_blocks(v.size()), kThreads, 0, stream, v);
  });
}

/// Checks both workspaces, carves them, binds cuBLAS to the stream, and builds the fused-pass
/// arguments and the pass shape: every struct the steps share, in one place.
template <class S>
typename Layer<S, backend::cuda>::BackwardRun Layer<S, backend::cuda>::begin_backward(
    const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, Workspace ws, cudaStream_t stream) const {
  using namespace detail::gpu;
  BackwardRun run;
  const index_t T = ctx.tokens;
  run.T = T;
  run.n = needs(grads);
  const std::size_t need = backward_workspace_bytes(T, grads);
  if (ws.bytes < need || !ws.data)
    detail::fail("backward workspace: expected at least ", need, " bytes for ", T, " tokens, found ", ws.bytes,
                 ws.data ? "" : " (null data)");
  Carve cf;
  cf.base = static_cast<char*>(ctx.workspace.data);
  layout_forward(T, cf, run.fb);
  if (!ctx.workspace.data || ctx.workspace.bytes < cf.bytes())
    detail::fail("backward: the context's forward workspace is missing or too small");
  Carve cb;
  cb.base = static_cast<char*>(ws.data);
  layout_backward(T, run.n, cb, run.b);
  blas_begin(stream, run.b.blas_ws);
  run.x = ctx.x;
  run.dy = dy;
  run.stream = stream;
  run.a = fused_args(T, run.fb);
  run.ps = pass_shape(T);
  return run;
}

/// dy into slot rows (dyp), the layout the fused passes read.
template <class S>
void Layer<S, backend::cuda>::backward_permute_dy(BackwardRun& run) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t T = run.T;
  const BwdBufs& b = run.b;
  const FwdBufs& fb = run.fb;
  const View<const S, 2>& dy = run.dy;
  cudaStream_t stream = run.stream;
  if (b.dyp) {
    launch("permute_dy", permute_dy<S>, launch_blocks(fb.Tpad * 2 * s.Spad), kThreads, 0, stream, dy.data, dy.stride[0],
           T, fb.Tpad, s.Spad, D.d, s.cfg.pairing, b.dyp);
  }
  run.a.dyp = b.dyp;
}

/// Gate gradients: dg_ti = dy_t . u_ti (the dot pass), dl = J^T dg. dl flows into du only through
/// the stretch term dl_i ws.
template <class S>
void Layer<S, backend::cuda>::backward_gate(BackwardRun& run) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const index_t T = run.T, N = s.D.N;
  const BwdBufs& b = run.b;
  const FwdBufs& fb = run.fb;
  const PassShape& ps = run.ps;
  Fused& a = run.a;
  cudaStream_t stream = run.stream;
  GateArgs ga = gate_args(T, fb.Tpad, fb.g);
  if (run.n.dot) {
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
  if (s.cfg.gate == GateKind::stretch && s.wsp) {
    a.ws = s.wsp;
    a.dl = b.dl;
  }
}

/// Token pass: dz and B^T R^T du per token and expert, partial sums per column block (part2).
template <class S>
void Layer<S, backend::cuda>::backward_token_pass(BackwardRun& run) const {
  using namespace detail::gpu;
  const Needs& n = run.n;
  if (!n.token) return;
  const State& s = *st_;
  const index_t T = run.T;
  const BwdBufs& b = run.b;
  Fused& a = run.a;
  cudaStream_t stream = run.stream;
  a.part = b.part2;
  const std::size_t sm = token_pass_smem(16, s.kpad, s.rpad);
  const dim3 grid(unsigned((T + 63) / 64), unsigned(b.CB));
  if (run.ps.fix) {
    RG_CUDA_CHECK(
        cudaFuncSetAttribute(token_pass<S, 4, 4, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
    launch("token_pass", token_pass<S, 4, 4, true>, grid, 512, sm, stream, a, n.token_dz);
  } else {
    RG_CUDA_CHECK(
        cudaFuncSetAttribute(token_pass<S, 4, 4, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
    launch("token_pass", token_pass<S, 4, 4, false>, grid, 512, sm, stream, a, n.token_dz);
  }
}

/// Rank-space gradients per token: the token pass's partial sums added, dzc, dh into dF, dscale
/// and dm per token; the Wx x and Wg x columns of dF.
template <class S>
void Layer<S, backend::cuda>::backward_rank_space(BackwardRun& run) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t T = run.T, N = D.N, k = D.k, r = D.r;
  const bool rot = s.cfg.rotation;
  const BwdBufs& b = run.b;
  const FwdBufs& fb = run.fb;
  cudaStream_t stream = run.stream;
  RankBackArgs rb;
  rb.f = rank_args(T, fb.Tpad, fb.F, rot ? k : 0, b.w);
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
  if (run.n.token) {
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
}

/// Column pass: the rotation part of dB, dbias, dU and dws (reductions over tokens).
template <class S>
void Layer<S, backend::cuda>::backward_column_pass(BackwardRun& run) const {
  using namespace detail::gpu;
  const Needs& n = run.n;
  if (!n.column) return;
  const State& s = *st_;
  const bool rot = s.cfg.rotation;
  const BwdBufs& b = run.b;
  const Fused& a = run.a;
  cudaStream_t stream = run.stream;
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
  if (run.ps.fix) {
    RG_CUDA_CHECK(
        cudaFuncSetAttribute(column_pass<S, 4, 2, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
    launch("column_pass", column_pass<S, 4, 2, true>, grid, 256, sm, stream, a, f);
  } else {
    RG_CUDA_CHECK(
        cudaFuncSetAttribute(column_pass<S, 4, 2, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm)));
    launch("column_pass", column_pass<S, 4, 2, false>, grid, 256, sm, stream, a, f);
  }
}

/// The d_in-sized products by cuBLAS (col-major views of the row-major buffers): dx, d[A; Wx; Wg]
/// and dW0.
template <class S>
void Layer<S, backend::cuda>::backward_gemms(BackwardRun& run) const {
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t T = run.T;
  const Needs& n = run.n;
  const BwdBufs& b = run.b;
  const View<const S, 2>& x = run.x;
  const View<const S, 2>& dy = run.dy;
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
}

/// Reductions over tokens in a fixed order: dscale, dbg, dM, the rank outer products G_i and db0.
template <class S>
void Layer<S, backend::cuda>::backward_token_sums(BackwardRun& run) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t T = run.T, N = D.N, k = D.k, r = D.r;
  const BwdBufs& b = run.b;
  const FwdBufs& fb = run.fb;
  const View<const S, 2>& dy = run.dy;
  cudaStream_t stream = run.stream;
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
}

/// LoRA and angle weight gradients in parameter layout: dWv and dWc in one pass over B (a gradient
/// whose G is absent is zero), dB = dBrot + Wv^T Gv + Wc^T Gc, dU, dbias and dws from slot order.
template <class S>
void Layer<S, backend::cuda>::backward_assemble(BackwardRun& run) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const index_t N = D.N, k = D.k, r = D.r;
  const BwdBufs& b = run.b;
  cudaStream_t stream = run.stream;
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
}

/// Writes every requested gradient (overwrite or accumulate), converting to the storage type.
template <class S>
void Layer<S, backend::cuda>::write_gradients(const BackwardRun& run, const Gradients<S>& grads, bool acc) const {
  using namespace detail::gpu;
  const State& s = *st_;
  const Dims& D = s.D;
  const Needs& n = run.n;
  const BwdBufs& b = run.b;
  cudaStream_t stream = run.stream;
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
