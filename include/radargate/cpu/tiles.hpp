// radargate/cpu/tiles.hpp -- passes of the tile kernels (detail/cpu_kernels.hpp) over a range of
// tokens: per tile of output slots, per block of up to 4 tokens, per expert, u = R(alpha) s_i B_i h_i
// (docs/MATH.md). Forward adds g_i u_i into y and/or dots u_i with ws; backward dots u_i with dy
// (tiles_dot) or runs the rest of the chain (tiles_backward). Every strategy but dense uses them;
// the tiles strategy itself (rotation off, 16-bit B) is at the end of the file.
#pragma once

#include <algorithm>
#include <type_traits>

#include "dense.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

/// The per-token inputs of the tile kernels for tokens from t0 on: s_i h_i, z, g and the selection.
template <class S>
struct TileRows {
  const S* hs;
  const S* z;
  const S* g;
  const unsigned char* sel;
  index_t N, r, k;
  TileRows(const CpuState<S>& st, const CpuContext<S>& ctx, const Buf<S>& scaled_h, index_t t0)
      : hs(scaled_h.data()),
        z(st.rotation() ? &ctx.z[std::size_t(t0 * st.D.N * st.D.k)] : nullptr),
        g(&ctx.g[std::size_t(t0 * st.D.N)]),
        sel(&ctx.sel[std::size_t(t0 * st.D.N)]),
        N(st.D.N),
        r(st.D.r),
        k(st.D.k) {}
};

// Binds the tokens [tb, tb + nb) that compute expert i to block b (who[c]: the (token, expert)
// index of entry c); more(c, u, ti) binds what else the pass needs of token u.
template <class S, class F>
RG_INLINE void bind_selected(const TileRows<S>& in, index_t tb, int nb, index_t i, kernels::Block<S>& b, index_t* who,
                             F&& more) {
  for (int u = 0; u < nb; ++u) {
    const index_t ti = (tb + u) * in.N + i;
    if (!in.sel[ti]) continue;
    const int c = b.n++;
    b.hs[c] = in.hs + ti * in.r;
    b.z[c] = in.z ? in.z + ti * in.k : nullptr;
    b.g[c] = in.g[ti];
    who[c] = ti;
    more(c, u, ti);
  }
}

// The forward kernel of one tile, one expert, one block, with B as stored (16-bit or Scalar).
template <class S, kernels::Put Out, bool Dot>
RG_INLINE void tile_forward_kernel(const CpuState<S>& st, const kernels::Args<S>& K, const Tile& tl, index_t i,
                                   kernels::Block<S>& b, const kernels::Scratch<S>& sc) {
  st.W.with_bp(i, [&](const auto* bpi) {
    kernels::with_block_size(b.n, [&](auto C) {
      constexpr int Cn = decltype(C)::value;
      if (tl.rot)
        kernels::rot_forward<S, Cn, Out, Dot>(K, tl, bpi, st.bias_row(i), b, sc);
      else
        kernels::pass_forward<S, Cn, Out, Dot>(K, tl, bpi, b);
    });
  });
}

// y += the tile's accumulators of one token (slot space back to output coordinates).
template <class S>
RG_INLINE void scatter_tile(const CpuState<S>& st, const Tile& tl, const S* pa, const S* pb, S* yrow) {
  for (index_t j = 0; j < tl.len; ++j) {
    const index_t c = st.W.coord[std::size_t(tl.a0 + j)];
    if (c >= 0) yrow[c] += pa[j];
  }
  if (tl.rot)
    for (index_t j = 0; j < tl.len; ++j) {
      const index_t c = st.W.coord[std::size_t(tl.b0 + j)];
      if (c >= 0) yrow[c] += pb[j];
    }
}

// Gathers dy of token row `t` on the slots of a tile.
template <class S>
RG_INLINE void gather_dy(const CpuState<S>& st, const MatRef<S>& DY, index_t t, const Tile& tl, S* dya, S* dyb) {
  const S* row = DY.row(t);
  for (index_t j = 0; j < tl.len; ++j) {
    const index_t c = st.W.coord[std::size_t(tl.a0 + j)];
    dya[j] = c >= 0 ? row[c] : S(0);
  }
  if (tl.rot)
    for (index_t j = 0; j < tl.len; ++j) {
      const index_t c = st.W.coord[std::size_t(tl.b0 + j)];
      dyb[j] = c >= 0 ? row[c] : S(0);
    }
}

