// radargate/cpu/rows.hpp -- the steps of a block of token rows that every strategy shares: the
// base output y = W0 x + b0, the gate logits that do not read the experts, and in backward the
// gate's normalisation, dh from e and dx through the base, the angle generator and the gate
// (docs/MATH.md).
#pragma once

#include <algorithm>

#include "gradients.hpp"
#include "shrink.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// y = W0 x + b0 for the rows Yr of tokens Xr.
template <class S, class YRows, class XRows>
void base_output(const CpuState<S>& st, YRows& Yr, const XRows& Xr, index_t n, Arena& ar) {
  if (st.W.W0.present())
    gemm(Yr, Xr, st.W.W0.map().transpose(), false, ar);
  else
    Yr.setZero();
  if (st.p.base_b0.present())
    for (index_t t = 0; t < n; ++t)
      for (index_t o = 0; o < st.D.d; ++o) Yr(t, o) += st.p.base_b0(o);
}

// The gate before the experts: logits (Wg x + bg), or bg alone for a static gate, normalised
// when they do not read the experts; constant weights for the gates without logits. Only the
// top-k strategy keeps the selection; every other one computes all experts.
template <class S, class XRows>
void gate_before_experts(const CpuState<S>& st, const XRows& Xr, S* g, unsigned char* sel, index_t n, Arena& ar) {
  const auto& cfg = st.cfg;
  const index_t N = st.D.N;
  if (cfg.has_logits()) {
    MMap<S> L(g, n, N, Eigen::OuterStride<>(N));
    if (cfg.gate != GateKind::static_ && st.W.Wg.present())
      gemm(L, Xr, st.W.Wg.map().transpose(), false, ar);
    else
      L.setZero();
    if (st.p.stretch_bg.present())
      for (index_t t = 0; t < n; ++t)
        for (index_t i = 0; i < N; ++i) L(t, i) += st.p.stretch_bg(i);
  }
  if (cfg.has_logits() && !st.stretch()) {
    st.normalize_rows(g, sel, n);
    if (!st.sparse()) std::fill(sel, sel + n * N, 1);
  }
  if (cfg.gate == GateKind::none) std::fill(g, g + n * N, S(1));
  if (cfg.gate == GateKind::uniform) std::fill(g, g + n * N, S(1) / S(N));
}

// Logits complete (the stretch gate): normalised, every expert computed.
template <class S>
void normalize_all(const CpuState<S>& st, S* g, unsigned char* sel, index_t n) {
  st.normalize_rows(g, sel, n);
  std::fill(sel, sel + n * st.D.N, 1);
}

// dl = the backward of the gate's normalisation, in place over dg, for n tokens.
template <class S>
void normalize_backward_rows(const CpuState<S>& st, const S* g, S* DL, index_t n) {
  const index_t N = st.D.N;
  for (index_t t = 0; t < n; ++t) normalize_backward(st.cfg.normalize, S(st.cfg.tau), g + t * N, DL + t * N, N);
}

// dh_i = s_i e_i (e_i = B_i^T dv_i), ds_i += e_i . h_i, for n tokens.
template <class S>
void finish_dh(const CpuState<S>& st, const Bwd<S>& b, Partial<S>& part, const S* h, S* DH, const S* e, index_t n) {
  const index_t N = st.D.N, r = st.D.r;
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i) {
      const index_t ti = t * N + i;
      S dsacc = S(0);
      for (index_t q = 0; q < r; ++q) {
        DH[ti * r + q] = st.scale(i) * e[ti * r + q];
        dsacc += e[ti * r + q] * h[ti * r + q];
      }
      if (b.G.lora_scale.present()) part.ds[std::size_t(i)] += dsacc;
    }
}

// dx += Wx^T sum_i dz_i + Wg^T dl + W0^T dy for tokens [t0, t0 + n) (A^T dh: the strategy's).
template <class S, class DXRows>
void dx_beyond_experts(const CpuState<S>& st, const Bwd<S>& b, DXRows& DXr, index_t t0, index_t n, Arena& ar) {
  const index_t N = st.D.N, k = st.D.k;
  if (!b.DZS.empty() && st.W.Wx.present())
    gemm(DXr, CMap<S>(&b.DZS[std::size_t(t0 * k)], n, k, Eigen::OuterStride<>(k)), st.W.Wx.map(), true, ar);
  if (b.need.dlogits && st.cfg.gate != GateKind::static_ && st.W.Wg.present())
    gemm(DXr, CMap<S>(&b.DL[std::size_t(t0 * N)], n, N, Eigen::OuterStride<>(N)), st.W.Wg.map(), true, ar);
  if (st.W.W0.present()) gemm(DXr, b.DY.rows_of(t0, n), st.W.W0.map(), true, ar);
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
