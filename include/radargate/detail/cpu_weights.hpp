// radargate/detail/cpu_weights.hpp -- what the cpu backend precomputes once per weight update.
//
// Slot space. The output coordinates are permuted so that the rotation is a SIMD-friendly
// element-wise operation: slot m holds coordinate a(m) of plane m, slot Ppad + m holds b(m), and
// the coordinates in no plane follow from slot 2 Ppad, in increasing order. Ppad = P rounded up
// to the SIMD width W; the pass-through block is padded to a multiple of W too. Padding slots
// hold zero weights, so they produce zeros and need no masking.
// The planes are the ones every backend uses, (a(m), b(m)) = plane_coords(pairing, m, d) of
// detail/math.hpp; only their placement differs. The CUDA kernels keep both sides of a plane
// together (the pair slots of detail/math.hpp, slot_coord): they are adjacent entries of a warp's
// tile. Here the a-sides and the b-sides form two blocks, so that one SIMD vector holds the
// a-sides of W planes and the next their b-sides. Either is a permutation of the same coordinates.
//
// Caches (all in slot space where they have an output dimension):
//   BT[i, q, s]  = B_i[coord(s), q]                    expand weights, [N, r, dpad] (for GEMMs)
//   BP           the same values packed for the tile kernels: per expert, per group of W slots,
//                the r rows of the group side by side ([r][W]); for a group of W planes the
//                a-slots' block is followed by the b-slots' block. A tile then reads one
//                contiguous run of memory per expert instead of r strided rows (rows d apart
//                alias in L1 when d is a multiple of 1024).
//   UP           U^T packed the same way: per group of W planes, [k][W]
//   bias[i, m]   = angle.bias[i, m]                    [N, Ppad]
//   ws[s]        = stretch.ws[coord(s)]                [dpad]
//   m[i, j]      relational-map weights                [N, N]
//   WvB_i = Wv B_i,  WcB_i = Wc B_i                   rank-space angle weights, [N, k, r]
//   wsB_i = B_i^T ws                                   rank-space stretch logit, [N, r]
// so that per token z_i = Wx x + s_i WvB_i h_i + sum_j m_ij s_j WcB_j h_j costs O(N r k + N^2 k).
//
// 16-bit storage (WeightStorage bf16 or f16, float layers only): A and B are rounded once, every
// cache above is computed from the rounded values, and only the 16-bit copies are kept: A as
// Ab / Ah [N*r, d_in] (A itself is then absent) and the packed B as BPb / BPh (BT and BP are then
// empty). The layer reads nothing else of lora.A and lora.B until the next build.
#pragma once

#include "cpu_arch.hpp"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../layer_config.hpp"
#include "../params.hpp"
#include "cpu_half.hpp"
#include "cpu_matrix.hpp"
#include "cpu_simd.hpp"
#include "math.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

/// A block of output coordinates processed together: planes [a0, a0 + len) (slots a0.. and
/// b0..) when rot, else the pass-through slots [a0, a0 + len).
struct Tile {
  bool rot = false;
  index_t a0 = 0, b0 = 0, len = 0;
};

template <class S>
struct CpuWeights {
  Dims D;
  bool rot = false;
  index_t Ppad = 0, pass0 = 0, dpad = 0;
  std::vector<index_t> coord;  // [dpad] slot -> output coordinate, -1 for padding
  simd::avec<S> BT, BP, UP, bias, ws;
  std::vector<S> scale, m, WvB, WcB, wsB;
  MatRef<S> A, Wg, Wx, W0, Wv, Wc;  // over caller memory, or over the stores below
  std::vector<S> A_store, Wg_store, Wx_store, W0_store, Wv_store, Wc_store;
  std::vector<Tile> tiles;         // sized for reuse of each tile's weights across many tokens
  std::vector<Tile> long_tiles;    // for fewer tokens than a block: nothing to reuse, longer loops
  std::vector<Tile> expert_tiles;  // backward of the one-pass stretch path: one expert's B and dB in L1
  index_t max_len = 0;             // longest tile of either list
  std::uint64_t generation = 0;
  WeightStorage storage = WeightStorage::scalar;
  simd::avec<bf16> Ab, BPb;  // 16-bit storage of A [N*r, d_in] and of BP (see above)
  simd::avec<f16> Ah, BPh;

