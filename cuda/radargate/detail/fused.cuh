// radargate/detail/fused.cuh -- the fused kernels: expand, rotate, gate and sum per output tile,
// and their backward, with no [T, N, d] tensor in global memory.
//
// Work unit: a warp, 16 tokens, one expert i, one "unit" of 16 pair slots (32 coordinates). A unit
// is two plane groups of 8 slots; a plane group is two 16x8 accumulator tiles, A holding the even
// slots and B the odd ones, so lane (g, q) holds both coordinates of slot 2q (tile A) and 2q+1
// (tile B) for tokens g and g+8 -- the rotation of a pair never leaves a lane. In one unit:
//
//   v   = hs_i Bp_i^T              two 16x8 tiles per plane group, k over the rank r
//   pre = z_i Up^T + bias_i        one 16x8 tile per plane group, k over the angle rank k
//   (c, s, dalpha/dpre) = bound_sincos(pre)          u = rotate_pair(c, s, v)
//
// hs_i = s_i A_i x (rank space, from the shrink GEMM) and z_i = Wx x + (Wv B_i) hs_i + sum_j m_ij
// (Wc B_j) hs_j (rank-space angle generation) are per-token inputs of size r and k. Slot row
// R = 32 u + 16 pg + 8 tile + n holds plane 16 u + 8 pg + 2 (n / 2) + tile, side n % 2, i.e.
// coordinate slot_coord(pairing, plane, side, d); slots past P have zero U rows and bias, so angle 0.
//
// Passes (each recomputes u from hs, z; none stores it):
//   output  y = base + sum_i g_i u_i                               tile of tokens x columns
//   dot     p_ti = w . u_ti, w = ws (stretch logits) or dy_t (gate backward), per column block
//   token   per token: dz_ti = U^T dpre_ti, bdu_ti = B_i^T R_i^T du_ti (reductions over d)
//   column  per column: dB_i = sum_t dv_ti hs_ti^T, dU = sum dpre z^T, dbias, dws (over tokens)
// with du_ti = g_ti dy_t (+ dl_ti ws for the stretch gate), dv = R^T du and
// dpre = dalpha/dpre * rotation_angle_grad(du, u).
#pragma once

#include <radargate/detail/math.hpp>

#include "support.cuh"
#include "warp_tile.cuh"

