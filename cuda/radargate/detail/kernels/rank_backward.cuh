// radargate/detail/kernels/rank_backward.cuh -- the CUDA backend's small kernels: rank-space backward work per token
// and the rank outer products. The rank-space formulas they implement are in ../small.cuh.
#pragma once

#include "../small_common.cuh"
#include "rank_forward.cuh"  // RankArgs

namespace radargate {
namespace detail {
namespace gpu {

// --- backward, rank space -------------------------------------------------------------------------

struct RankBackArgs {
  RankArgs f;
  index_t width = 0;  // kpad + rpad of the token pass's rows
  int nparts = 0;
  const float* part = nullptr;  // [nparts][Tpad][N][width]
  float* dz = nullptr;          // [T][N][k]
  float* bdu = nullptr;         // [T][N][r]  (B_i^T R_i^T du, then B_i^T dv)
  float* dzc = nullptr;         // [T][N][k] or null
  float* dscale_t = nullptr;    // [T][N] or null
  float* dm_t = nullptr;        // [T][N][N] or null
  const float* dl = nullptr;    // [Tpad][N] or null
  index_t ng = 0;
};

/// Sums the token pass's parts into dz and bdu, one thread per (t, i, column).
static __global__ void rank_backward_sum(RankBackArgs a) {
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
static __global__ void rank_backward_dzc(RankBackArgs a) {
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
static __global__ void rank_backward_dscale(RankBackArgs a) {
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
static __global__ void rank_backward_dm(RankBackArgs a) {
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
static __global__ void rank_backward_block(RankBackArgs a, bool do_dzc, bool do_dm) {
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
static __global__ void rank_outer_part(const float* d, const float* F, index_t T, index_t N, index_t k, index_t r,
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
static __global__ void rank_outer_sum(const float* part, index_t chunks, index_t n, float* G) {
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

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
