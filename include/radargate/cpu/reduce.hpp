// radargate/cpu/reduce.hpp -- the parameter gradients from backward's shared derivatives and the
// threads' partial sums: thread th of nt takes a block of d_in columns of the GEMM gradients (A,
// Wg, Wx, W0), a block of experts of dB, and (last thread) the small gradients. Partial sums are
// added in thread order, so a fixed thread count gives bit-identical results.
#pragma once

#include "sparse.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// The rotation's rank-space term of dB for experts [i0, i1), transposed so that each expert reads
// its own r rows in order: Rt [ni r, d] = Gv^T Wv + Gc^T Wc (columns of G scaled by s_i).
template <class S>
const S* rank_term_dB(const CpuState<S>& st, const Bwd<S>& b, index_t i0, index_t i1, Arena& ar) {
  const index_t r = st.D.r, k = st.D.k, d = st.D.d, ni = i1 - i0;
  const auto& W = st.W;
  MMap<S> Gv(ar.zeros<S>(k * ni * r).data(), k, ni * r, Eigen::OuterStride<>(ni * r)),
      Gc(ar.zeros<S>(k * ni * r).data(), k, ni * r, Eigen::OuterStride<>(ni * r));
  for (const Partial<S>& p : b.part)
    for (index_t i = i0; i < i1; ++i)
      for (index_t a = 0; a < k; ++a)
        for (index_t q = 0; q < r; ++q) {
          Gv(a, (i - i0) * r + q) += p.Gv[std::size_t((i * k + a) * r + q)];
          Gc(a, (i - i0) * r + q) += p.Gc[std::size_t((i * k + a) * r + q)];
        }
  for (index_t i = i0; i < i1; ++i) {
    Gv.middleCols((i - i0) * r, r) *= st.scale(i);
    Gc.middleCols((i - i0) * r, r) *= st.scale(i);
  }
  MMap<S> Rt(ar.zeros<S>(ni * r * d).data(), ni * r, d, Eigen::OuterStride<>(d));
  if (W.Wv.present()) gemm(Rt, Gv.transpose(), W.Wv.map(), true, ar);
  if (W.Wc.present()) gemm(Rt, Gc.transpose(), W.Wc.map(), true, ar);
  return Rt.data();
}

// Column o of dB_i (dst, rows q stride[2] apart): the threads' partials at packed offset
// `packed` + q W, plus the rank-space term rcol[q d] when there is one.
template <class S>
RG_INLINE void add_dB_column(const Bwd<S>& b, index_t packed, const S* rcol, index_t d, index_t r, S* dst) {
  constexpr index_t Wd = simd::width<S>();
  for (index_t q = 0; q < r; ++q) {
    S v = rcol ? rcol[q * d] : S(0);
    for (const Partial<S>& p : b.part) v += p.dBP[std::size_t(packed + q * Wd)];
    dst[q * b.G.lora_B.stride[2]] += v;
  }
}

// dB for experts [i0, i1) of the tile strategies: the thread partials (slot space) summed in
// thread order, plus (rotation) the rank-space term, added straight into the caller's view.
template <class S>
void reduce_dB(const CpuState<S>& st, const Bwd<S>& b, index_t i0, index_t i1, Arena& ar) {
  constexpr index_t Wd = simd::width<S>();
  const index_t r = st.D.r, d = st.D.d, dpad = st.W.dpad;
  const View<S, 3>& dB = b.G.lora_B;
  Arena::Mark keep(ar);
  const bool rank_term = st.rotation() && (st.W.Wv.present() || st.W.Wc.present());
  const S* Rtp = rank_term ? rank_term_dB(st, b, i0, i1, ar) : nullptr;
  for (index_t i = i0; i < i1; ++i) {
    S* out = dB.data + i * dB.stride[0];
    for (index_t s = 0; s < dpad; s += Wd) {
      const index_t off = i * r * dpad + st.W.group_offset(s);
      for (index_t l = 0; l < Wd; ++l) {
        const index_t o = st.W.coord[std::size_t(s + l)];
        if (o < 0) continue;
        add_dB_column(b, off + l, Rtp ? Rtp + (i - i0) * r * d + o : nullptr, d, r, out + o * dB.stride[1]);
      }
    }
  }
}

