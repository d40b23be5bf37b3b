// radargate/detail/cpu_kernels.hpp -- the fused tile kernels of the cpu backend: one token, one
// expert, one tile of output slots (see cpu_weights.hpp for slot space).
//
// Rotation tile, planes m of the tile, W planes per SIMD step (a = slot m, b = slot Ppad + m):
//   v_a = sum_q BT[q, a] hs_q,  v_b likewise                 (expand; hs = s_i h_i)
//   pre = bias_i[m] + sum_q UT[q, m] z_q,  alpha = bound(pre)  (angle, from rank space)
//   (u_a, u_b) = rotate(cos alpha, sin alpha, v_a, v_b)
//   forward:   y += g u   and/or   l += w . u                (w = ws, or dy for dL/dg)
//   backward:  du = g dy + dl ws
//              dalpha = du_b u_a - du_a u_b,  dpre = dalpha bound'(pre)
//              dv = rotate^T(du),  e_q += BT[q, .] . dv,  dBT[q, .] += hs_q dv
//              dz_q += UT[q, .] . dpre,  dUT[q, .] += z_q dpre,  dbias_i += dpre,  dws += dl u
// Pass-through tile: the same with u = v and no angle.
//
// Nothing of size d outlives one tile: the expert outputs u are recomputed wherever they are
// needed, never stored for the whole layer.
#pragma once

#include "cpu_simd.hpp"
#include "cpu_weights.hpp"
#include "math.hpp"

