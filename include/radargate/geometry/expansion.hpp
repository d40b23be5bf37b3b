// radargate/geometry/expansion.hpp -- does a layer leave the cone of its experts?
//
// For each token, with v_i the unrotated expert outputs, u_i what the layer combined (rotated
// when rotation is on) and g the gate weights (docs/MATH.md and docs/GEOMETRY.md):
//
//   lora part            p   = sum_i g_i u_i        (the layer's output minus its frozen base)
//   weighted-sum point   p_w = sum_i g_i v_i        (the same weights on the unrotated outputs)
//
// and for both points: membership of cone{v_i} and conv{v_i}, with certificates (cone.hpp), and
// the distances. p_w is what a plain weighted-sum gate with these weights produces, so:
//
//   g >= 0                  =>  p_w in cone{v_i}        (lambda = g is a certificate)
//   g >= 0, sum g = 1       =>  p_w in conv{v_i}
//
// The report checks both implications on every token they cover and counts each failure as a
// violation: a check that can fail. Tokens whose weights have a negative entry (normalize =
// identity with negative logits) or, for the hull, do not sum to 1 (gates `sum`, `static`
// with identity, sigmoid) are outside the guarantee: they are counted as "not covered", and
// their membership is still measured and reported like every other token's.
//
// Tolerance. The layer computes the weights in its scalar type S, so a normalised gate sums to 1
// only up to about N eps(S), and p_w lies that far (relatively) from the hull. The report judges
// every point with tol = max(membership.tol, 16 N eps(S)) (ExpansionReport::tol): 1e-9 for double
// layers, about 2e-6 N for float layers. The points themselves are formed in long double from the
// layer's values, so no further rounding enters.
//
// Experts a top-k gate did not select were not computed by the layer; their v_i are computed
// here (with the layer's own formula and scalar type) so that the cone is always the cone of all
// N experts.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../reference.hpp"
#include "cone.hpp"

