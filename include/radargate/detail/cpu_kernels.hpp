// radargate/detail/cpu_kernels.hpp -- the fused tile kernels of the cpu backend: one expert, one
// tile of output slots (see cpu_weights.hpp for slot space), a block of up to 4 tokens.
//
// Rotation tile, planes m of the tile, W planes per SIMD step (a = slot m, b = slot Ppad + m):
//   v_a = sum_q B[a, q] hs_q,  v_b likewise                  (expand; hs = s_i h_i)
//   pre = bias_i[m] + sum_q U[m, q] z_q,  alpha = bound(pre)   (angle, from rank space)
//   (u_a, u_b) = rotate(cos alpha, sin alpha, v_a, v_b)
//   forward:   y += g u   and/or   l += w . u                (w = ws, or dy for dL/dg)
//   backward:  du = g dy + dl ws
//              dalpha = du_b u_a - du_a u_b,  dpre = dalpha bound'(pre)
//              dv = rotate^T(du),  e_q += B[., q] . dv,  dB[., q] += hs_q dv
//              dz_q += U[., q] . dpre,  dU[., q] += z_q dpre,  dbias_i += dpre,  dws += dl u
// Pass-through tile: the same with u = v and no angle.
//
// Two ways to use them. Tile-major (every gate but the one-pass stretch path): nothing of size d
// outlives one tile and u is recomputed wherever it is needed. Expert-major (one-pass stretch
// path, cpu.hpp): the forward kernels write u of one expert (Put::set) and, for backward, cos,
// sin and bound' of its planes into buffers of a few rows per token, and the backward kernels
// read them back (Stored) instead of recomputing them. Those buffers hold one expert of one
// group of tokens (Il: interleaved rows, see at), never the [T, N, d] tensor.
//
// Why blocks of tokens: for one token the work of a group of W planes is a chain of dependent
// operations (k FMAs for pre, then tanh, then sin/cos) that is far longer than the time the
// core needs to issue it, so one token at a time is latency-bound. The tokens of a block are
// processed in lock step (simd::Lanes): their chains are independent, each load of B, U and of
// the partial gradients is shared by the block, and the angles of a tile are computed in a
// separate loop whose iterations are independent.
#pragma once

#include "cpu_arch.hpp"

#include <type_traits>

