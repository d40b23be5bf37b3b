// A training step after the first allocates nothing: forward, loss, backward, clipping, the
// optimizer update and weights_changed(), on the cpu backend (one and two threads) and the
// reference backend. Every heap allocation of the process is counted (alloc_counter.hpp).
#include <catch2/catch.hpp>

#include "alloc/alloc_counter.hpp"

#include <random>
#include <string>
#include <vector>

#include "radargate.hpp"
#include "radargate/cpu.hpp"
#include "radargate/train.hpp"

using namespace radargate;

namespace {

struct Data {
  std::vector<double> x, y;
  std::vector<std::int64_t> labels;
  index_t T = 0;
};

Data make_data(const Dims& D, index_t T, std::uint64_t seed) {
  Data p;
  p.T = T;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  p.x.resize(std::size_t(T * D.d_in));
  for (double& e : p.x) e = nd(rng);
  p.y.resize(std::size_t(T * D.d));
  for (double& e : p.y) e = 0.3 * nd(rng);
  p.labels.resize(std::size_t(T));
  for (auto& l : p.labels) l = std::int64_t(rng() % std::uint64_t(D.d));
  return p;
}

template <class L>
long allocations_per_epoch(Model<double>& m, L& layer, const std::vector<std::string>& train, train::LossKind loss,
                           const Data& p) {
  train::TrainerOptions o;
  o.loss = loss;
  o.batch = 24;
  o.clip = 5.0;
  o.schedule = {train::ScheduleKind::cosine, 1e-3, 2, 10};
  train::Trainer<double, L> tr(m, layer, train, o);
  train::Dataset<double> data;
  data.x = make_view(p.x.data(), p.T, index_t(p.x.size()) / p.T);
  if (loss == train::LossKind::mse)
    data.y = make_view(p.y.data(), p.T, index_t(p.y.size()) / p.T);
  else
    data.labels = p.labels.data();
  tr.run_epoch(data);  // first steps: buffers, context and workspace grow
  alloc_counter::arm();
  tr.run_epoch(data);  // full batches and a last, smaller one
  (void)tr.evaluate(data);
  return alloc_counter::disarm();
}

}  // namespace

TEST_CASE("trainer: a step after the first allocates nothing", "[train][alloc]") {
  INFO("malloc counted: " << alloc_counter::counts_malloc());
  Dims D;
  D.d_in = 160;
  D.d = 256;
  D.N = 4;
  D.r = 4;
  D.k = 3;
  D.P = 64;
  const Data p = make_data(D, 58, 3);
  const std::vector<std::string> gate_and_angles = {"map.M",      "angle.Wx",   "angle.Wv",   "angle.Wc",  "angle.U",
                                                    "angle.bias", "stretch.Wg", "stretch.bg", "stretch.ws"};
  const std::vector<std::string> everything = {"lora.A",     "lora.B",     "lora.scale", "map.M",      "angle.Wx",
                                               "angle.Wv",   "angle.Wc",   "angle.U",    "angle.bias", "stretch.Wg",
                                               "stretch.bg", "stretch.ws", "base.W0",    "base.b0"};
  for (Variant v : {Variant::radargate, Variant::softmax, Variant::topk})
    for (auto loss : {train::LossKind::mse, train::LossKind::cross_entropy})
      for (int which = 0; which < 3; ++which) {
        Model<double> m = random_model<double>(LayerConfig::make(v), D, 7);
        std::vector<std::string> list;
        for (const auto& n : which == 1 ? gate_and_angles : everything)
          if (m.has(n)) list.push_back(n);
        INFO(to_string(v) << (loss == train::LossKind::mse ? " mse" : " cross_entropy") << " backend "
                          << (which == 2 ? "reference" : "cpu") << " trained " << list.size() << " tensors");
        long n = 0;
        if (which == 2) {
          Layer<double> ref(m.config, m.params());
          n = allocations_per_epoch(m, ref, list, loss, p);
        } else {
          Layer<double, backend::cpu> cpu(m.config, m.params(), CpuOptions{which + 1});
          n = allocations_per_epoch(m, cpu, list, loss, p);
        }
        CHECK(n == 0);
      }
}
