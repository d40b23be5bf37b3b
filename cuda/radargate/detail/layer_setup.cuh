// radargate/detail/layer_setup.cuh -- construction of Layer<S, backend::cuda>: the parameter
// checks, the one device allocation that holds the weights in kernel layout, and the kernels that
// build that layout (once per weight update). Included by radargate/cuda.cuh after the class.
#pragma once

namespace radargate {

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
  query_device();

  Carve count;
  carve_weights(count, params);
  RG_CUDA_CHECK(cudaMalloc(&s.mem, count.bytes()));
  Carve real;
  real.base = static_cast<char*>(s.mem);
  carve_weights(real, params);
  RG_CUDA_CHECK(cublasCreate(&s.blas));
  prepare(stream);
  RG_CUDA_CHECK(cudaStreamSynchronize(stream));
}

/// The multiprocessor count (for the pass shapes) and the shared memory the backward passes need
/// against what the device allows.
template <class S>
void Layer<S, backend::cuda>::query_device() {
  using namespace detail::gpu;
  State& s = *st_;
  const Dims& D = s.D;
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
}

/// The weights in kernel layout, carved out of one allocation. With a counting Carve it only
/// measures, so the size and the layout are the same code.
template <class S>
void Layer<S, backend::cuda>::carve_weights(detail::gpu::Carve& c, const Params<S>& params) {
  State& s = *st_;
  const Dims& D = s.D;
  const bool rot = s.cfg.rotation;
  const index_t N = D.N, S2 = 2 * s.Spad;
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
}

/// The kernel layout from the parameter views: B in slot rows, the angle weights, the slot vectors,
/// the stacked shrink matrix [A; Wx; Wg], the scales and W0.
template <class S>
void Layer<S, backend::cuda>::prepare(cudaStream_t stream) {
  using namespace detail::gpu;
  State& s = *st_;
  const Params<S>& p = s.p;
  const Dims& D = s.D;
  const index_t N = D.N;
  launch("prep_B", prep_B<S>, launch_blocks(N * 2 * s.Spad * s.rpad), kThreads, 0, stream, p.lora_B, s.cfg.pairing, D.d,
         D.r, s.rpad, s.Spad, s.Bp, s.BpT);
  if (s.cfg.rotation) prepare_rotation(stream);
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
  prepare_base(stream);
}

/// U and the biases in slot order, the map M, and the rank products Wv B_i and Wc B_i.
template <class S>
void Layer<S, backend::cuda>::prepare_rotation(cudaStream_t stream) {
  using namespace detail::gpu;
  State& s = *st_;
  const Params<S>& p = s.p;
  const Dims& D = s.D;
  const index_t N = D.N;
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

/// W0 as cuBLAS reads it: the caller's memory when its rows are contiguous, else a packed copy.
template <class S>
void Layer<S, backend::cuda>::prepare_base(cudaStream_t stream) {
  using namespace detail::gpu;
  State& s = *st_;
  const Params<S>& p = s.p;
  const Dims& D = s.D;
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

}  // namespace radargate
