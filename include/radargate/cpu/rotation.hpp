// radargate/cpu/rotation.hpp -- the rotation strategy: every rotation variant whose gate is not
// the one-pass stretch gate (one_pass.hpp). The angle-generator inputs are computed in rank
// space (docs/MATH.md),
//   z_i = Wx x + s_i (Wv B_i) h_i + sum_j m_ij s_j (Wc B_j) h_j,
// the experts by the tile kernels (tiles.hpp), and backward carries dz back through rank space
// (rank_space_backward).
#pragma once

#include "tiles.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// z_i for tokens [t0, t1), as matrix products over all the tokens at once:
//   V_i [n, k] = s_i H_i (Wv B_i)^T,  Q_j [n, k] = s_j H_j (Wc B_j)^T   (H_i = h of expert i)
//   C = M Q, with Q stacked as [N, n k]                                (the map, one GEMM)
//   z_i = Wx x + V_i + C_i
template <class S>
void angle_inputs(const CpuState<S>& st, const MatRef<S>& X, index_t t0, index_t t1, const S* h, S* z, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, r = st.D.r, k = st.D.k, nk = n * k;
  const auto& W = st.W;
  Arena::Mark keep(ar);
  MMap<S> wx(ar.zeros<S>(n * k).data(), n, k, Eigen::OuterStride<>(k));
  if (W.Wx.present()) gemm(wx, X.rows_of(t0, n), W.Wx.map().transpose(), false, ar);
  MMap<S> V(ar.take<S>(N * nk), N, nk, Eigen::OuterStride<>(nk)),
      Q(ar.take<S>(N * nk), N, nk, Eigen::OuterStride<>(nk));
  for (index_t i = 0; i < N; ++i) {
    const CMap<S> Hi(h + i * r, n, r, Eigen::OuterStride<>(N * r));
    gemm(MMap<S>(V.data() + i * nk, n, k, Eigen::OuterStride<>(k)), st.scale(i) * Hi,
         CMap<S>(&W.WvB[std::size_t(i * k * r)], k, r, Eigen::OuterStride<>(r)).transpose(), false, ar);
    gemm(MMap<S>(Q.data() + i * nk, n, k, Eigen::OuterStride<>(k)), st.scale(i) * Hi,
         CMap<S>(&W.WcB[std::size_t(i * k * r)], k, r, Eigen::OuterStride<>(r)).transpose(), false, ar);
  }
  gemm(V, CMap<S>(W.m.data(), N, N, Eigen::OuterStride<>(N)), Q, true, ar);
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i)
      for (index_t a = 0; a < k; ++a) z[(t * N + i) * k + a] = wx(t, a) + V(i, t * k + a);
}

// h = A x and z for tokens [t0, t1): what every rotation strategy computes before the tiles.
template <class S>
void rotation_inputs(const CpuState<S>& st, CpuContext<S>& ctx, const MatRef<S>& X, index_t t0, index_t t1, Arena& ar) {
  const index_t N = st.D.N;
  S* h = &ctx.h[std::size_t(t0 * N * st.D.r)];
  shrink_all(st, X, t0, t1, h, ar);
  angle_inputs(st, X, t0, t1, h, &ctx.z[std::size_t(t0 * N * st.D.k)], ar);
}

// Forward of the rotation strategy. A stretch gate (here: top-k) first needs every logit
// l_i += ws . u_i, then its weights, then the mixture: two passes over the tiles.
template <class S>
void rotation_forward(const CpuState<S>& st, CpuContext<S>& ctx, const MatRef<S>& X, const MatMut<S>& Y, index_t t0,
                      index_t t1, Arena& ar) {
  const index_t N = st.D.N;
  rotation_inputs(st, ctx, X, t0, t1, ar);
  if (st.stretch()) {
    S* g = &ctx.g[std::size_t(t0 * N)];  // holds the logits: l_i += ws . u_i
    tiles_forward<kernels::Put::none, true>(st, ctx, t0, t1, Y, g, ar);
    normalize_all(st, g, &ctx.sel[std::size_t(t0 * N)], t1 - t0);
  }
  tiles_forward<kernels::Put::add, false>(st, ctx, t0, t1, Y, nullptr, ar);
}

// ---- backward through rank space (docs/MATH.md), per token ------------------------------------

// dzc_j = sum_i m_ij dz_i (through c_i = sum_j m_ij v_j).
template <class S>
void map_backward(const CpuState<S>& st, const S* dzt, const Buf<S>& dzc) {
  const index_t N = st.D.N, k = st.D.k;
  std::fill(dzc.begin(), dzc.end(), S(0));
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < N; ++j) {
      const S mij = st.W.m[std::size_t(i * N + j)];
      for (index_t a = 0; a < k; ++a) dzc[std::size_t(j * k + a)] += mij * dzt[i * k + a];
    }
}

