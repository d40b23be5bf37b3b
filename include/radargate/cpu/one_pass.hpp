// radargate/cpu/one_pass.hpp -- the one-pass strategy: rotation on and a stretch gate other than
// top-k (which needs every logit before any weight is known). Forward runs one pass over the
// experts, each angle evaluated once; backward stores u, cos, sin of one expert and a group of
// tokens between its two sweeps instead of recomputing them (docs/MATH.md, docs/CPU_BACKEND.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <new>

#include "rotation.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// ---- forward ----------------------------------------------------------------------------------

/// The running weighted sum of the experts' u for a block of tokens: acc = a acc + w u_i. For
/// softmax w = exp(l_i/tau - max) and a rescales acc whenever the maximum grows (as in an online
/// softmax); y += acc / sum at the end.
template <class S>
struct OnlineMix {
  static constexpr int TB = kernels::max_block;
  S mx[TB] = {}, sum[TB] = {};

  // Adds expert i's u (logit x = l_i / tau) for token c into acc.
  RG_INLINE void add(Normalize nz, int c, index_t i, S x, S* acc, const S* u, index_t dp) {
    S a = S(1), w = S(1);
    if (nz == Normalize::softmax) {
      if (i == 0) {
        mx[c] = x;
        sum[c] = S(1);
      } else if (x > mx[c]) {
        a = std::exp(mx[c] - x);
        sum[c] = sum[c] * a + S(1);
        mx[c] = x;
      } else {
        w = std::exp(x - mx[c]);
        sum[c] += w;
      }
    } else {
      w = nz == Normalize::sigmoid ? sigmoid(x) : x;
    }
    if (i == 0) a = S(0);
    kernels::scale_add(acc, u, dp, a, w);
  }
};

// u_i of expert i over every tile into one row per token of the block (ub: rows dp apart), and
// dot[c] = ws . u_i.
template <class S>
void one_pass_expert(const CpuState<S>& st, const kernels::Args<S>& K, kernels::Block<S>& b, index_t i, S* ub,
                     const kernels::Scratch<S>& sc, S* dot) {
  using kernels::Put;
  const index_t dp = st.W.dpad;
  for (const Tile& tl : st.W.long_tiles) {
    for (int c = 0; c < b.n; ++c) {
      b.ya[c] = ub + c * dp + tl.a0;
      b.yb[c] = ub + c * dp + tl.b0;
      b.wa[c] = K.ws + tl.a0;
      b.wb[c] = K.ws + tl.b0;
    }
    tile_forward_kernel<S, Put::set, true>(st, K, tl, i, b, sc);
    for (int c = 0; c < b.n; ++c) dot[c] += b.dot[c];
  }
}

// y += acc / sum (slot space back to output coordinates) for the block's tokens from row t on;
// the mixture is kept for backward (softmax).
template <class S>
void one_pass_output(const CpuState<S>& st, CpuContext<S>& ctx, const MatMut<S>& Y, index_t t, int nb,
                     const OnlineMix<S>& mix, const S* acc) {
  const index_t d = st.D.d, dp = st.W.dpad;
  const bool softmax = st.cfg.normalize == Normalize::softmax;
  for (int c = 0; c < nb; ++c) {
    const S f = softmax ? S(1) / mix.sum[c] : S(1);
    S* yrow = Y.row(t + c);
    S* mrow = ctx.mix.empty() ? nullptr : &ctx.mix[std::size_t((t + c) * d)];
    const S* pa = acc + c * dp;
    for (index_t s = 0; s < dp; ++s) {
      const index_t o = st.W.coord[std::size_t(s)];
      if (o < 0) continue;
      const S v = pa[s] * f;
      yrow[o] += v;
      if (mrow) mrow[o] = v;
    }
  }
}