namespace radargate {
namespace detail {
namespace gpu {

template <class S>
struct FusedArgs {
  index_t T = 0, Tpad = 0, N = 0, d = 0, rpad = 0, kpad = 0, Spad = 0, units = 0;
  Pairing pairing = Pairing::adjacent;
  Bound bound = Bound::pi_tanh;
  bool rot = false;
  int EG = 1;                   // experts per blockIdx.z (output and dot passes)
  const S* hs = nullptr;        // [Tpad][N][rpad]
  const S* z = nullptr;         // [Tpad][N][kpad]
  const S* hsT = nullptr;       // [N][rpad][Tpad]
  const S* zT = nullptr;        // [N][kpad][Tpad]
  const S* Bp = nullptr;        // [N][2 Spad][rpad]   slot rows
  const S* BpT = nullptr;       // [N][rpad][2 Spad]
  const S* Up = nullptr;        // [Spad][kpad]
  const S* UpT = nullptr;       // [kpad][Spad]
  const float* bias = nullptr;  // [N][Spad]
  const float* ws = nullptr;    // [2 Spad] slot rows, or null
  const float* g = nullptr;     // [Tpad][N]
  const float* dl = nullptr;    // [Tpad][N] or null
  const S* dyp = nullptr;       // [Tpad][2 Spad] dy in slot rows (zero past T and for empty slots)
  S* y = nullptr;               // [T][d], row stride yld
  index_t yld = 0;
  const float* ybase = nullptr;  // [T][d] or null
  const float* b0 = nullptr;     // [d] or null
  float* ypart = nullptr;        // [gridDim.z][Tpad][2 Spad] when the experts are split
  float* part = nullptr;         // pass output
};

/// Plane and side of slot row R.
__host__ __device__ __forceinline__ void slot_row_plane(index_t R, index_t& plane, int& side) {
  const index_t u = R >> 5;
  const int w = int(R & 31), pg = w >> 4, tile = (w >> 3) & 1, n = w & 7;
  plane = 16 * u + 8 * pg + 2 * (n >> 1) + tile;
  side = n & 1;
}

__device__ __forceinline__ void load_pair(const float* p, float& x, float& y) {
  const float2 v = *reinterpret_cast<const float2*>(p);
  x = v.x;
  y = v.y;
}
__device__ __forceinline__ void load_pair(const __nv_bfloat16* p, float& x, float& y) {
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(p);
  x = __low2float(v);
  y = __high2float(v);
}
__device__ __forceinline__ void load_pair(const __half* p, float& x, float& y) {
  const __half2 v = *reinterpret_cast<const __half2*>(p);
  x = __low2float(v);
  y = __high2float(v);
}

struct UnitRot {
  float c[2][4], s[2][4], dadp[2][4];  // [plane group][pair p = 2 * row + tile]
};

/// One expert's operands for a 16-token tile. With FIX (rpad == 16, kpad <= 16) the rank-space
/// fragments of hs and z are loaded once per expert and held in registers.
template <class S, bool FIX>
struct Expert {
  using W = Warp<S>;
  const S* Bp;
  const float* bias;
  const S* hs;
  const S* z;
  typename W::A fh, fz;
};

template <class S, bool FIX>
__device__ __forceinline__ void load_expert(const FusedArgs<S>& a, int i, index_t t0, int g, int q, Expert<S, FIX>& e) {
  using W = Warp<S>;
  e.Bp = a.Bp + index_t(i) * 2 * a.Spad * a.rpad;
  e.bias = a.rot ? a.bias + index_t(i) * a.Spad : nullptr;
  e.hs = a.hs + i * a.rpad;
  e.z = a.rot ? a.z + i * a.kpad : nullptr;
  if (FIX) {
    W::load_a(e.fh, e.hs, a.N * 16, t0, a.Tpad, 0, g, q);
    if (a.rot) W::load_a(e.fz, e.z, a.N * 16, t0, a.Tpad, 0, g, q);
  }
}

/// v[pg][tile][4] = hs B^T for one unit, and (rotating) pre[pg][4] = z U^T + bias.
template <class S, bool FIX>
__device__ __forceinline__ void unit_products(const FusedArgs<S>& a, const Expert<S, FIX>& e, index_t t0, index_t u,
                                              int g, int q, float v[2][2][4], float pre[2][4]) {
  using W = Warp<S>;
#pragma unroll
  for (int pg = 0; pg < 2; ++pg)
#pragma unroll
    for (int tl = 0; tl < 2; ++tl)
#pragma unroll
      for (int c = 0; c < 4; ++c) v[pg][tl][c] = 0.f;
  if (FIX) {
#pragma unroll
    for (int pg = 0; pg < 2; ++pg)
#pragma unroll
      for (int tl = 0; tl < 2; ++tl) {
        typename W::B bf;
        W::load_b(bf, e.Bp, 16, 32 * u + 16 * pg + 8 * tl, 0, g, q);
        W::mma(v[pg][tl], e.fh, bf);
      }
  } else {
    for (index_t kc = 0; kc < a.rpad; kc += 16) {
      typename W::A af;
      W::load_a(af, e.hs, a.N * a.rpad, t0, a.Tpad, kc, g, q);
#pragma unroll
      for (int pg = 0; pg < 2; ++pg)
#pragma unroll
        for (int tl = 0; tl < 2; ++tl) {
          typename W::B bf;
          W::load_b(bf, e.Bp, a.rpad, 32 * u + 16 * pg + 8 * tl, kc, g, q);
          W::mma(v[pg][tl], af, bf);
        }
    }
  }
  if (!a.rot) return;
#pragma unroll
  for (int pg = 0; pg < 2; ++pg) {
    float b0, b1;
    load_pair(e.bias + 16 * u + 8 * pg + 2 * q, b0, b1);
    pre[pg][0] = pre[pg][2] = b0;
    pre[pg][1] = pre[pg][3] = b1;
  }
  if (FIX) {
#pragma unroll
    for (int pg = 0; pg < 2; ++pg) {
      typename W::B bf;
      W::load_b(bf, a.Up, 16, 16 * u + 8 * pg, 0, g, q);
      W::mma(pre[pg], e.fz, bf);
    }
  } else {
    for (index_t kc = 0; kc < a.kpad; kc += 16) {
      typename W::A af;
      W::load_a(af, e.z, a.N * a.kpad, t0, a.Tpad, kc, g, q);
#pragma unroll
      for (int pg = 0; pg < 2; ++pg) {
        typename W::B bf;
        W::load_b(bf, a.Up, a.kpad, 16 * u + 8 * pg, kc, g, q);
        W::mma(pre[pg], af, bf);
      }
    }
  }
}

/// u = R(bound(pre)) v in place; with GRAD also keeps c, s and dalpha/dpre.
template <class S, bool PITANH, bool GRAD>
__device__ __forceinline__ void unit_rotate_b(float v[2][2][4], const float pre[2][4], UnitRot& R) {
#pragma unroll
  for (int pg = 0; pg < 2; ++pg)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      float c, s, dadp;
      bounded_sincos<storage<S>::fast_math, PITANH>(pre[pg][p], c, s, dadp);
      if (GRAD) {
        R.c[pg][p] = c;
        R.s[pg][p] = s;
        R.dadp[pg][p] = dadp;
      }
      rotate_pair(c, s, v[pg][p & 1][2 * (p >> 1)], v[pg][p & 1][2 * (p >> 1) + 1]);
    }
}
template <class S, bool GRAD>
__device__ __forceinline__ void unit_rotate(const FusedArgs<S>& a, float v[2][2][4], const float pre[2][4],
                                            UnitRot& R) {
  if (!a.rot) return;
  if (a.bound == Bound::pi_tanh)
    unit_rotate_b<S, true, GRAD>(v, pre, R);
  else
    unit_rotate_b<S, false, GRAD>(v, pre, R);
}

/// du = g dy (+ dl ws), then dv = R^T du and dpre = dalpha/dpre * (du_b u_a - du_a u_b).
template <class S>
__device__ __forceinline__ void unit_backward(const FusedArgs<S>& a, index_t t0, index_t u, int g, int q,
                                              const float gw[2], const float dlw[2], const float v[2][2][4],
                                              const UnitRot& R, float dv[2][2][4], float dpre[2][4]) {
  const index_t S2 = 2 * a.Spad;
#pragma unroll
  for (int pg = 0; pg < 2; ++pg)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int tl = p & 1, h = p >> 1;
      const index_t R0 = 32 * u + 16 * pg + 8 * tl + 2 * q;
      float du0, du1;
      load_pair(a.dyp + (t0 + g + 8 * h) * S2 + R0, du0, du1);
      du0 *= gw[h];
      du1 *= gw[h];
      if (a.ws) {
        float w0, w1;
        load_pair(a.ws + R0, w0, w1);
        du0 += dlw[h] * w0;
        du1 += dlw[h] * w1;
      }
      if (a.rot) {
        dpre[pg][p] = R.dadp[pg][p] * rotation_angle_grad(du0, du1, v[pg][tl][2 * h], v[pg][tl][2 * h + 1]);
        rotate_pair_transpose(R.c[pg][p], R.s[pg][p], du0, du1);
      } else {
        dpre[pg][p] = 0.f;
      }
      dv[pg][tl][2 * h] = du0;
      dv[pg][tl][2 * h + 1] = du1;
    }
}

/// Coordinate of entry (tile, c) of plane group pg of unit u for lane q, or -1.
template <class S>
__device__ __forceinline__ index_t unit_coord(const FusedArgs<S>& a, index_t u, int pg, int tl, int c, int q) {
  return slot_coord(a.pairing, 16 * u + 8 * pg + 2 * q + tl, c & 1, a.d);
}

// --- output pass ----------------------------------------------------------------------------------
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

/// dyp[t][R] = dy[t][coord(R)] (zero past T and for empty slots).
template <class S>
__global__ void permute_dy(const S* dy, index_t ld, index_t T, index_t Tpad, index_t Spad, index_t d, Pairing pairing,
                           S* dyp) {
  const index_t S2 = 2 * Spad;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < Tpad * S2;
       idx += index_t(gridDim.x) * blockDim.x) {
    const index_t R = idx % S2, t = idx / S2;
    index_t plane;
    int side;
    slot_row_plane(R, plane, side);
    const index_t c = slot_coord(pairing, plane, side, d);
    dyp[idx] = (t < T && c >= 0) ? dy[t * ld + c] : from_float<S>(0.f);
  }
}

// --- dot pass -------------------------------------------------------------------------------------
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

// --- token pass -----------------------------------------------------------------------------------
/// Per token and expert, reductions over the coordinates: dz (kpad values, with need_dz) and
/// bdu = B_i^T R_i^T du (rpad values). Block: WT x WC warps, warp (wt, wc) owns 16 tokens and the
/// units wc + WC * blockIdx.y + j * WC * gridDim.y. Per expert the WC partial sums are added in
/// shared memory in a fixed order and written to part[cb][t][i][kpad + rpad], cb = blockIdx.y.
/// With FIX the per-warp sums stay in registers until the expert is done.
/// Dynamic shared memory: token_pass_smem(WT * WC, kpad, rpad).
inline std::size_t token_pass_smem(int warps, index_t kpad, index_t rpad) {
  return std::size_t(warps) * ((kpad + rpad) / 8 * 32 * sizeof(float4) + 256 * sizeof(float));
}

__device__ __forceinline__ void add4(float4& s, const float c[4]) {
  s.x += c[0];
  s.y += c[1];
  s.z += c[2];
  s.w += c[3];
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

// --- column pass ----------------------------------------------------------------------------------
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
