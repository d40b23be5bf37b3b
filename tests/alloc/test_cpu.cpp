// Steady state allocates nothing: after a first call of its size, forward and backward (every
// gradient) of the cpu backend allocate nothing, for every variant, float and double, one and two
// threads, through both the layer's own workspace and a caller's; so do the reference backend's
// with a caller workspace. Every heap allocation of the process is counted (alloc_counter.hpp:
// operator new in all its forms, and malloc and its relatives on glibc). The sizes make Eigen's
// blocked matrix products pack more than its 128 KiB stack limit, where Eigen alone would use the
// heap. Also: a workspace that is too small is one clear error naming both sizes.
#include "alloc/alloc_counter.hpp"
#include "cpu/cpu_test_util.hpp"

using namespace rgtest;

namespace {

const Variant eight_variants[] = {Variant::sum,  Variant::uniform,      Variant::static_,       Variant::softmax,
                                  Variant::topk, Variant::stretch_only, Variant::rotation_only, Variant::radargate};

Dims dims() {
  Dims D;
  D.d_in = 160;
  D.d = 256;
  D.N = 5;
  D.r = 4;
  D.k = 3;
  D.P = 100;
  return D;
}

template <class S>
struct Setup {
  Case c;
  Model<S> m;
  std::vector<S> x, dy, y;
  GradStore<S> g;
  Setup(Variant v, index_t T)
      : c(make_case(v, T)),
        m(random_model<S>(c.cfg, c.D, 11, c.opt)),
        x(random_vector<S>(std::size_t(T * c.D.d_in), 12)),
        dy(random_vector<S>(std::size_t(T * c.D.d), 13)),
        y(std::size_t(T * c.D.d)),
        g(m, T, c.D.d_in) {}
  static Case make_case(Variant v, index_t T) {
    Case c;
    c.cfg = LayerConfig::make(v);
    c.D = dims();
    c.T = T;
    if (c.cfg.normalize == Normalize::topk_softmax) c.cfg.topk = 2;
    return c;
  }
  View<const S, 2> xv(index_t T) const { return make_view(x.data(), T, c.D.d_in); }
  View<S, 2> yv(index_t T) { return make_view(y.data(), T, c.D.d); }
  View<const S, 2> dyv(index_t T) const { return make_view(dy.data(), T, c.D.d); }
  Gradients<S> grads(index_t T) { return g.views(T, c.D.d_in, all_grads); }
};

template <class S>
void cpu_steady_state(Variant v, int threads) {
  const index_t T = 48;
  Setup<S> s(v, T);
  INFO(to_string(v) << " " << (sizeof(S) == 4 ? "float" : "double") << " threads=" << threads);
  CpuOptions o;
  o.threads = threads;
  Layer<S, backend::cpu> cpu(s.c.cfg, s.m.params(), o);
  const Gradients<S> G = s.grads(T);

  // The layer's own workspace and a context refilled in place.
  typename Layer<S, backend::cpu>::Context ctx;
  cpu.forward(s.xv(T), s.yv(T), ctx);  // first call: the context and the workspace grow
  cpu.backward(ctx, s.dyv(T), G);
  const std::vector<S> y_first = s.y, dx_first = s.g.dx;
  for (index_t t : {T, index_t(1), index_t(17)}) {
    INFO("own workspace, T=" << t);
    const Gradients<S> Gt = s.grads(t);
    alloc_counter::arm();
    cpu.forward(s.xv(t), s.yv(t), ctx);
    const long fwd = alloc_counter::disarm();
    alloc_counter::arm();
    cpu.backward(ctx, s.dyv(t), Gt);
    const long bwd = alloc_counter::disarm();
    CHECK(fwd == 0);
    CHECK(bwd == 0);
  }

  // A caller's workspace: nothing allocated once the context has its size.
  std::vector<unsigned char> fws(cpu.forward_workspace_bytes(T)), bws(cpu.backward_workspace_bytes(T, G));
  CHECK(fws.size() > 0);
  CHECK(bws.size() > 0);
  typename Layer<S, backend::cpu>::Context ctx2;
  cpu.forward(s.xv(T), s.yv(T), ctx2, Workspace{fws.data(), fws.size()});
  alloc_counter::arm();
  cpu.forward(s.xv(T), s.yv(T), ctx2, Workspace{fws.data(), fws.size()});
  const long fwd = alloc_counter::disarm();
  alloc_counter::arm();
  cpu.backward(ctx2, s.dyv(T), G, GradMode::overwrite, Workspace{bws.data(), bws.size()});
  const long bwd = alloc_counter::disarm();
  CHECK(fwd == 0);
  CHECK(bwd == 0);
  // the same numbers, bit for bit, as through the layer's own workspace
  CHECK(s.y == y_first);
  CHECK(s.g.dx == dx_first);
}

}  // namespace

TEST_CASE("cpu backend: forward and backward allocate nothing after the first call", "[cpu][alloc]") {
  INFO("malloc counted: " << alloc_counter::counts_malloc());
  for (Variant v : eight_variants)
    for (int threads : {1, 2}) {
      cpu_steady_state<float>(v, threads);
      cpu_steady_state<double>(v, threads);
    }
}