#include "cpu_half.hpp"
#include "cpu_simd.hpp"
#include "cpu_weights.hpp"
#include "math.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {
namespace kernels {

using simd::batch;
using simd::hsum;

/// A value that C tokens of a block use, pinned to a register when C > 1 (simd::in_register);
/// a value used once is left to be folded into its FMA.
template <int C, class B>
RG_INLINE B shared(const B& v) {
  if constexpr (C > 1)
    return simd::in_register(v);
  else
    return v;
}
using simd::load;
using simd::store;

constexpr int max_block = 4;

/// What a forward kernel does with u: nothing, y += g u, or store u.
enum class Put { none, add, set };

template <class S>
struct Args {
  const S* BP = nullptr;  // packed expand weights (CpuWeights::BP)
  index_t r = 0, pass0 = 0;
  const S* UP = nullptr;  // packed U^T (CpuWeights::UP)
  index_t k = 0;
  const S* ws = nullptr;  // [dpad]
  Bound bound = Bound::pi_tanh;
};

/// One expert, one tile, n <= max_block tokens. Per-token pointers index from the tile start.
template <class S>
struct Block {
  int n = 0;
  const S* hs[max_block] = {};   // s_i h_i, [r]
  const S* z[max_block] = {};    // z_i, [k]
  S g[max_block] = {};           // gate weight g_i
  S dl[max_block] = {};          // dL/dl_i (stretch gate; zero otherwise)
  const S* wa[max_block] = {};   // Dot: dotted with u on the a-slots (pass tile: its slots)
  const S* wb[max_block] = {};   //      and on the b-slots
  S* ya[max_block] = {};         // Out: y accumulators, a-slots (pass tile: its slots)
  S* yb[max_block] = {};         //      b-slots
  S dot[max_block] = {};         // Dot: result
  const S* dya[max_block] = {};  // backward: dy on the a-slots (pass tile: its slots)
  const S* dyb[max_block] = {};
  S* e[max_block] = {};         // backward: += B_i^T dv, [r]
  S* dz[max_block] = {};        // backward: += U^T dpre, [k]
  S* dg[max_block] = {};        // backward: += dy . u
  const S* ua[max_block] = {};  // Stored backward: u on the a-slots (pass tile: its slots)
  const S* ub[max_block] = {};  //                  and on the b-slots
  const S* ma[max_block] = {};  // Centered dot: m on the a-slots (pass tile: its slots)
  const S* mb[max_block] = {};  //               and on the b-slots
};

/// Per-thread scratch: cos, sin, dalpha/dpre of the tile's planes, interleaved like kernels::at
/// (plane j of token u at j max_block + u W: [len / W][max_block][W]), and (backward) dv on the
/// a- and b-slots and dpre, one row per token ([max_block][dstride]).
template <class S>
struct Scratch {
  index_t dstride = 0;
  S* cb = nullptr;
  S* sb = nullptr;
  S* db = nullptr;
  S* dva = nullptr;
  S* dvb = nullptr;
  S* dpre = nullptr;
};

/// Where the backward work goes: per-thread partial sums, in the packed layouts of BP and UP.
template <class S>
struct BwdOut {
  S* dbias_i = nullptr;  // [Ppad], row i
  S* dUP = nullptr;      // packed like UP
  S* dws = nullptr;      // [dpad]
  S* dBPi = nullptr;     // expert i, packed like BP
};

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

/// Copies the first C entries of a block's per-token array into a local array. The kernels read
/// pointers, scalars and flags from locals: a vector store may alias any memory, so a value read
/// through a reference inside a loop would be reloaded after every store.
template <int C, class T>
RG_INLINE void take(T (&dst)[C], const T (&src)[max_block]) {
  for (int u = 0; u < C; ++u) dst[u] = src[u];
}

/// Where token u's value at tile offset j is. Plain rows: p[u] + j. Interleaved rows (Il: the
/// rows that the one-pass backward stores between its sweeps): the block's tokens alternate
/// every W values, so token u is at p[0] + u W + j max_block, one pointer for the whole block
/// (four pointers per array would not fit the registers of a block's loop).
template <bool Il, int C, class T>
RG_INLINE T* at(T* const (&p)[C], int u, index_t j) {
  constexpr index_t W = simd::width<typename std::remove_const<T>::type>();
  if constexpr (Il)
    return p[0] + u * W + j * max_block;
  else
    return p[u] + j;
}

/// Calls f(std::integral_constant<int, n>{}) for n in 1..max_block.
template <class F>
RG_INLINE void with_block_size(int n, F&& f) {
  switch (n) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    default:
      f(std::integral_constant<int, 4>{});
      break;
  }
}

/// f(std::bool_constant<b>...) for run-time flags b...: a kernel loop's options as template
/// arguments, so the loop holds no flag registers and no branches.
template <class F>
RG_INLINE void with_flags(F&& f) {
  f();
}
template <class F, class... Rest>
RG_INLINE void with_flags(F&& f, bool first, Rest... rest) {
  auto bind = [&](auto b) { with_flags([&](auto... more) { f(b, more...); }, rest...); };
  if (first)
    bind(std::true_type{});
  else
    bind(std::false_type{});
}

/// First packed group of a rotation tile / a pass-through tile, inside an expert's block.
template <class S>
RG_INLINE index_t rot_base(const Args<S>& K, const Tile& tl) {
  return tl.a0 * 2 * K.r;
}
template <class S>
RG_INLINE index_t pass_base(const Args<S>& K, const Tile& tl) {
  return tl.a0 * K.r;
}

template <class S, int C, Bound Bd>
RG_INLINE void lanes_angles(const simd::Lanes<batch<S>, C>& pre, simd::Lanes<batch<S>, C>& c,
                            simd::Lanes<batch<S>, C>& s, simd::Lanes<batch<S>, C>& d) {
  if constexpr (std::is_same<S, float>::value && Bd == Bound::pi_tanh) {
    simd::pi_tanh_cos_sin(pre, c, s, d);
  } else {
    for (int u = 0; u < C; ++u) simd::angle_cos_sin(Bd, pre.v[u], c.v[u], s.v[u], d.v[u]);
  }
}

