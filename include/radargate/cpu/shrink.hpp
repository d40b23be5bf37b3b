// radargate/cpu/shrink.hpp -- the shrink h = A x of every expert and its transpose dx += A^T dh
// (docs/MATH.md), with A in Scalar (one GEMM over the stacked A [N*r, d_in]) or in 16 bits. The
// top-k gate's shrink of the selected experts only is in sparse.hpp.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "state.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// Rows of 16-bit A widened at a time for a GEMM: about 2^18 values.
inline index_t half_rows_per_gemm(index_t Nr, index_t din) {
  return std::max<index_t>(1, std::min<index_t>(Nr, (index_t(1) << 18) / std::max<index_t>(din, 1)));
}

// h = A x with 16-bit A for a few tokens (float layers): each row of A is read once for the
// block of tokens (kernels::shrink_rows).
template <class S>
void half_shrink_rows(const CpuState<S>& st, const MatRef<S>& X, index_t t0, index_t n, S* h) {
  if constexpr (std::is_same<S, float>::value) {
    constexpr int TB = kernels::max_block;
    const index_t Nr = st.D.N * st.D.r, din = st.D.d_in;
    for (index_t tb = 0; tb < n; tb += TB) {
      const int nb = int(std::min<index_t>(TB, n - tb));
      const float* xs[TB];
      float* hs[TB];
      for (int u = 0; u < nb; ++u) {
        xs[u] = X.row(t0 + tb + u);
        hs[u] = h + (tb + u) * Nr;
      }
      st.W.with_a(0, [&](const auto* a, index_t ld) {
        using WB = std::remove_const_t<std::remove_pointer_t<decltype(a)>>;
        if constexpr (is_half<WB>::value)
          kernels::with_block_size(nb,
                                   [&](auto C) { kernels::shrink_rows<decltype(C)::value>(a, ld, Nr, din, xs, hs); });
      });
    }
  }
}

// h = A x with 16-bit A, for tokens [t0, t1): a few tokens read each row of A once; more widen A
// a block of rows at a time for a GEMM.
template <class S>
void half_shrink(const CpuState<S>& st, const MatRef<S>& X, index_t t0, index_t t1, S* h) {
  const index_t n = t1 - t0, Nr = st.D.N * st.D.r;
  if (std::is_same<S, float>::value && n <= 2 * kernels::max_block) return half_shrink_rows(st, X, t0, n, h);
  const index_t rows = half_rows_per_gemm(Nr, st.D.d_in);
  std::vector<S> astore;
  const auto Xr = X.rows_of(t0, n);
  for (index_t j0 = 0; j0 < Nr; j0 += rows) {
    const index_t nr = std::min(rows, Nr - j0);
    MMap<S>(h + j0, n, nr, Eigen::OuterStride<>(Nr)).noalias() = Xr * st.W.a_rows(j0, nr, astore).map().transpose();
  }
}

// h = A x for every expert and tokens [t0, t1).
template <class S>
void shrink_all(const CpuState<S>& st, const MatRef<S>& X, index_t t0, index_t t1, S* h, Arena& ar) {
  const index_t n = t1 - t0, Nr = st.D.N * st.D.r;
  if (st.W.half())
    half_shrink(st, X, t0, t1, h);
  else
    gemm(MMap<S>(h, n, Nr, Eigen::OuterStride<>(Nr)), X.rows_of(t0, n), st.W.A.map().transpose(), false, ar);
}

// dx += A^T dh for every expert (rows DXr of tokens [t0, t0 + n), DH their dh).
template <class S, class DXRows>
void shrink_backward_all(const CpuState<S>& st, DXRows& DXr, const S* DH, index_t n, Arena& ar) {
  const index_t Nr = st.D.N * st.D.r;
  if (!st.W.half()) {
    gemm(DXr, CMap<S>(DH, n, Nr, Eigen::OuterStride<>(Nr)), st.W.A.map(), true, ar);
    return;
  }
  const index_t rows = half_rows_per_gemm(Nr, st.D.d_in);  // 16-bit A: widened a block of rows at a time
  std::vector<S> astore;
  for (index_t j0 = 0; j0 < Nr; j0 += rows) {
    const index_t nr = std::min(rows, Nr - j0);
    DXr.noalias() += CMap<S>(DH + j0, n, nr, Eigen::OuterStride<>(Nr)) * st.W.a_rows(j0, nr, astore).map();
  }
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
