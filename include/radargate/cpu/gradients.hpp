// radargate/cpu/gradients.hpp -- the state of one backward call: the derivatives shared by all
// threads (dh, dl, sum dz), each thread's partial sums of the parameter gradients, and where these
// lie in the caller's workspace. Partial sums are reduced in thread order (reduce.hpp), so results
// are bit-identical run to run for a fixed thread count.
#pragma once

#include <algorithm>

#include "../grad_plan.hpp"
#include "state.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

/// Per-thread partial sums of the parameter gradients (in the workspace).
template <class S>
struct Partial {
  const S* BP = nullptr;        // the packed expand weights (CpuWeights::BP, or widened from 16 bits)
  Buf<S> dBP, dUP, dbias, dws;  // slot space; dBP, dUP packed like BP, UP
  Buf<S> ds, dm, Gv, Gc;        // [N], [N, N], [N, k, r], [N, k, r]
  Buf<S> Cws;                   // [N, r]: sum_t dl_i s_i h_i (dense stretch)
};

template <class S>
struct Bwd {
  Bwd(const Gradients<S>& g, const BackwardNeeds& n) : G(g), need(n) {}
  const Gradients<S>& G;
  BackwardNeeds need;
  index_t T = 0;
  MatRef<S> X, DY;
  Buf<S> DH;   // [T, N, r]  dL/dh
  Buf<S> DL;   // [T, N]     dL/d(raw logits)
  Buf<S> DZS;  // [T, k]     sum_i dL/dz_i
  Buf<Partial<S>> part;
  const S* BP = nullptr;  // the packed expand weights in S (W.BP, or BPwide for 16-bit storage)
  simd::avec<S> BPwide;   // allocated only with 16-bit storage
  bool want_dh() const { return G.x.present() || G.lora_A.present() || G.lora_scale.present(); }
};

/// Where backward's shared buffers lie in its workspace.
template <class S>
struct Outs {
  S *xstore = nullptr, *dystore = nullptr, *dx = nullptr, *dA = nullptr, *dWg = nullptr, *dWx = nullptr, *dW0 = nullptr;
  unsigned char* tbase = nullptr;
  std::size_t tb = 0;
};

template <class S>
void alloc_partial(const CpuState<S>& st, const Bwd<S>& b, Partial<S>& p, Arena& ar) {
  const index_t N = st.D.N, r = st.D.r, k = st.D.k;
  const auto& G = b.G;
  const auto& W = st.W;
  const bool dense = st.dense(), rot = st.rotation();
  p.BP = b.BP;
  if (G.lora_B.present() && !dense) p.dBP = ar.buf<S>(N * r * W.dpad);
  if (G.angle_U.present()) p.dUP = ar.buf<S>(k * W.Ppad);
  if (G.angle_bias.present()) p.dbias = ar.buf<S>(N * W.Ppad);
  if (G.stretch_ws.present() && !dense) p.dws = ar.buf<S>(W.dpad);
  if (G.lora_scale.present()) p.ds = ar.buf<S>(N);
  if (G.map_M.present()) p.dm = ar.buf<S>(N * N);
  if (rot && (G.lora_B.present() || G.angle_Wv.present())) p.Gv = ar.buf<S>(N * k * r);
  if (rot && (G.lora_B.present() || G.angle_Wc.present())) p.Gc = ar.buf<S>(N * k * r);
  if (dense && st.stretch() && (G.lora_B.present() || G.stretch_ws.present())) p.Cws = ar.buf<S>(N * r);
}

template <class S>
void zero_partial(Partial<S>& p) {
  for (Buf<S>* v : {&p.dBP, &p.dUP, &p.dbias, &p.dws, &p.ds, &p.dm, &p.Gv, &p.Gc, &p.Cws})
    std::fill(v->begin(), v->end(), S(0));
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