/// cos, sin (and dalpha/dpre when deriv) of the tile's planes for the block's tokens. G groups
/// of W planes are done per step, so a block of C tokens still runs C * G chains in lock step
/// (a lone token would otherwise be latency-bound).
template <class S, int C, int G, Bound Bd>
RG_INLINE index_t block_angles_steps(const Args<S>& K, const Tile& tl, const S* bias_i, const Block<S>& b,
                                     const Scratch<S>& sc, bool deriv, index_t j) {
  constexpr index_t W = simd::width<S>();
  constexpr int U = C * G;  // lane u = g * C + token
  const index_t k = K.k;
  for (; j + G * W <= tl.len; j += G * W) {
    const S* up = K.UP + (tl.a0 + j) * k;
    simd::Lanes<batch<S>, U> pre, c, s, d;
    batch<S> odd[U];  // two chains per lane: even and odd q
    for (int g = 0; g < G; ++g) {
      const batch<S> b0 = load(bias_i + tl.a0 + j + g * W);
      for (int u = 0; u < C; ++u) {
        pre.v[g * C + u] = b0;
        odd[g * C + u] = batch<S>(S(0));
      }
    }
    index_t q = 0;
    for (; q + 1 < k; q += 2)
      for (int g = 0; g < G; ++g) {
        const batch<S> u0 = shared<C>(load(up + g * k * W + q * W));
        const batch<S> u1 = shared<C>(load(up + g * k * W + (q + 1) * W));
        for (int u = 0; u < C; ++u) {
          pre.v[g * C + u] = simd::fma(u0, batch<S>(b.z[u][q]), pre.v[g * C + u]);
          odd[g * C + u] = simd::fma(u1, batch<S>(b.z[u][q + 1]), odd[g * C + u]);
        }
      }
    if (q < k)
      for (int g = 0; g < G; ++g) {
        const batch<S> u0 = load(up + g * k * W + q * W);
        for (int u = 0; u < C; ++u) pre.v[g * C + u] = simd::fma(u0, batch<S>(b.z[u][q]), pre.v[g * C + u]);
      }
    for (int u = 0; u < U; ++u) pre.v[u] += odd[u];
    lanes_angles<S, U, Bd>(pre, c, s, d);
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < C; ++u) {
        const index_t at = (j + g * W) * max_block + u * W;  // interleaved (see Scratch)
        store(sc.cb + at, c.v[g * C + u]);
        store(sc.sb + at, s.v[g * C + u]);
        if (deriv) store(sc.db + at, d.v[g * C + u]);
      }
  }
  return j;
}

template <class S, int C, Bound Bd>
void block_angles_bound(const Args<S>& K, const Tile& tl, const S* bias_i, const Block<S>& b, const Scratch<S>& sc,
                        bool deriv) {
  constexpr int G = C >= 4 ? 1 : 4 / C;
  index_t j = block_angles_steps<S, C, G, Bd>(K, tl, bias_i, b, sc, deriv, 0);
  if (G > 1) block_angles_steps<S, C, 1, Bd>(K, tl, bias_i, b, sc, deriv, j);
}

template <class S, int C>
RG_INLINE void block_angles(const Args<S>& K, const Tile& tl, const S* bias_i, const Block<S>& b, const Scratch<S>& sc,
                            bool deriv) {
  if (K.bound == Bound::pi_tanh)
    block_angles_bound<S, C, Bound::pi_tanh>(K, tl, bias_i, b, sc, deriv);
  else
    block_angles_bound<S, C, Bound::none>(K, tl, bias_i, b, sc, deriv);
}