// The stretch gate in one pass for tokens [t0, t1): per block of tokens, expert after expert,
// u_i over every tile, then l_i += ws . u_i, and the running weighted sum (OnlineMix).
template <class S>
void forward_one_pass(const CpuState<S>& st, CpuContext<S>& ctx, index_t t0, index_t t1, const MatMut<S>& Y, S* l,
                      Arena& ar) {
  constexpr int TB = kernels::max_block;
  const index_t n = t1 - t0, N = st.D.N, r = st.D.r, k = st.D.k, dp = st.W.dpad;
  const auto K = st.kargs();
  Arena::Mark keep(ar);
  const Buf<S> hs = st.scaled_h(ctx, t0, t1, ar);
  const Buf<S> ub = ar.zeros<S>(TB * dp), acc = ar.zeros<S>(TB * dp);
  const TileScratch<S> ts(st.W, ar);
  const S* z = &ctx.z[std::size_t(t0 * N * k)];
  const S inv_tau = S(1) / S(st.cfg.tau);
  for (index_t tb = 0; tb < n; tb += TB) {
    const int nb = int(std::min<index_t>(TB, n - tb));
    OnlineMix<S> mix;
    for (index_t i = 0; i < N; ++i) {
      kernels::Block<S> b;
      b.n = nb;
      S dot[TB] = {};
      for (int c = 0; c < nb; ++c) {
        const index_t ti = (tb + c) * N + i;
        b.hs[c] = &hs[std::size_t(ti * r)];
        b.z[c] = z + ti * k;
      }
      one_pass_expert(st, K, b, i, ub.data(), ts.sc, dot);
      for (int c = 0; c < nb; ++c) {
        S& lt = l[(tb + c) * N + i];
        lt += dot[c];
        mix.add(st.cfg.normalize, c, i, lt * inv_tau, acc.data() + c * dp, ub.data() + c * dp, dp);
      }
    }
    one_pass_output(st, ctx, Y, t0 + tb, nb, mix, acc.data());
  }
}

template <class S>
void one_pass_strategy_forward(const CpuState<S>& st, CpuContext<S>& ctx, const MatRef<S>& X, const MatMut<S>& Y,
                               index_t t0, index_t t1, Arena& ar) {
  const index_t N = st.D.N;
  rotation_inputs(st, ctx, X, t0, t1, ar);
  S* g = &ctx.g[std::size_t(t0 * N)];
  forward_one_pass(st, ctx, t0, t1, Y, g, ar);  // g: logits without ws . u in, complete logits out
  normalize_all(st, g, &ctx.sel[std::size_t(t0 * N)], t1 - t0);
}

// ---- backward ---------------------------------------------------------------------------------

/// Backward of the one-pass strategy for tokens [t0, t1), in groups of 32 tokens (8 blocks): per
/// group, expert after expert, a first sweep writes u_i, cos, sin and bound' of every plane into
/// one row per token and gives dg_i = dy . u_i, so dl_i is known at once; a second sweep reads
/// them back for the rest of the chain. Both sweeps are tile-major (CpuWeights::expert_tiles):
/// every block of the group passes over one short tile before the next tile, so the expert's
/// packed B and partial dB for that tile (16 KiB together) are read from L1 by all 32 tokens.
/// Softmax needs dg_i - sum_j g_j dg_j = dy . (u_i - mix), and takes it as that dot product: the
/// difference is formed before the sum, so an expert that carries most of the weight (u_i close
/// to mix) loses no digits to cancellation.
template <class S>
class OnePassBackward {
 public:
  static constexpr int TB = kernels::max_block;
  static constexpr index_t SW = simd::width<S>();
  // tokens per group: 8 blocks, so each tile of one expert's B and dB is reused by 32 tokens from
  // L1; the group's rows (dy, mixture, u, cos, sin, bound': about 2 MiB at d = 4096) stay in L3
  // between the two sweeps
  static constexpr index_t blocks_per_group = 8;

  OnePassBackward(const CpuState<S>& st, const CpuContext<S>& ctx, const Bwd<S>& bw, Partial<S>& part, index_t t0,
                  index_t t1, const kernels::BwdWant& w, S* DL, S* e, S* dz, Arena& ar)
      : st_(st),
        ctx_(ctx),
        bw_(bw),
        part_(part),
        w_(w),
        t0_(t0),
        n_(t1 - t0),
        DL_(DL),
        e_(e),
        dz_(dz),
        K_(st.kargs()),
        dp_(st.W.dpad),
        Pp_(st.W.Ppad),
        SG_(std::min<index_t>(n_, blocks_per_group * TB)),
        GR_((SG_ + TB - 1) / TB * TB),
        centered_(st.cfg.normalize == Normalize::softmax) {
    // dy, the mixture and u of a group are stored interleaved (kernels::at): the four tokens of
    // a block alternate every SW slots; GR_ rows, a whole number of blocks
    const index_t LT = st.W.max_len;
    hs_ = st.scaled_h(ctx, t0, t1, ar);
    mxs_ = ar.zeros<S>(centered_ ? GR_ * dp_ : 0);
    dys_ = ar.zeros<S>(GR_ * dp_);
    ub_ = ar.zeros<S>(GR_ * dp_);
    cb_ = ar.zeros<S>(GR_ * Pp_);
    sb_ = ar.zeros<S>(GR_ * Pp_);
    db_ = ar.zeros<S>(GR_ * Pp_);
    dva_ = ar.zeros<S>(TB * LT);
    dvb_ = ar.zeros<S>(TB * LT);
    dpre_ = ar.zeros<S>(TB * LT);
    dg_ = ar.zeros<S>(SG_);
    blocks_ = ar.buf<kernels::Block<S>>(GR_ / TB);
    for (auto& bl : blocks_) new (&bl) kernels::Block<S>();
    o_.dUP = part.dUP.empty() ? nullptr : part.dUP.data();
    o_.dws = part.dws.empty() ? nullptr : part.dws.data();
  }

