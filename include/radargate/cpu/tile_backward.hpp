// radargate/cpu/tile_backward.hpp -- backward of a block of token rows for every strategy built
// on the tile kernels (tiles, sparse, rotation, one-pass): which derivatives the kernels are asked
// for, which passes over the tiles produce them, and what finishes them (docs/MATH.md).
#pragma once

#include "one_pass.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// What the main backward pass over the tiles must produce for these gradients.
template <class S>
kernels::BwdWant tile_backward_wants(const CpuState<S>& st, const Bwd<S>& b) {
  const auto& G = b.G;
  const bool rot = st.rotation(), stretch = st.stretch();
  kernels::BwdWant w;
  w.dg = !stretch && b.need.dlogits;
  w.dU = G.angle_U.present();
  w.dbias = G.angle_bias.present();
  w.dz = rot && (b.want_dh() || G.lora_B.present() || G.map_M.present() || G.angle_Wx.present() ||
                 G.angle_Wv.present() || G.angle_Wc.present());
  w.dpre = rot && (w.dz || w.dU || w.dbias);
  w.dws = stretch && G.stretch_ws.present();
  w.e = b.want_dh();
  w.dB = G.lora_B.present();
  w.dv = w.e || w.dB;
  return w;
}

// Backward of the experts for tokens [t0, t1): dl (a stretch gate first needs dg_i = dy . u_i
// over all tiles: the one-pass strategy gets it in its first sweep, the others in a dot pass),
// then e and dz from the tiles, then dh through rank space.
template <class S>
void tile_backward_rows(const CpuState<S>& st, const CpuContext<S>& ctx, Bwd<S>& b, Partial<S>& part, index_t t0,
                        index_t t1, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, Nr = N * st.D.r;
  const S* g = &ctx.g[std::size_t(t0 * N)];
  S* DL = b.need.dlogits ? &b.DL[std::size_t(t0 * N)] : nullptr;
  const bool stretch_dl = st.stretch() && b.need.dlogits;
  const bool one = stretch_dl && st.strategy == Strategy::one_pass;
  if (stretch_dl && !one) {
    tiles_dot(st, ctx, b.DY, t0, t1, part, DL, ar);
    normalize_backward_rows(st, g, DL, n);
  }
  TileGrads<S> gr;
  gr.w = tile_backward_wants(st, b);
  const kernels::BwdWant& w = gr.w;
  Buf<S> e, dz;
  if (w.e) e = ar.zeros<S>(n * Nr);
  if (w.dz) dz = ar.zeros<S>(n * N * st.D.k);
  gr.e = w.e ? e.data() : nullptr;
  gr.dz = w.dz ? dz.data() : nullptr;
  if (one) {
    Arena::Mark keep(ar);
    OnePassBackward<S>(st, ctx, b, part, t0, t1, w, DL, gr.e, gr.dz, ar).run();
  } else if (w.dg || w.dpre || w.dws || w.dv) {
    gr.dl = st.stretch() ? DL : nullptr;
    gr.dg = w.dg ? DL : nullptr;
    tiles_backward(st, ctx, b.DY, t0, t1, gr, part, ar);
  }
  if (w.dg) normalize_backward_rows(st, g, DL, n);
  if (w.dz)
    rank_space_backward(st, ctx, b, part, t0, t1, e.data(), dz.data(), ar);
  else if (w.e)
    finish_dh(st, b, part, &ctx.h[std::size_t(t0 * Nr)], &b.DH[std::size_t(t0 * Nr)], e.data(), n);
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