  bool half() const { return storage != WeightStorage::scalar; }
  /// B of expert i packed like BP, as stored: f(const S*), f(const bf16*) or f(const f16*).
  template <class F>
  RG_INLINE void with_bp(index_t i, F&& f) const {
    const index_t off = i * D.r * dpad;
    if constexpr (std::is_same<S, float>::value) {  // 16-bit storage is for float layers
      if (storage == WeightStorage::bf16) return f(BPb.data() + off);
      if (storage == WeightStorage::f16) return f(BPh.data() + off);
    }
    f(BP.data() + off);
  }
  /// Rows [j0, j0 + n) of A [N*r, d_in] as stored: f(const S* rows, ld) or f(const bf16*, ld), ...
  template <class F>
  RG_INLINE void with_a(index_t j0, F&& f) const {
    const index_t din = D.d_in;
    if constexpr (std::is_same<S, float>::value) {
      if (storage == WeightStorage::bf16) return f(Ab.data() + j0 * din, din);
      if (storage == WeightStorage::f16) return f(Ah.data() + j0 * din, din);
    }
    f(A.row(j0), A.ld);
  }
  /// Rows [j0, j0 + n) of A in the layer's type: A itself, or (16-bit storage) widened into store.
  MatRef<S> a_rows(index_t j0, index_t n, std::vector<S>& store) const {
    if (!half()) {
      MatRef<S> m = A;
      m.p = A.row(j0);
      m.rows = n;
      return m;
    }
    const index_t din = D.d_in;
    store.resize(std::size_t(n * din));
    with_a(j0, [&](const auto* a, index_t) {
      for (index_t e = 0; e < n * din; ++e) store[std::size_t(e)] = S(widen(a[e]));
    });
    MatRef<S> m;
    m.p = store.data();
    m.rows = n;
    m.cols = din;
    m.ld = std::max<index_t>(din, 1);
    return m;
  }
  /// BP in the layer's type: BP itself, or (16-bit storage) widened into store.
  const S* bp_widened(simd::avec<S>& store) const {
    if (!half()) return BP.data();
    const std::size_t n = std::size_t(D.N * D.r * dpad);
    store.resize(n);
    if (storage == WeightStorage::bf16)
      for (std::size_t e = 0; e < n; ++e) store[e] = S(to_float(BPb[e]));
    else
      for (std::size_t e = 0; e < n; ++e) store[e] = S(to_float(BPh[e]));
    return store.data();
  }
  /// BT [N*r, dpad] from the packed layout bp (BT itself when it is kept).
  const S* bt_unpacked(const S* bp, simd::avec<S>& store) const {
    if (!BT.empty()) return BT.data();
    constexpr index_t W = simd::width<S>();
    const index_t N = D.N, r = D.r;
    store.assign(std::size_t(N * r * dpad), S(0));
    for (index_t i = 0; i < N; ++i)
      for (index_t s = 0; s < dpad; s += W)
        for (index_t q = 0; q < r; ++q)
          for (index_t l = 0; l < W; ++l)
            store[std::size_t((i * r + q) * dpad + s + l)] =
                bp[std::size_t(i * r * dpad + group_offset(s) + q * W + l)];
    return store.data();
  }

  /// The slot-space expand weights of expert i, row q (plain layout).
  const S* bt(index_t i, index_t q) const { return BT.data() + (i * D.r + q) * dpad; }
  /// The packed expand weights of expert i.
  const S* bp(index_t i) const { return BP.data() + i * D.r * dpad; }
  /// Offset, inside one expert's packed block, of the [r][W] block of the group of W slots
  /// that starts at slot s.
  index_t group_offset(index_t s) const {
    constexpr index_t W = simd::width<S>();
    const index_t r = D.r;
    if (s < Ppad) return s / W * 2 * r * W;
    if (s < pass0) return (s - Ppad) / W * 2 * r * W + r * W;
    return pass0 * r + (s - pass0) / W * r * W;
  }

