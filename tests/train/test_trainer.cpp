// The trainer: it learns, it touches only the tensors it trains, a stopped-and-resumed run gives
// the same bytes as an uninterrupted one, and a diverging run stops with the epoch and step named.
// That a step after the first allocates nothing is tests/alloc/test_train.cpp's (an executable of
// its own, with a counting allocator).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "radargate.hpp"
#include "radargate/cpu.hpp"
#include "radargate/io/model_file.hpp"
#include "radargate/train.hpp"
#include "radargate/train/state_io.hpp"

using namespace radargate;

namespace {

struct Problem {
  Model<double> m;
  std::vector<double> x, y;
  std::vector<std::int64_t> labels;
  index_t T = 0;
  train::Dataset<double> data(train::LossKind loss) const {
    train::Dataset<double> d;
    d.x = make_view(x.data(), T, index_t(x.size()) / T);
    if (loss == train::LossKind::mse)
      d.y = make_view(y.data(), T, index_t(y.size()) / T);
    else
      d.labels = labels.data();
    return d;
  }
};

Problem problem(Variant v, index_t T, std::uint64_t seed) {
  Dims D;
  D.d_in = 6;
  D.d = 4;
  D.N = 3;
  D.r = 2;
  D.k = 2;
  D.P = 2;
  Problem p;
  p.m = random_model<double>(LayerConfig::make(v), D, seed);
  p.T = T;
  std::mt19937_64 rng(seed + 100);
  std::normal_distribution<double> nd;
  p.x.resize(std::size_t(T * D.d_in));
  for (double& e : p.x) e = nd(rng);
  // Targets from a fixed random linear map, labels from its arg-max.
  std::vector<double> W(std::size_t(D.d * D.d_in));
  for (double& e : W) e = nd(rng);
  p.y.resize(std::size_t(T * D.d));
  p.labels.resize(std::size_t(T));
  for (index_t t = 0; t < T; ++t) {
    index_t arg = 0;
    for (index_t j = 0; j < D.d; ++j) {
      double s = 0;
      for (index_t i = 0; i < D.d_in; ++i) s += W[std::size_t(j * D.d_in + i)] * p.x[std::size_t(t * D.d_in + i)];
      p.y[std::size_t(t * D.d + j)] = 0.3 * s;
      if (s > p.y[std::size_t(t * D.d + arg)] / 0.3) arg = j;
    }
    p.labels[std::size_t(t)] = arg;
  }
  return p;
}

const std::vector<std::string> gate_and_angles = {"map.M",      "angle.Wx",   "angle.Wv",   "angle.Wc",  "angle.U",
                                                  "angle.bias", "stretch.Wg", "stretch.bg", "stretch.ws"};

train::TrainerOptions options(train::LossKind loss, train::OptimizerKind k, index_t T, int epochs) {
  train::TrainerOptions o;
  o.loss = loss;
  o.optimizer.kind = k;
  o.optimizer.weight_decay = k == train::OptimizerKind::adamw ? 1e-2 : 1e-4;
  o.optimizer.momentum = k == train::OptimizerKind::sgd ? 0.9 : 0.0;
  o.batch = 8;
  o.seed = 5;
  o.clip = 5.0;
  o.schedule = {train::ScheduleKind::cosine, k == train::OptimizerKind::adamw ? 0.02 : 0.05, 3,
                epochs * train::steps_per_epoch(T, o.batch)};
  return o;
}

}  // namespace

TEST_CASE("trainer: the loss falls, and only the trained tensors change", "[train][trainer]") {
  for (auto loss : {train::LossKind::mse, train::LossKind::cross_entropy})
    for (auto kind : {train::OptimizerKind::adamw, train::OptimizerKind::sgd}) {
      Problem p = problem(Variant::radargate, 60, 11);
      const Model<double> before = p.m;
      Layer<double> layer(p.m.config, p.m.params());
      train::Trainer<double, Layer<double>> tr(p.m, layer, gate_and_angles, options(loss, kind, p.T, 12));
      const auto data = p.data(loss);
      tr.check(data);
      const double first = tr.evaluate(data).loss;
      for (int e = 0; e < 12; ++e) tr.run_epoch(data);
      const double last = tr.evaluate(data).loss;
      INFO("loss " << train::to_string(loss) << ", optimizer " << train::to_string(kind) << ": " << first << " -> "
                   << last);
      CHECK(last < 0.9 * first);
      for (const auto& kv : p.m.tensors) {
        const bool trained =
            std::find(gate_and_angles.begin(), gate_and_angles.end(), kv.first) != gate_and_angles.end();
        INFO("tensor " << kv.first);
        CHECK((kv.second.data != before.tensors.at(kv.first).data) == trained);
      }
    }
}