// l[who[c]] += the block's dot products.
template <class S>
RG_INLINE void add_dots(const kernels::Block<S>& b, const index_t* who, S* l) {
  for (int c = 0; c < b.n; ++c) l[who[c]] += b.dot[c];
}

// One pass over the tiles for tokens [t0, t1), in blocks of up to max_block tokens.
// Out: y += sum_i g_i u_i. Dot: l_i += ws . u_i.
template <kernels::Put Out, bool Dot, class S>
void tiles_forward(const CpuState<S>& st, const CpuContext<S>& ctx, index_t t0, index_t t1, const MatMut<S>& Y,
                   std::add_pointer_t<S> l, Arena& ar) {
  constexpr int TB = kernels::max_block;
  const index_t n = t1 - t0, L = st.W.max_len;
  const auto K = st.kargs();
  Arena::Mark keep(ar);
  const Buf<S> hs = st.scaled_h(ctx, t0, t1, ar);
  const Buf<S> ya = ar.zeros<S>(TB * L), yb = ar.zeros<S>(TB * L);
  const TileScratch<S> ts(st.W, ar);
  const TileRows<S> in(st, ctx, hs, t0);
  for (const Tile& tl : n < TB ? st.W.long_tiles : st.W.tiles)
    for (index_t tb = 0; tb < n; tb += TB) {
      const int nb = int(std::min<index_t>(TB, n - tb));
      if (Out == kernels::Put::add) {
        std::fill(ya.begin(), ya.begin() + nb * L, S(0));
        std::fill(yb.begin(), yb.begin() + nb * L, S(0));
      }
      for (index_t i = 0; i < st.D.N; ++i) {
        kernels::Block<S> b;
        index_t who[TB];
        bind_selected(in, tb, nb, i, b, who, [&](int c, int u, index_t) {
          b.ya[c] = ya.data() + u * L;
          b.yb[c] = yb.data() + u * L;
          b.wa[c] = K.ws + tl.a0;
          b.wb[c] = K.ws + tl.b0;
        });
        if (b.n == 0) continue;
        tile_forward_kernel<S, Out, Dot>(st, K, tl, i, b, ts.sc);
        if (Dot) add_dots(b, who, l);
      }
      if (Out == kernels::Put::add)
        for (int u = 0; u < nb; ++u) scatter_tile(st, tl, ya.data() + u * L, yb.data() + u * L, Y.row(t0 + tb + u));
    }
}

/// What a backward pass over the tiles reads and writes per (token, expert), for tokens from t0 on.
template <class S>
struct TileGrads {
  kernels::BwdWant w;     // what the pass computes
  const S* dl = nullptr;  // [n, N] dL/dl_i (stretch gate), or null
  S* dg = nullptr;        // [n, N] += dy . u_i, or null
  S* e = nullptr;         // [n, N, r] += B_i^T dv_i, or null
  S* dz = nullptr;        // [n, N, k] += dL/dz_i, or null
};

// Calls per_expert(tl, i, b, who, sc) for every tile, block of tokens and expert that some token of
// the block computes, with the block bound to dy on the tile's slots and to `gr`.
template <class S, class F>
void tile_backward_sweep(const CpuState<S>& st, const CpuContext<S>& ctx, const MatRef<S>& DY, index_t t0, index_t t1,
                         const TileGrads<S>& gr, Arena& ar, F&& per_expert) {
  constexpr int TB = kernels::max_block;
  const index_t n = t1 - t0, r = st.D.r, k = st.D.k, L = st.W.max_len;
  Arena::Mark keep(ar);
  const Buf<S> hs = st.scaled_h(ctx, t0, t1, ar);
  const Buf<S> dya = ar.zeros<S>(TB * L), dyb = ar.zeros<S>(TB * L);
  const TileScratch<S> ts(st.W, ar);
  const TileRows<S> in(st, ctx, hs, t0);
  const TileGrads<S> out = gr;  // a local copy: its pointers stay in registers across the stores below
  for (const Tile& tl : n < TB ? st.W.long_tiles : st.W.tiles)
    for (index_t tb = 0; tb < n; tb += TB) {
      const int nb = int(std::min<index_t>(TB, n - tb));
      for (int u = 0; u < nb; ++u) gather_dy(st, DY, t0 + tb + u, tl, dya.data() + u * L, dyb.data() + u * L);
      for (index_t i = 0; i < st.D.N; ++i) {
        kernels::Block<S> b;
        index_t who[TB];
        bind_selected(in, tb, nb, i, b, who, [&](int c, int u, index_t ti) {
          b.dl[c] = out.dl ? out.dl[ti] : S(0);
          b.wa[c] = b.dya[c] = dya.data() + u * L;
          b.wb[c] = b.dyb[c] = dyb.data() + u * L;
          b.e[c] = out.e ? out.e + ti * r : nullptr;
          b.dz[c] = out.dz ? out.dz + ti * k : nullptr;
          b.dg[c] = out.dg ? out.dg + ti : nullptr;
        });
        if (b.n > 0) per_expert(tl, i, b, who, ts.sc);
      }
    }
}

