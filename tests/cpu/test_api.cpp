// The cpu backend's interface beyond the numbers: caches follow weights_changed(), a stale
// context is rejected, strided views work, a top-k gate computes only the selected experts,
// options are validated, an empty batch is handled, and the GEMM route is the one built.
#include "cpu/cpu_test_util.hpp"

using namespace rgtest;

TEST_CASE("weights_changed() rebuilds the rank-space caches and invalidates old contexts", "[cpu]") {
  using S = double;
  Case c;
  c.D = Dims{9, 14, 3, 2, 3, 5};
  c.T = 4;
  Model<S> m = random_model<S>(c.cfg, c.D, 3);
  Layer<S, backend::cpu> cpu(c.cfg, m.params());
  const std::vector<S> x = random_vector<S>(std::size_t(c.T * c.D.d_in), 4);
  std::vector<S> y0(std::size_t(c.T * c.D.d)), y1(y0), y2(y0), yr(y0);
  const auto xv = make_view(x.data(), c.T, c.D.d_in);
  auto ctx = cpu.forward(xv, make_view(y0.data(), c.T, c.D.d));

  // change weights in place: B (cached in slot space), Wv (cached as Wv B_i), U, M
  for (const char* name : {"lora.B", "angle.Wv", "angle.U", "map.M"})
    for (S& e : m.tensors[name].data) e = S(1.1) * e + S(0.01);
  cpu.forward(xv, make_view(y1.data(), c.T, c.D.d));
  CHECK(rel_err(y1, y0) == 0.0);  // caches still hold the old weights
  cpu.weights_changed();
  cpu.forward(xv, make_view(y2.data(), c.T, c.D.d));
  Layer<S> ref(c.cfg, m.params());
  ref.forward(xv, make_view(yr.data(), c.T, c.D.d));
  CHECK(rel_err(y2, yr) <= 1e-12);
  CHECK(rel_err(y2, y0) > 1e-3);

  GradStore<S> g(m, c.T, c.D.d_in);
  const std::vector<S> dy = random_vector<S>(std::size_t(c.T * c.D.d), 5);
  CHECK_THROWS_WITH(cpu.backward(ctx, make_view(dy.data(), c.T, c.D.d), g.views(c.T, c.D.d_in, all_grads)),
                    Catch::Contains("context") && Catch::Contains("weights_changed"));
}