TEST_CASE("trainer: the cpu backend trains like the reference (float64)", "[train][trainer]") {
  Problem a = problem(Variant::radargate, 40, 3), b = problem(Variant::radargate, 40, 3);
  const auto o = options(train::LossKind::mse, train::OptimizerKind::adamw, a.T, 3);
  Layer<double> ref(a.m.config, a.m.params());
  Layer<double, backend::cpu> cpu(b.m.config, b.m.params(), CpuOptions{2});
  train::Trainer<double, Layer<double>> ta(a.m, ref, gate_and_angles, o);
  train::Trainer<double, Layer<double, backend::cpu>> tb(b.m, cpu, gate_and_angles, o);
  for (int e = 0; e < 3; ++e) {
    ta.run_epoch(a.data(o.loss));
    tb.run_epoch(b.data(o.loss));
  }
  for (const auto& kv : a.m.tensors) {
    const auto& q = b.m.tensors.at(kv.first).data;
    for (std::size_t i = 0; i < q.size(); ++i) CHECK(q[i] == Approx(kv.second.data[i]).epsilon(1e-9).margin(1e-12));
  }
}

namespace {
// Trains `epochs` epochs, stopping after `stop` and resuming from the state file image in a new
// trainer over a fresh copy of the original model; returns the final model file and state bytes.
template <class S, class L, class Make>
std::pair<std::vector<unsigned char>, std::vector<unsigned char>> run_with_stop(const Model<S>& original,
                                                                                const train::Dataset<S>& data,
                                                                                const train::TrainerOptions& o,
                                                                                int epochs, int stop, Make make_layer) {
  Model<S> m = original;
  std::vector<unsigned char> state;
  {
    auto layer = make_layer(m);
    train::Trainer<S, L> tr(m, *layer, gate_and_angles, o);
    for (int e = 0; e < (stop ? stop : epochs); ++e) tr.run_epoch(data);
    state = train::state_writer(tr, data).serialize();
    if (!stop) return {io::model_writer(m, io::DType::F64).serialize(), state};
  }
  Model<S> m2 = original;  // the trained values come back from the state
  auto layer = make_layer(m2);
  train::Trainer<S, L> tr(m2, *layer, gate_and_angles, o);
  train::load_state(io::SafetensorsFile::from_bytes(state, "state"), tr, data);
  if constexpr (train::impl::has_weights_changed<L>::value) layer->weights_changed();
  CHECK(tr.epochs_done() == stop);
  for (int e = stop; e < epochs; ++e) tr.run_epoch(data);
  return {io::model_writer(m2, io::DType::F64).serialize(), train::state_writer(tr, data).serialize()};
}
}  // namespace

TEST_CASE("trainer: stopped after epoch k and resumed gives the same bytes", "[train][trainer][resume]") {
  const int E = 5;
  for (auto kind : {train::OptimizerKind::adamw, train::OptimizerKind::sgd}) {
    Problem p = problem(Variant::radargate, 37, 9);
    const auto o = options(train::LossKind::cross_entropy, kind, p.T, E);
    auto make_ref = [](Model<double>& m) { return std::make_unique<Layer<double>>(m.config, m.params()); };
    auto make_cpu = [](Model<double>& m) {
      return std::make_unique<Layer<double, backend::cpu>>(m.config, m.params(), CpuOptions{2});
    };
    const auto whole = run_with_stop<double, Layer<double>>(p.m, p.data(o.loss), o, E, 0, make_ref);
    const auto whole_cpu = run_with_stop<double, Layer<double, backend::cpu>>(p.m, p.data(o.loss), o, E, 0, make_cpu);
    for (int k = 1; k < E; ++k) {
      INFO("optimizer " << train::to_string(kind) << ", stopped after epoch " << k);
      const auto resumed = run_with_stop<double, Layer<double>>(p.m, p.data(o.loss), o, E, k, make_ref);
      CHECK(resumed.first == whole.first);
      CHECK(resumed.second == whole.second);
      const auto resumed_cpu =
          run_with_stop<double, Layer<double, backend::cpu>>(p.m, p.data(o.loss), o, E, k, make_cpu);
      CHECK(resumed_cpu.first == whole_cpu.first);
      CHECK(resumed_cpu.second == whole_cpu.second);
    }
    // A model that was trained differs from the one that was not.
    CHECK(whole.first != io::model_writer(p.m, io::DType::F64).serialize());
  }
}