  void run() {
    const bool rest = w_.dpre || w_.dws || w_.dv;
    for (index_t g0 = 0; g0 < n_; g0 += SG_) {
      const index_t g1 = std::min(n_, g0 + SG_);
      stage_group(g0, g1);
      const index_t nblk = (g1 - g0 + TB - 1) / TB;
      for (index_t i = 0; i < st_.D.N; ++i) {
        o_.dbias_i = part_.dbias.empty() ? nullptr : &part_.dbias[std::size_t(i * Pp_)];
        o_.dBPi = part_.dBP.empty() ? nullptr : &part_.dBP[std::size_t(i * st_.D.r * dp_)];
        bind_blocks(i, g0, g1, nblk);
        sweep_u(i, nblk);
        logit_grads(i, g0, nblk);
        if (rest) sweep_rest(i, nblk);
      }
    }
  }

 private:
  // offset of token c of block bi at slot s0 in the interleaved rows (a multiple of SW)
  index_t il(index_t bi, int c, index_t s0) const { return bi * TB * dp_ + s0 * TB + c * SW; }
  const S* bp(index_t i) const { return part_.BP + i * st_.D.r * dp_; }

  // dy (and the mixture) of the group's tokens [g0, g1), interleaved in slot space.
  void stage_group(index_t g0, index_t g1) {
    for (index_t t = g0; t < g1; ++t) {
      const S* row = bw_.DY.row(t0_ + t);
      const S* mrow = centered_ ? &ctx_.mix[std::size_t((t0_ + t) * st_.D.d)] : nullptr;
      const index_t tg = t - g0;
      const index_t base = tg / TB * TB * dp_ + tg % TB * SW;
      for (index_t s = 0; s < dp_; ++s) {
        const index_t oc = st_.W.coord[std::size_t(s)];
        const std::size_t at = std::size_t(base + s / SW * TB * SW + s % SW);
        dys_[at] = oc >= 0 ? row[oc] : S(0);
        if (centered_) mxs_[at] = oc >= 0 ? mrow[oc] : S(0);
      }
    }
  }

  // The group's blocks bound to expert i's per-token inputs and outputs.
  void bind_blocks(index_t i, index_t g0, index_t g1, index_t nblk) {
    const index_t N = st_.D.N, r = st_.D.r, k = st_.D.k;
    const S* z = &ctx_.z[std::size_t(t0_ * N * k)];
    const S* g = &ctx_.g[std::size_t(t0_ * N)];
    for (index_t bi = 0; bi < nblk; ++bi) {
      const index_t tb = g0 + bi * TB;
      auto& b = blocks_[std::size_t(bi)];
      b = kernels::Block<S>{};
      b.n = int(std::min<index_t>(TB, g1 - tb));
      for (int c = 0; c < b.n; ++c) {
        const index_t ti = (tb + c) * N + i;
        b.hs[c] = &hs_[std::size_t(ti * r)];
        b.z[c] = z + ti * k;
        b.g[c] = g[ti];
        b.e[c] = e_ ? e_ + ti * r : nullptr;
        b.dz[c] = dz_ ? dz_ + ti * k : nullptr;
      }
    }
  }

  kernels::Scratch<S> tile_scratch(const Tile& tl, index_t bi) const {
    kernels::Scratch<S> sc;
    sc.dstride = st_.W.max_len;
    if (tl.rot) {
      const index_t off = bi * TB * Pp_ + tl.a0 * TB;  // interleaved (kernels::Scratch)
      sc.cb = cb_.data() + off;
      sc.sb = sb_.data() + off;
      sc.db = db_.data() + off;
    }
    sc.dva = dva_.data();
    sc.dvb = dvb_.data();
    sc.dpre = dpre_.data();
    return sc;
  }

