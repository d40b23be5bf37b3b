// radargate/cpu/state.hpp -- what one cpu layer holds for every strategy: its configuration,
// parameter views, options, threads, the caches precomputed per weight update (CpuWeights), the
// strategy chosen once at construction, and the small helpers every strategy reads them through.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <memory>

#include "../detail/cpu_arch.hpp"
#include "../detail/cpu_kernels.hpp"
#include "../detail/cpu_matrix.hpp"
#include "../detail/cpu_pool.hpp"
#include "../detail/cpu_scratch.hpp"
#include "../detail/cpu_weights.hpp"
#include "../detail/math.hpp"
#include "interface.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

/// How a layer computes its experts; fixed by the configuration and the weight storage.
enum class Strategy {
  dense,     // rotation off, every expert: two GEMMs (dense.hpp)
  tiles,     // the maths of dense with 16-bit B, which has no GEMM: the tile kernels (tiles.hpp)
  sparse,    // rotation off, top-k gate: the selected experts only (sparse.hpp)
  rotation,  // rotation on: the tile kernels, angles in rank space (rotation.hpp)
  one_pass,  // rotation on, stretch gate other than top-k: one pass over the experts (one_pass.hpp)
};

inline Strategy choose_strategy(const LayerConfig& cfg, bool half) {
  if (cfg.rotation)  // top-k needs all logits before any weight is known: no single pass
    return cfg.gate_reads_experts() && cfg.normalize != Normalize::topk_softmax ? Strategy::one_pass
                                                                                : Strategy::rotation;
  if (cfg.has_logits() && !cfg.gate_reads_experts() && cfg.normalize == Normalize::topk_softmax)
    return Strategy::sparse;
  return half ? Strategy::tiles : Strategy::dense;
}

template <class S>
struct CpuState {
  using Context = CpuContext<S>;

  CpuState(const LayerConfig& config, const Params<S>& params, const CpuOptions& options)
      : cfg(config), p(params), opt(checked_cpu_options<S>(options)), pool(std::make_unique<ThreadPool>(opt.threads)) {
    D = validate(cfg, p);
    rebuild();
    strategy = choose_strategy(cfg, W.half());
  }

  void rebuild() {
    W.build(cfg, p, D, opt.tile_planes, opt.weights);
    W.generation = next_cpu_generation();
  }

  LayerConfig cfg;
  Params<S> p;
  CpuOptions opt;
  std::unique_ptr<ThreadPool> pool;
  Dims D;
  CpuWeights<S> W;
  Strategy strategy = Strategy::dense;

  bool stretch() const { return cfg.gate_reads_experts(); }
  bool dense() const { return strategy == Strategy::dense; }
  bool sparse() const { return strategy == Strategy::sparse; }
  bool rotation() const { return cfg.rotation; }
  S scale(index_t i) const { return W.scale[std::size_t(i)]; }
  const S* bias_row(index_t i) const { return W.bias.empty() ? nullptr : W.bias.data() + i * W.Ppad; }

  kernels::Args<S> kargs() const {
    kernels::Args<S> a;
    a.BP = W.BP.data();
    a.r = D.r;
    a.pass0 = W.pass0;
    a.UP = W.UP.data();
    a.k = D.k;
    a.ws = W.ws.data();
    a.bound = cfg.bound;
    return a;
  }

  // The expand weights as the matrix [N*r, d] (rotation off: slot s is coordinate s).
  CMap<S> bt_matrix() const { return CMap<S>(W.BT.data(), D.N * D.r, D.d, Eigen::OuterStride<>(W.dpad)); }

  // s_i h_i for tokens [t0, t1): [n, N, r].
  Buf<S> scaled_h(const Context& ctx, index_t t0, index_t t1, Arena& ar) const {
    const index_t N = D.N, r = D.r;
    const Buf<S> hs = ar.buf<S>((t1 - t0) * N * r);
    std::copy(ctx.h.begin() + t0 * N * r, ctx.h.begin() + t1 * N * r, hs.begin());
    for (index_t t = 0; t < t1 - t0; ++t)
      for (index_t i = 0; i < N; ++i)
        for (index_t q = 0; q < r; ++q) hs[std::size_t((t * N + i) * r + q)] *= scale(i);
    return hs;
  }

  void normalize_rows(S* g, unsigned char* sel, index_t n) const {
    for (index_t t = 0; t < n; ++t)
      normalize_forward(cfg.normalize, index_t(cfg.topk), S(cfg.tau), g + t * D.N, D.N, sel + t * D.N);
  }
};

/// Scratch of one thread for the tile kernels.
template <class S>
struct TileScratch {
  Buf<S> cb, sb, db, dva, dvb, dpre;
  kernels::Scratch<S> sc;
  TileScratch(const CpuWeights<S>& W, Arena& ar) {
    constexpr index_t TB = kernels::max_block;
    const index_t L = TB * W.max_len;
    for (Buf<S>* v : {&cb, &sb, &db, &dva, &dvb, &dpre}) *v = ar.zeros<S>(L);
    sc.dstride = W.max_len;
    sc.cb = cb.data();
    sc.sb = sb.data();
    sc.db = db.data();
    sc.dva = dva.data();
    sc.dvb = dvb.data();
    sc.dpre = dpre.data();
  }
};

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
