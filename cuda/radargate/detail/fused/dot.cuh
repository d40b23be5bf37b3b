// radargate/detail/fused/dot.cuh -- the dot pass: w . u_ti per token and expert, summed per column
// block (the stretch gate's logits with w = ws, the gate backward's dg with w = dy).
#pragma once

#include "unit.cuh"

namespace radargate {
namespace detail {
namespace gpu {

/// part[cb][t][i] = sum over the columns of column block cb of w . u_ti, with w = ws (with_dy false)
/// or dy_t. cb = blockIdx.y * WC + wc; part has gridDim.y * WC blocks of Tpad x N; blockIdx.z owns
/// experts [z EG, (z + 1) EG).
template <class S, int WT, int WC, int UW, bool FIX>
__global__ void __launch_bounds__(WT* WC * 32) dot_pass(FusedArgs<S> a, bool with_dy, bool skip_unselected) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int wt = warp / WC, wc = warp % WC;
  const index_t t0 = (index_t(blockIdx.x) * WT + wt) * 16;
  if (t0 >= a.T) return;
  const index_t ub = (index_t(blockIdx.y) * WC + wc) * UW;
  const index_t S2 = 2 * a.Spad;
  float* out = a.part + (index_t(blockIdx.y) * WC + wc) * a.Tpad * a.N;
  const int i0 = int(blockIdx.z) * a.EG, i1 = min(int(a.N), i0 + a.EG);
  for (int i = i0; i < i1; ++i) {
    float p0 = 0.f, p1 = 0.f;
    // In the gate backward, with a normalisation whose dl_j carries a factor g_j (softmax, top-k,
    // sigmoid), an expert with g = 0 for every token of the tile has dl = 0 whatever its dot
    // product, so it is skipped. (Not for identity: there dl = dg / tau.)
    const bool skip = skip_unselected &&
                      !__any_sync(0xffffffffu, a.g[(t0 + g) * a.N + i] != 0.f || a.g[(t0 + g + 8) * a.N + i] != 0.f);
    if (!skip) {
      Expert<S, FIX> e;
      load_expert(a, i, t0, g, q, e);
#pragma unroll
      for (int uu = 0; uu < UW; ++uu) {
        const index_t u = ub + uu;
        if (u >= a.units) continue;
        float v[2][2][4], pre[2][4];
        UnitRot R;
        unit_products(a, e, t0, u, g, q, v, pre);
        unit_rotate<S, false>(a, v, pre, R);
#pragma unroll
        for (int pg = 0; pg < 2; ++pg)
#pragma unroll
          for (int tl = 0; tl < 2; ++tl) {
            const index_t R0 = 32 * u + 16 * pg + 8 * tl + 2 * q;
            float w0, w1, w2, w3;
            if (with_dy) {
              load_pair(a.dyp + (t0 + g) * S2 + R0, w0, w1);
              load_pair(a.dyp + (t0 + g + 8) * S2 + R0, w2, w3);
            } else {
              load_pair(a.ws + R0, w0, w1);
              w2 = w0;
              w3 = w1;
            }
            p0 += w0 * v[pg][tl][0] + w1 * v[pg][tl][1];
            p1 += w2 * v[pg][tl][2] + w3 * v[pg][tl][3];
          }
      }
    }
    p0 += __shfl_xor_sync(0xffffffffu, p0, 1);
    p0 += __shfl_xor_sync(0xffffffffu, p0, 2);
    p1 += __shfl_xor_sync(0xffffffffu, p1, 1);
    p1 += __shfl_xor_sync(0xffffffffu, p1, 2);
    if (q == 0) {
      out[(t0 + g) * a.N + i] = p0;
      out[(t0 + g + 8) * a.N + i] = p1;
    }
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
