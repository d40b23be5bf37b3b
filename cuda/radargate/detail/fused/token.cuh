// radargate/detail/fused/token.cuh -- the token pass: per token and expert, the reductions over
// the coordinates of the backward (dz = U^T dpre and B_i^T R_i^T du; docs/MATH.md, "Backward").
#pragma once

#include "unit.cuh"

namespace radargate {
namespace detail {
namespace gpu {

/// Per token and expert, reductions over the coordinates: dz (kpad values, with need_dz) and
/// bdu = B_i^T R_i^T du (rpad values). Block: WT x WC warps, warp (wt, wc) owns 16 tokens and the
/// units wc + WC * blockIdx.y + j * WC * gridDim.y. Per expert the WC partial sums are added in
/// shared memory in a fixed order and written to part[cb][t][i][kpad + rpad], cb = blockIdx.y.
/// With FIX the per-warp sums stay in registers until the expert is done.
/// Dynamic shared memory: token_pass_smem(WT * WC, kpad, rpad).
inline std::size_t token_pass_smem(int warps, index_t kpad, index_t rpad) {
  return std::size_t(warps) * ((kpad + rpad) / 8 * 32 * sizeof(float4) + 256 * sizeof(float));
}

template <class S, int WT, int WC, bool FIX>
__global__ void __launch_bounds__(WT* WC * 32) token_pass(FusedArgs<S> a, bool need_dz) {
  using W = Warp<S>;
  extern __shared__ float4 sm4[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int wt = warp / WC, wc = warp % WC;
  const int kt = int(a.kpad / 8), nt_k = need_dz ? kt : 0, nt_r = int(a.rpad / 8);
  const int NT = kt + nt_r;  // accumulator tiles per warp (dz slots kept when unused)
  float4* acc = sm4 + index_t(warp) * NT * 32;
  float* scratch = reinterpret_cast<float*>(sm4 + index_t(WT * WC) * NT * 32) + warp * 256;
  const index_t t0 = (index_t(blockIdx.x) * WT + wt) * 16;
  const bool active = t0 < a.T;
  const index_t width = a.kpad + a.rpad;
  for (int nt = 0; nt < NT; ++nt) acc[nt * 32 + lane] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i = 0; i < a.N; ++i) {
    if (active) {
      float gw[2] = {a.g[(t0 + g) * a.N + i], a.g[(t0 + g + 8) * a.N + i]};
      float dlw[2] = {a.dl ? a.dl[(t0 + g) * a.N + i] : 0.f, a.dl ? a.dl[(t0 + g + 8) * a.N + i] : 0.f};
      const bool any = __any_sync(0xffffffffu, gw[0] != 0.f || gw[1] != 0.f || dlw[0] != 0.f || dlw[1] != 0.f);
      const S* BT_i = a.BpT + index_t(i) * a.rpad * 2 * a.Spad;
      float rz[2][4], rh[2][4];  // FIX: dz tiles (kpad = 16), bdu tiles (rpad = 16)
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) rz[n][c] = rh[n][c] = 0.f;
      if (any) {
        Expert<S, FIX> e;
        load_expert(a, i, t0, g, q, e);
        for (index_t u = index_t(blockIdx.y) * WC + wc; u < a.units; u += index_t(gridDim.y) * WC) {
          float v[2][2][4], pre[2][4], dv[2][2][4], dpre[2][4];
          UnitRot R;
          unit_products(a, e, t0, u, g, q, v, pre);
          unit_rotate<S, true>(a, v, pre, R);
          unit_backward(a, t0, u, g, q, gw, dlw, v, R, dv, dpre);
          if (need_dz) {
            typename W::A af;
            W::a_from_c(af, dpre[0], dpre[1], scratch);
            if (FIX) {
#pragma unroll
              for (int nt = 0; nt < 2; ++nt) {
                typename W::B bf;
                W::load_b(bf, a.UpT, a.Spad, nt * 8, 16 * u, g, q);
                W::mma(rz[nt], af, bf);
              }
            } else {
              for (int nt = 0; nt < nt_k; ++nt) {
                typename W::B bf;
                W::load_b(bf, a.UpT, a.Spad, nt * 8, 16 * u, g, q);
                float c[4] = {0.f, 0.f, 0.f, 0.f};
                W::mma(c, af, bf);
                add4(acc[nt * 32 + lane], c);
              }
            }
          }
#pragma unroll
          for (int pg = 0; pg < 2; ++pg) {
            typename W::A af;
            W::a_from_c(af, dv[pg][0], dv[pg][1], scratch);
            if (FIX) {
#pragma unroll
              for (int nt = 0; nt < 2; ++nt) {
                typename W::B bf;
                W::load_b(bf, BT_i, 2 * a.Spad, nt * 8, 32 * u + 16 * pg, g, q);
                W::mma(rh[nt], af, bf);
              }
            } else {
              for (int nt = 0; nt < nt_r; ++nt) {
                typename W::B bf;
                W::load_b(bf, BT_i, 2 * a.Spad, nt * 8, 32 * u + 16 * pg, g, q);
                float c[4] = {0.f, 0.f, 0.f, 0.f};
                W::mma(c, af, bf);
                add4(acc[(kt + nt) * 32 + lane], c);
              }
            }
          }
        }
      }
      if (FIX) {
        for (int nt = 0; nt < kt; ++nt) acc[nt * 32 + lane] = make_float4(rz[nt][0], rz[nt][1], rz[nt][2], rz[nt][3]);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
          acc[(kt + nt) * 32 + lane] = make_float4(rh[nt][0], rh[nt][1], rh[nt][2], rh[nt][3]);
      }
    }
    __syncthreads();
    // Add the WC column warps of each token row of warps and write this column block's partial.
    for (int idx = threadIdx.x; idx < WT * NT * 32; idx += blockDim.x) {
      const int wr = idx / (NT * 32), nt = (idx / 32) % NT, ln = idx % 32;
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int w2 = 0; w2 < WC; ++w2) {
        const float4 e = sm4[(index_t(wr * WC + w2) * NT + nt) * 32 + ln];
        s.x += e.x;
        s.y += e.y;
        s.z += e.z;
        s.w += e.w;
      }
      const index_t tb = (index_t(blockIdx.x) * WT + wr) * 16 + (ln >> 2);
      const index_t col = index_t(nt) * 8 + 2 * (ln & 3);
      float* o0 = a.part + ((index_t(blockIdx.y) * a.Tpad + tb) * a.N + i) * width + col;
      float* o1 = o0 + 8 * a.N * width;
      o0[0] = s.x;
      o0[1] = s.y;
      o1[0] = s.z;
      o1[1] = s.w;
    }
    __syncthreads();
    for (int nt = 0; nt < NT; ++nt) acc[nt * 32 + lane] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
