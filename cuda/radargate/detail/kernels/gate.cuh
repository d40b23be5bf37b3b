// radargate/detail/kernels/gate.cuh -- the CUDA backend's small kernels: the gate: logits from the shrink GEMM and the
// dot pass, normalisation, its backward. The rank-space formulas they implement are in ../small.cuh.
#pragma once

#include "../small_common.cuh"

namespace radargate {
namespace detail {
namespace gpu {

struct GateArgs {
  index_t T = 0, Tpad = 0, N = 0, nF = 0, wg_col = -1;  // wg_col: column of Wg x in F, or -1
  GateKind gate = GateKind::none;
  Normalize normalize = Normalize::softmax;
  int topk = 1;
  float tau = 1.f;
  const float* bg = nullptr;  // [N] or null
  const float* F = nullptr;
  const float* part = nullptr;  // [nparts][Tpad][N] dot products (stretch), or null
  int nparts = 0;
  float* g = nullptr;            // [Tpad][N]
  unsigned char* sel = nullptr;  // [Tpad][N]
};

/// Logits (forward) or dg (backward) per (t, i): the sum of the dot pass's parts in a fixed order,
/// plus bg_i and (Wg x_t)_i in the forward. One thread per (t, i).
static __global__ void gate_sum(GateArgs a, bool with_base, float* out) {
  RG_GRID_STRIDE(idx, a.Tpad * a.N) {
    const index_t i = idx % a.N, t = idx / a.N;
    float l = 0.f;
    if (t < a.T) {
      if (with_base) {
        if (a.bg) l += a.bg[i];
        if (a.wg_col >= 0) l += a.F[t * a.nF + a.wg_col + i];
      }
      for (int p = 0; p < a.nparts; ++p) l += a.part[(index_t(p) * a.Tpad + t) * a.N + i];
    }
    out[idx] = l;
  }
}

/// The same with one warp per (t, i), for many parts (decoding): lane p adds parts p, p + 32, ...,
/// then a fixed butterfly over the lanes.
static __global__ void gate_sum_warp(GateArgs a, bool with_base, float* out) {
  const index_t lane = threadIdx.x & 31;
  const index_t warps = (index_t(gridDim.x) * blockDim.x) >> 5;
  for (index_t idx = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; idx < a.Tpad * a.N; idx += warps) {
    const index_t i = idx % a.N, t = idx / a.N;
    float l = 0.f;
    if (t < a.T)
      for (index_t p = lane; p < a.nparts; p += 32) l += a.part[(p * a.Tpad + t) * a.N + i];
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) {
      if (t < a.T && with_base) {
        if (a.bg) l += a.bg[i];
        if (a.wg_col >= 0) l += a.F[t * a.nF + a.wg_col + i];
      }
      out[idx] = l;
    }
  }
}

/// g_t = gate(l_t) per token (normalize_forward on the logits gate_sum left in g); zero rows for
/// padding tokens. Up to 64 experts the row is normalised in a per-thread copy (local memory).
static __global__ void gate_forward(GateArgs a) {
  RG_GRID_STRIDE(t, a.Tpad) {
    float* g = a.g + t * a.N;
    if (t >= a.T) {
      for (index_t i = 0; i < a.N; ++i) g[i] = 0.f;
      continue;
    }
    if (a.gate == GateKind::none || a.gate == GateKind::uniform) {
      const float v = a.gate == GateKind::none ? 1.f : 1.f / float(a.N);
      for (index_t i = 0; i < a.N; ++i) g[i] = v;
      continue;
    }
    if (a.N <= 64) {
      float l[64];
      unsigned char sel[64];
      for (index_t i = 0; i < a.N; ++i) l[i] = g[i];
      normalize_forward(a.normalize, index_t(a.topk), a.tau, l, a.N, sel);
      for (index_t i = 0; i < a.N; ++i) {
        g[i] = l[i];
        a.sel[t * a.N + i] = sel[i];
      }
    } else {
      normalize_forward(a.normalize, index_t(a.topk), a.tau, g, a.N, a.sel + t * a.N);
    }
  }
}

/// dl_t = J_normalize^T dg_t, in place on the dg that gate_sum left in dl (in a per-thread copy up to
/// 64 experts).
static __global__ void gate_backward(GateArgs a, float* dl) {
  RG_GRID_STRIDE(t, a.T) {
    float* row = dl + t * a.N;
    const float* g = a.g + t * a.N;
    if (a.N <= 64) {
      float gl[64], dg[64];
      for (index_t i = 0; i < a.N; ++i) {
        gl[i] = g[i];
        dg[i] = row[i];
      }
      normalize_backward(a.normalize, a.tau, gl, dg, a.N);
      for (index_t i = 0; i < a.N; ++i) row[i] = dg[i];
    } else {
      normalize_backward(a.normalize, a.tau, g, row, a.N);
    }
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