TEST_CASE("strided views for x, y, dy, parameters and gradients", "[cpu]") {
  using S = double;
  for (Variant v : {Variant::radargate, Variant::softmax, Variant::topk}) {
    INFO(to_string(v));
    Case c;
    c.cfg = LayerConfig::make(v);
    c.D = Dims{7, 12, 3, 2, 2, 4};
    c.T = 5;
    const Model<S> m = random_model<S>(c.cfg, c.D, 8);
    const index_t T = c.T, din = c.D.d_in, d = c.D.d;
    // x as the transpose of a [d_in, T] buffer: element (t, a) at a * T + t
    const std::vector<S> xd = random_vector<S>(std::size_t(T * din), 9);
    std::vector<S> xt(std::size_t(T * din));
    for (index_t t = 0; t < T; ++t)
      for (index_t a = 0; a < din; ++a) xt[std::size_t(a * T + t)] = xd[std::size_t(t * din + a)];
    View<const S, 2> xs;
    xs.data = xt.data();
    xs.shape[0] = T;
    xs.shape[1] = din;
    xs.stride[0] = 1;
    xs.stride[1] = T;
    // y and dy with padded rows
    std::vector<S> ypad(std::size_t(T * (d + 3)), S(42));
    View<S, 2> ys;
    ys.data = ypad.data();
    ys.shape[0] = T;
    ys.shape[1] = d;
    ys.stride[0] = d + 3;
    ys.stride[1] = 1;
    const std::vector<S> dyd = random_vector<S>(std::size_t(T * d), 10);
    std::vector<S> dyt(std::size_t(T * d));  // dy column-major
    for (index_t t = 0; t < T; ++t)
      for (index_t o = 0; o < d; ++o) dyt[std::size_t(o * T + t)] = dyd[std::size_t(t * d + o)];
    View<const S, 2> dys;
    dys.data = dyt.data();
    dys.shape[0] = T;
    dys.shape[1] = d;
    dys.stride[0] = 1;
    dys.stride[1] = T;
    // lora.A stored as [N, d_in, r] and viewed as [N, r, d_in]
    const auto& A = m.tensors.at("lora.A");
    const index_t N = c.D.N, r = c.D.r;
    std::vector<S> At(A.data.size());
    for (index_t i = 0; i < N; ++i)
      for (index_t q = 0; q < r; ++q)
        for (index_t a = 0; a < din; ++a)
          At[std::size_t((i * din + a) * r + q)] = A.data[std::size_t((i * r + q) * din + a)];
    Params<S> ps = m.params();
    ps.lora_A.data = At.data();
    ps.lora_A.stride[0] = din * r;
    ps.lora_A.stride[1] = 1;
    ps.lora_A.stride[2] = r;

    Layer<S> ref(c.cfg, m.params());
    Layer<S, backend::cpu> cpu(c.cfg, ps, CpuOptions{2, 0});
    std::vector<S> yr(std::size_t(T * d));
    auto cr = ref.forward(make_view(xd.data(), T, din), make_view(yr.data(), T, d));
    auto cc = cpu.forward(xs, ys);
    std::vector<S> yc(std::size_t(T * d));
    for (index_t t = 0; t < T; ++t)
      for (index_t o = 0; o < d; ++o) yc[std::size_t(t * d + o)] = ys(t, o);
    CHECK(rel_err(yc, yr) <= 1e-12);
    for (index_t t = 0; t < T; ++t) CHECK(ypad[std::size_t(t * (d + 3) + d)] == S(42));  // padding untouched

    GradStore<S> gr(m, T, din), gc(m, T, din);
    ref.backward(cr, make_view(dyd.data(), T, d), gr.views(T, din, all_grads));
    // grad.x and grad.lora.A as strided views (transposed storage)
    Gradients<S> G = gc.views(T, din, all_grads);
    std::vector<S> dxt(std::size_t(T * din)), dAt(At.size());
    G.x.data = dxt.data();
    G.x.stride[0] = 1;
    G.x.stride[1] = T;
    G.lora_A.data = dAt.data();
    G.lora_A.stride[0] = din * r;
    G.lora_A.stride[1] = 1;
    G.lora_A.stride[2] = r;
    cpu.backward(cc, dys, G);
    for (index_t t = 0; t < T; ++t)
      for (index_t a = 0; a < din; ++a) gc.dx[std::size_t(t * din + a)] = dxt[std::size_t(a * T + t)];
    auto& dA = gc.g.tensors["lora.A"].data;
    for (index_t i = 0; i < N; ++i)
      for (index_t q = 0; q < r; ++q)
        for (index_t a = 0; a < din; ++a)
          dA[std::size_t((i * r + q) * din + a)] = dAt[std::size_t((i * din + a) * r + q)];
    CHECK(rel_err(gc.dx, gr.dx) <= 1e-12);
    for (const auto& kv : gr.g.tensors) {
      INFO("gradient " << kv.first);
      CHECK(rel_err(gc.g.tensors.at(kv.first).data, kv.second.data) <= 1e-12);
    }
  }
}

