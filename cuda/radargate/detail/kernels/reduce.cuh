// radargate/detail/kernels/reduce.cuh -- the CUDA backend's small kernels: reductions over tokens (fixed order) and the
// assembly of full gradients. The rank-space formulas they implement are in ../small.cuh.
#pragma once

#include "../small_common.cuh"

namespace radargate {
namespace detail {
namespace gpu {

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
static __global__ void map_backward(const float* m, float* dMs, index_t N) {
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
static __global__ void assemble_dU(const float* dUTp, int groups, index_t kpad, index_t Spad, index_t P, index_t k,
                                   float* dU) {
  RG_GRID_STRIDE(idx, P * k) {
    const index_t kq = idx % k, m = idx / k;
    float s = 0.f;
    for (int grp = 0; grp < groups; ++grp) s += dUTp[(index_t(grp) * kpad + kq) * Spad + m];
    dU[idx] = s;
  }
}
static __global__ void assemble_dbias(const float* dbiasp, index_t N, index_t Spad, index_t P, float* dbias) {
  RG_GRID_STRIDE(idx, N * P) dbias[idx] = dbiasp[(idx / P) * Spad + idx % P];
}
/// dws[o] = sum_grp dwsp[grp][slot(o)]
static __global__ void assemble_dws(const float* dwsp, int groups, const int* slot_of, index_t Spad, index_t d,
                                    float* dws) {
  RG_GRID_STRIDE(o, d) {
    float s = 0.f;
    for (int grp = 0; grp < groups; ++grp) s += dwsp[index_t(grp) * 2 * Spad + slot_of[o]];
    dws[o] = s;
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