  void build(const LayerConfig& c, const Params<S>& p, const Dims& dims, index_t tile_planes,
             WeightStorage store = WeightStorage::scalar) {
    constexpr index_t W = simd::width<S>();
    D = dims;
    storage = store;
    const index_t N = D.N, r = D.r, d = D.d, k = D.k;
    rot = c.rotation;
    const index_t P = rot ? D.P : 0;
    Ppad = simd::round_up(P, W);
    pass0 = 2 * Ppad;
    dpad = pass0 + simd::round_up(d - 2 * P, W);

    coord.assign(std::size_t(dpad), -1);
    used.assign(static_cast<std::size_t>(d), 0);
    for (index_t mm = 0; mm < P; ++mm) {
      index_t a, b;
      plane_coords(c.pairing, mm, d, a, b);
      coord[std::size_t(mm)] = a;
      coord[std::size_t(Ppad + mm)] = b;
      used[std::size_t(a)] = used[std::size_t(b)] = 1;
    }
    for (index_t o = 0, s = pass0; o < d; ++o)
      if (!used[std::size_t(o)]) coord[std::size_t(s++)] = o;

    BT.assign(std::size_t(N * r * dpad), S(0));
    for (index_t i = 0; i < N; ++i)
      for (index_t s = 0; s < dpad; ++s) {
        const index_t o = coord[std::size_t(s)];
        if (o < 0) continue;
        for (index_t q = 0; q < r; ++q) BT[std::size_t((i * r + q) * dpad + s)] = rounded(p.lora_B(i, o, q));
      }
    BP.assign(BT.size(), S(0));
    for (index_t i = 0; i < N; ++i)
      for (index_t s = 0; s < dpad; s += W)
        for (index_t q = 0; q < r; ++q)
          for (index_t l = 0; l < W; ++l)
            BP[std::size_t(i * r * dpad + group_offset(s) + q * W + l)] = BT[std::size_t((i * r + q) * dpad + s + l)];

    scale.assign(std::size_t(N), S(1));
    if (p.lora_scale.present())
      for (index_t i = 0; i < N; ++i) scale[std::size_t(i)] = p.lora_scale(i);

    ws.assign(std::size_t(dpad), S(0));
    if (p.stretch_ws.present())
      for (index_t s = 0; s < dpad; ++s)
        if (coord[std::size_t(s)] >= 0) ws[std::size_t(s)] = p.stretch_ws(coord[std::size_t(s)]);
    wsB.assign(std::size_t(N * r), S(0));
    if (p.stretch_ws.present())
      for (index_t i = 0; i < N; ++i)
        for (index_t q = 0; q < r; ++q) {
          const S* row = bt(i, q);
          S acc = S(0);
          for (index_t s = 0; s < dpad; ++s) acc += row[s] * ws[std::size_t(s)];
          wsB[std::size_t(i * r + q)] = acc;
        }

    Ab.clear();
    Ah.clear();
    if (half()) {
      A_store.clear();
      A = MatRef<S>{};
      A.rows = N * D.r;
      A.cols = D.d_in;
      const std::size_t n = std::size_t(N * D.r * D.d_in);
      if (storage == WeightStorage::bf16)
        Ab.resize(n);
      else
        Ah.resize(n);
      std::size_t e = 0;
      for (index_t i = 0; i < N; ++i)
        for (index_t q = 0; q < D.r; ++q)
          for (index_t a = 0; a < D.d_in; ++a, ++e) {
            const float v = float(p.lora_A(i, q, a));
            if (storage == WeightStorage::bf16)
              Ab[e] = to_bf16(v);
            else
              Ah[e] = to_f16(v);
          }
    } else {
      A = stacked_matrix_of(p.lora_A, A_store);
    }
    Wg = matrix_of(p.stretch_Wg, Wg_store);
    W0 = matrix_of(p.base_W0, W0_store);
    Wx = matrix_of(p.angle_Wx, Wx_store);
    Wv = matrix_of(p.angle_Wv, Wv_store);
    Wc = matrix_of(p.angle_Wc, Wc_store);

    UP.clear();
    bias.clear();
    m.clear();
    WvB.clear();
    WcB.clear();
    if (rot) {
      UP.assign(std::size_t(k * Ppad), S(0));
      for (index_t mm = 0; mm < P; ++mm)
        for (index_t q = 0; q < k; ++q) UP[std::size_t(mm / W * k * W + q * W + mm % W)] = p.angle_U(mm, q);
      bias.assign(std::size_t(N * Ppad), S(0));
      if (p.angle_bias.present())
        for (index_t i = 0; i < N; ++i)
          for (index_t mm = 0; mm < P; ++mm) bias[std::size_t(i * Ppad + mm)] = p.angle_bias(i, mm);
      m.assign(std::size_t(N * N), S(0));
      for (index_t i = 0; i < N; ++i)
        map_weights(c.map, p.map_M.present() ? p.map_M.ptr(i) : static_cast<const S*>(nullptr),
                    p.map_M.present() ? p.map_M.stride[1] : 0, i, N, &m[std::size_t(i * N)]);
      rank_product(p.angle_Wv, WvB);
      rank_product(p.angle_Wc, WcB);
    }

    // Tiles: the expand weights of every expert for one tile stay in L2 across the tokens.
    index_t tp = tile_planes;
    if (tp <= 0) {
      const index_t budget = 160 * 1024;
      tp = budget / std::max<index_t>(1, N * r * 2 * index_t(sizeof(S)));
      tp = std::min<index_t>(std::max<index_t>(tp, 32), 512);
    }
    tp = std::max<index_t>(W, tp / W * W);
    auto make_tiles = [&](index_t planes, std::vector<Tile>& out) {  // reuses out's memory
      out.clear();
      for (index_t m0 = 0; m0 < Ppad; m0 += planes) out.push_back({true, m0, Ppad + m0, std::min(planes, Ppad - m0)});
      for (index_t s0 = pass0; s0 < dpad; s0 += 2 * planes)
        out.push_back({false, s0, 0, std::min(2 * planes, dpad - s0)});
    };
    make_tiles(tp, tiles);
    make_tiles(std::max<index_t>(tp, 512), long_tiles);
    // one expert's packed expand weights and their gradient for a tile: 16 KiB, half of L1
    make_tiles(std::min<index_t>(512, std::max<index_t>(W, 16 * 1024 / (4 * r * index_t(sizeof(S))) / W * W)),
               expert_tiles);
    max_len = 0;
    for (const auto* list : {&tiles, &long_tiles, &expert_tiles})
      for (const Tile& t : *list) max_len = std::max(max_len, t.len);
    BPb.clear();
    BPh.clear();
    if (half()) {  // keep only the 16-bit copy of B
      if (storage == WeightStorage::bf16) {
        BPb.resize(BP.size());
        for (std::size_t e = 0; e < BP.size(); ++e) BPb[e] = to_bf16(float(BP[e]));
      } else {
        BPh.resize(BP.size());
        for (std::size_t e = 0; e < BP.size(); ++e) BPh[e] = to_f16(float(BP[e]));
      }
      simd::avec<S>().swap(BP);
      simd::avec<S>().swap(BT);
    }
    ++generation;
  }