/// v of the block's tokens on one packed group ([r][W] at p, and the b-half at p + r W).
/// p: the expand weights as stored (S, or bf16 / f16 widened to float on load).
template <class S, int C, bool Two, class WB>
RG_INLINE void block_expand(const WB* p, index_t r, const Block<S>& b, batch<S>* va, batch<S>* vb) {
  constexpr index_t W = simd::width<S>();
  const S* hs[C];
  take<C>(hs, b.hs);
  for (int u = 0; u < C; ++u) {
    va[u] = batch<S>(S(0));
    if (Two) vb[u] = batch<S>(S(0));
  }
  for (index_t q = 0; q < r; ++q) {
    const batch<S> a = shared<C>(simd::load_w(p + q * W));
    if (Two) {
      const batch<S> bq = shared<C>(simd::load_w(p + (r + q) * W));
      for (int u = 0; u < C; ++u) {
        const batch<S> hq(hs[u][q]);
        va[u] = simd::fma(a, hq, va[u]);
        vb[u] = simd::fma(bq, hq, vb[u]);
      }
    } else {
      for (int u = 0; u < C; ++u) va[u] = simd::fma(a, batch<S>(hs[u][q]), va[u]);
    }
  }
}

/// Forward over a rotation tile. Out: ya, yb += g u (Put::add) or = u (Put::set).
/// Dot: dot = wa . u_a + wb . u_b, or with Centered wa . (u_a - ma) + wb . (u_b - mb).
/// Deriv: also store bound'(pre) in sc.db.
/// BPi: expert i's packed expand weights as stored (S, bf16 or f16).
template <class S, int C, Put Out, bool Dot, bool Deriv = false, bool Centered = false, bool Il = false, class WB>
void rot_forward(const Args<S>& K, const Tile& tl, const WB* BPi, const S* bias_i, Block<S>& b, const Scratch<S>& sc) {
  constexpr index_t W = simd::width<S>();
  const index_t r = K.r;
  S *ya[C], *yb[C];  // locals (see take)
  const S *wa[C], *wb[C], *ma[C], *mb[C];
  S gv[C];
  take<C>(ya, b.ya), take<C>(yb, b.yb), take<C>(wa, b.wa), take<C>(wb, b.wb);
  take<C>(ma, b.ma), take<C>(mb, b.mb), take<C>(gv, b.g);
  const S *cb = sc.cb, *sb = sc.sb;
  batch<S> acc[C];
  for (int u = 0; u < C; ++u) acc[u] = batch<S>(S(0));
  const WB* p = BPi + rot_base(K, tl);
  block_angles<S, C>(K, tl, bias_i, b, sc, Deriv);
  for (index_t j = 0; j < tl.len; j += W, p += 2 * r * W) {
    batch<S> va[C], vb[C];
    block_expand<S, C, true>(p, r, b, va, vb);
    for (int u = 0; u < C; ++u) {
      rotate_pair(load(cb + j * max_block + u * W), load(sb + j * max_block + u * W), va[u], vb[u]);
      if (Out == Put::add) {
        const batch<S> g(gv[u]);
        store(at<Il>(ya, u, j), simd::fma(g, va[u], load(at<Il>(ya, u, j))));
        store(at<Il>(yb, u, j), simd::fma(g, vb[u], load(at<Il>(yb, u, j))));
      } else if (Out == Put::set) {
        store(at<Il>(ya, u, j), va[u]);
        store(at<Il>(yb, u, j), vb[u]);
      }
      if (Dot && Centered)
        acc[u] = simd::fma(load(at<Il>(wa, u, j)), va[u] - load(at<Il>(ma, u, j)),
                           simd::fma(load(at<Il>(wb, u, j)), vb[u] - load(at<Il>(mb, u, j)), acc[u]));
      else if (Dot)
        acc[u] = simd::fma(load(at<Il>(wa, u, j)), va[u], simd::fma(load(at<Il>(wb, u, j)), vb[u], acc[u]));
    }
  }
  if (Dot)
    for (int u = 0; u < C; ++u) b.dot[u] = hsum(acc[u]);
}

/// acc = a acc + w u over n values (n a multiple of the width); a = 0 does not read acc.
template <class S>
void scale_add(S* acc, const S* u, index_t n, S a, S w) {
  constexpr index_t W = simd::width<S>();
  const batch<S> av(a), wv(w);
  if (a == S(0))
    for (index_t j = 0; j < n; j += W) store(acc + j, wv * load(u + j));
  else if (a == S(1))
    for (index_t j = 0; j < n; j += W) store(acc + j, simd::fma(wv, load(u + j), load(acc + j)));
  else
    for (index_t j = 0; j < n; j += W) store(acc + j, simd::fma(av, load(acc + j), wv * load(u + j)));
}

