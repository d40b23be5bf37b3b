// radargate/cpu/sparse.hpp -- the sparse strategy: rotation off, a top-k gate that does not read
// the experts. Only the selected (token, expert) pairs are computed: the shrink h_i = A_i x and
// its transposes dx += A_i^T dh_i, dA_i = sum_t dh_i x^T as one GEMM per expert over the tokens
// that selected it, the expand by the tile kernels (tiles.hpp).
#pragma once

#include <vector>

#include "tiles.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// The tokens of [0, n) that selected expert i, into idx; returns how many.
inline index_t tokens_of_expert(const unsigned char* sel, index_t n, index_t N, index_t i, index_t* idx) {
  index_t ni = 0;
  for (index_t t = 0; t < n; ++t)
    if (sel[t * N + i]) idx[ni++] = t;
  return ni;
}

// h_i = A_i x for the selected (token, expert) pairs only, one GEMM per expert.
template <class S>
void sparse_shrink(const CpuState<S>& st, const MatRef<S>& X, index_t t0, index_t t1, S* h, const unsigned char* sel,
                   Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, r = st.D.r, din = st.D.d_in;
  Arena::Mark keep(ar);
  index_t* idx = ar.take<index_t>(n);
  S* xg = ar.take<S>(n * din);
  S* hg = ar.take<S>(n * r);
  std::vector<S> astore;  // used only with 16-bit storage
  for (index_t i = 0; i < N; ++i) {
    const index_t ni = tokens_of_expert(sel, n, N, i, idx);
    if (ni == 0) continue;
    MMap<S> Xg(xg, ni, din, Eigen::OuterStride<>(std::max<index_t>(din, 1)));
    MMap<S> Hg(hg, ni, r, Eigen::OuterStride<>(r));
    for (index_t a = 0; a < ni; ++a) Xg.row(a) = X.rows_of(t0 + idx[std::size_t(a)], 1);
    gemm(Hg, Xg, st.W.a_rows(i * r, r, astore).map().transpose(), false, ar);
    for (index_t a = 0; a < ni; ++a)
      for (index_t q = 0; q < r; ++q) h[(idx[std::size_t(a)] * N + i) * r + q] = Hg(a, q);
  }
}

template <class S>
void sparse_forward(const CpuState<S>& st, CpuContext<S>& ctx, const MatRef<S>& X, const MatMut<S>& Y, index_t t0,
                    index_t t1, Arena& ar) {
  const index_t N = st.D.N;
  sparse_shrink(st, X, t0, t1, &ctx.h[std::size_t(t0 * N * st.D.r)], &ctx.sel[std::size_t(t0 * N)], ar);
  tiles_forward<kernels::Put::add, false>(st, ctx, t0, t1, Y, nullptr, ar);
}

// dx += sum_{i selected} A_i^T dh_i for tokens [t0, t1), grouped per expert.
template <class S>
void sparse_dx(const CpuState<S>& st, const MatMut<S>* DX, index_t t0, index_t t1, const S* DH,
               const unsigned char* sel, Arena& ar) {
  const index_t n = t1 - t0, N = st.D.N, r = st.D.r, din = st.D.d_in;
  Arena::Mark keep(ar);
  index_t* idx = ar.take<index_t>(n);
  S* dg = ar.take<S>(n * r);
  S* xg = ar.take<S>(n * din);
  std::vector<S> astore;  // used only with 16-bit storage
  for (index_t i = 0; i < N; ++i) {
    const index_t ni = tokens_of_expert(sel, n, N, i, idx);
    if (ni == 0) continue;
    MMap<S> Dg(dg, ni, r, Eigen::OuterStride<>(r));
    MMap<S> Xg(xg, ni, din, Eigen::OuterStride<>(std::max<index_t>(din, 1)));
    for (index_t a = 0; a < ni; ++a)
      for (index_t q = 0; q < r; ++q) Dg(a, q) = DH[(idx[std::size_t(a)] * N + i) * r + q];
    gemm(Xg, Dg, st.W.a_rows(i * r, r, astore).map(), false, ar);
    for (index_t a = 0; a < ni; ++a) DX->rows_of(t0 + idx[std::size_t(a)], 1) += Xg.row(a);
  }
}

// dA_i += sum_t dh_i x^T over the tokens that selected expert i, columns [c0, c0 + nc) of x.
template <class S, class XCols>
void sparse_reduce_dA(const CpuState<S>& st, const CpuContext<S>& ctx, const Bwd<S>& b, const MatMut<S>* dA,
                      const XCols& Xc, index_t c0, index_t nc, Arena& ar) {
  const index_t T = b.T, N = st.D.N, r = st.D.r;
  Arena::Mark keep(ar);
  index_t* idx = ar.take<index_t>(T);
  S* dg = ar.take<S>(T * r);
  S* xg = ar.take<S>(T * nc);
  for (index_t i = 0; i < N; ++i) {
    const index_t ni = tokens_of_expert(ctx.sel.data(), T, N, i, idx);
    if (ni == 0) continue;
    MMap<S> Dg(dg, ni, r, Eigen::OuterStride<>(r)), Xg(xg, ni, nc, Eigen::OuterStride<>(nc));
    for (index_t a = 0; a < ni; ++a) {
      for (index_t q = 0; q < r; ++q) Dg(a, q) = b.DH[std::size_t((idx[std::size_t(a)] * N + i) * r + q)];
      Xg.row(a) = Xc.row(idx[std::size_t(a)]);
    }
    gemm(dA->map().block(i * r, c0, r, nc), Dg.transpose(), Xg, true, ar);
  }
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