// The dot pass of the stretch gate: dg_i += dy . u_i for tokens [t0, t1), over all tiles.
template <class S>
void tiles_dot(const CpuState<S>& st, const CpuContext<S>& ctx, const MatRef<S>& DY, index_t t0, index_t t1,
               const Partial<S>& part, S* dg, Arena& ar) {
  using kernels::Put;
  TileGrads<S> gr;
  gr.dg = dg;
  const auto K = st.kargs();
  const index_t stride = st.D.r * st.W.dpad;
  tile_backward_sweep(
      st, ctx, DY, t0, t1, gr, ar,
      [&](const Tile& tl, index_t i, kernels::Block<S>& b, const index_t* who, const kernels::Scratch<S>& sc) {
        kernels::with_block_size(b.n, [&](auto C) {
          constexpr int Cn = decltype(C)::value;
          if (tl.rot)
            kernels::rot_forward<S, Cn, Put::none, true>(K, tl, part.BP + i * stride, st.bias_row(i), b, sc);
          else
            kernels::pass_forward<S, Cn, Put::none, true>(K, tl, part.BP + i * stride, b);
        });
        add_dots(b, who, dg);
      });
}

// The backward pass over the tiles for tokens [t0, t1): everything gr.w asks for, into gr and the
// thread's partial sums.
template <class S>
void tiles_backward(const CpuState<S>& st, const CpuContext<S>& ctx, const MatRef<S>& DY, index_t t0, index_t t1,
                    const TileGrads<S>& gr, Partial<S>& part, Arena& ar) {
  const auto K = st.kargs();
  const index_t r = st.D.r, dpad = st.W.dpad, Ppad = st.W.Ppad;
  kernels::BwdOut<S> o;
  o.dUP = part.dUP.empty() ? nullptr : part.dUP.data();
  o.dws = part.dws.empty() ? nullptr : part.dws.data();
  tile_backward_sweep(
      st, ctx, DY, t0, t1, gr, ar,
      [&](const Tile& tl, index_t i, kernels::Block<S>& b, const index_t*, const kernels::Scratch<S>& sc) {
        o.dbias_i = part.dbias.empty() ? nullptr : &part.dbias[std::size_t(i * Ppad)];
        o.dBPi = part.dBP.empty() ? nullptr : &part.dBP[std::size_t(i * r * dpad)];
        const S* bpi = part.BP + i * r * dpad;
        kernels::with_block_size(b.n, [&](auto C) {
          constexpr int Cn = decltype(C)::value;
          if (tl.rot)
            kernels::rot_backward<S, Cn>(K, tl, bpi, st.bias_row(i), b, gr.w, o, sc);
          else
            kernels::pass_backward<S, Cn>(K, tl, bpi, b, gr.w, o, sc);
        });
      });
}

// Forward of the tiles strategy (rotation off, 16-bit B): the maths of dense, with B applied by
// the tile kernels.
template <class S>
void tiles_strategy_forward(const CpuState<S>& st, CpuContext<S>& ctx, const MatRef<S>& X, const MatMut<S>& Y,
                            index_t t0, index_t t1, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N;
  S* g = &ctx.g[std::size_t(t0 * N)];
  S* h = &ctx.h[std::size_t(t0 * N * st.D.r)];
  shrink_all(st, X, t0, t1, h, ar);
  if (st.stretch()) {
    stretch_logits_rank_space(st, g, h, n);
    normalize_all(st, g, &ctx.sel[std::size_t(t0 * N)], n);
  }
  tiles_forward<kernels::Put::add, false>(st, ctx, t0, t1, Y, nullptr, ar);
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
