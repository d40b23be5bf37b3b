// radargate/cpu/dense.hpp -- the dense strategy: rotation off, every expert computed, B in
// Scalar. The experts are then two GEMMs (docs/MATH.md):
//   forward   Y += (g s h) B^T, and the stretch logit ws . v_i = s_i (B_i^T ws) . h_i in rank space
//   backward  E = dy B (E_ti = B_i^T dy_t), dg_i = s_i E_i . h_i, dh from g_i E_i + dl_i B_i^T ws,
//             dB_i = s_i sum_t (g_i dy + dl_i ws) h_i^T, dws = sum_i B_i (sum_t dl_i s_i h_i)
#pragma once

#include "rows.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// The stretch logit in rank space, for n tokens: l_i += ws . v_i = s_i (B_i^T ws) . h_i.
template <class S>
void stretch_logits_rank_space(const CpuState<S>& st, S* g, const S* h, index_t n) {
  const index_t N = st.D.N, r = st.D.r;
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i) {
      S acc = S(0);
      for (index_t q = 0; q < r; ++q) acc += st.W.wsB[std::size_t(i * r + q)] * h[(t * N + i) * r + q];
      g[t * N + i] += st.scale(i) * acc;
    }
}

template <class S>
void dense_forward(const CpuState<S>& st, CpuContext<S>& ctx, const MatRef<S>& X, const MatMut<S>& Y, index_t t0,
                   index_t t1, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, r = st.D.r, Nr = N * r;
  S* g = &ctx.g[std::size_t(t0 * N)];
  S* h = &ctx.h[std::size_t(t0 * Nr)];
  shrink_all(st, X, t0, t1, h, ar);
  if (st.stretch()) {
    stretch_logits_rank_space(st, g, h, n);
    normalize_all(st, g, &ctx.sel[std::size_t(t0 * N)], n);
  }
  // y += sum_i g_i s_i B_i h_i = (g s h) B^T
  Arena::Mark keep(ar);
  const Buf<S> wt = ar.buf<S>(n * Nr);
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i)
      for (index_t q = 0; q < r; ++q)
        wt[std::size_t((t * N + i) * r + q)] = g[t * N + i] * st.scale(i) * h[(t * N + i) * r + q];
  auto Yr = Y.rows_of(t0, n);
  gemm(Yr, CMap<S>(wt.data(), n, Nr, Eigen::OuterStride<>(Nr)), st.bt_matrix(), true, ar);
}

// dg_i = dy . v_i = s_i E_i . h_i, for n tokens.
template <class S>
void dense_dg(const CpuState<S>& st, const MMap<S>& E, const S* h, S* DL, index_t n) {
  const index_t N = st.D.N, r = st.D.r;
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i) {
      S acc = S(0);
      for (index_t q = 0; q < r; ++q) acc += E(t, i * r + q) * h[(t * N + i) * r + q];
      DL[t * N + i] = st.scale(i) * acc;
    }
}

// e_i = g_i E_i (+ dl_i B_i^T ws for the stretch gate), for n tokens.
template <class S>
void dense_e(const CpuState<S>& st, const MMap<S>& E, const S* g, const S* DL, S* e, index_t n) {
  const index_t N = st.D.N, r = st.D.r;
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i)
      for (index_t q = 0; q < r; ++q) {
        S v = g[t * N + i] * E(t, i * r + q);
        if (st.stretch()) v += DL[t * N + i] * st.W.wsB[std::size_t(i * r + q)];
        e[(t * N + i) * r + q] = v;
      }
}

// Cws_i += sum_t dl_i s_i h_i (for dB and dws of the stretch gate), for n tokens.
template <class S>
void dense_cws(const CpuState<S>& st, Partial<S>& part, const S* DL, const S* h, index_t n) {
  const index_t N = st.D.N, r = st.D.r;
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < N; ++i)
      for (index_t q = 0; q < r; ++q)
        part.Cws[std::size_t(i * r + q)] += DL[t * N + i] * st.scale(i) * h[(t * N + i) * r + q];
}

// Backward of the experts for tokens [t0, t1): dl, dh (and ds), and the thread's Cws.
template <class S>
void dense_backward_rows(const CpuState<S>& st, const CpuContext<S>& ctx, Bwd<S>& b, Partial<S>& part, index_t t0,
                         index_t t1, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, Nr = N * st.D.r;
  const auto& need = b.need;
  const S* g = &ctx.g[std::size_t(t0 * N)];
  const S* h = &ctx.h[std::size_t(t0 * Nr)];
  S* DL = need.dlogits ? &b.DL[std::size_t(t0 * N)] : nullptr;
  MMap<S> E(ar.take<S>(n * Nr), n, Nr, Eigen::OuterStride<>(Nr));  // E_ti = B_i^T dy_t
  if (need.dv || need.dlogits) gemm(E, b.DY.rows_of(t0, n), st.bt_matrix().transpose(), false, ar);
  if (need.dlogits) {
    dense_dg(st, E, h, DL, n);
    normalize_backward_rows(st, g, DL, n);
  }
  if (need.dv) {
    const Buf<S> e = ar.buf<S>(n * Nr);
    dense_e(st, E, g, DL, e.data(), n);
    finish_dh(st, b, part, h, &b.DH[std::size_t(t0 * Nr)], e.data(), n);
  }
  if (!part.Cws.empty()) dense_cws(st, part, DL, h, n);
}

// dB_i = s_i sum_t (g_i dy + dl_i ws) h_i^T for experts [i0, i1): one GEMM for the range.
template <class S>
void dense_reduce_dB(const CpuState<S>& st, const CpuContext<S>& ctx, const Bwd<S>& b, index_t i0, index_t i1,
                     Arena& ar) {
  const index_t T = b.T, N = st.D.N, r = st.D.r, d = st.D.d, ni = i1 - i0;
  const View<S, 3>& dB = b.G.lora_B;
  MMap<S> wt(ar.take<S>(T * ni * r), T, ni * r, Eigen::OuterStride<>(ni * r));
  for (index_t t = 0; t < T; ++t)
    for (index_t i = i0; i < i1; ++i)
      for (index_t q = 0; q < r; ++q)
        wt(t, (i - i0) * r + q) = ctx.g[std::size_t(t * N + i)] * st.scale(i) * ctx.h[std::size_t((t * N + i) * r + q)];
  MMap<S> acc(ar.take<S>(ni * r * d), ni * r, d, Eigen::OuterStride<>(d));  // [ni r, d]
  gemm(acc, wt.transpose(), b.DY.map(), false, ar);
  for (index_t i = i0; i < i1; ++i)
    for (index_t q = 0; q < r; ++q) {
      S cws = S(0);
      if (st.stretch())
        for (const Partial<S>& p : b.part) cws += p.Cws[std::size_t(i * r + q)];
      const S* row = acc.data() + ((i - i0) * r + q) * d;
      S* out = dB.data + i * dB.stride[0] + q * dB.stride[2];
      for (index_t o = 0; o < d; ++o) out[o * dB.stride[1]] += row[o] + cws * st.W.ws[std::size_t(o)];
    }
}

// dws in slot space = sum_i B_i C_i, C = sum_t dl_i s_i h_i summed over the threads.
template <class S>
Buf<S> dense_dws(const CpuState<S>& st, const Buf<S>& C, Arena& ar) {
  const Buf<S> dws = ar.zeros<S>(st.W.dpad);
  Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(dws.data(), st.D.d).noalias() =
      Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(C.data(), st.D.N * st.D.r) * st.bt_matrix();
  return dws;
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