// The sum over the threads of one partial buffer (member) of `size` values.
template <class S, class M>
Buf<S> sum_parts(const Bwd<S>& b, M member, std::size_t size, Arena& ar) {
  const Buf<S> acc = ar.zeros<S>(index_t(size));
  for (const Partial<S>& p : b.part) {
    const auto& v = p.*member;
    for (std::size_t e = 0; e < size; ++e) acc[e] += v[e];
  }
  return acc;
}

// dWv = sum_i s_i Gv_i B_i^T (or dWc from Gc): one GEMM [k, N r] x [N r, d].
template <class S, class M>
void rank_weight_grad(const CpuState<S>& st, const Bwd<S>& b, M member, const View<S, 2>& out, Arena& ar) {
  const index_t N = st.D.N, r = st.D.r, k = st.D.k, dpad = st.W.dpad;
  Arena::Mark keep(ar);
  const auto Gs = sum_parts(b, member, std::size_t(N * k * r), ar);
  MMap<S> Gcat(ar.take<S>(k * N * r), k, N * r, Eigen::OuterStride<>(N * r));
  for (index_t i = 0; i < N; ++i)
    for (index_t a = 0; a < k; ++a)
      for (index_t q = 0; q < r; ++q) Gcat(a, i * r + q) = st.scale(i) * Gs[std::size_t((i * k + a) * r + q)];
  simd::avec<S> btstore;  // BT, unpacked from the packed weights when only 16-bit B is kept
  MMap<S> acc(ar.take<S>(k * dpad), k, dpad, Eigen::OuterStride<>(dpad));
  gemm(acc, Gcat, CMap<S>(st.W.bt_unpacked(b.BP, btstore), N * r, dpad, Eigen::OuterStride<>(dpad)), false, ar);
  for (index_t s = 0; s < dpad; ++s) {
    const index_t o = st.W.coord[std::size_t(s)];
    if (o < 0) continue;
    for (index_t a = 0; a < k; ++a) out(a, o) += acc(a, s);
  }
}

// lora.scale, map.M, angle.U and angle.bias from the partial sums.
template <class S>
void reduce_scale_map_angles(const CpuState<S>& st, const Bwd<S>& b, Arena& ar) {
  constexpr index_t Wd = simd::width<S>();
  const index_t N = st.D.N, k = st.D.k, P = st.D.P, Ppad = st.W.Ppad;
  const auto& G = b.G;
  if (G.lora_scale.present()) {
    const auto ds = sum_parts(b, &Partial<S>::ds, std::size_t(N), ar);
    for (index_t i = 0; i < N; ++i) G.lora_scale(i) += ds[std::size_t(i)];
  }
  if (G.map_M.present()) {
    auto dm = sum_parts(b, &Partial<S>::dm, std::size_t(N * N), ar);
    if (st.cfg.map == MapMode::learned && N > 1)
      for (index_t i = 0; i < N; ++i) {
        map_weights_backward(&st.W.m[std::size_t(i * N)], &dm[std::size_t(i * N)], i, N);
        for (index_t j = 0; j < N; ++j) G.map_M(i, j) += dm[std::size_t(i * N + j)];
      }
  }
  if (G.angle_U.present()) {
    const auto dUP = sum_parts(b, &Partial<S>::dUP, std::size_t(k * Ppad), ar);
    for (index_t m = 0; m < P; ++m)
      for (index_t q = 0; q < k; ++q) G.angle_U(m, q) += dUP[std::size_t(m / Wd * k * Wd + q * Wd + m % Wd)];
  }
  if (G.angle_bias.present()) {
    const auto db = sum_parts(b, &Partial<S>::dbias, std::size_t(N * Ppad), ar);
    for (index_t i = 0; i < N; ++i)
      for (index_t m = 0; m < P; ++m) G.angle_bias(i, m) += db[std::size_t(i * Ppad + m)];
  }
}

