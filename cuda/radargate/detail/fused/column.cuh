// radargate/detail/fused/column.cuh -- the column pass: per column, the reductions over tokens of
// the backward (the rotation part of dB, dbias, dU and dws).
#pragma once

#include "unit.cuh"

namespace radargate {
namespace detail {
namespace gpu {

/// Per column, reductions over tokens. Block: CW column warps x TW token warps (warp = tw * CW + cw);
/// column warp cw owns unit blockIdx.x * CW + cw, token warp tw the token tiles tw, tw + TW, ...;
/// the block handles experts [blockIdx.y * EG, min(N, (blockIdx.y + 1) * EG)).
///   dBrot[i][R][r]    = sum_t dv_ti[R] hs_ti[r]                 (with need_B)
///   dbias[i][plane]   = sum_t dpre_ti[plane]                    (with need_bias)
///   dUTp[grp][kq][pl] = sum_{t, i in group} z_ti[kq] dpre_ti[pl] (with need_U)
///   dwsp[grp][R]      = sum_{t, i in group} dl_ti u_ti[R]       (with need_ws)
/// With FIX the per-warp sums stay in registers and go to shared memory once per expert (dB,
/// dbias) or once per block (dU, dws).
struct ColumnFlags {
  bool need_B = false, need_bias = false, need_U = false, need_ws = false;
  int EG = 1;
  float* dBrot = nullptr;
  float* dbias = nullptr;
  float* dUTp = nullptr;
  float* dwsp = nullptr;
};

template <int CW, int TW>
struct ColumnLayout {
  static constexpr int warps = CW * TW;
  // per warp: dB tiles 4 * RC, dU tiles 2 * KC, dbias tiles 2, dws tiles 4; 32 float4 each
  static __host__ __device__ int tiles(index_t rpad, index_t kpad) {
    return int(4 * (rpad / 16) + 2 * (kpad / 16) + 6);
  }
  static std::size_t smem(index_t rpad, index_t kpad) {
    return std::size_t(warps) * (std::size_t(tiles(rpad, kpad)) * 32 * sizeof(float4) + 128 * sizeof(float));
  }
};

template <class S, int CW, int TW, bool FIX>
__global__ void __launch_bounds__(CW* TW * 32, 2) column_pass(FusedArgs<S> a, ColumnFlags f) {
  using W = Warp<S>;
  using L = ColumnLayout<CW, TW>;
  extern __shared__ float4 sm4[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int tw = warp / CW, cw = warp % CW;
  const int RC = int(a.rpad / 16), KC = int(a.kpad / 16);
  const int NTL = L::tiles(a.rpad, a.kpad);
  float4* acc = sm4 + index_t(warp) * NTL * 32;
  float4* accB = acc;                 // [pg * 2 + tile][RC]
  float4* accU = acc + 4 * RC * 32;   // [pg][KC]
  float4* accb = accU + 2 * KC * 32;  // [pg]
  float4* accw = accb + 2 * 32;       // [pg * 2 + tile]
  float* scratch = reinterpret_cast<float*>(sm4 + index_t(L::warps) * NTL * 32) + warp * 128;
  const index_t u = index_t(blockIdx.x) * CW + cw;
  const bool active = u < a.units;
  const int i_begin = int(blockIdx.y) * f.EG, i_end = min(int(a.N), i_begin + f.EG);
  const index_t ntiles = (a.T + 15) / 16;
  for (int nt = 0; nt < NTL; ++nt) acc[nt * 32 + lane] = make_float4(0.f, 0.f, 0.f, 0.f);
  // FIX: register sums (RC = KC = 1).
  float rB[4][4], rU[2][4], rb[2][4], rw[4][4];
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      rB[n][c] = rw[n][c] = 0.f;
      if (n < 2) rU[n][c] = rb[n][c] = 0.f;
    }

  for (int i = i_begin; i < i_end; ++i) {
    if (active) {
      const S* hsT_i = a.hsT + index_t(i) * a.rpad * a.Tpad;
      const S* zT_i = a.zT ? a.zT + index_t(i) * a.kpad * a.Tpad : nullptr;
      for (index_t tt = tw; tt < ntiles; tt += TW) {
        const index_t t0 = tt * 16;
        float gw[2] = {a.g[(t0 + g) * a.N + i], a.g[(t0 + g + 8) * a.N + i]};
        float dlw[2] = {a.dl ? a.dl[(t0 + g) * a.N + i] : 0.f, a.dl ? a.dl[(t0 + g + 8) * a.N + i] : 0.f};
        if (!__any_sync(0xffffffffu, gw[0] != 0.f || gw[1] != 0.f || dlw[0] != 0.f || dlw[1] != 0.f)) continue;
        float v[2][2][4], pre[2][4], dv[2][2][4], dpre[2][4];
        UnitRot R;
        Expert<S, FIX> e;
        load_expert(a, i, t0, g, q, e);
        unit_products(a, e, t0, u, g, q, v, pre);
        unit_rotate<S, true>(a, v, pre, R);
        unit_backward(a, t0, u, g, q, gw, dlw, v, R, dv, dpre);
        if (f.need_B) {
          typename W::A ah;
          if (FIX) W::load_a(ah, hsT_i, a.Tpad, 0, 16, t0, g, q);
#pragma unroll
          for (int pg = 0; pg < 2; ++pg)
#pragma unroll
            for (int tl = 0; tl < 2; ++tl) {
              typename W::B bf;
              W::b_from_c(bf, dv[pg][tl], scratch);
              if (FIX) {
                W::mma(rB[pg * 2 + tl], ah, bf);
              } else {
                for (int rc = 0; rc < RC; ++rc) {
                  typename W::A af;
                  W::load_a(af, hsT_i, a.Tpad, index_t(rc) * 16, a.rpad, t0, g, q);
                  float c[4] = {0.f, 0.f, 0.f, 0.f};
                  W::mma(c, af, bf);
                  add4(accB[((pg * 2 + tl) * RC + rc) * 32 + lane], c);
                }
              }
            }
        }
        if (f.need_U) {
          typename W::A az;
          if (FIX) W::load_a(az, zT_i, a.Tpad, 0, 16, t0, g, q);
#pragma unroll
          for (int pg = 0; pg < 2; ++pg) {
            typename W::B bf;
            W::b_from_c(bf, dpre[pg], scratch);
            if (FIX) {
              W::mma(rU[pg], az, bf);
            } else {
              for (int kc = 0; kc < KC; ++kc) {
                typename W::A af;
                W::load_a(af, zT_i, a.Tpad, index_t(kc) * 16, a.kpad, t0, g, q);
                float c[4] = {0.f, 0.f, 0.f, 0.f};
                W::mma(c, af, bf);
                add4(accU[(pg * KC + kc) * 32 + lane], c);
              }
            }
          }
        }
        if (f.need_bias) {
#pragma unroll
          for (int pg = 0; pg < 2; ++pg) {
            if (FIX) {
#pragma unroll
              for (int c = 0; c < 4; ++c) rb[pg][c] += dpre[pg][c];
            } else {
              add4(accb[pg * 32 + lane], dpre[pg]);
            }
          }
        }
        if (f.need_ws) {
#pragma unroll
          for (int pg = 0; pg < 2; ++pg)
#pragma unroll
            for (int tl = 0; tl < 2; ++tl) {
              const float c[4] = {dlw[0] * v[pg][tl][0], dlw[0] * v[pg][tl][1], dlw[1] * v[pg][tl][2],
                                  dlw[1] * v[pg][tl][3]};
              if (FIX) {
#pragma unroll
                for (int k = 0; k < 4; ++k) rw[pg * 2 + tl][k] += c[k];
              } else {
                add4(accw[(pg * 2 + tl) * 32 + lane], c);
              }
            }
        }
      }
      if (FIX) {
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          accB[n * 32 + lane] = make_float4(rB[n][0], rB[n][1], rB[n][2], rB[n][3]);
#pragma unroll
          for (int c = 0; c < 4; ++c) rB[n][c] = 0.f;
        }
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          accb[n * 32 + lane] = make_float4(rb[n][0], rb[n][1], rb[n][2], rb[n][3]);
#pragma unroll
          for (int c = 0; c < 4; ++c) rb[n][c] = 0.f;
        }
      }
    }
    __syncthreads();
    // Expert i is complete: add the token warps of each column warp and write dB_i and dbias_i.
    if (f.need_B) {
      const int per_cw = 4 * RC * 32;
      for (int idx = threadIdx.x; idx < CW * per_cw; idx += blockDim.x) {
        const int c2 = idx / per_cw, rem = idx % per_cw, tile = rem / 32, ln = rem % 32;
        const index_t uu = index_t(blockIdx.x) * CW + c2;
        if (uu >= a.units) continue;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int t2 = 0; t2 < TW; ++t2) {
          const float4 e = sm4[index_t(t2 * CW + c2) * NTL * 32 + tile * 32 + ln];
          s.x += e.x;
          s.y += e.y;
          s.z += e.z;
          s.w += e.w;
        }
        const int pgtl = tile / RC, rc = tile % RC;
        const index_t row = 32 * uu + 16 * (pgtl >> 1) + 8 * (pgtl & 1) + 2 * (ln & 3);
        const index_t r0 = index_t(rc) * 16 + (ln >> 2);
        float* o = f.dBrot + (index_t(i) * 2 * a.Spad + row) * a.rpad + r0;
        o[0] = s.x;           // (r0, row)
        o[a.rpad] = s.y;      // (r0, row + 1)
        o[8] = s.z;           // (r0 + 8, row)
        o[a.rpad + 8] = s.w;  // (r0 + 8, row + 1)
      }
    }
    if (f.need_bias) {
      for (int idx = threadIdx.x; idx < CW * 16; idx += blockDim.x) {
        const int c2 = idx / 16, pg = (idx / 8) & 1, qq = (idx / 2) & 3, e = idx & 1;
        const index_t uu = index_t(blockIdx.x) * CW + c2;
        if (uu >= a.units) continue;
        float s = 0.f;
        for (int t2 = 0; t2 < TW; ++t2)
          for (int gg = 0; gg < 8; ++gg) {
            const float4 v4 = sm4[index_t(t2 * CW + c2) * NTL * 32 + (4 * RC + 2 * KC + pg) * 32 + gg * 4 + qq];
            s += e ? v4.y + v4.w : v4.x + v4.z;
          }
        f.dbias[index_t(i) * a.Spad + 16 * uu + 8 * pg + 2 * qq + e] = s;
      }
    }
    __syncthreads();
    for (int nt = 0; nt < 4 * RC; ++nt) accB[nt * 32 + lane] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int nt = 0; nt < 2; ++nt) accb[nt * 32 + lane] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if (FIX) {
#pragma unroll
    for (int n = 0; n < 2; ++n)
      if (KC) accU[n * 32 + lane] = make_float4(rU[n][0], rU[n][1], rU[n][2], rU[n][3]);
#pragma unroll
    for (int n = 0; n < 4; ++n) accw[n * 32 + lane] = make_float4(rw[n][0], rw[n][1], rw[n][2], rw[n][3]);
  }
  __syncthreads();
  // Partial sums over this block's experts of dU^T and dws.
  if (f.need_U) {
    const int per_cw = 2 * KC * 32;
    for (int idx = threadIdx.x; idx < CW * per_cw; idx += blockDim.x) {
      const int c2 = idx / per_cw, rem = idx % per_cw, tile = rem / 32, ln = rem % 32;
      const index_t uu = index_t(blockIdx.x) * CW + c2;
      if (uu >= a.units) continue;
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int t2 = 0; t2 < TW; ++t2) {
        const float4 e = sm4[index_t(t2 * CW + c2) * NTL * 32 + (4 * RC + tile) * 32 + ln];
        s.x += e.x;
        s.y += e.y;
        s.z += e.z;
        s.w += e.w;
      }
      const int pg = tile / KC, kc = tile % KC;
      const index_t plane = 16 * uu + 8 * pg + 2 * (ln & 3);
      const index_t k0 = index_t(kc) * 16 + (ln >> 2);
      float* o = f.dUTp + (index_t(blockIdx.y) * a.kpad + k0) * a.Spad + plane;
      o[0] = s.x;
      o[1] = s.y;
      o[8 * a.Spad] = s.z;
      o[8 * a.Spad + 1] = s.w;
    }
  }
  if (f.need_ws) {
    for (int idx = threadIdx.x; idx < CW * 32; idx += blockDim.x) {
      const int c2 = idx / 32, pgtl = (idx / 8) & 3, qq = (idx / 2) & 3, e = idx & 1;
      const index_t uu = index_t(blockIdx.x) * CW + c2;
      if (uu >= a.units) continue;
      float s = 0.f;
      for (int t2 = 0; t2 < TW; ++t2)
        for (int gg = 0; gg < 8; ++gg) {
          const float4 v4 = sm4[index_t(t2 * CW + c2) * NTL * 32 + (4 * RC + 2 * KC + 2 + pgtl) * 32 + gg * 4 + qq];
          s += e ? v4.y + v4.w : v4.x + v4.z;
        }
      f.dwsp[index_t(blockIdx.y) * 2 * a.Spad + 32 * uu + 8 * pgtl + 2 * qq + e] = s;
    }
  }
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
