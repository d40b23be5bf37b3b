// radargate/reference.hpp -- the reference backend: the plainest correct code, and the oracle the
// fused CPU and CUDA backends are tested against. It materialises every intermediate of docs/MATH.md
// ("Forward") for every token (h, v, c, z, pre-activation, rotated u, g) and loops in the order the
// maths is written:
//
//   h_i = A_i x            v_i = s_i B_i h_i          c_i = sum_{j != i} m_ij v_j
//   z_i = Wx x + Wv v_i + Wc c_i                      alpha_i = bound(U z_i + bias_i)
//   u_i = R(alpha_i) v_i   (rotation on)  or  v_i    (rotation off)
//   g   = gate(x, u)       y = W0 x + b0 + sum_i g_i u_i
//
// Backward is the chain rule applied to the same steps in reverse; each step's formula is next to
// its code. Nothing here is fast; everything here is obvious.
//
// Memory: forward fills a Context, which forward(x, y, ctx) refills in place (no allocation once
// it has grown to the call's size); backward needs backward_workspace_bytes(T, grads) bytes of
// scratch per call, from the caller (Workspace) or allocated by the call that takes none.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend.hpp"
#include "detail/layer_checks.hpp"
#include "detail/math.hpp"
#include "error.hpp"
#include "grad_plan.hpp"
#include "params.hpp"
#include "view.hpp"
#include "workspace.hpp"

namespace radargate {

template <class S>
class Layer<S, backend::reference> {
  static_assert(std::is_floating_point<S>::value, "radargate::Layer: Scalar must be float or double");

 public:
  using Scalar = S;

  /// Everything backward needs, owned by the caller. x is referenced, not copied: the caller
  /// keeps it alive and unchanged until backward returns.
  struct Context {
    index_t tokens = 0;
    View<const S, 2> x;
    std::vector<S> m;                // [N, N] relational-map weights (token independent)
    std::vector<S> h;                // [T, N, r]
    std::vector<S> v;                // [T, N, d]
    std::vector<S> c;                // [T, N, d]  (rotation on)
    std::vector<S> z;                // [T, N, k]  (rotation on)
    std::vector<S> pre;              // [T, N, P]  (rotation on) pre-activation of the angle bound
    std::vector<S> u;                // [T, N, d]  rotated (or plain) expert outputs
    std::vector<S> g;                // [T, N]     gate weights
    std::vector<unsigned char> sel;  // [T, N] experts computed (all, except for a top-k gate)
  };

  Layer(const LayerConfig& config, const Params<S>& params) : cfg_(config), p_(params) { D_ = validate(cfg_, p_); }

  const LayerConfig& config() const { return cfg_; }
  const Params<S>& params() const { return p_; }
  const Dims& dims() const { return D_; }
  /// Replaces the parameter views (same configuration); the new shapes are validated.
  void set_params(const Params<S>& params) {
    D_ = validate(cfg_, params);
    p_ = params;
  }

  Context forward(View<const S, 2> x, View<S, 2> y) const {
    Context ctx;
    forward(x, y, ctx);
    return ctx;
  }

  /// forward refilling `ctx` in place: allocates nothing once ctx has grown to the call's size.
  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx) const {
    const Dims& D = D_;
    detail::check_xy(D, x, "x", D.d_in, &y, "y", D.d);
    const index_t T = x.shape[0], N = D.N, r = D.r, d = D.d, k = D.k, P = D.P;
    ctx.tokens = T;
    ctx.x = x;
    ctx.h.assign(T * N * r, S(0));
    ctx.v.assign(T * N * d, S(0));
    ctx.u.assign(T * N * d, S(0));
    ctx.g.assign(T * N, S(0));
    ctx.sel.assign(T * N, 1);
    for (auto* v : {&ctx.m, &ctx.c, &ctx.z, &ctx.pre}) v->clear();
    if (cfg_.rotation) {
      ctx.m.assign(N * N, S(0));
      for (index_t i = 0; i < N; ++i)
        detail::map_weights(cfg_.map, p_.map_M.present() ? p_.map_M.ptr(i) : static_cast<const S*>(nullptr),
                            p_.map_M.present() ? p_.map_M.stride[1] : 0, i, N, &ctx.m[i * N]);
      ctx.c.assign(T * N * d, S(0));
      ctx.z.assign(T * N * k, S(0));
      ctx.pre.assign(T * N * P, S(0));
    }
    for (index_t t = 0; t < T; ++t) forward_token(ctx, t, x[t], y[t]);
  }

