// radargate/detail/small.cuh -- the CUDA backend's small kernels: weights into kernel layout
// (once per weight update), rank-space work per token, the gate, reductions over tokens and the
// gradient writers. None of them touches a [T, N, d] tensor.
//
// Rank space (per token t, expert i; hs = s_i h_i, h = A_i x from the shrink GEMM F = X Wst^T):
//   w_ti  = (Wc B_i) hs_ti                     [k]
//   z_ti  = Wx x_t + (Wv B_i) hs_ti + sum_{j != i} m_ij w_tj
// Backward in rank space (dz from the token pass, bdu = B_i^T R_i^T du_ti from the token pass):
//   dzc_ti = sum_j m_ji dz_tj
//   bdv_ti = bdu_ti + (Wv B_i)^T dz_ti + (Wc B_i)^T dzc_ti        (= B_i^T dv_ti)
//   dh_ti  = s_i bdv_ti      dscale_i = sum_t bdv_ti . h_ti       dm_ij = sum_t dz_ti . w_tj
//   Gv_i   = sum_t dz_ti hs_ti^T    Gc_i = sum_t dzc_ti hs_ti^T    (k x r)
//   dWv    = sum_i Gv_i B_i^T       dWc = sum_i Gc_i B_i^T
//   dB_i   = dBrot_i + Wv^T Gv_i + Wc^T Gc_i
#pragma once

#include <radargate/detail/math.hpp>
#include <radargate/layer_config.hpp>
#include <radargate/view.hpp>

#include "fused.cuh"
#include "support.cuh"