TEST_CASE("trainer: a state with other settings is refused, naming the setting", "[train][trainer][resume]") {
  Problem p = problem(Variant::radargate, 20, 2);
  auto o = options(train::LossKind::mse, train::OptimizerKind::adamw, p.T, 2);
  Layer<double> layer(p.m.config, p.m.params());
  train::Trainer<double, Layer<double>> tr(p.m, layer, gate_and_angles, o);
  tr.run_epoch(p.data(o.loss));
  const auto bytes = train::state_writer(tr, p.data(o.loss)).serialize();
  o.schedule.lr = 0.5;
  train::Trainer<double, Layer<double>> other(p.m, layer, gate_and_angles, o);
  CHECK_THROWS_WITH(train::load_state(io::SafetensorsFile::from_bytes(bytes, "s.safetensors"), other, p.data(o.loss)),
                    "file 's.safetensors': training state: setting 'lr' was 0.02 in the saved run, this run has 0.5; "
                    "resume with the same settings");
  train::Trainer<double, Layer<double>> fewer(p.m, layer, {"angle.U"},
                                              options(o.loss, train::OptimizerKind::adamw, p.T, 2));
  CHECK_THROWS_WITH(train::load_state(io::SafetensorsFile::from_bytes(bytes, "s.safetensors"), fewer, p.data(o.loss)),
                    Catch::Contains("setting 'train' was"));
  // Other data of the same size: refused by its fingerprint.
  train::Trainer<double, Layer<double>> same(p.m, layer, gate_and_angles,
                                             options(o.loss, train::OptimizerKind::adamw, p.T, 2));
  p.y[5] += 1.0;
  CHECK_THROWS_WITH(train::load_state(io::SafetensorsFile::from_bytes(bytes, "s.safetensors"), same, p.data(o.loss)),
                    Catch::Contains("setting 'train_data_fnv1a' was"));
}

TEST_CASE("trainer: a loss that becomes NaN stops with the epoch and step", "[train][trainer]") {
  Problem p = problem(Variant::softmax, 24, 6);
  auto o = options(train::LossKind::mse, train::OptimizerKind::sgd, p.T, 3);
  o.schedule = {train::ScheduleKind::constant, 1e200, 0, 9};
  o.clip = 0;
  Layer<double> layer(p.m.config, p.m.params());
  train::Trainer<double, Layer<double>> tr(p.m, layer, {"lora.B"}, o);
  CHECK_THROWS_WITH(tr.run_epoch(p.data(o.loss)), Catch::Matches("training diverged: the (loss|gradient norm) became "
                                                                 "(nan|inf) at epoch 1, step [0-9] of 3 .*"));
}

TEST_CASE("trainer: bad arguments and bad data are one clear error", "[train][trainer]") {
  Problem p = problem(Variant::softmax, 10, 6);
  Layer<double> layer(p.m.config, p.m.params());
  auto o = options(train::LossKind::cross_entropy, train::OptimizerKind::adamw, p.T, 1);
  CHECK_THROWS_WITH((train::Trainer<double, Layer<double>>(p.m, layer, {"angle.U"}, o)),
                    "trainer: tensor 'angle.U' is not in the model (variant 'softmax'); expected some of "
                    "lora.A,lora.B,lora.scale,stretch.Wg,stretch.bg,base.W0,base.b0");
  CHECK_THROWS_WITH((train::Trainer<double, Layer<double>>(p.m, layer, {}, o)),
                    "trainer: expected at least one tensor to train, found none");
  train::Trainer<double, Layer<double>> tr(p.m, layer, {"stretch.bg"}, o);
  auto data = p.data(o.loss);
  p.labels[3] = 4;
  CHECK_THROWS_WITH(tr.check(data), "data: tensor 'label': expected class ids in 0..3 (d = 4), found 4 at index [3]");
  p.labels[3] = 0;
  p.x[7] = std::nan("");
  CHECK_THROWS_WITH(tr.check(data), "data: tensor 'x': expected finite values, found nan at index [1, 1]");
}