TEST_CASE("cpu backend: the counter sees what an uncontrolled call allocates", "[cpu][alloc]") {
  // The test above can fail: a context that starts empty grows in the counted call.
  Setup<double> s(Variant::radargate, 8);
  Layer<double, backend::cpu> cpu(s.c.cfg, s.m.params());
  typename Layer<double, backend::cpu>::Context ctx;
  cpu.forward(s.xv(8), s.yv(8), ctx);
  typename Layer<double, backend::cpu>::Context fresh;
  alloc_counter::arm();
  cpu.forward(s.xv(8), s.yv(8), fresh);
  CHECK(alloc_counter::disarm() > 0);
  if (alloc_counter::counts_malloc()) {
    alloc_counter::arm();
    void* p = std::malloc(16);
    std::free(p);
    CHECK(alloc_counter::disarm() == 1);
    // Eigen's own product packs its blocks on the heap once they pass its stack limit (128 KiB):
    // at 512^3 they do for every block size Eigen picks, SSE2 to AVX-512
    const Eigen::MatrixXd a = Eigen::MatrixXd::Ones(512, 512), b = Eigen::MatrixXd::Ones(512, 512);
    Eigen::MatrixXd c(512, 512);
    alloc_counter::arm();
    c.noalias() = a * b;
    CHECK(alloc_counter::disarm() > 0);
  }
}

TEST_CASE("cpu backend: workspace sizes, strided views and a workspace too small", "[cpu][alloc]") {
  using S = double;
  const index_t T = 6;
  Setup<S> s(Variant::radargate, T);
  Layer<S, backend::cpu> cpu(s.c.cfg, s.m.params(), CpuOptions{2});
  const Gradients<S> G = s.grads(T);
  const std::size_t need = cpu.forward_workspace_bytes(T);
  CHECK(cpu.forward_workspace_bytes(0) == 0);
  CHECK(cpu.forward_workspace_bytes(s.xv(T), s.yv(T)) == need);
  std::vector<unsigned char> ws(need);
  typename Layer<S, backend::cpu>::Context ctx;
  CHECK_THROWS_WITH(cpu.forward(s.xv(T), s.yv(T), ctx, Workspace{ws.data(), need - 1}),
                    Catch::Contains("forward workspace") && Catch::Contains(std::to_string(need) + " bytes") &&
                        Catch::Contains("found " + std::to_string(need - 1)));
  CHECK_THROWS_WITH(cpu.forward(s.xv(T), s.yv(T), ctx, Workspace{}), Catch::Contains("found 0 bytes"));
  cpu.forward(s.xv(T), s.yv(T), ctx, Workspace{ws.data(), need});
  const std::size_t bneed = cpu.backward_workspace_bytes(T, G);
  CHECK(cpu.backward_workspace_bytes(ctx, s.dyv(T), G) == bneed);
  std::vector<unsigned char> bws(bneed);
  CHECK_THROWS_WITH(cpu.backward(ctx, s.dyv(T), G, GradMode::overwrite, Workspace{bws.data(), bneed / 2}),
                    Catch::Contains("backward workspace") && Catch::Contains(std::to_string(bneed) + " bytes"));

  // x transposed in memory: forward copies it into the workspace, so it needs more
  std::vector<S> xt(std::size_t(T * s.c.D.d_in));
  for (index_t t = 0; t < T; ++t)
    for (index_t a = 0; a < s.c.D.d_in; ++a) xt[std::size_t(a * T + t)] = s.x[std::size_t(t * s.c.D.d_in + a)];
  View<const S, 2> xs;
  xs.data = xt.data();
  xs.shape[0] = T;
  xs.shape[1] = s.c.D.d_in;
  xs.stride[0] = 1;
  xs.stride[1] = T;
  const std::size_t sneed = cpu.forward_workspace_bytes(xs, s.yv(T));
  CHECK(sneed >= need + std::size_t(T * s.c.D.d_in) * sizeof(S));
  CHECK_THROWS_WITH(cpu.forward(xs, s.yv(T), ctx, Workspace{ws.data(), need}), Catch::Contains("forward workspace"));
  std::vector<S> y_strided(s.y.size());
  std::vector<unsigned char> sws(sneed + 1);
  cpu.forward(xs, make_view(y_strided.data(), T, s.c.D.d), ctx, Workspace{sws.data() + 1, sneed});  // unaligned
  std::vector<S> y_plain(s.y.size());
  cpu.forward(s.xv(T), make_view(y_plain.data(), T, s.c.D.d), ctx);
  CHECK(y_strided == y_plain);
}

TEST_CASE("reference backend: forward and backward allocate nothing with a workspace", "[cpu][alloc]") {
  for (Variant v : eight_variants) {
    INFO(to_string(v));
    const index_t T = 5;
    Setup<double> s(v, T);
    Layer<double> ref(s.c.cfg, s.m.params());
    const Gradients<double> G = s.grads(T);
    std::vector<unsigned char> ws(ref.backward_workspace_bytes(T, G));
    typename Layer<double>::Context ctx;
    ref.forward(s.xv(T), s.yv(T), ctx);
    ref.backward(ctx, s.dyv(T), G, GradMode::overwrite, Workspace{ws.data(), ws.size()});
    const std::vector<double> dx_first = s.g.dx;
    alloc_counter::arm();
    ref.forward(s.xv(T), s.yv(T), ctx);
    const long fwd = alloc_counter::disarm();
    alloc_counter::arm();
    ref.backward(ctx, s.dyv(T), G, GradMode::overwrite, Workspace{ws.data(), ws.size()});
    const long bwd = alloc_counter::disarm();
    CHECK(fwd == 0);
    CHECK(bwd == 0);
    ref.backward(ctx, s.dyv(T), G);  // the call with its own scratch gives the same gradients
    CHECK(s.g.dx == dx_first);
    CHECK_THROWS_WITH(ref.backward(ctx, s.dyv(T), G, GradMode::overwrite, Workspace{ws.data(), ws.size() - 1}),
                      Catch::Contains("backward workspace") && Catch::Contains(std::to_string(ws.size()) + " bytes"));
  }
}