/// Forward over a pass-through tile: y += g v (Put::add) or y = v (Put::set), and/or dot = w . v
/// (Centered: w . (v - m)).
template <class S, int C, Put Out, bool Dot, bool Centered = false, bool Il = false, class WB>
void pass_forward(const Args<S>& K, const Tile& tl, const WB* BPi, Block<S>& b) {
  constexpr index_t W = simd::width<S>();
  const index_t r = K.r;
  S* ya[C];  // locals (see take)
  const S *wa[C], *ma[C];
  S gv[C];
  take<C>(ya, b.ya), take<C>(wa, b.wa), take<C>(ma, b.ma), take<C>(gv, b.g);
  batch<S> acc[C];
  for (int u = 0; u < C; ++u) acc[u] = batch<S>(S(0));
  const WB* p = BPi + pass_base(K, tl);
  for (index_t j = 0; j < tl.len; j += W, p += r * W) {
    batch<S> v[C];
    block_expand<S, C, false>(p, r, b, v, nullptr);
    for (int u = 0; u < C; ++u) {
      if (Out == Put::add) store(at<Il>(ya, u, j), simd::fma(batch<S>(gv[u]), v[u], load(at<Il>(ya, u, j))));
      if (Out == Put::set) store(at<Il>(ya, u, j), v[u]);
      if (Dot && Centered)
        acc[u] = simd::fma(load(at<Il>(wa, u, j)), v[u] - load(at<Il>(ma, u, j)), acc[u]);
      else if (Dot)
        acc[u] = simd::fma(load(at<Il>(wa, u, j)), v[u], acc[u]);
    }
  }
  if (Dot)
    for (int u = 0; u < C; ++u) b.dot[u] = hsum(acc[u]);
}

/// After the tile's main loop: e_u += B^T dv_u and dB += sum_u hs_u dv_u (dv in sc.dva/dvb),
/// one row q of the packed group layout at a time so the C sums stay in registers.
template <class S, int C, bool Two>
void block_rank_update(const S* p0, S* dp0, index_t r, index_t len, const BwdWant& w, const Block<S>& b,
                       const Scratch<S>& sc) {
  constexpr index_t W = simd::width<S>();
  const index_t L = sc.dstride, step = (Two ? 2 : 1) * r * W;
  const bool want_e = w.e, want_dB = w.dB;  // locals (see take)
  const S *dva = sc.dva, *dvb = sc.dvb;
  for (index_t q = 0; q < r; ++q) {
    batch<S> acc[C], hq[C];
    for (int u = 0; u < C; ++u) {
      acc[u] = batch<S>(S(0));
      hq[u] = batch<S>(b.hs[u][q]);
    }
    const S* p = p0 + q * W;
    S* dp = dp0 ? dp0 + q * W : nullptr;
    for (index_t j = 0; j < len; j += W, p += step) {
      const batch<S> a = shared<C>(load(p));
      batch<S> da = want_dB ? load(dp) : batch<S>(S(0));
      for (int u = 0; u < C; ++u) {
        const batch<S> x = load(dva + u * L + j);
        if (want_e) acc[u] = simd::fma(a, x, acc[u]);
        if (want_dB) da = simd::fma(hq[u], x, da);
      }
      if (want_dB) store(dp, da);
      if (Two) {
        const batch<S> bq = shared<C>(load(p + r * W));
        batch<S> db = want_dB ? load(dp + r * W) : batch<S>(S(0));
        for (int u = 0; u < C; ++u) {
          const batch<S> y = load(dvb + u * L + j);
          if (want_e) acc[u] = simd::fma(bq, y, acc[u]);
          if (want_dB) db = simd::fma(hq[u], y, db);
        }
        if (want_dB) store(dp + r * W, db);
      }
      if (dp) dp += step;
    }
    if (want_e)
      for (int u = 0; u < C; ++u) b.e[u][q] += hsum(acc[u]);
  }
}