TEST_CASE("a top-k gate without rotation computes only the selected experts", "[cpu]") {
  using S = float;
  Case c;
  c.cfg = LayerConfig::make(Variant::topk);
  c.cfg.topk = 2;
  c.D = Dims{16, 24, 6, 3, 1, 1};
  c.T = 9;
  const Model<S> m = random_model<S>(c.cfg, c.D, 21);
  Layer<S, backend::cpu> cpu(c.cfg, m.params(), CpuOptions{2, 0});
  const std::vector<S> x = random_vector<S>(std::size_t(c.T * c.D.d_in), 22);
  std::vector<S> y(std::size_t(c.T * c.D.d));
  auto ctx = cpu.forward(make_view(x.data(), c.T, c.D.d_in), make_view(y.data(), c.T, c.D.d));
  for (index_t t = 0; t < c.T; ++t) {
    int selected = 0;
    for (index_t i = 0; i < c.D.N; ++i) {
      const bool sel = ctx.sel[std::size_t(t * c.D.N + i)] != 0;
      selected += sel;
      bool h_zero = true;
      for (index_t q = 0; q < c.D.r; ++q) h_zero = h_zero && ctx.h[std::size_t((t * c.D.N + i) * c.D.r + q)] == S(0);
      INFO("token " << t << " expert " << i);
      CHECK(h_zero == !sel);  // A_i x is computed exactly for the selected experts
      if (!sel) CHECK(ctx.g[std::size_t(t * c.D.N + i)] == S(0));
    }
    CHECK(selected == 2);
  }
  check_against_reference<S>(Case(c), 2, 1);
}

TEST_CASE("cpu options and shapes are validated; an empty batch is handled", "[cpu]") {
  using S = float;
  Case c;
  c.D = Dims{5, 8, 2, 2, 2, 3};
  const Model<S> m = random_model<S>(c.cfg, c.D, 1);
  CHECK_THROWS_WITH((Layer<S, backend::cpu>(c.cfg, m.params(), CpuOptions{0, 0})),
                    Catch::Contains("threads") && Catch::Contains("found 0"));
  CHECK_THROWS_WITH((Layer<S, backend::cpu>(c.cfg, m.params(), CpuOptions{1, -2})), Catch::Contains("tile_planes"));
  Layer<S, backend::cpu> cpu(c.cfg, m.params());
  CHECK_THROWS_WITH(cpu.set_threads(-1), Catch::Contains("threads"));
  cpu.set_threads(3);
  CHECK(cpu.threads() == 3);

  std::vector<S> x(10), y(16);
  CHECK_THROWS_WITH(cpu.forward(make_view(x.data(), 2, 4), make_view(y.data(), 2, 8)),
                    Catch::Contains("tensor 'x'") && Catch::Contains("[2, 4]"));
  CHECK_THROWS_WITH(cpu.forward(make_view(x.data(), 2, 5), make_view(y.data(), 2, 7)), Catch::Contains("tensor 'y'"));
  auto ctx = cpu.forward(make_view(x.data(), 2, 5), make_view(y.data(), 2, 8));
  CHECK_THROWS_WITH(cpu.backward(ctx, make_view(y.data(), 1, 8), Gradients<S>{}), Catch::Contains("tensor 'dy'"));

  // T = 0: nothing to compute; overwrite zeroes the requested gradients, accumulate leaves them
  auto ctx0 = cpu.forward(make_view(x.data(), 0, 5), make_view(y.data(), 0, 8));
  GradStore<S> g(m, 0, 5, 99);
  const std::vector<S> before = g.g.tensors["lora.B"].data;
  cpu.backward(ctx0, make_view(y.data(), 0, 8), g.views(0, 5, all_grads), GradMode::accumulate);
  CHECK(g.g.tensors["lora.B"].data == before);
  cpu.backward(ctx0, make_view(y.data(), 0, 8), g.views(0, 5, all_grads), GradMode::overwrite);
  for (S e : g.g.tensors["lora.B"].data) CHECK(e == S(0));
}

TEST_CASE("the GEMM route is the one the build asked for", "[cpu]") {
  // RADARGATE_USE_BLAS=ON links OpenBLAS (the default vendor) and defines RADARGATE_USE_BLAS.
#ifdef RADARGATE_USE_BLAS
  CHECK(std::string(cpu_gemm_route()) == "blas");
  CHECK(use_single_threaded_blas());
#else
  CHECK(std::string(cpu_gemm_route()) == "eigen");
  CHECK_FALSE(use_single_threaded_blas());
#endif
}
