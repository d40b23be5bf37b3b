// radargate/detail/kernels/prep.cuh -- the CUDA backend's small kernels: weights into kernel layout, once per weight
// update. The rank-space formulas they implement are in ../small.cuh.
#pragma once

#include "../small_common.cuh"

namespace radargate {
namespace detail {
namespace gpu {

// --- weights into kernel layout -------------------------------------------------------------------

/// Bp[i][R][q] and BpT[i][q][R]: B_i in slot-row order, zero-padded to rpad and 2 Spad rows.
template <class S>
__global__ void prep_B(View<const S, 3> B, Pairing pairing, index_t d, index_t r, index_t rpad, index_t Spad, S* Bp,
                       S* BpT) {
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
__global__ void prep_U(View<const S, 2> U, View<const S, 2> bias, index_t N, index_t Spad, index_t kpad, S* Up, S* UpT,
                       float* biasp) {
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

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