/// Backward over a rotation tile for the block's tokens. Stored: u (b.ua, b.ub) and cos, sin and
/// bound' (sc) were written by rot_forward<.., Put::set, .., true> and are read, not recomputed.
template <class S, int C, bool Stored = false, bool Il = false>
void rot_backward(const Args<S>& K, const Tile& tl, const S* BPi, const S* bias_i, const Block<S>& b, const BwdWant& w,
                  const BwdOut<S>& o, const Scratch<S>& sc) {
  constexpr index_t W = simd::width<S>();
  const index_t r = K.r, k = K.k, LD = sc.dstride;
  if (!Stored) block_angles<S, C>(K, tl, bias_i, b, sc, w.dpre);
  // locals (see take)
  const bool want_dg = w.dg, want_dpre = w.dpre, want_dws = w.dws, want_dv = w.dv, want_dbias = w.dbias;
  const S *ua_p[C], *ub_p[C], *dya_p[C], *dyb_p[C];
  S gv[C], dlv[C];
  take<C>(ua_p, b.ua), take<C>(ub_p, b.ub), take<C>(dya_p, b.dya), take<C>(dyb_p, b.dyb);
  take<C>(gv, b.g), take<C>(dlv, b.dl);
  const S *cb = sc.cb, *sb = sc.sb, *db = sc.db;
  S *dva = sc.dva, *dvb = sc.dvb, *dpre_p = sc.dpre;
  S* dbias_p = o.dbias_i ? o.dbias_i + tl.a0 : nullptr;
  S* dws_pa = o.dws ? o.dws + tl.a0 : nullptr;
  S* dws_pb = o.dws ? o.dws + tl.b0 : nullptr;
  batch<S> dgacc[C];
  for (int u = 0; u < C; ++u) dgacc[u] = batch<S>(S(0));
  const index_t base = rot_base(K, tl);
  const S* p = BPi + base;
  const S* wsa = K.ws + tl.a0;
  const S* wsb = K.ws + tl.b0;
  if constexpr (Stored) {
    // The element-wise part shares no load between tokens, so it runs one token at a time
    // (fewer live pointers than the whole block's); dbias and dws then sum the block's rows.
    constexpr index_t JS = Il ? max_block : 1;  // step of j in the stored rows
    // What is wanted is a template argument here: as run-time flags they held three of the
    // general-purpose registers, and the loop's pointers were spilled and reloaded every step.
    auto elementwise = [&](auto dg_t, auto dpre_t, auto dv_t) {
      constexpr bool Dg = decltype(dg_t)::value, Dp = decltype(dpre_t)::value, Dv = decltype(dv_t)::value;
      const index_t len = tl.len;
      for (int u = 0; u < C; ++u) {
        const S *pua = at<Il>(ua_p, u, 0), *pub = at<Il>(ub_p, u, 0), *pya = at<Il>(dya_p, u, 0),
                *pyb = at<Il>(dyb_p, u, 0);
        const S *pc = cb + u * W, *ps = sb + u * W, *pd = db + u * W;
        S *pdp = dpre_p + u * LD, *pva = dva + u * LD, *pvb = dvb + u * LD;
        const batch<S> g(gv[u]), dl(dlv[u]);
        batch<S> dga(S(0));
        for (index_t j = 0; j < len; j += W) {
          const batch<S> a = load(pua + j * JS), bb = load(pub + j * JS), ya = load(pya + j * JS),
                         yb = load(pyb + j * JS);
          if constexpr (Dg) dga = simd::fma(ya, a, simd::fma(yb, bb, dga));
          batch<S> dua = simd::fma(dl, load(wsa + j), g * ya);
          batch<S> dub = simd::fma(dl, load(wsb + j), g * yb);
          if constexpr (Dp) store(pdp + j, rotation_angle_grad(dua, dub, a, bb) * load(pd + j * max_block));
          if constexpr (Dv) {
            rotate_pair_transpose(load(pc + j * max_block), load(ps + j * max_block), dua, dub);
            store(pva + j, dua);
            store(pvb + j, dub);
          }
        }
        dgacc[u] = dga;
      }
    };
    with_flags(elementwise, want_dg, want_dpre, want_dv);
    if (want_dbias || want_dws)
      for (index_t j = 0; j < tl.len; j += W) {
        batch<S> dws_a(S(0)), dws_b(S(0)), dbias(S(0));
        for (int u = 0; u < C; ++u) {
          if (want_dbias) dbias += load(dpre_p + u * LD + j);
          if (want_dws) {
            const batch<S> dl(dlv[u]);
            dws_a = simd::fma(dl, load(at<Il>(ua_p, u, j)), dws_a);
            dws_b = simd::fma(dl, load(at<Il>(ub_p, u, j)), dws_b);
          }
        }
        if (want_dbias) store(dbias_p + j, load(dbias_p + j) + dbias);
        if (want_dws) {
          store(dws_pa + j, load(dws_pa + j) + dws_a);
          store(dws_pb + j, load(dws_pb + j) + dws_b);
        }
      }
  } else {
    for (index_t j = 0; j < tl.len; j += W, p += 2 * r * W) {
      batch<S> ua[C], ub[C];  // recomputed: u = R v, v = B hs
      block_expand<S, C, true>(p, r, b, ua, ub);
      batch<S> dws_a(S(0)), dws_b(S(0)), dbias(S(0));
      const batch<S> wa = load(wsa + j), wb = load(wsb + j);
      for (int u = 0; u < C; ++u) {
        const batch<S> c = load(cb + j * max_block + u * W), s = load(sb + j * max_block + u * W);
        rotate_pair(c, s, ua[u], ub[u]);
        const batch<S> ya = load(dya_p[u] + j), yb = load(dyb_p[u] + j);
        if (want_dg) dgacc[u] = simd::fma(ya, ua[u], simd::fma(yb, ub[u], dgacc[u]));
        const batch<S> g(gv[u]), dl(dlv[u]);
        batch<S> dua = simd::fma(dl, wa, g * ya);
        batch<S> dub = simd::fma(dl, wb, g * yb);
        if (want_dpre) {
          const batch<S> dpre = rotation_angle_grad(dua, dub, ua[u], ub[u]) * load(db + j * max_block + u * W);
          store(dpre_p + u * LD + j, dpre);
          dbias += dpre;
        }
        if (want_dws) {
          dws_a = simd::fma(dl, ua[u], dws_a);
          dws_b = simd::fma(dl, ub[u], dws_b);
        }
        if (want_dv) {
          rotate_pair_transpose(c, s, dua, dub);
          store(dva + u * LD + j, dua);
          store(dvb + u * LD + j, dub);
        }
      }
      if (want_dbias) store(dbias_p + j, load(dbias_p + j) + dbias);
      if (want_dws) {
        store(dws_pa + j, load(dws_pa + j) + dws_a);
        store(dws_pb + j, load(dws_pb + j) + dws_b);
      }
    }
  }
  if (want_dg)
    for (int u = 0; u < C; ++u) *b.dg[u] += hsum(dgacc[u]);
  if (want_dv) block_rank_update<S, C, true>(BPi + base, o.dBPi ? o.dBPi + base : nullptr, r, tl.len, w, b, sc);
  // dz_u += U^T dpre_u and dU += sum_u z_u dpre_u, one row q of the packed U at a time
  const bool want_dz = w.dz, want_dU = w.dU;
  if (want_dz || want_dU)
    for (index_t q = 0; q < k; ++q) {
      batch<S> acc[C], zq[C];
      for (int u = 0; u < C; ++u) {
        acc[u] = batch<S>(S(0));
        zq[u] = batch<S>(b.z[u][q]);
      }
      const S* up = K.UP + tl.a0 * k + q * W;
      S* dup = o.dUP ? o.dUP + tl.a0 * k + q * W : nullptr;
      for (index_t j = 0; j < tl.len; j += W, up += k * W) {
        const batch<S> uq = shared<C>(load(up));
        batch<S> du = want_dU ? load(dup) : batch<S>(S(0));
        for (int u = 0; u < C; ++u) {
          const batch<S> x = load(dpre_p + u * LD + j);
          if (want_dz) acc[u] = simd::fma(uq, x, acc[u]);
          if (want_dU) du = simd::fma(zq[u], x, du);
        }
        if (want_dU) {
          store(dup, du);
          dup += k * W;
        }
      }
      if (want_dz)
        for (int u = 0; u < C; ++u) b.dz[u][q] += hsum(acc[u]);
    }
}

