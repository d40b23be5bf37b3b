// radargate/detail/fused/output.cuh -- the output pass: y = base + b0 + sum_i g_ti u_ti per tile of
// tokens x columns, u recomputed per tile, and the final sum when the experts are split over blocks.
#pragma once

#include "unit.cuh"

namespace radargate {
namespace detail {
namespace gpu {

/// Block: WT x WC warps; warp (wt, wc) owns 16 tokens and UW units; blockIdx.z owns experts
/// [z EG, (z + 1) EG). Grid: (ceil(T / (16 WT)), ceil(units / (WC UW)), groups). With one group
/// the tile is written to y (plus base and b0); with several, to ypart, which output_finalize adds.
template <class S, int WT, int WC, int UW, bool FIX>
__global__ void __launch_bounds__(WT* WC * 32) output_pass(FusedArgs<S> a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int wt = warp / WC, wc = warp % WC;
  const index_t t0 = (index_t(blockIdx.x) * WT + wt) * 16;
  if (t0 >= a.T) return;
  const index_t ub = (index_t(blockIdx.y) * WC + wc) * UW;
  const int i0 = int(blockIdx.z) * a.EG, i1 = min(int(a.N), i0 + a.EG);
  float acc[UW][2][2][4];
#pragma unroll
  for (int uu = 0; uu < UW; ++uu)
#pragma unroll
    for (int pg = 0; pg < 2; ++pg)
#pragma unroll
      for (int tl = 0; tl < 2; ++tl)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[uu][pg][tl][c] = 0.f;
  for (int i = i0; i < i1; ++i) {
    const float g0 = a.g[(t0 + g) * a.N + i], g1 = a.g[(t0 + g + 8) * a.N + i];
    // An expert no token of the tile selected (top-k gate) is not computed.
    if (!__any_sync(0xffffffffu, g0 != 0.f || g1 != 0.f)) continue;
    Expert<S, FIX> e;
    load_expert(a, i, t0, g, q, e);
#pragma unroll
    for (int uu = 0; uu < UW; ++uu) {
      const index_t u = ub + uu;
      if (u < a.units) {
        float v[2][2][4], pre[2][4];
        UnitRot R;
        unit_products(a, e, t0, u, g, q, v, pre);
        unit_rotate<S, false>(a, v, pre, R);
#pragma unroll
        for (int pg = 0; pg < 2; ++pg)
#pragma unroll
          for (int tl = 0; tl < 2; ++tl) {
            acc[uu][pg][tl][0] += g0 * v[pg][tl][0];
            acc[uu][pg][tl][1] += g0 * v[pg][tl][1];
            acc[uu][pg][tl][2] += g1 * v[pg][tl][2];
            acc[uu][pg][tl][3] += g1 * v[pg][tl][3];
          }
      }
    }
  }
#pragma unroll
  for (int uu = 0; uu < UW; ++uu) {
    const index_t u = ub + uu;
    if (u >= a.units) continue;
#pragma unroll
    for (int pg = 0; pg < 2; ++pg)
#pragma unroll
      for (int tl = 0; tl < 2; ++tl)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const index_t t = t0 + g + 8 * h;
          if (t >= a.T) continue;
          if (gridDim.z > 1) {
            float2* o = reinterpret_cast<float2*>(a.ypart + (index_t(blockIdx.z) * a.Tpad + t) * 2 * a.Spad + 32 * u +
                                                  16 * pg + 8 * tl + 2 * q);
            *o = make_float2(acc[uu][pg][tl][2 * h], acc[uu][pg][tl][2 * h + 1]);
            continue;
          }
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const index_t coord = unit_coord(a, u, pg, tl, e, q);
            if (coord < 0) continue;
            float val = acc[uu][pg][tl][2 * h + e];
            if (a.ybase) val += a.ybase[t * a.d + coord];
            if (a.b0) val += a.b0[coord];
            a.y[t * a.yld + coord] = from_float<S>(val);
          }
        }
  }
}

/// y[t][o] = base + b0 + sum over groups of ypart[grp][t][slot(o)].
template <class S>
__global__ void output_finalize(FusedArgs<S> a, int groups, const int* slot_of) {
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < a.T * a.d;
       idx += index_t(gridDim.x) * blockDim.x) {
    const index_t o = idx % a.d, t = idx / a.d;
    float val = 0.f;
    for (int grp = 0; grp < groups; ++grp) val += a.ypart[(index_t(grp) * a.Tpad + t) * 2 * a.Spad + slot_of[o]];
    if (a.ybase) val += a.ybase[t * a.d + o];
    if (a.b0) val += a.b0[o];
    a.y[t * a.yld + o] = from_float<S>(val);
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