// The small gradients (last thread): scale, map, angles, ws, Wv, Wc, bg, b0.
template <class S>
void reduce_small(const CpuState<S>& st, const Bwd<S>& b, Arena& ar) {
  const index_t T = b.T, N = st.D.N, r = st.D.r, d = st.D.d, dpad = st.W.dpad;
  const auto& G = b.G;
  reduce_scale_map_angles(st, b, ar);
  if (G.stretch_ws.present()) {
    const Buf<S> dws = st.dense() ? dense_dws(st, sum_parts(b, &Partial<S>::Cws, std::size_t(N * r), ar), ar)
                                  : sum_parts(b, &Partial<S>::dws, std::size_t(dpad), ar);
    for (index_t s = 0; s < dpad; ++s)
      if (st.W.coord[std::size_t(s)] >= 0) G.stretch_ws(st.W.coord[std::size_t(s)]) += dws[std::size_t(s)];
  }
  if (G.angle_Wv.present()) rank_weight_grad(st, b, &Partial<S>::Gv, G.angle_Wv, ar);
  if (G.angle_Wc.present()) rank_weight_grad(st, b, &Partial<S>::Gc, G.angle_Wc, ar);
  if (G.stretch_bg.present())
    for (index_t t = 0; t < T; ++t)
      for (index_t i = 0; i < N; ++i) G.stretch_bg(i) += b.DL[std::size_t(t * N + i)];
  if (G.base_b0.present())
    for (index_t t = 0; t < T; ++t) {
      const S* row = b.DY.row(t);
      for (index_t o = 0; o < d; ++o) G.base_b0(o) += row[o];
    }
}

/// The GEMM gradients' outputs of one backward call (null: not asked for).
template <class S>
struct GemmGrads {
  const MatMut<S>* dA = nullptr;
  const MatMut<S>* dWg = nullptr;
  const MatMut<S>* dWx = nullptr;
  const MatMut<S>* dW0 = nullptr;
};

// Columns [c0, c0 + nc) of d_in of the GEMM gradients: dA = sum_t dh x^T (top-k: per expert over
// its tokens), dWg = sum_t dl x^T, dWx = sum_t (sum_i dz_i) x^T, dW0 = sum_t dy x^T.
template <class S>
void reduce_gemm_columns(const CpuState<S>& st, const CpuContext<S>& ctx, const Bwd<S>& b, const GemmGrads<S>& out,
                         index_t c0, index_t nc, Arena& ar) {
  const index_t T = b.T, N = st.D.N, k = st.D.k, Nr = N * st.D.r;
  const CMap<S> Xm = b.X.map();
  const auto Xc = Xm.middleCols(c0, nc);
  if (out.dA && st.sparse())
    sparse_reduce_dA(st, ctx, b, out.dA, Xc, c0, nc, ar);
  else if (out.dA)
    gemm(out.dA->map().middleCols(c0, nc), CMap<S>(b.DH.data(), T, Nr, Eigen::OuterStride<>(Nr)).transpose(), Xc, true,
         ar);
  if (out.dWg)
    gemm(out.dWg->map().middleCols(c0, nc), CMap<S>(b.DL.data(), T, N, Eigen::OuterStride<>(N)).transpose(), Xc, true,
         ar);
  if (out.dWx)
    gemm(out.dWx->map().middleCols(c0, nc), CMap<S>(b.DZS.data(), T, k, Eigen::OuterStride<>(k)).transpose(), Xc, true,
         ar);
  if (out.dW0) gemm(out.dW0->map().middleCols(c0, nc), b.DY.map().transpose(), Xc, true, ar);
}

// Thread th of nt's share of the reduction.
template <class S>
void reduce_gradients(const CpuState<S>& st, const CpuContext<S>& ctx, const Bwd<S>& b, int th, int nt,
                      const GemmGrads<S>& out, Arena& ar) {
  index_t c0, c1;
  token_range(st.D.d_in, nt, th, c0, c1);
  if (c1 > c0) reduce_gemm_columns(st, ctx, b, out, c0, c1 - c0, ar);
  if (b.G.lora_B.present()) {
    index_t i0, i1;
    token_range(st.D.N, nt, th, i0, i1);
    if (i0 < i1 && st.dense()) {
      Arena::Mark keep(ar);
      dense_reduce_dB(st, ctx, b, i0, i1, ar);
    } else if (i0 < i1) {
      reduce_dB(st, b, i0, i1, ar);
    }
  }
  if (th == nt - 1) reduce_small(st, b, ar);
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
