// For a given thread count the cpu backend is bit-identical run to run: the same layer called
// twice, and a second layer built from the same parameters, give the same bits for y and for
// every gradient (the token partition is fixed and partial sums are reduced in thread order).
#include <cstring>

#include "cpu/cpu_test_util.hpp"

using namespace rgtest;

namespace {
template <class S>
struct Run {
  std::vector<S> y;
  GradStore<S> grads;
};

template <class S>
bool same_bits(const std::vector<S>& a, const std::vector<S>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(S)) == 0);
}

template <class S>
Run<S> run_once(Layer<S, backend::cpu>& layer, const Model<S>& m, const Case& c, const std::vector<S>& x,
                const std::vector<S>& dy) {
  Run<S> out{std::vector<S>(std::size_t(c.T * c.D.d)), GradStore<S>(m, c.T, c.D.d_in)};
  auto ctx = layer.forward(make_view(x.data(), c.T, c.D.d_in), make_view(out.y.data(), c.T, c.D.d));
  layer.backward(ctx, make_view(dy.data(), c.T, c.D.d), out.grads.views(c.T, c.D.d_in, all_grads));
  return out;
}
}  // namespace

TEMPLATE_TEST_CASE("cpu backend is bit-identical run to run for a fixed thread count", "[cpu]", float, double) {
  using S = TestType;
  for (Variant v : all_variants) {
    for (int threads : {1, 2, 3}) {
      DYNAMIC_SECTION(to_string(v) << " threads=" << threads) {
        Case c;
        c.cfg = LayerConfig::make(v);
        c.D = Dims{37, 66, 5, 3, 4, 29};
        c.T = 23;
        c.seed = 5;
        const Model<S> m = random_model<S>(c.cfg, c.D, c.seed, c.opt);
        const std::vector<S> x = random_vector<S>(std::size_t(c.T * c.D.d_in), 11);
        const std::vector<S> dy = random_vector<S>(std::size_t(c.T * c.D.d), 12);
        CpuOptions o;
        o.threads = threads;
        Layer<S, backend::cpu> a(c.cfg, m.params(), o), b(c.cfg, m.params(), o);
        const Run<S> r1 = run_once(a, m, c, x, dy);
        const Run<S> r2 = run_once(a, m, c, x, dy);
        const Run<S> r3 = run_once(b, m, c, x, dy);
        CHECK(same_bits(r1.y, r2.y));
        CHECK(same_bits(r1.y, r3.y));
        CHECK(same_bits(r1.grads.dx, r2.grads.dx));
        CHECK(same_bits(r1.grads.dx, r3.grads.dx));
        for (const auto& kv : r1.grads.g.tensors) {
          INFO("gradient " << kv.first);
          CHECK(same_bits(kv.second.data, r2.grads.g.tensors.at(kv.first).data));
          CHECK(same_bits(kv.second.data, r3.grads.g.tensors.at(kv.first).data));
        }
      }
    }
  }
}