  // Sweep 1, tile-major over the group's blocks: u, cos, sin, bound', dg = dy . u (centered:
  // dy . (u - mix)).
  void sweep_u(index_t i, index_t nblk) {
    std::fill(dg_.begin(), dg_.end(), S(0));
    for (const Tile& tl : st_.W.expert_tiles)
      for (index_t bi = 0; bi < nblk; ++bi) {
        auto& b = blocks_[std::size_t(bi)];
        for (int c = 0; c < b.n; ++c) {
          const index_t oa = il(bi, c, tl.a0), ob = il(bi, c, tl.b0);
          b.ya[c] = ub_.data() + oa;
          b.yb[c] = ub_.data() + ob;
          b.wa[c] = dys_.data() + oa;
          b.wb[c] = dys_.data() + ob;
          if (centered_) {
            b.ma[c] = mxs_.data() + oa;
            b.mb[c] = mxs_.data() + ob;
          }
        }
        store_u(tl, i, b, tile_scratch(tl, bi));
        for (int c = 0; c < b.n; ++c) dg_[std::size_t(bi * TB + c)] += b.dot[c];
      }
  }

  void store_u(const Tile& tl, index_t i, kernels::Block<S>& b, const kernels::Scratch<S>& sc) const {
    using kernels::Put;
    kernels::with_block_size(b.n, [&](auto C) {
      constexpr int Cn = decltype(C)::value;
      auto sweep = [&](auto deriv, auto ctr) {
        constexpr bool Dv = decltype(deriv)::value, Ct = decltype(ctr)::value;
        if (tl.rot)
          kernels::rot_forward<S, Cn, Put::set, true, Dv, Ct, true>(K_, tl, bp(i), st_.bias_row(i), b, sc);
        else
          kernels::pass_forward<S, Cn, Put::set, true, Ct, true>(K_, tl, bp(i), b);
      };
      kernels::with_flags(sweep, w_.dpre, centered_);
    });
  }

  // dl_i from dg_i for the group's tokens, into DL and the blocks.
  void logit_grads(index_t i, index_t g0, index_t nblk) {
    const index_t N = st_.D.N;
    const S* g = &ctx_.g[std::size_t(t0_ * N)];
    const S inv_tau = S(1) / S(st_.cfg.tau);
    const Normalize nz = st_.cfg.normalize;
    for (index_t bi = 0; bi < nblk; ++bi) {
      auto& b = blocks_[std::size_t(bi)];
      for (int c = 0; c < b.n; ++c) {
        const index_t t = g0 + bi * TB + c, ti = t * N + i;
        const S gi = g[ti], dgt = dg_[std::size_t(t - g0)];
        S dl;
        if (centered_)
          dl = gi * dgt * inv_tau;  // dg holds dy . (u_i - mix)
        else if (nz == Normalize::sigmoid)
          dl = gi * (S(1) - gi) * dgt * inv_tau;
        else
          dl = dgt * inv_tau;
        DL_[ti] = dl;
        b.dl[c] = dl;
      }
    }
  }

  // Sweep 2, tile-major: the rest of the chain from the stored rows.
  void sweep_rest(index_t i, index_t nblk) {
    for (const Tile& tl : st_.W.expert_tiles)
      for (index_t bi = 0; bi < nblk; ++bi) {
        auto& b = blocks_[std::size_t(bi)];
        for (int c = 0; c < b.n; ++c) {
          const index_t oa = il(bi, c, tl.a0), ob = il(bi, c, tl.b0);
          b.ua[c] = ub_.data() + oa;
          b.ub[c] = ub_.data() + ob;
          b.dya[c] = dys_.data() + oa;
          b.dyb[c] = dys_.data() + ob;
        }
        const auto sc = tile_scratch(tl, bi);
        kernels::with_block_size(b.n, [&](auto C) {
          constexpr int Cn = decltype(C)::value;
          if (tl.rot)
            kernels::rot_backward<S, Cn, true, true>(K_, tl, bp(i), st_.bias_row(i), b, w_, o_, sc);
          else
            kernels::pass_backward<S, Cn, true, true>(K_, tl, bp(i), b, w_, o_, sc);
        });
      }
  }

  const CpuState<S>& st_;
  const CpuContext<S>& ctx_;
  const Bwd<S>& bw_;
  Partial<S>& part_;
  const kernels::BwdWant& w_;
  const index_t t0_, n_;
  S *DL_, *e_, *dz_;
  const kernels::Args<S> K_;
  const index_t dp_, Pp_, SG_, GR_;
  const bool centered_;
  Buf<S> hs_, mxs_, dys_, ub_, cb_, sb_, db_, dva_, dvb_, dpre_, dg_;
  Buf<kernels::Block<S>> blocks_;
  kernels::BwdOut<S> o_;
};

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
