// radargate/detail/fused/unit.cuh -- the unit of work every fused pass shares: the arguments, the
// slot-row layout, and one warp's recomputation of u for 16 tokens, one expert and one unit of 16
// pair slots (v = hs B^T, pre = z U^T + bias, the bounded rotation) and its backward (du, dv, dpre).
// docs/MATH.md gives the rotation, the angle bound and their derivatives; ../fused.cuh the layout.
#pragma once

#include <radargate/detail/math.hpp>

#include "../support.cuh"
#include "../warp_tile.cuh"

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

/// s += c, entry by entry (accumulator tiles kept in shared memory).
__device__ __forceinline__ void add4(float4& s, const float c[4]) {
  s.x += c[0];
  s.y += c[1];
  s.z += c[2];
  s.w += c[3];
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
