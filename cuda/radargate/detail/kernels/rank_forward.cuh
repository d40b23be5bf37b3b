// radargate/detail/kernels/rank_forward.cuh -- the CUDA backend's small kernels: rank-space forward work per token (h,
// w, z). The rank-space formulas they implement are in ../small.cuh.
#pragma once

#include "../small_common.cuh"

namespace radargate {
namespace detail {
namespace gpu {

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
static __global__ void rank_forward_w(RankArgs a) {
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

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