namespace radargate {
namespace detail {
namespace kernels {

using simd::batch;
using simd::hsum;
using simd::load;
using simd::store;

template <class S>
struct Args {
  const S* BT = nullptr;  // [N, r, dpad]
  index_t dpad = 0, r = 0;
  const S* UT = nullptr;  // [k, Ppad]
  index_t Ppad = 0, k = 0;
  const S* ws = nullptr;  // [dpad]
  Bound bound = Bound::pi_tanh;
};

/// Both halves of a rotation tile expanded with one broadcast of each hs_q.
template <class S>
RG_INLINE void expand2(const S* pa, const S* pb, index_t dpad, const S* hs, index_t r, batch<S>& va,
                       batch<S>& vb) {
  va = batch<S>(S(0));
  vb = batch<S>(S(0));
  for (index_t q = 0; q < r; ++q, pa += dpad, pb += dpad) {
    const batch<S> hq(hs[q]);
    va = xsimd::fma(load(pa), hq, va);
    vb = xsimd::fma(load(pb), hq, vb);
  }
}

template <class S>
RG_INLINE batch<S> expand1(const S* p, index_t dpad, const S* hs, index_t r) {
  batch<S> v(S(0));
  for (index_t q = 0; q < r; ++q, p += dpad) v = xsimd::fma(load(p), batch<S>(hs[q]), v);
  return v;
}

/// pre = bias + sum_q UT[q, .] z_q over W planes.
template <class S>
RG_INLINE batch<S> pre_activation(const S* bias, const S* ut, index_t Ppad, const S* z, index_t k) {
  batch<S> pre = load(bias);
  for (index_t q = 0; q < k; ++q, ut += Ppad) pre = xsimd::fma(load(ut), batch<S>(z[q]), pre);
  return pre;
}

/// Forward over a rotation tile for one (token, expert). Out: (ya, yb) += g u. Dot: returns
/// (wa, wb) . u. Buffers ya, yb, wa, wb are indexed from the tile's first plane.
template <class S, bool Out, bool Dot>
S rot_forward(const Args<S>& K, const Tile& tl, const S* BTi, const S* hs, const S* z, const S* bias_i, S g,
              const S* wa, const S* wb, S* ya, S* yb) {
  constexpr index_t W = simd::width<S>();
  const batch<S> gb(g);
  batch<S> acc(S(0));
  const S* pa = BTi + tl.a0;
  const S* pb = BTi + tl.b0;
  const S* ut = K.UT + tl.a0;
  const S* bi = bias_i + tl.a0;
  for (index_t j = 0; j < tl.len; j += W) {
    batch<S> va, vb, alpha, c, s;
    expand2(pa + j, pb + j, K.dpad, hs, K.r, va, vb);
    simd::angle_cos_sin(K.bound, pre_activation(bi + j, ut + j, K.Ppad, z, K.k), alpha, c, s);
    rotate_pair(c, s, va, vb);
    if (Out) {
      store(ya + j, xsimd::fma(gb, va, load(ya + j)));
      store(yb + j, xsimd::fma(gb, vb, load(yb + j)));
    }
    if (Dot) {
      acc = xsimd::fma(load(wa + j), va, acc);
      acc = xsimd::fma(load(wb + j), vb, acc);
    }
  }
  return Dot ? hsum(acc) : S(0);
}

/// Forward over a pass-through tile for one (token, expert): y += g v and/or returns w . v.
template <class S, bool Out, bool Dot>
S pass_forward(const Args<S>& K, const Tile& tl, const S* BTi, const S* hs, S g, const S* w, S* y) {
  constexpr index_t W = simd::width<S>();
  const batch<S> gb(g);
  batch<S> acc(S(0));
  const S* p = BTi + tl.a0;
  for (index_t j = 0; j < tl.len; j += W) {
    const batch<S> v = expand1(p + j, K.dpad, hs, K.r);
    if (Out) store(y + j, xsimd::fma(gb, v, load(y + j)));
    if (Dot) acc = xsimd::fma(load(w + j), v, acc);
  }
  return Dot ? hsum(acc) : S(0);
}

/// Which parts of the backward tile work are needed.
struct BwdWant {
  bool dg = false;     // dL/dg_i = dy . u_i (gates that do not read the experts)
  bool dpre = false;   // anything downstream of the angles
  bool dbias = false;  // angle.bias
  bool dU = false;     // angle.U
  bool dz = false;     // dL/dz_i (angle generator, map, and v through rank space)
  bool dws = false;    // stretch.ws
  bool dv = false;     // dL/dv_i through the rotation
  bool e = false;      // B_i^T dv_i (for x, A, scale)
  bool dB = false;     // lora.B
};

/// Where the backward tile work of one (token, expert) goes. Partial sums are per thread.
template <class S>
struct BwdOut {
  S* dbias_i = nullptr;  // [Ppad], row i of the partial dbias
  S* dUT = nullptr;      // [k, Ppad]
  S* dws = nullptr;      // [dpad]
  S* dBTi = nullptr;     // [r, dpad], expert i of the partial dBT
  S* e = nullptr;        // [r]
  S* dz = nullptr;       // [k]
  S* dg = nullptr;       // scalar
  // tile scratch, max tile length each
  S* dva = nullptr;
  S* dvb = nullptr;
  S* dpre = nullptr;
};

template <class S>
RG_INLINE void rank_update(const Args<S>& K, const Tile& tl, bool two, const S* BTi, const S* hs, const BwdWant& want,
                           const BwdOut<S>& o) {
  constexpr index_t W = simd::width<S>();
  for (index_t q = 0; q < K.r; ++q) {
    const S* ba = BTi + q * K.dpad + tl.a0;
    const S* bb = BTi + q * K.dpad + tl.b0;
    S* da = o.dBTi ? o.dBTi + q * K.dpad + tl.a0 : nullptr;
    S* db = o.dBTi ? o.dBTi + q * K.dpad + tl.b0 : nullptr;
    const batch<S> hq(hs[q]);
    batch<S> acc(S(0));
    for (index_t j = 0; j < tl.len; j += W) {
      const batch<S> x = load(o.dva + j);
      if (want.e) acc = xsimd::fma(load(ba + j), x, acc);
      if (want.dB) store(da + j, xsimd::fma(hq, x, load(da + j)));
      if (two) {
        const batch<S> y = load(o.dvb + j);
        if (want.e) acc = xsimd::fma(load(bb + j), y, acc);
        if (want.dB) store(db + j, xsimd::fma(hq, y, load(db + j)));
      }
    }
    if (want.e) o.e[q] += hsum(acc);
  }
}

/// Backward over a rotation tile for one (token, expert). dya, dyb: dy on the tile's slots.
template <class S>
void rot_backward(const Args<S>& K, const Tile& tl, const S* BTi, const S* hs, const S* z, const S* bias_i, S g,
                  S dl, const S* dya, const S* dyb, const BwdWant& want, const BwdOut<S>& o) {
  constexpr index_t W = simd::width<S>();
  const batch<S> gb(g), dlb(dl);
  batch<S> dgacc(S(0));
  const S* pa = BTi + tl.a0;
  const S* pb = BTi + tl.b0;
  const S* ut = K.UT + tl.a0;
  const S* bi = bias_i + tl.a0;
  const S* wsa = K.ws + tl.a0;
  const S* wsb = K.ws + tl.b0;
  for (index_t j = 0; j < tl.len; j += W) {
    batch<S> ua, ub, alpha, c, s;
    expand2(pa + j, pb + j, K.dpad, hs, K.r, ua, ub);
    simd::angle_cos_sin(K.bound, pre_activation(bi + j, ut + j, K.Ppad, z, K.k), alpha, c, s);
    rotate_pair(c, s, ua, ub);
    const batch<S> ya = load(dya + j), yb = load(dyb + j);
    if (want.dg) dgacc = xsimd::fma(ya, ua, xsimd::fma(yb, ub, dgacc));
    batch<S> dua = xsimd::fma(dlb, load(wsa + j), gb * ya);
    batch<S> dub = xsimd::fma(dlb, load(wsb + j), gb * yb);
    if (want.dpre) {
      const batch<S> dpre = rotation_angle_grad(dua, dub, ua, ub) * bound_derivative_from_value(K.bound, alpha);
      store(o.dpre + j, dpre);
      if (want.dbias) store(o.dbias_i + tl.a0 + j, load(o.dbias_i + tl.a0 + j) + dpre);
    }
    if (want.dws) {
      store(o.dws + tl.a0 + j, xsimd::fma(dlb, ua, load(o.dws + tl.a0 + j)));
      store(o.dws + tl.b0 + j, xsimd::fma(dlb, ub, load(o.dws + tl.b0 + j)));
    }
    if (want.dv) {
      rotate_pair_transpose(c, s, dua, dub);
      store(o.dva + j, dua);
      store(o.dvb + j, dub);
    }
  }
  if (want.dg) *o.dg += hsum(dgacc);
  if (want.dv) rank_update(K, tl, true, BTi, hs, want, o);
  if (want.dz || want.dU)
    for (index_t q = 0; q < K.k; ++q) {
      const S* u = K.UT + q * K.Ppad + tl.a0;
      S* du = o.dUT ? o.dUT + q * K.Ppad + tl.a0 : nullptr;
      const batch<S> zq(z[q]);
      batch<S> acc(S(0));
      for (index_t j = 0; j < tl.len; j += W) {
        const batch<S> x = load(o.dpre + j);
        if (want.dz) acc = xsimd::fma(load(u + j), x, acc);
        if (want.dU) store(du + j, xsimd::fma(zq, x, load(du + j)));
      }
      if (want.dz) o.dz[q] += hsum(acc);
    }
}

/// Backward over a pass-through tile for one (token, expert). dy: dy on the tile's slots.
template <class S>
void pass_backward(const Args<S>& K, const Tile& tl, const S* BTi, const S* hs, S g, S dl, const S* dy,
                   const BwdWant& want, const BwdOut<S>& o) {
  constexpr index_t W = simd::width<S>();
  const batch<S> gb(g), dlb(dl);
  batch<S> dgacc(S(0));
  const S* p = BTi + tl.a0;
  const S* w = K.ws + tl.a0;
  const bool need_v = want.dg || want.dws;
  for (index_t j = 0; j < tl.len; j += W) {
    const batch<S> y = load(dy + j);
    if (need_v) {
      const batch<S> v = expand1(p + j, K.dpad, hs, K.r);
      if (want.dg) dgacc = xsimd::fma(y, v, dgacc);
      if (want.dws) store(o.dws + tl.a0 + j, xsimd::fma(dlb, v, load(o.dws + tl.a0 + j)));
    }
    if (want.dv) store(o.dva + j, xsimd::fma(dlb, load(w + j), gb * y));
  }
  if (want.dg) *o.dg += hsum(dgacc);
  if (want.dv) rank_update(K, tl, false, BTi, hs, want, o);
}

}  // namespace kernels
}  // namespace detail
}  // namespace radargate