namespace radargate {
namespace detail {
namespace gpu {

constexpr int kThreads = 256;

#define RG_GRID_STRIDE(idx, n) \
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < (n); idx += index_t(gridDim.x) * blockDim.x)

// --- weights into kernel layout -------------------------------------------------------------------

/// Bp[i][R][q] and BpT[i][q][R]: B_i in slot-row order, zero-padded to rpad and 2 Spad rows.
template <class S>
__global__ void prep_B(View<const S, 3> B, Pairing pairing, index_t d, index_t r, index_t rpad, index_t Spad,
                       S* Bp, S* BpT) {
  const index_t N = B.shape[0], S2 = 2 * Spad;
  RG_GRID_STRIDE(idx, N * S2 * rpad) {
    const index_t q = idx % rpad, R = (idx / rpad) % S2, i = idx / (rpad * S2);
    index_t plane;
    int side;
    slot_row_plane(R, plane, side);
    const index_t c = slot_coord(pairing, plane, side, d);
    const S val = (c >= 0 && q < r) ? B(i, c, q) : from_float<S>(0.f);
    Bp[idx] = val;
    BpT[(i * rpad + q) * S2 + R] = val;
  }
}

/// Up[m][kq], UpT[kq][m] (zero past P, k) and bias[i][m] (float, zero past P or when absent).
template <class S>
__global__ void prep_U(View<const S, 2> U, View<const S, 2> bias, index_t N, index_t Spad, index_t kpad, S* Up,
                       S* UpT, float* biasp) {
  const index_t P = U.shape[0], k = U.shape[1];
  RG_GRID_STRIDE(idx, Spad * kpad) {
    const index_t kq = idx % kpad, m = idx / kpad;
    const S val = (m < P && kq < k) ? U(m, kq) : from_float<S>(0.f);
    Up[idx] = val;
    UpT[kq * Spad + m] = val;
  }
  RG_GRID_STRIDE(idx, N * Spad) {
    const index_t m = idx % Spad, i = idx / Spad;
    biasp[idx] = (bias.present() && m < P) ? to_float(bias(i, m)) : 0.f;
  }
}

/// wsp[R] = ws[coord(R)] (slot rows), b0p[o] = b0[o], slot_of[o] = R with coord(R) = o.
template <class S>
__global__ void prep_vectors(View<const S, 1> ws, View<const S, 1> b0, Pairing pairing, index_t d, index_t Spad,
                             float* wsp, float* b0p, int* slot_of) {
  RG_GRID_STRIDE(R, 2 * Spad) {
    index_t plane;
    int side;
    slot_row_plane(R, plane, side);
    const index_t c = slot_coord(pairing, plane, side, d);
    if (wsp) wsp[R] = (c >= 0 && ws.present()) ? to_float(ws(c)) : 0.f;
    if (c >= 0) slot_of[c] = int(R);
  }
  if (b0p) RG_GRID_STRIDE(o, d) b0p[o] = to_float(b0(o));
}

/// Wst = [A (N r rows); Wx (kx rows); Wg (ng rows)] as one [nF, d_in] row-major matrix.
template <class S>
__global__ void prep_stack(View<const S, 3> A, View<const S, 2> Wx, View<const S, 2> Wg, index_t kx, index_t ng,
                           S* Wst) {
  const index_t N = A.shape[0], r = A.shape[1], din = A.shape[2], nF = N * r + kx + ng;
  RG_GRID_STRIDE(idx, nF * din) {
    const index_t col = idx % din, row = idx / din;
    S val;
    if (row < N * r)
      val = A(row / r, row % r, col);
    else if (row < N * r + kx)
      val = Wx(row - N * r, col);
    else
      val = Wg(row - N * r - kx, col);
    Wst[idx] = val;
  }
}

/// WB[i][kq][q] = sum_o W[kq][o] B_i[o][q] (float).
template <class S>
__global__ void prep_rank_product(View<const S, 2> Wm, View<const S, 3> B, float* WB) {
  const index_t k = Wm.shape[0], d = Wm.shape[1], N = B.shape[0], r = B.shape[2];
  RG_GRID_STRIDE(idx, N * k * r) {
    const index_t q = idx % r, kq = (idx / r) % k, i = idx / (r * k);
    float acc = 0.f;
    for (index_t o = 0; o < d; ++o) acc += to_float(Wm(kq, o)) * to_float(B(i, o, q));
    WB[idx] = acc;
  }
}

/// m[i][j]: relational-map weights (map_weights), from M converted to float.
template <class S>
__global__ void prep_map(View<const S, 2> M, MapMode mode, index_t N, float* Mf, float* m) {
  if (blockIdx.x != 0) return;
  for (index_t idx = threadIdx.x; idx < N * N; idx += blockDim.x)
    Mf[idx] = M.present() ? to_float(M(idx / N, idx % N)) : 0.f;
  __syncthreads();
  for (index_t i = threadIdx.x; i < N; i += blockDim.x) map_weights(mode, Mf + i * N, index_t(1), i, N, m + i * N);
}

/// A packed row-major copy of a 2-D view (for cuBLAS, when the view's inner stride is not 1).
template <class S>
__global__ void pack_2d(View<const S, 2> src, S* dst) {
  const index_t cols = src.shape[1];
  RG_GRID_STRIDE(idx, src.shape[0] * cols) dst[idx] = src(idx / cols, idx % cols);
}

// --- forward, rank space --------------------------------------------------------------------------

struct RankArgs {
  index_t T = 0, Tpad = 0, N = 0, r = 0, rpad = 0, k = 0, kpad = 0, nF = 0, kx = 0;
  const float* F = nullptr;      // [T][nF]: h (N r), Wx x (kx), Wg x (ng)
  const float* scale = nullptr;  // [N] or null (one)
  const float* WvB = nullptr;    // [N][k][r] or null
  const float* WcB = nullptr;    // [N][k][r] or null
  const float* m = nullptr;      // [N][N]
  float* w = nullptr;            // [T][N][k]
};

/// hs (and its transpose) for every (t < Tpad, i, q < rpad), zero past T and r.
template <class S>
__global__ void rank_forward_h(RankArgs a, S* hs, S* hsT) {
  RG_GRID_STRIDE(idx, a.Tpad * a.N * a.rpad) {
    const index_t q = idx % a.rpad, i = (idx / a.rpad) % a.N, t = idx / (a.rpad * a.N);
    const float v = (t < a.T && q < a.r) ? (a.scale ? a.scale[i] : 1.f) * a.F[t * a.nF + i * a.r + q] : 0.f;
    const S sv = from_float<S>(v);
    hs[idx] = sv;
    hsT[(i * a.rpad + q) * a.Tpad + t] = sv;
  }
}

/// w_ti = (Wc B_i) hs_ti for every (t < T, i, kq < k).
__global__ void rank_forward_w(RankArgs a) {
  RG_GRID_STRIDE(idx, a.T * a.N * a.k) {
    const index_t kq = idx % a.k, i = (idx / a.k) % a.N, t = idx / (a.k * a.N);
    const float s = a.scale ? a.scale[i] : 1.f;
    const float* h = a.F + t * a.nF + i * a.r;
    const float* wb = a.WcB + (i * a.k + kq) * a.r;
    float acc = 0.f;
    for (index_t q = 0; q < a.r; ++q) acc += wb[q] * h[q];
    a.w[idx] = s * acc;
  }
}

/// z_ti = Wx x_t + (Wv B_i) hs_ti + sum_{j != i} m_ij w_tj and its transpose, for every
/// (t < Tpad, i, kq < kpad), zero past T and k.
template <class S>
__global__ void rank_forward_z(RankArgs a, S* z, S* zT) {
  RG_GRID_STRIDE(idx, a.Tpad * a.N * a.kpad) {
    const index_t kq = idx % a.kpad, i = (idx / a.kpad) % a.N, t = idx / (a.kpad * a.N);
    float acc = 0.f;
    if (t < a.T && kq < a.k) {
      if (a.kx) acc += a.F[t * a.nF + a.N * a.r + kq];
      if (a.WvB) {
        const float s = a.scale ? a.scale[i] : 1.f;
        const float* h = a.F + t * a.nF + i * a.r;
        const float* wb = a.WvB + (i * a.k + kq) * a.r;
        float sv = 0.f;
        for (index_t q = 0; q < a.r; ++q) sv += wb[q] * h[q];
        acc += s * sv;
      }
      if (a.WcB)
        for (index_t j = 0; j < a.N; ++j)
          if (j != i) acc += a.m[i * a.N + j] * a.w[(t * a.N + j) * a.k + kq];
    }
    const S sv = from_float<S>(acc);
    z[idx] = sv;
    zT[(i * a.kpad + kq) * a.Tpad + t] = sv;
  }
}

/// rank_forward_z with w_t computed into shared memory: one block per token (t < Tpad), dynamic
/// shared memory N k floats (used while N k <= 12288).
template <class S>
__global__ void rank_forward_z_block(RankArgs a, S* z, S* zT) {
  extern __shared__ float sw[];
  const index_t t = blockIdx.x;
  const bool live = t < a.T;
  if (live && a.WcB)  // w_tj = (Wc B_j) hs_tj
    for (index_t idx = threadIdx.x; idx < a.N * a.k; idx += blockDim.x) {
      const index_t kq = idx % a.k, j = idx / a.k;
      const float* h = a.F + t * a.nF + j * a.r;
      const float* wb = a.WcB + (j * a.k + kq) * a.r;
      float acc = 0.f;
      for (index_t q = 0; q < a.r; ++q) acc += wb[q] * h[q];
      sw[idx] = (a.scale ? a.scale[j] : 1.f) * acc;
    }
  __syncthreads();
  for (index_t idx = threadIdx.x; idx < a.N * a.kpad; idx += blockDim.x) {
    const index_t kq = idx % a.kpad, i = idx / a.kpad;
    float acc = 0.f;
    if (live && kq < a.k) {
      if (a.kx) acc += a.F[t * a.nF + a.N * a.r + kq];
      if (a.WvB) {
        const float* h = a.F + t * a.nF + i * a.r;
        const float* wb = a.WvB + (i * a.k + kq) * a.r;
        float sv = 0.f;
        for (index_t q = 0; q < a.r; ++q) sv += wb[q] * h[q];
        acc += (a.scale ? a.scale[i] : 1.f) * sv;
      }
      if (a.WcB)
        for (index_t j = 0; j < a.N; ++j)
          if (j != i) acc += a.m[i * a.N + j] * sw[j * a.k + kq];
    }
    const S sv = from_float<S>(acc);
    z[(t * a.N + i) * a.kpad + kq] = sv;
    zT[(i * a.kpad + kq) * a.Tpad + t] = sv;
  }
}

struct GateArgs {
  index_t T = 0, Tpad = 0, N = 0, nF = 0, wg_col = -1;  // wg_col: column of Wg x in F, or -1
  GateKind gate = GateKind::none;
  Normalize normalize = Normalize::softmax;
  int topk = 1;
  float tau = 1.f;
  const float* bg = nullptr;    // [N] or null
  const float* F = nullptr;
  const float* part = nullptr;  // [nparts][Tpad][N] dot products (stretch), or null
  int nparts = 0;
  float* g = nullptr;           // [Tpad][N]
  unsigned char* sel = nullptr; // [Tpad][N]
};

/// Logits (forward) or dg (backward) per (t, i): the sum of the dot pass's parts in a fixed order,
/// plus bg_i and (Wg x_t)_i in the forward. One thread per (t, i).
__global__ void gate_sum(GateArgs a, bool with_base, float* out) {
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
__global__ void gate_sum_warp(GateArgs a, bool with_base, float* out) {
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
__global__ void gate_forward(GateArgs a) {
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
__global__ void gate_backward(GateArgs a, float* dl) {
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

// --- backward, rank space -------------------------------------------------------------------------

struct RankBackArgs {
  RankArgs f;
  index_t width = 0;             // kpad + rpad of the token pass's rows
  int nparts = 0;
  const float* part = nullptr;   // [nparts][Tpad][N][width]
  float* dz = nullptr;           // [T][N][k]
  float* bdu = nullptr;          // [T][N][r]  (B_i^T R_i^T du, then B_i^T dv)
  float* dzc = nullptr;          // [T][N][k] or null
  float* dscale_t = nullptr;     // [T][N] or null
  float* dm_t = nullptr;         // [T][N][N] or null
  const float* dl = nullptr;     // [Tpad][N] or null
  index_t ng = 0;
};

/// Sums the token pass's parts into dz and bdu, one thread per (t, i, column).
__global__ void rank_backward_sum(RankBackArgs a) {
  const RankArgs& f = a.f;
  const index_t C = f.k + f.r;
  RG_GRID_STRIDE(idx, f.T * f.N * C) {
    const index_t c = idx % C, ti = idx / C;
    const index_t i = ti % f.N, t = ti / f.N;
    const index_t col = c < f.k ? c : f.kpad + (c - f.k);
    float s = 0.f;
    for (int p = 0; p < a.nparts; ++p) s += a.part[((index_t(p) * f.Tpad + t) * f.N + i) * a.width + col];
    if (c < f.k)
      a.dz[ti * f.k + c] = s;
    else
      a.bdu[ti * f.r + (c - f.k)] = s;
  }
}

/// dzc_ti = sum_j m_ji dz_tj, one thread per (t, i, kq).
__global__ void rank_backward_dzc(RankBackArgs a) {
  const RankArgs& f = a.f;
  RG_GRID_STRIDE(idx, f.T * f.N * f.k) {
    const index_t kq = idx % f.k, i = (idx / f.k) % f.N, t = idx / (f.k * f.N);
    float acc = 0.f;
    for (index_t j = 0; j < f.N; ++j)
      if (j != i) acc += f.m[j * f.N + i] * a.dz[(t * f.N + j) * f.k + kq];
    a.dzc[idx] = acc;
  }
}

/// bdv = bdu + (Wv B_i)^T dz_ti + (Wc B_i)^T dzc_ti (in place in bdu) and dh = s_i bdv into dF, one
/// thread per (t, i, q).
template <class S>
__global__ void rank_backward_dh(RankBackArgs a, S* dF) {
  const RankArgs& f = a.f;
  RG_GRID_STRIDE(idx, f.T * f.N * f.r) {
    const index_t q = idx % f.r, ti = idx / f.r;
    const index_t i = ti % f.N, t = ti / f.N;
    float b = a.bdu[idx];
    if (f.WvB)
      for (index_t kq = 0; kq < f.k; ++kq) b += f.WvB[(i * f.k + kq) * f.r + q] * a.dz[ti * f.k + kq];
    if (f.WcB && a.dzc)
      for (index_t kq = 0; kq < f.k; ++kq) b += f.WcB[(i * f.k + kq) * f.r + q] * a.dzc[ti * f.k + kq];
    a.bdu[idx] = b;
    if (dF) dF[t * f.nF + i * f.r + q] = from_float<S>((f.scale ? f.scale[i] : 1.f) * b);
  }
}

/// dscale_t,i = bdv_ti . h_ti, one thread per (t, i).
__global__ void rank_backward_dscale(RankBackArgs a) {
  const RankArgs& f = a.f;
  RG_GRID_STRIDE(ti, f.T * f.N) {
    const index_t i = ti % f.N, t = ti / f.N;
    const float* h = f.F + t * f.nF + i * f.r;
    float s = 0.f;
    for (index_t q = 0; q < f.r; ++q) s += a.bdu[ti * f.r + q] * h[q];
    a.dscale_t[ti] = s;
  }
}

/// dm_t,ij = dz_ti . w_tj (j != i), one thread per (t, i, j).
__global__ void rank_backward_dm(RankBackArgs a) {
  const RankArgs& f = a.f;
  RG_GRID_STRIDE(idx, f.T * f.N * f.N) {
    const index_t j = idx % f.N, i = (idx / f.N) % f.N, t = idx / (f.N * f.N);
    float acc = 0.f;
    if (j != i)
      for (index_t kq = 0; kq < f.k; ++kq) acc += a.dz[(t * f.N + i) * f.k + kq] * f.w[(t * f.N + j) * f.k + kq];
    a.dm_t[idx] = acc;
  }
}

/// rank_backward_dzc and rank_backward_dm with dz_t and w_t = (Wc B_j) hs_tj in shared memory (rows
/// padded to k + 1 floats against bank conflicts): one block per token, dynamic shared memory
/// 2 N (k + 1) floats.
__global__ void rank_backward_block(RankBackArgs a, bool do_dzc, bool do_dm) {
  extern __shared__ float sdz[];
  const RankArgs& f = a.f;
  const index_t k1 = f.k + 1;
  float* sw = sdz + f.N * k1;
  const index_t t = blockIdx.x, Nk = f.N * f.k;
  for (index_t idx = threadIdx.x; idx < Nk; idx += blockDim.x) {
    const index_t kq = idx % f.k, j = idx / f.k;
    sdz[j * k1 + kq] = a.dz[t * Nk + idx];
    if (do_dm) {
      const float* h = f.F + t * f.nF + j * f.r;
      const float* wb = f.WcB + (j * f.k + kq) * f.r;
      float acc = 0.f;
      for (index_t q = 0; q < f.r; ++q) acc += wb[q] * h[q];
      sw[j * k1 + kq] = (f.scale ? f.scale[j] : 1.f) * acc;
    }
  }
  __syncthreads();
  if (do_dzc)
    for (index_t idx = threadIdx.x; idx < Nk; idx += blockDim.x) {
      const index_t kq = idx % f.k, i = idx / f.k;
      float acc = 0.f;
      for (index_t j = 0; j < f.N; ++j)
        if (j != i) acc += f.m[j * f.N + i] * sdz[j * k1 + kq];
      a.dzc[t * Nk + idx] = acc;
    }
  if (do_dm)
    for (index_t idx = threadIdx.x; idx < f.N * f.N; idx += blockDim.x) {
      const index_t j = idx % f.N, i = idx / f.N;
      float acc = 0.f;
      if (j != i)
        for (index_t kq = 0; kq < f.k; ++kq) acc += sdz[i * k1 + kq] * sw[j * k1 + kq];
      a.dm_t[t * f.N * f.N + idx] = acc;
    }
}

/// part[ts][i][kq][q] = sum over the tokens of chunk ts of d[t][i][kq] h[t][i][q] (h = F's first N r
/// columns); grid (N, chunks). rank_outer_sum adds the chunks in order: G[i][kq][q].
__global__ void rank_outer_part(const float* d, const float* F, index_t T, index_t N, index_t k, index_t r,
                                index_t nF, index_t chunk, float* part) {
  const index_t i = blockIdx.x, ts = blockIdx.y;
  const index_t t0 = ts * chunk, t1 = (t0 + chunk < T) ? t0 + chunk : T;
  for (index_t o = threadIdx.x; o < k * r; o += blockDim.x) {
    const index_t kq = o / r, q = o % r;
    float acc = 0.f;
    for (index_t t = t0; t < t1; ++t) acc += d[(t * N + i) * k + kq] * F[t * nF + i * r + q];
    part[(ts * N + i) * k * r + o] = acc;
  }
}
__global__ void rank_outer_sum(const float* part, index_t chunks, index_t n, float* G) {
  RG_GRID_STRIDE(idx, n) {
    float s = 0.f;
    for (index_t c = 0; c < chunks; ++c) s += part[c * n + idx];
    G[idx] = s;
  }
}

/// The rank-space columns of dF after the h block: sum_i dz_ti (kx columns) and dl_t (ng columns),
/// one thread per (t, column).
template <class S>
__global__ void rank_backward_tail(RankBackArgs a, S* dF) {
  const RankArgs& f = a.f;
  const index_t C = f.kx + a.ng;
  RG_GRID_STRIDE(idx, f.T * C) {
    const index_t c = idx % C, t = idx / C;
    float s = 0.f;
    if (c < f.kx) {
      if (a.dz)
        for (index_t i = 0; i < f.N; ++i) s += a.dz[(t * f.N + i) * f.k + c];
    } else if (a.dl) {
      s = a.dl[t * f.N + (c - f.kx)];
    }
    dF[t * f.nF + f.N * f.r + c] = from_float<S>(s);
  }
}

/// Zero fill of a dF block (the h columns when no token pass ran).
template <class S>
__global__ void fill_zero(S* p, index_t n) {
  RG_GRID_STRIDE(idx, n) p[idx] = from_float<S>(0.f);
}

// --- reductions over tokens (fixed order: bit-identical run to run) ---------------------------------

/// out[j] = sum_{t < T} f(t, j), one block per j.
template <class F>
__global__ void sum_over_tokens(F f, index_t T, index_t J, float* out) {
  __shared__ float red[kThreads];
  for (index_t j = blockIdx.x; j < J; j += gridDim.x) {
    float acc = 0.f;
    for (index_t t = threadIdx.x; t < T; t += kThreads) acc += f(t, j);
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) out[j] = red[0];
    __syncthreads();
  }
}

/// f(t, j) = p[t * J + j]
struct RowsOf {
  const float* p;
  index_t J;
  __device__ float operator()(index_t t, index_t j) const { return p[t * J + j]; }
};
/// f(t, j) = dy[t][j]
template <class S>
struct DyRows {
  const S* dy;
  index_t ld;
  __device__ float operator()(index_t t, index_t j) const { return to_float(dy[t * ld + j]); }
};
/// dM row i = map_weights_backward(m_i, sum_t dm_t,i) (in place on dMs).
__global__ void map_backward(const float* m, float* dMs, index_t N) {
  RG_GRID_STRIDE(i, N) map_weights_backward(m + i * N, dMs + i * N, i, N);
}

/// dW[kq][o] = sum_i s_i sum_q G[i][kq][q] B_i[o][q]   (G over h, so s_i G is over hs), for
/// (Gv, dWv) and (Gc, dWc) in one pass over B; an output with a null G is written as zero, a null
/// output is skipped.
template <class S>
__global__ void rank_to_full(const float* Gv, const float* Gc, const float* scale, View<const S, 3> B, index_t k,
                             float* dWv, float* dWc) {
  const index_t N = B.shape[0], d = B.shape[1], r = B.shape[2];
  RG_GRID_STRIDE(idx, k * d) {
    const index_t o = idx % d, kq = idx / d;
    float av = 0.f, ac = 0.f;
    for (index_t i = 0; i < N; ++i) {
      float sv = 0.f, sc = 0.f;
      for (index_t q = 0; q < r; ++q) {
        const float b = to_float(B(i, o, q));
        if (Gv) sv += Gv[(i * k + kq) * r + q] * b;
        if (Gc) sc += Gc[(i * k + kq) * r + q] * b;
      }
      const float s = scale ? scale[i] : 1.f;
      av += s * sv;
      ac += s * sc;
    }
    if (dWv) dWv[idx] = av;
    if (dWc) dWc[idx] = ac;
  }
}

/// dB[i][o][q] = dBrot[i][slot(o)][q] + s_i sum_kq (Wv[kq][o] Gv[i][kq][q] + Wc[kq][o] Gc[i][kq][q])
template <class S>
__global__ void assemble_dB(const float* dBrot, const int* slot_of, index_t Spad, index_t rpad, View<const S, 2> Wv,
                            const float* Gv, View<const S, 2> Wc, const float* Gc, const float* scale, index_t N,
                            index_t d, index_t r, index_t k, float* dB) {
  RG_GRID_STRIDE(idx, N * d * r) {
    const index_t q = idx % r, o = (idx / r) % d, i = idx / (r * d);
    float extra = 0.f;
    if (Gv)
      for (index_t kq = 0; kq < k; ++kq) extra += to_float(Wv(kq, o)) * Gv[(i * k + kq) * r + q];
    if (Gc)
      for (index_t kq = 0; kq < k; ++kq) extra += to_float(Wc(kq, o)) * Gc[(i * k + kq) * r + q];
    dB[idx] = dBrot[(i * 2 * Spad + slot_of[o]) * rpad + q] + (scale ? scale[i] : 1.f) * extra;
  }
}

/// dU[m][kq] = sum_grp dUTp[grp][kq][m];  dbias[i][m] = dbiasp[i][m]  (m < P)
__global__ void assemble_dU(const float* dUTp, int groups, index_t kpad, index_t Spad, index_t P, index_t k, float* dU) {
  RG_GRID_STRIDE(idx, P * k) {
    const index_t kq = idx % k, m = idx / k;
    float s = 0.f;
    for (int grp = 0; grp < groups; ++grp) s += dUTp[(index_t(grp) * kpad + kq) * Spad + m];
    dU[idx] = s;
  }
}
__global__ void assemble_dbias(const float* dbiasp, index_t N, index_t Spad, index_t P, float* dbias) {
  RG_GRID_STRIDE(idx, N * P) dbias[idx] = dbiasp[(idx / P) * Spad + idx % P];
}
/// dws[o] = sum_grp dwsp[grp][slot(o)]
__global__ void assemble_dws(const float* dwsp, int groups, const int* slot_of, index_t Spad, index_t d, float* dws) {
  RG_GRID_STRIDE(o, d) {
    float s = 0.f;
    for (int grp = 0; grp < groups; ++grp) s += dwsp[index_t(grp) * 2 * Spad + slot_of[o]];
    dws[o] = s;
  }
}

// --- writers --------------------------------------------------------------------------------------

/// dst (any strides) = src (dense row-major, dst's shape) [+ dst when accumulating]. src may be
/// offset by a row stride `src_ld` for rank 2 (the rows of a wider matrix).
template <class S, int R>
__global__ void write_grad(View<S, R> dst, const float* src, index_t src_ld, bool accumulate) {
  index_t n = 1;
  for (int k = 0; k < R; ++k) n *= dst.shape[k];
  RG_GRID_STRIDE(idx, n) {
    index_t rem = idx, off = 0;
    index_t last = 0, row = 0;
    for (int k = R - 1; k >= 0; --k) {
      const index_t c = rem % dst.shape[k];
      rem /= dst.shape[k];
      off += c * dst.stride[k];
      if (k == R - 1) last = c;
    }
    row = idx / dst.shape[R - 1];
    const float v = src[src_ld > 0 ? row * src_ld + last : idx];
    S* p = dst.data + off;
    *p = from_float<S>(accumulate ? to_float(*p) + v : v);
  }
}

/// dst (any strides) = 0.
template <class S, int R>
__global__ void zero_grad(View<S, R> dst) {
  index_t n = 1;
  for (int k = 0; k < R; ++k) n *= dst.shape[k];
  RG_GRID_STRIDE(idx, n) {
    index_t rem = idx, off = 0;
    for (int k = R - 1; k >= 0; --k) {
      off += (rem % dst.shape[k]) * dst.stride[k];
      rem /= dst.shape[k];
    }
    dst.data[off] = from_float<S>(0.f);
  }
}

/// Float copy of a 1-D view (scale, bg).
template <class S>
__global__ void vec_to_float(View<const S, 1> v, float* out) {
  RG_GRID_STRIDE(i, v.shape[0]) out[i] = to_float(v(i));
}

#undef RG_GRID_STRIDE

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