  /// Forward needs no workspace (everything it keeps is in the Context); for the same calls as
  /// the other backends.
  std::size_t forward_workspace_bytes(index_t) const { return 0; }
  void forward(View<const S, 2> x, View<S, 2> y, Context& ctx, Workspace) const { forward(x, y, ctx); }

  /// Bytes of scratch backward needs (the same for any T and gradients: one token's).
  std::size_t backward_workspace_bytes(index_t, const Gradients<S>&) const {
    return scratch_values() * sizeof(S) + alignof(S);
  }

  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads,
                GradMode mode = GradMode::overwrite) const {
    std::vector<unsigned char> ws(backward_workspace_bytes(ctx.tokens, grads));
    backward(ctx, dy, grads, mode, Workspace{ws.data(), ws.size()});
  }

  /// backward with scratch from the caller (ws.bytes >= backward_workspace_bytes): allocates nothing.
  void backward(const Context& ctx, View<const S, 2> dy, const Gradients<S>& grads, GradMode mode, Workspace ws) const {
    const Dims& D = D_;
    const index_t T = ctx.tokens;
    if (dy.shape[0] != T || dy.shape[1] != D.d)
      detail::fail("tensor 'dy': expected shape [", T, ", ", D.d, "], found ", detail::shape_string(dy));
    if (T > 0 && !dy.present()) detail::fail("tensor 'dy': null data for ", T, " tokens");
    validate_gradients(D, T, p_, grads);
    if (mode == GradMode::overwrite) {
      detail::zero_view(grads.x);
      for_each_param(grads, [](const char*, const auto& g) { detail::zero_view(g); });
    }
    const GradPlan need = plan_gradients(cfg_, grads);
    const std::size_t bytes = backward_workspace_bytes(T, grads);
    if (T > 0 && (ws.bytes < bytes || !ws.data))
      detail::fail("reference backward workspace: expected at least ", bytes,
                   " bytes (backward_workspace_bytes), found ", ws.data ? ws.bytes : 0, " bytes",
                   ws.data ? "" : " (null data)");
    if (T == 0) return;
    const auto a = reinterpret_cast<std::uintptr_t>(ws.data);
    S* scratch =
        reinterpret_cast<S*>(static_cast<unsigned char*>(ws.data) + (alignof(S) - a % alignof(S)) % alignof(S));
    for (index_t t = 0; t < T; ++t) backward_token(ctx, t, dy[t], grads, need, scratch);
  }

 private:
  // One token's scratch in backward: du, dv, dc [N, d], dl, dm [N], dz [k], dpre [P], dh [r].
  std::size_t scratch_values() const { return std::size_t(3 * D_.N * D_.d + 2 * D_.N + D_.k + D_.P + D_.r); }

  S scale(index_t i) const { return p_.lora_scale.present() ? p_.lora_scale(i) : S(1); }

  // Raw gate logits that do not depend on the experts: (Wg x + bg)_i (or bg_i alone).
  void base_logits(const View<const S, 1>& x, S* l) const {
    for (index_t i = 0; i < D_.N; ++i) {
      S acc = p_.stretch_bg.present() ? p_.stretch_bg(i) : S(0);
      if (cfg_.gate != GateKind::static_ && p_.stretch_Wg.present())
        for (index_t a = 0; a < D_.d_in; ++a) acc += p_.stretch_Wg(i, a) * x(a);
      l[i] = acc;
    }
  }

  void forward_token(Context& ctx, index_t t, const View<const S, 1>& x, const View<S, 1>& y) const {
    const index_t N = D_.N, d = D_.d;
    S* h = &ctx.h[t * N * D_.r];
    S* v = &ctx.v[t * N * d];
    S* u = &ctx.u[t * N * d];
    S* g = &ctx.g[t * N];
    unsigned char* sel = &ctx.sel[t * N];

    // A gate that does not read the experts is decided first, so a top-k gate computes only the
    // experts it selects.
    if (cfg_.has_logits() && !cfg_.gate_reads_experts()) early_gate(x, g, sel);
    expert_outputs(x, sel, h, v);
    if (cfg_.rotation) {
      S* c = &ctx.c[t * N * d];
      S* z = &ctx.z[t * N * D_.k];
      S* pre = &ctx.pre[t * N * D_.P];
      for (index_t i = 0; i < N; ++i) rotate_expert(ctx.m.data(), i, x, v, c, z, pre, u);
    } else {
      for (index_t o = 0; o < N * d; ++o) u[o] = v[o];
    }
    late_gate(x, u, g, sel);
    combine(x, g, sel, u, y);
  }

  // The gate weights of a gate that does not read the experts (decided before them).
  void early_gate(const View<const S, 1>& x, S* g, unsigned char* sel) const {
    base_logits(x, g);
    detail::normalize_forward(cfg_.normalize, index_t(cfg_.topk), S(cfg_.tau), g, D_.N, sel);
    if (cfg_.rotation)  // the relational map reads every expert
      for (index_t i = 0; i < D_.N; ++i) sel[i] = 1;
  }

  // h_i = A_i x ; v_i = s_i B_i h_i
  void expert_outputs(const View<const S, 1>& x, const unsigned char* sel, S* h, S* v) const {
    const index_t N = D_.N, r = D_.r, d = D_.d, din = D_.d_in;
    for (index_t i = 0; i < N; ++i) {
      if (!sel[i]) continue;
      for (index_t q = 0; q < r; ++q) {
        S acc = S(0);
        for (index_t a = 0; a < din; ++a) acc += p_.lora_A(i, q, a) * x(a);
        h[i * r + q] = acc;
      }
      for (index_t o = 0; o < d; ++o) {
        S acc = S(0);
        for (index_t q = 0; q < r; ++q) acc += p_.lora_B(i, o, q) * h[i * r + q];
        v[i * d + o] = scale(i) * acc;
      }
    }
  }

  // Expert i's rotation (mw: the map weights [N, N]): its context c_i, angle input z_i,
  // pre-activations and rotated output u_i.
  void rotate_expert(const S* mw, index_t i, const View<const S, 1>& x, const S* v, S* c, S* z, S* pre, S* u) const {
    const index_t N = D_.N, d = D_.d, k = D_.k, P = D_.P, din = D_.d_in;
    // c_i = sum_{j != i} m_ij v_j
    for (index_t o = 0; o < d; ++o) {
      S acc = S(0);
      for (index_t j = 0; j < N; ++j)
        if (j != i) acc += mw[i * N + j] * v[j * d + o];
      c[i * d + o] = acc;
    }
    // z_i = Wx x + Wv v_i + Wc c_i
    for (index_t q = 0; q < k; ++q) {
      S acc = S(0);
      if (p_.angle_Wx.present())
        for (index_t a = 0; a < din; ++a) acc += p_.angle_Wx(q, a) * x(a);
      if (p_.angle_Wv.present())
        for (index_t o = 0; o < d; ++o) acc += p_.angle_Wv(q, o) * v[i * d + o];
      if (p_.angle_Wc.present())
        for (index_t o = 0; o < d; ++o) acc += p_.angle_Wc(q, o) * c[i * d + o];
      z[i * k + q] = acc;
    }
    // pre_i = U z_i + bias_i ; u_i = R(bound(pre_i)) v_i
    for (index_t o = 0; o < d; ++o) u[i * d + o] = v[i * d + o];
    for (index_t m = 0; m < P; ++m) {
      S acc = p_.angle_bias.present() ? p_.angle_bias(i, m) : S(0);
      for (index_t q = 0; q < k; ++q) acc += p_.angle_U(m, q) * z[i * k + q];
      pre[i * P + m] = acc;
      const S alpha = detail::bound_value(cfg_.bound, acc);
      index_t a, b;
      detail::plane_coords(cfg_.pairing, m, d, a, b);
      using std::cos;
      using std::sin;
      detail::rotate_pair(cos(alpha), sin(alpha), u[i * d + a], u[i * d + b]);
    }
  }

  // The gate weights of the gates decided after the experts (none, uniform, stretch).
  void late_gate(const View<const S, 1>& x, const S* u, S* g, unsigned char* sel) const {
    const index_t N = D_.N, d = D_.d;
    switch (cfg_.gate) {
      case GateKind::none:
        for (index_t i = 0; i < N; ++i) g[i] = S(1);
        break;
      case GateKind::uniform:
        for (index_t i = 0; i < N; ++i) g[i] = S(1) / S(N);
        break;
      case GateKind::stretch:
        base_logits(x, g);
        if (p_.stretch_ws.present())
          for (index_t i = 0; i < N; ++i)
            for (index_t o = 0; o < d; ++o) g[i] += p_.stretch_ws(o) * u[i * d + o];
        detail::normalize_forward(cfg_.normalize, index_t(cfg_.topk), S(cfg_.tau), g, N, sel);
        for (index_t i = 0; i < N; ++i) sel[i] = 1;  // every expert was computed
        break;
      default:  // static, linear: decided before the experts
        break;
    }
  }

  // y = W0 x + b0 + sum_i g_i u_i
  void combine(const View<const S, 1>& x, const S* g, const unsigned char* sel, const S* u, const View<S, 1>& y) const {
    const index_t N = D_.N, d = D_.d, din = D_.d_in;
    for (index_t o = 0; o < d; ++o) {
      S acc = p_.base_b0.present() ? p_.base_b0(o) : S(0);
      if (p_.base_W0.present())
        for (index_t a = 0; a < din; ++a) acc += p_.base_W0(o, a) * x(a);
      for (index_t i = 0; i < N; ++i)
        if (sel[i]) acc += g[i] * u[i * d + o];
      y(o) = acc;
    }
  }

  // One token's inputs from the Context and its backward scratch (see scratch_values).
  struct TokenBack {
    View<const S, 1> x, dy;
    View<S, 1> dx;
    const S *h, *v, *u, *g, *c, *z, *pre;  // c, z, pre: null with rotation off
    const unsigned char* sel;
    S *du, *dv, *dc, *dl, *dm, *dz, *dpre, *dh;
  };

  void backward_token(const Context& ctx, index_t t, const View<const S, 1>& dy, const Gradients<S>& G,
                      const GradPlan& need, S* scratch) const {
    const index_t N = D_.N, r = D_.r, d = D_.d, k = D_.k, P = D_.P;
    std::fill(scratch, scratch + scratch_values(), S(0));
    TokenBack b;
    b.du = scratch;
    b.dv = b.du + N * d;
    b.dc = b.dv + N * d;
    b.dl = b.dc + N * d;
    b.dm = b.dl + N;
    b.dz = b.dm + N;
    b.dpre = b.dz + k;
    b.dh = b.dpre + P;
    b.x = ctx.x[t];
    b.dy = dy;
    b.h = &ctx.h[t * N * r];
    b.v = &ctx.v[t * N * d];
    b.u = &ctx.u[t * N * d];
    b.g = &ctx.g[t * N];
    b.sel = &ctx.sel[t * N];
    b.dx = G.x.present() ? G.x[t] : View<S, 1>{};
    b.c = cfg_.rotation ? &ctx.c[t * N * d] : nullptr;
    b.z = cfg_.rotation ? &ctx.z[t * N * k] : nullptr;
    b.pre = cfg_.rotation ? &ctx.pre[t * N * P] : nullptr;

    backward_base(b, G);
    // du_i = g_i dy
    for (index_t i = 0; i < N; ++i)
      if (b.sel[i])
        for (index_t o = 0; o < d; ++o) b.du[i * d + o] = b.g[i] * dy(o);
    if (need.dlogits) backward_gate(b, G);

    if (!need.dv && !need.dz) return;

    // Rotation: dv_i = R_i^T du_i ; dalpha ; then back through the angle generator and the map.
    if (cfg_.rotation) {
      for (index_t i = 0; i < N; ++i) {
        backward_rotate_expert(b, i);
        backward_angle(b, i, G);
      }
      backward_map(ctx.m.data(), b, G);
    } else {
      std::copy(b.du, b.du + N * d, b.dv);
    }

    if (!need.dv) return;
    for (index_t i = 0; i < N; ++i)
      if (b.sel[i]) backward_lora(b, i, G);
  }

  // Base: y += W0 x + b0
  void backward_base(const TokenBack& b, const Gradients<S>& G) const {
    const index_t d = D_.d, din = D_.d_in;
    const View<const S, 1>& x = b.x;
    const View<const S, 1>& dy = b.dy;
    if (G.base_b0.present())
      for (index_t o = 0; o < d; ++o) G.base_b0(o) += dy(o);
    if (G.base_W0.present())
      for (index_t o = 0; o < d; ++o)
        for (index_t a = 0; a < din; ++a) G.base_W0(o, a) += dy(o) * x(a);
    if (b.dx.present() && p_.base_W0.present())
      for (index_t a = 0; a < din; ++a) {
        S acc = S(0);
        for (index_t o = 0; o < d; ++o) acc += p_.base_W0(o, a) * dy(o);
        b.dx(a) += acc;
      }
  }

  // Gate: dg_i = dy . u_i ; dl = J_normalize^T dg ; then through l = Wg x + bg (+ ws . u_i).
  void backward_gate(const TokenBack& b, const Gradients<S>& G) const {
    const index_t N = D_.N, d = D_.d, din = D_.d_in;
    const View<const S, 1>& x = b.x;
    const S* u = b.u;
    S* dl = b.dl;
    for (index_t i = 0; i < N; ++i) {
      S acc = S(0);
      if (b.sel[i])
        for (index_t o = 0; o < d; ++o) acc += b.dy(o) * u[i * d + o];
      dl[i] = acc;
    }
    detail::normalize_backward(cfg_.normalize, S(cfg_.tau), b.g, dl, N);
    if (G.stretch_bg.present())
      for (index_t i = 0; i < N; ++i) G.stretch_bg(i) += dl[i];
    if (cfg_.gate != GateKind::static_) {
      if (G.stretch_Wg.present())
        for (index_t i = 0; i < N; ++i)
          for (index_t a = 0; a < din; ++a) G.stretch_Wg(i, a) += dl[i] * x(a);
      if (b.dx.present() && p_.stretch_Wg.present())
        for (index_t a = 0; a < din; ++a) {
          S acc = S(0);
          for (index_t i = 0; i < N; ++i) acc += p_.stretch_Wg(i, a) * dl[i];
          b.dx(a) += acc;
        }
    }
    if (cfg_.gate == GateKind::stretch) {
      if (G.stretch_ws.present())
        for (index_t i = 0; i < N; ++i)
          for (index_t o = 0; o < d; ++o) G.stretch_ws(o) += dl[i] * u[i * d + o];
      if (p_.stretch_ws.present())
        for (index_t i = 0; i < N; ++i)
          for (index_t o = 0; o < d; ++o) b.du[i * d + o] += dl[i] * p_.stretch_ws(o);
    }
  }

  // dv_i = R_i^T du_i and dpre = dalpha * bound'(pre_i), plane by plane.
  void backward_rotate_expert(const TokenBack& b, index_t i) const {
    const index_t d = D_.d, P = D_.P;
    const S* du = b.du;
    const S* u = b.u;
    const S* pre = b.pre;
    S* dv = b.dv;
    for (index_t o = 0; o < d; ++o) dv[i * d + o] = du[i * d + o];
    for (index_t m = 0; m < P; ++m) {
      index_t a, e;  // the plane's two coordinates
      detail::plane_coords(cfg_.pairing, m, d, a, e);
      const S alpha = detail::bound_value(cfg_.bound, pre[i * P + m]);
      using std::cos;
      using std::sin;
      detail::rotate_pair_transpose(cos(alpha), sin(alpha), dv[i * d + a], dv[i * d + e]);
      const S dalpha = detail::rotation_angle_grad(du[i * d + a], du[i * d + e], u[i * d + a], u[i * d + e]);
      b.dpre[m] = dalpha * detail::bound_derivative(cfg_.bound, pre[i * P + m]);
    }
  }

  // Expert i's angle generator: pre_i = U z_i + bias_i, then z_i = Wx x + Wv v_i + Wc c_i.
  void backward_angle(const TokenBack& b, index_t i, const Gradients<S>& G) const {
    const index_t d = D_.d, k = D_.k, P = D_.P, din = D_.d_in;
    const View<const S, 1>& x = b.x;
    const S* dpre = b.dpre;
    S* dz = b.dz;
    // pre_i = U z_i + bias_i
    if (G.angle_bias.present())
      for (index_t m = 0; m < P; ++m) G.angle_bias(i, m) += dpre[m];
    if (G.angle_U.present())
      for (index_t m = 0; m < P; ++m)
        for (index_t q = 0; q < k; ++q) G.angle_U(m, q) += dpre[m] * b.z[i * k + q];
    for (index_t q = 0; q < k; ++q) {
      S acc = S(0);
      for (index_t m = 0; m < P; ++m) acc += p_.angle_U(m, q) * dpre[m];
      dz[q] = acc;
    }
    // z_i = Wx x + Wv v_i + Wc c_i
    if (G.angle_Wx.present())
      for (index_t q = 0; q < k; ++q)
        for (index_t a = 0; a < din; ++a) G.angle_Wx(q, a) += dz[q] * x(a);
    if (b.dx.present() && p_.angle_Wx.present())
      for (index_t a = 0; a < din; ++a) {
        S acc = S(0);
        for (index_t q = 0; q < k; ++q) acc += p_.angle_Wx(q, a) * dz[q];
        b.dx(a) += acc;
      }
    if (G.angle_Wv.present())
      for (index_t q = 0; q < k; ++q)
        for (index_t o = 0; o < d; ++o) G.angle_Wv(q, o) += dz[q] * b.v[i * d + o];
    if (p_.angle_Wv.present())
      for (index_t o = 0; o < d; ++o)
        for (index_t q = 0; q < k; ++q) b.dv[i * d + o] += p_.angle_Wv(q, o) * dz[q];
    if (G.angle_Wc.present())
      for (index_t q = 0; q < k; ++q)
        for (index_t o = 0; o < d; ++o) G.angle_Wc(q, o) += dz[q] * b.c[i * d + o];
    if (p_.angle_Wc.present())
      for (index_t o = 0; o < d; ++o) {
        S acc = S(0);
        for (index_t q = 0; q < k; ++q) acc += p_.angle_Wc(q, o) * dz[q];
        b.dc[i * d + o] = acc;
      }
  }

  // c_i = sum_{j != i} m_ij v_j : dv_j += m_ij dc_i ; dm_ij = dc_i . v_j ; then through softmax
  // (mw: the map weights [N, N]).
  void backward_map(const S* mw, const TokenBack& b, const Gradients<S>& G) const {
    const index_t N = D_.N, d = D_.d;
    const S* dc = b.dc;
    S* dm = b.dm;
    for (index_t i = 0; i < N; ++i) {
      for (index_t j = 0; j < N; ++j) {
        if (j == i) continue;
        S acc = S(0);
        for (index_t o = 0; o < d; ++o) {
          b.dv[j * d + o] += mw[i * N + j] * dc[i * d + o];
          acc += dc[i * d + o] * b.v[j * d + o];
        }
        dm[j] = acc;
      }
      if (G.map_M.present() && cfg_.map == MapMode::learned && N > 1) {
        detail::map_weights_backward(&mw[i * N], dm, i, N);
        for (index_t j = 0; j < N; ++j) G.map_M(i, j) += dm[j];
      }
    }
  }

  // Expert i's adapter: v_i = s_i B_i h_i ; h_i = A_i x
  void backward_lora(const TokenBack& b, index_t i, const Gradients<S>& G) const {
    const index_t r = D_.r, d = D_.d, din = D_.d_in;
    const View<const S, 1>& x = b.x;
    const S* h = b.h;
    const S* dv = b.dv;
    S* dh = b.dh;
    const S s = scale(i);
    if (G.lora_scale.present()) {
      S acc = S(0);
      for (index_t o = 0; o < d; ++o) {
        S bh = S(0);
        for (index_t q = 0; q < r; ++q) bh += p_.lora_B(i, o, q) * h[i * r + q];
        acc += dv[i * d + o] * bh;
      }
      G.lora_scale(i) += acc;
    }
    if (G.lora_B.present())
      for (index_t o = 0; o < d; ++o)
        for (index_t q = 0; q < r; ++q) G.lora_B(i, o, q) += s * dv[i * d + o] * h[i * r + q];
    for (index_t q = 0; q < r; ++q) {
      S acc = S(0);
      for (index_t o = 0; o < d; ++o) acc += p_.lora_B(i, o, q) * dv[i * d + o];
      dh[q] = s * acc;
    }
    if (G.lora_A.present())
      for (index_t q = 0; q < r; ++q)
        for (index_t a = 0; a < din; ++a) G.lora_A(i, q, a) += dh[q] * x(a);
    if (b.dx.present())
      for (index_t a = 0; a < din; ++a) {
        S acc = S(0);
        for (index_t q = 0; q < r; ++q) acc += p_.lora_A(i, q, a) * dh[q];
        b.dx(a) += acc;
      }
  }

  LayerConfig cfg_;
  Params<S> p_;
  Dims D_;
};

}  // namespace radargate