// dh_i = s_i (e_i + WvB_i^T dz_i + WcB_i^T dzc_i), ds_i += (e_i + ...) . h_i, for token t.
template <class S>
void rank_space_dh(const CpuState<S>& st, const Bwd<S>& b, Partial<S>& part, index_t t, const S* et, const S* dzt,
                   const Buf<S>& dzc, const S* ht, const Buf<S>& dh) {
  const index_t N = st.D.N, r = st.D.r, k = st.D.k, Nr = N * r;
  const auto& W = st.W;
  for (index_t i = 0; i < N; ++i) {
    for (index_t q = 0; q < r; ++q) {
      S acc = et[i * r + q];
      for (index_t a = 0; a < k; ++a)
        acc += W.WvB[std::size_t((i * k + a) * r + q)] * dzt[i * k + a] +
               W.WcB[std::size_t((i * k + a) * r + q)] * dzc[std::size_t(i * k + a)];
      dh[std::size_t(q)] = acc;
    }
    S dsacc = S(0);
    for (index_t q = 0; q < r; ++q) {
      b.DH[std::size_t(t * Nr + i * r + q)] = st.scale(i) * dh[std::size_t(q)];
      dsacc += dh[std::size_t(q)] * ht[i * r + q];
    }
    if (b.G.lora_scale.present()) part.ds[std::size_t(i)] += dsacc;
  }
}

// G_i += dz_i h_i^T (Gv from dz, Gc from dzc) for one token.
template <class S>
void outer_rank(const CpuState<S>& st, Buf<S>& G, const S* dz, const S* ht) {
  const index_t N = st.D.N, r = st.D.r, k = st.D.k;
  for (index_t i = 0; i < N; ++i)
    for (index_t a = 0; a < k; ++a)
      for (index_t q = 0; q < r; ++q) G[std::size_t((i * k + a) * r + q)] += dz[i * k + a] * ht[i * r + q];
}

// dm_ij += dz_i . (s_j WcB_j h_j) for one token (qv: scratch [N, k]).
template <class S>
void map_weights_grad(const CpuState<S>& st, Partial<S>& part, const S* dzt, const S* ht, const Buf<S>& qv) {
  const index_t N = st.D.N, r = st.D.r, k = st.D.k;
  for (index_t j = 0; j < N; ++j)
    for (index_t a = 0; a < k; ++a) {
      S acc = S(0);
      for (index_t q = 0; q < r; ++q) acc += st.W.WcB[std::size_t((j * k + a) * r + q)] * ht[j * r + q];
      qv[std::size_t(j * k + a)] = st.scale(j) * acc;
    }
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < N; ++j) {
      if (j == i) continue;
      S acc = S(0);
      for (index_t a = 0; a < k; ++a) acc += dzt[i * k + a] * qv[std::size_t(j * k + a)];
      part.dm[std::size_t(i * N + j)] += acc;
    }
}

// Rank-space part of backward for tokens [t0, t1), from e_i = B_i^T R_i^T du_i and dz_i:
// dh and ds, Gv and Gc (then dB_i += s_i (Wv^T Gv_i + Wc^T Gc_i), dWv = sum_i s_i Gv_i B_i^T, dWc
// likewise: reduce.hpp), dm, and sum_i dz_i for Wx and x.
template <class S>
void rank_space_backward(const CpuState<S>& st, const CpuContext<S>& ctx, Bwd<S>& b, Partial<S>& part, index_t t0,
                         index_t t1, const S* e, const S* dz, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, r = st.D.r, k = st.D.k, Nr = N * r;
  const S* h = &ctx.h[std::size_t(t0 * Nr)];
  const bool want_dh = b.want_dh();
  Arena::Mark keep(ar);
  const Buf<S> dzc = ar.zeros<S>(N * k), qv = ar.zeros<S>(N * k), dh = ar.zeros<S>(r);
  for (index_t t = 0; t < n; ++t) {
    const S* ht = h + t * Nr;
    const S* dzt = dz + t * N * k;
    map_backward(st, dzt, dzc);
    if (want_dh) rank_space_dh(st, b, part, t0 + t, e + t * Nr, dzt, dzc, ht, dh);
    if (!part.Gv.empty()) outer_rank(st, part.Gv, dzt, ht);
    if (!part.Gc.empty()) outer_rank(st, part.Gc, dzc.data(), ht);
    if (!part.dm.empty()) map_weights_grad(st, part, dzt, ht, qv);
    if (!b.DZS.empty())
      for (index_t a = 0; a < k; ++a) {
        S acc = S(0);
        for (index_t i = 0; i < N; ++i) acc += dzt[i * k + a];
        b.DZS[std::size_t((t0 + t) * k + a)] = acc;
      }
  }
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
