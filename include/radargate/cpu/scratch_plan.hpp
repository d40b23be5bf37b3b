// radargate/cpu/scratch_plan.hpp -- how many bytes of workspace a call needs, and where backward's
// buffers lie in it. Each thread's scratch holds the largest of its steps' buffers (each step
// gives its buffers back) plus the packing buffers of the largest matrix product; the terms are
// named after the functions they size, and a term is zero for strategies that never run it.
#pragma once

#include <new>
#include <type_traits>

#include "gradients.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

// Scratch of one thread's forward over n tokens.
template <class S>
std::size_t forward_thread_bytes(const CpuState<S>& st, index_t n) {
  constexpr index_t TB = kernels::max_block;
  const index_t N = st.D.N, r = st.D.r, k = st.D.k, Nr = N * r, d = st.D.d, din = st.D.d_in, L = st.W.max_len,
                dp = st.W.dpad;
  auto B = [](index_t m) { return arena_bytes<S>(m); };
  auto G = [](index_t a, index_t b, index_t c) { return gemm_bytes<S>(a, b, c); };
  const std::size_t tile_scratch = 6 * B(TB * L);
  const bool one = st.strategy == Strategy::one_pass;
  const std::size_t bufs =
      std::max({!st.dense() ? B(n * Nr) + 2 * B(TB * L) + tile_scratch : 0,         // tiles_forward
                one ? B(n * Nr) + 2 * B(TB * dp) + tile_scratch : 0,                // forward_one_pass
                st.sparse() ? arena_bytes<index_t>(n) + B(n * din) + B(n * r) : 0,  // sparse_shrink
                st.dense() ? B(n * Nr) : 0,                                         // dense_forward
                st.rotation() ? B(n * k) + 2 * B(N * n * k) : 0});                  // angle_inputs
  const std::size_t gemms = std::max(
      {G(n, d, din), G(n, N, din), G(n, Nr, din), G(n, d, Nr), G(n, r, din), G(n, k, din), G(n, k, r), G(N, n * k, N)});
  return round_bytes(bufs + gemms);
}

// Scratch of one thread's backward over n tokens (of T, nt threads), then reduce_gradients.
template <class S>
std::size_t backward_thread_bytes(const CpuState<S>& st, index_t n, index_t T, int nt) {
  constexpr index_t TB = kernels::max_block;
  const index_t N = st.D.N, r = st.D.r, k = st.D.k, Nr = N * r, d = st.D.d, din = st.D.d_in, L = st.W.max_len,
                dp = st.W.dpad, Pp = st.W.Ppad;
  auto B = [](index_t m) { return arena_bytes<S>(m); };
  auto G = [](index_t a, index_t b, index_t c) { return gemm_bytes<S>(a, b, c); };
  const std::size_t tile_scratch = 6 * B(TB * L);
  const index_t SG = std::min<index_t>(n, 8 * TB), GR = (SG + TB - 1) / TB * TB;
  const bool dense = st.dense(), sparse = st.sparse(), rot = st.rotation(), one = st.strategy == Strategy::one_pass;
  const std::size_t rows =
      (dense ? 2 * B(n * Nr) : B(n * Nr) + B(n * N * k)) +              // E and e, or e and dz
      std::max({!dense ? B(n * Nr) + 2 * B(TB * L) + tile_scratch : 0,  // tiles_backward
                one ? B(n * Nr) + 3 * B(GR * dp) + 3 * B(GR * Pp) + 3 * B(TB * L) + B(SG) +
                          arena_bytes<kernels::Block<S>>(GR / TB)
                    : 0,                                                          // OnePassBackward
                rot ? 2 * B(N * k) + B(r) : 0,                                    // rank_space_backward
                sparse ? arena_bytes<index_t>(n) + B(n * r) + B(n * din) : 0}) +  // sparse_dx
      std::max({G(n, Nr, d), G(n, din, Nr), G(n, din, k), G(n, din, N), G(n, din, d), G(n, din, r)});
  const index_t nc = (din + nt - 1) / nt, ni = (N + nt - 1) / nt;
  const std::size_t reduce = (sparse ? arena_bytes<index_t>(T) + B(T * r) + B(T * nc) : 0) +  // sparse_reduce_dA
                             (rot ? 2 * B(k * ni * r) + B(ni * r * d) : 0) +                  // rank_term_dB
                             (dense ? B(T * ni * r) + B(ni * r * d) : 0) + B(N) + B(N * N) + B(k * Pp) + B(N * Pp) +
                             B(N * r) + 2 * B(dp) +  // reduce_small
                             2 * (2 * B(N * k * r) + B(k * dp)) +
                             std::max({G(Nr, nc, T), G(r, nc, T), G(N, nc, T), G(k, nc, T), G(d, nc, T),
                                       G(ni * r, d, k), G(ni * r, d, T), G(k, dp, Nr)});
  return round_bytes(std::max(rows, reduce));
}

// Backward's workspace, in order: staged x and dy, dh, dl, sum dz, the scratch of outputs that
// are not row-major matrices, the per-thread partial sums, the per-thread arenas. With a counting
// arena (out null) it only measures.
template <class S>
void carve_backward(const CpuState<S>& st, Arena& A, Bwd<S>& b, index_t x_copy, index_t dy_copy,
                    std::add_pointer_t<Outs<S>> out) {
  const index_t T = b.T, N = st.D.N, r = st.D.r, k = st.D.k;
  const auto& G = b.G;
  const int nt = st.pool->size();
  S* xs = A.take<S>(x_copy);
  S* dys = A.take<S>(dy_copy);
  if (b.need.dv) b.DH = A.zeros<S>(T * N * r);
  if (b.need.dlogits) b.DL = A.zeros<S>(T * N);
  if (st.rotation() && (G.angle_Wx.present() || G.x.present())) b.DZS = A.zeros<S>(T * k);
  S* dx = A.take<S>(OutMatrix<S, 2>::scratch_size(G.x));
  S* dA = A.take<S>(OutMatrix<S, 3>::scratch_size(G.lora_A));
  S* dWg = A.take<S>(OutMatrix<S, 2>::scratch_size(G.stretch_Wg));
  S* dWx = A.take<S>(OutMatrix<S, 2>::scratch_size(G.angle_Wx));
  S* dW0 = A.take<S>(OutMatrix<S, 2>::scratch_size(G.base_W0));
  b.part = A.buf<Partial<S>>(nt);
  for (int th = 0; th < nt; ++th) {
    Partial<S> scratch;
    Partial<S>* p = b.part.data() ? new (b.part.data() + th) Partial<S>() : &scratch;
    alloc_partial(st, b, *p, A);
  }
  const std::size_t tb = backward_thread_bytes(st, (T + nt - 1) / nt, T, nt);
  unsigned char* tbase = A.take<unsigned char>(index_t(std::size_t(nt) * tb));
  if (out) *out = Outs<S>{xs, dys, dx, dA, dWg, dWx, dW0, tbase, tb};
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