namespace radargate {
namespace geometry {

struct ExpansionOptions {
  MembershipOptions membership;  // tolerances, solvers, threads
  std::vector<double> quantiles = {0.0, 0.5, 0.9, 0.99, 1.0};
};

/// One point against one set.
struct PointGeometry {
  Verdict verdict = Verdict::undetermined;
  Certificate certificate = Certificate::none;
  double distance = 0;           // Euclidean distance to the set
  double relative_distance = 0;  // distance / scale (cone: ||point||; hull: max(||point||, max_i ||v_i||))
};

struct TokenExpansion {
  PointGeometry lora_cone, lora_hull;  // p = sum g_i u_i
  PointGeometry ws_cone, ws_hull;      // p_w = sum g_i v_i
  double lora_norm = 0;                // ||p||
  double gate_sum = 0;                 // sum_i g_i
  bool gate_nonnegative = true;        // every g_i >= 0
  bool gate_normalized = false;        // g >= 0 and |sum g - 1| <= tol
};

/// Counts and distance quantiles of one point kind against one set, over all tokens.
struct SetSummary {
  index_t inside = 0, outside = 0, undetermined = 0;
  double fraction_inside = 0, fraction_outside = 0;
  std::vector<double> distance_quantiles;           // at ExpansionOptions::quantiles
  std::vector<double> relative_distance_quantiles;  // idem
  double max_distance = 0;
};

/// "The weighted-sum point is inside" on the tokens the guarantee covers.
struct GuaranteeCheck {
  index_t covered = 0;      // tokens with g >= 0 (cone) / g >= 0 and sum g = 1 (hull)
  index_t violations = 0;   // covered tokens whose point was not verified inside
  index_t not_covered = 0;  // the other tokens (reported, not judged)
  bool passed() const { return violations == 0; }
};

struct ExpansionReport {
  std::string variant;
  bool rotation = false;
  index_t tokens = 0, N = 0, d = 0;
  double tol = 0;
  std::vector<double> quantiles;
  std::vector<TokenExpansion> per_token;
  SetSummary lora_cone, lora_hull, ws_cone, ws_hull;
  GuaranteeCheck ws_cone_check, ws_hull_check;
  bool passed() const { return ws_cone_check.passed() && ws_hull_check.passed(); }
};

namespace detail {

/// Quantile with linear interpolation between order statistics (numpy's default).
inline double quantile_sorted(const std::vector<double>& s, double q) {
  if (s.empty()) return 0.0;
  const double pos = std::min(std::max(q, 0.0), 1.0) * double(s.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(s.size() - 1, lo + 1);
  return s[lo] + (pos - double(lo)) * (s[hi] - s[lo]);
}

inline PointGeometry point_geometry(const Membership& m) {
  PointGeometry p;
  p.verdict = m.verdict;
  p.certificate = m.certificate;
  p.distance = m.distance;
  p.relative_distance = m.relative_distance;
  return p;
}

template <class Get>
SetSummary summarize(const std::vector<TokenExpansion>& tok, const std::vector<double>& qs, Get&& get) {
  SetSummary s;
  std::vector<double> dist, rel;
  for (const TokenExpansion& t : tok) {
    const PointGeometry& p = get(t);
    s.inside += p.verdict == Verdict::inside;
    s.outside += p.verdict == Verdict::outside;
    s.undetermined += p.verdict == Verdict::undetermined;
    dist.push_back(p.distance);
    rel.push_back(p.relative_distance);
  }
  const double n = double(tok.size());
  s.fraction_inside = n > 0 ? double(s.inside) / n : 0.0;
  s.fraction_outside = n > 0 ? double(s.outside) / n : 0.0;
  std::sort(dist.begin(), dist.end());
  std::sort(rel.begin(), rel.end());
  for (double q : qs) {
    s.distance_quantiles.push_back(quantile_sorted(dist, q));
    s.relative_distance_quantiles.push_back(quantile_sorted(rel, q));
  }
  s.max_distance = dist.empty() ? 0.0 : dist.back();
  return s;
}

/// The unrotated expert outputs v_i of token t as the columns of a [d, N] matrix. Experts a top-k
/// gate skipped were not computed by the layer: v_i = s_i B_i (A_i x) is computed here, with the
/// reference's formula and scalar type.
template <class S>
Matrix unrotated_outputs(const Layer<S, backend::reference>& layer,
                         const typename Layer<S, backend::reference>::Context& ctx, index_t t) {
  const Dims& D = layer.dims();
  const Params<S>& p = layer.params();
  const index_t N = D.N, d = D.d, r = D.r;
  const S* v = &ctx.v[t * N * d];
  const unsigned char* sel = ctx.sel.empty() ? nullptr : &ctx.sel[t * N];
  Matrix V(d, N);
  std::vector<S> h(r);
  for (index_t i = 0; i < N; ++i) {
    if (!sel || sel[i]) {
      for (index_t o = 0; o < d; ++o) V(o, i) = static_cast<double>(v[i * d + o]);
      continue;
    }
    const View<const S, 1> x = ctx.x[t];
    for (index_t q = 0; q < r; ++q) {
      S acc = S(0);
      for (index_t a = 0; a < D.d_in; ++a) acc += p.lora_A(i, q, a) * x(a);
      h[q] = acc;
    }
    const S s = p.lora_scale.present() ? p.lora_scale(i) : S(1);
    for (index_t o = 0; o < d; ++o) {
      S acc = S(0);
      for (index_t q = 0; q < r; ++q) acc += p.lora_B(i, o, q) * h[q];
      V(o, i) = static_cast<double>(s * acc);
    }
  }
  return V;
}

/// Token t's expansion: its LoRA point (the gated rotated outputs) and weighted-sum point (the
/// gated unrotated outputs), each located against the cone and hull of the unrotated outputs.
template <class S>
void token_expansion(const Layer<S, backend::reference>& layer,
                     const typename Layer<S, backend::reference>::Context& ctx, index_t t, const MembershipOptions& mo,
                     TokenExpansion& te) {
  const index_t N = layer.dims().N, d = layer.dims().d;
  const double tol = mo.tol;
  const S* u = &ctx.u[t * N * d];
  const S* g = &ctx.g[t * N];
  const unsigned char* sel = ctx.sel.empty() ? nullptr : &ctx.sel[t * N];
  const detail::Matrix V = detail::unrotated_outputs(layer, ctx, t);
  detail::LVector pl = detail::LVector::Zero(d), pw = detail::LVector::Zero(d);
  long double gsum = 0;
  bool nonneg = true;
  for (index_t i = 0; i < N; ++i) {
    const long double gi = static_cast<long double>(g[i]);
    gsum += gi;
    nonneg = nonneg && g[i] >= S(0);
    if (gi == 0) continue;
    for (index_t o = 0; o < d; ++o) {
      if (!sel || sel[i]) pl(o) += gi * static_cast<long double>(u[i * d + o]);
      pw(o) += gi * static_cast<long double>(V(o, i));
    }
  }
  const detail::Vector P = pl.cast<double>(), W = pw.cast<double>();
  if (!P.allFinite() || !W.allFinite() || !V.allFinite())
    detail::fail("expansion report: token ", t, " has non-finite expert outputs or gate weights");
  te.lora_norm = detail::norm(P);
  te.gate_sum = static_cast<double>(gsum);
  te.gate_nonnegative = nonneg;
  te.gate_normalized = nonneg && std::fabs(static_cast<double>(gsum) - 1.0) <= tol;
  const Membership lc = detail::membership_dense(Set::cone, V, P, mo);
  const Membership lh = detail::membership_dense(Set::hull, V, P, mo);
  te.lora_cone = detail::point_geometry(lc);
  te.lora_hull = detail::point_geometry(lh);
  if (P == W) {  // no rotation (or all angles zero): the two points coincide bit for bit
    te.ws_cone = te.lora_cone;
    te.ws_hull = te.lora_hull;
  } else {
    te.ws_cone = detail::point_geometry(detail::membership_dense(Set::cone, V, W, mo));
    te.ws_hull = detail::point_geometry(detail::membership_dense(Set::hull, V, W, mo));
  }
}

/// The report's checks: the weighted-sum point lies in the cone where the gate weights are
/// nonnegative, and in the hull where they are also normalized.
inline void count_checks(ExpansionReport& rep) {
  for (const TokenExpansion& t : rep.per_token) {
    if (t.gate_nonnegative) {
      ++rep.ws_cone_check.covered;
      rep.ws_cone_check.violations += t.ws_cone.verdict != Verdict::inside;
    } else {
      ++rep.ws_cone_check.not_covered;
    }
    if (t.gate_normalized) {
      ++rep.ws_hull_check.covered;
      rep.ws_hull_check.violations += t.ws_hull.verdict != Verdict::inside;
    } else {
      ++rep.ws_hull_check.not_covered;
    }
  }
}

}  // namespace detail

/// The unrotated expert outputs of token t of a forward pass, row-major [N, d] (expert i at
/// [i * d, (i + 1) * d)), including the experts a top-k gate did not compute.
template <class S>
std::vector<double> expert_outputs(const Layer<S, backend::reference>& layer,
                                   const typename Layer<S, backend::reference>::Context& ctx, index_t t) {
  if (t < 0 || t >= ctx.tokens) detail::fail("expert_outputs: token ", t, " out of range 0..", ctx.tokens - 1);
  const detail::Matrix V = detail::unrotated_outputs(layer, ctx, t);
  std::vector<double> out(size_t(V.size()));
  for (index_t i = 0; i < V.cols(); ++i)
    for (index_t o = 0; o < V.rows(); ++o) out[size_t(i * V.rows() + o)] = V(o, i);
  return out;
}

/// The expansion report of `layer` over the tokens of a forward pass `ctx` of that layer.
template <class S>
ExpansionReport expansion_report(const Layer<S, backend::reference>& layer,
                                 const typename Layer<S, backend::reference>::Context& ctx,
                                 const ExpansionOptions& opt = {}) {
  const Dims& D = layer.dims();
  const LayerConfig& cfg = layer.config();
  const index_t T = ctx.tokens, N = D.N, d = D.d;
  if (index_t(ctx.v.size()) != T * N * d || index_t(ctx.u.size()) != T * N * d || index_t(ctx.g.size()) != T * N)
    detail::fail("expansion report: the forward context does not match the layer (expected ", T, " tokens of N = ", N,
                 " experts of width d = ", d, ")");
  for (double q : opt.quantiles)
    if (!(q >= 0.0 && q <= 1.0)) detail::fail("expansion report: quantiles must lie in [0, 1], found ", q);

  ExpansionReport rep;
  rep.variant = to_string(cfg.variant);
  rep.rotation = cfg.rotation;
  rep.tokens = T;
  rep.N = N;
  rep.d = d;
  const double tol = std::max(opt.membership.tol, 16.0 * double(N) * double(std::numeric_limits<S>::epsilon()));
  rep.tol = tol;
  rep.quantiles = opt.quantiles;
  rep.per_token.resize(T);
  MembershipOptions mo = opt.membership;
  mo.tol = tol;
  mo.threads = 1;

  detail::parallel_for(T, opt.membership.threads,
                       [&](index_t t) { detail::token_expansion(layer, ctx, t, mo, rep.per_token[t]); });

  auto lcone = [](const TokenExpansion& t) -> const PointGeometry& { return t.lora_cone; };
  auto lhull = [](const TokenExpansion& t) -> const PointGeometry& { return t.lora_hull; };
  auto wcone = [](const TokenExpansion& t) -> const PointGeometry& { return t.ws_cone; };
  auto whull = [](const TokenExpansion& t) -> const PointGeometry& { return t.ws_hull; };
  rep.lora_cone = detail::summarize(rep.per_token, opt.quantiles, lcone);
  rep.lora_hull = detail::summarize(rep.per_token, opt.quantiles, lhull);
  rep.ws_cone = detail::summarize(rep.per_token, opt.quantiles, wcone);
  rep.ws_hull = detail::summarize(rep.per_token, opt.quantiles, whull);
  detail::count_checks(rep);
  return rep;
}

/// Runs the layer forward on x : [T, d_in] and reports on those tokens.
template <class S>
ExpansionReport expansion_report(const Layer<S, backend::reference>& layer, View<const S, 2> x,
                                 const ExpansionOptions& opt = {}) {
  std::vector<S> y(size_t(x.shape[0] * layer.dims().d));
  const auto ctx = layer.forward(x, make_view(y.data(), x.shape[0], layer.dims().d));
  return expansion_report(layer, ctx, opt);
}

}  // namespace geometry
}  // namespace radargate