  /// v as stored: rounded to the 16-bit format when there is one.
  S rounded(S v) const {
    if (storage == WeightStorage::bf16) return S(to_float(to_bf16(float(v))));
    if (storage == WeightStorage::f16) return S(to_float(to_f16(float(v))));
    return v;
  }
  static float widen(bf16 h) { return to_float(h); }
  static float widen(f16 h) { return to_float(h); }
  static S widen(S v) { return v; }

 private:
  std::vector<unsigned char> used;  // build(): output coordinates in a plane
  std::vector<S> ws_slot;           // rank_product(): Wm in slot space

  // [N, k, r]: Wmat B_i for every expert, from the slot-space expand weights (zero if absent).
  // Reuses the memory of `out` and of the scratch above, so a rebuild of unchanged shapes
  // allocates nothing.
  void rank_product(const View<const S, 2>& Wm, std::vector<S>& out) {
    const index_t N = D.N, r = D.r, k = D.k;
    out.assign(static_cast<std::size_t>(N * k * r), S(0));
    if (!Wm.present()) return;
    ws_slot.assign(std::size_t(k * dpad), S(0));
    for (index_t q = 0; q < k; ++q)
      for (index_t s = 0; s < dpad; ++s)
        if (coord[std::size_t(s)] >= 0) ws_slot[std::size_t(q * dpad + s)] = Wm(q, coord[std::size_t(s)]);
    const CMap<S> Wslot(ws_slot.data(), k, dpad, Eigen::OuterStride<>(dpad));
    for (index_t i = 0; i < N; ++i) {
      const CMap<S> Bi(bt(i, 0), r, dpad, Eigen::OuterStride<>(dpad));
      MMap<S> dst(&out[std::size_t(i * k * r)], k, r, Eigen::OuterStride<>(r));
      dst.noalias() = Wslot * Bi.transpose();
    }
  }
};

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