/// Backward over a pass-through tile for the block's tokens (Stored: v read from b.ua).
template <class S, int C, bool Stored = false, bool Il = false>
void pass_backward(const Args<S>& K, const Tile& tl, const S* BPi, const Block<S>& b, const BwdWant& w,
                   const BwdOut<S>& o, const Scratch<S>& sc) {
  constexpr index_t W = simd::width<S>();
  const index_t r = K.r, L = sc.dstride;
  const bool want_dg = w.dg, want_dws = w.dws, want_dv = w.dv;  // locals (see take)
  const S *ua[C], *dya[C];
  S gv[C], dlv[C];
  take<C>(ua, b.ua), take<C>(dya, b.dya), take<C>(gv, b.g), take<C>(dlv, b.dl);
  S* dva = sc.dva;
  S* dws_p = o.dws ? o.dws + tl.a0 : nullptr;
  batch<S> dgacc[C];
  for (int u = 0; u < C; ++u) dgacc[u] = batch<S>(S(0));
  const index_t base = pass_base(K, tl);
  const S* p = BPi + base;
  const S* ws = K.ws + tl.a0;
  const bool need_v = want_dg || want_dws;
  for (index_t j = 0; j < tl.len; j += W, p += r * W) {
    batch<S> v[C] = {};
    if (need_v) {
      if (Stored)
        for (int u = 0; u < C; ++u) v[u] = load(at<Il>(ua, u, j));
      else
        block_expand<S, C, false>(p, r, b, v, nullptr);
    }
    batch<S> dws(S(0));
    for (int u = 0; u < C; ++u) {
      const batch<S> y = load(at<Il>(dya, u, j)), dl(dlv[u]);
      if (want_dg) dgacc[u] = simd::fma(y, v[u], dgacc[u]);
      if (want_dws) dws = simd::fma(dl, v[u], dws);
      if (want_dv) store(dva + u * L + j, simd::fma(dl, load(ws + j), batch<S>(gv[u]) * y));
    }
    if (want_dws) store(dws_p + j, load(dws_p + j) + dws);
  }
  if (want_dg)
    for (int u = 0; u < C; ++u) *b.dg[u] += hsum(dgacc[u]);
  if (w.dv) block_rank_update<S, C, false>(BPi + base, o.dBPi ? o.dBPi + base : nullptr, r, tl.len, w, b, sc);
}

/// The shrink of C tokens for 16-bit A: h[u][j] = A_j . x[u] for the rows j of [0, rows) (ld
/// apart), widened to float on load and accumulated in float; each row of A is read once for the
/// C tokens. (The shrink of many tokens widens blocks of A and runs a GEMM instead, cpu.hpp.)
template <int C, class WB>
void shrink_rows(const WB* A, index_t ld, index_t rows, index_t din, const float* const* x, float* const* h) {
  using B = batch<float>;
  constexpr index_t W = simd::width<float>();
  constexpr int U = C == 1 ? 4 : C == 2 ? 2 : 1;  // independent sums per token
  const index_t full = din / (W * U) * (W * U), vec = din / W * W;
  const float* xs[C];
  for (int u = 0; u < C; ++u) xs[u] = x[u];
  for (index_t j = 0; j < rows; ++j) {
    const WB* a = A + j * ld;
    B acc[C][U];
    for (int u = 0; u < C; ++u)
      for (int v = 0; v < U; ++v) acc[u][v] = B(0.0f);
    index_t c = 0;
    for (; c < full; c += W * U)
      for (int v = 0; v < U; ++v) {
        const B w = shared<C>(simd::load_w(a + c + v * W));
        for (int u = 0; u < C; ++u) acc[u][v] = simd::fma(w, B::load_unaligned(xs[u] + c + v * W), acc[u][v]);
      }
    for (; c < vec; c += W) {
      const B w = simd::load_w(a + c);
      for (int u = 0; u < C; ++u) acc[u][0] = simd::fma(w, B::load_unaligned(xs[u] + c), acc[u][0]);
    }
    for (int u = 0; u < C; ++u) {
      for (int v = 1; v < U; ++v) acc[u][0] += acc[u][v];
      float t = hsum(acc[u][0]);
      for (index_t e = vec; e < din; ++e) t += to_float(a[e]) * xs[u][e];
      h[u][j] = t;
    }
  }
}

}  // namespace kernels
}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
