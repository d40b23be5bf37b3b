// train::Trainer over the CUDA backend (train::CudaLayer<float>, cuda/radargate/train.cuh):
//   - the adapter's forward and backward (every gradient, x included; overwrite and accumulate)
//     match the reference backend in float32;
//   - a few epochs of training on the same data with the same seed give the same parameters and
//     losses as the reference backend (float32 tolerance), for two variants and both losses;
//   - stopped after 2 epochs, restored into a fresh model, adapter and trainer, and continued for 2
//     more, the run ends with the same bits as one never stopped (as radargate train --resume);
//   - a step after the first allocates no device memory (the adapter's count from step 1;
//     cudaMemGetInfo from the end of epoch 1), evaluate included; a stale context is refused.
//
// Exit code 0: all passed; 1: a failure; 77: no GPU (reported by ctest as skipped).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <radargate.hpp>
#include <radargate/train.cuh>
#include <radargate/train.hpp>

#include "gpu_support.hpp"

using namespace radargate;

namespace {

int failures = 0, checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

/// ||a - b|| / max(||scale||, floor).
double rel(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>* scale = nullptr) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += scale ? double((*scale)[i]) * (*scale)[i] : double(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-6);
}

struct Problem {
  LayerConfig cfg;
  Dims D;
  index_t T = 100;
  std::uint64_t seed = 1;
  train::LossKind loss = train::LossKind::cross_entropy;
  std::vector<std::string> trained;
  std::vector<float> x, y;
  std::vector<std::int64_t> labels;

  train::Dataset<float> data() const {
    train::Dataset<float> d;
    d.x = make_view(x.data(), T, D.d_in);
    if (loss == train::LossKind::mse)
      d.y = make_view(y.data(), T, D.d);
    else
      d.labels = labels.data();
    return d;
  }
  Model<float> model() const { return random_model<float>(cfg, D, seed); }
};

/// x normal; the targets a fixed linear map of x (mse: scaled; cross_entropy: its argmax).
Problem make_problem(Variant v, const Dims& D, train::LossKind loss, std::vector<std::string> trained,
                     std::uint64_t seed) {
  Problem p;
  p.cfg = LayerConfig::make(v);
  p.D = D;
  if (!p.cfg.rotation) p.D.k = p.D.P = 0;
  p.seed = seed;
  p.loss = loss;
  p.trained = std::move(trained);
  std::mt19937_64 rng(seed * 7 + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> W(std::size_t(D.d * D.d_in));
  for (double& w : W) w = normal(rng) / std::sqrt(double(D.d_in));
  p.x.resize(std::size_t(p.T * D.d_in));
  for (float& e : p.x) e = float(normal(rng));
  p.y.resize(std::size_t(p.T * D.d));
  p.labels.resize(std::size_t(p.T));
  for (index_t t = 0; t < p.T; ++t) {
    index_t best = 0;
    double bz = -1e300;
    for (index_t j = 0; j < D.d; ++j) {
      double z = 0;
      for (index_t i = 0; i < D.d_in; ++i) z += W[std::size_t(j * D.d_in + i)] * p.x[std::size_t(t * D.d_in + i)];
      p.y[std::size_t(t * D.d + j)] = float(0.3 * z);
      if (z > bz) bz = z, best = j;
    }
    p.labels[std::size_t(t)] = best;
  }
  return p;
}

train::TrainerOptions sgd_options(const Problem& p) {
  train::TrainerOptions o;
  o.loss = p.loss;
  o.batch = 16;  // 100 tokens: 6 full steps and one of 4
  o.seed = 5;
  o.optimizer.kind = train::OptimizerKind::sgd;
  o.optimizer.momentum = 0.9;
  o.schedule.lr = 0.02;
  o.schedule.total = 3 * train::steps_per_epoch(p.T, o.batch);
  return o;
}

std::vector<float> flat(const Model<float>& m, const std::string& n) { return m.tensors.at(n).data; }

/// Host gradient buffers for x [T, d_in] and every tensor of a model, and views over them.
struct HostGrads {
  std::map<std::string, Tensor<float>> t;  // "x" and the parameter names
  Gradients<float> views;
  HostGrads(const Model<float>& m, index_t T, index_t d_in) {
    t["x"] = make_tensor<float>({T, d_in});
    views.x = t["x"].mutable_view<2>();
    for_each_param(views, [&](const char* n, auto& v) {
      using V = std::decay_t<decltype(v)>;
      if (!m.has(n)) return;
      t[n] = make_tensor<float>(m.tensors.at(n).shape);
      v = t[n].template mutable_view<V::rank>();
    });
  }
  void fill(float v) {
    for (auto& kv : t) std::fill(kv.second.data.begin(), kv.second.data.end(), v);
  }
};

// --- the adapter's calls against the reference backend ---------------------------------------------

void adapter_calls(const Problem& p) {
  const std::string what = std::string("adapter ") + to_string(p.cfg.variant);
  Model<float> m = p.model();
  std::vector<std::string> names;
  for (const std::string& n : param_names())
    if (m.has(n)) names.push_back(n);
  train::CudaLayer<float> gpu(m, names);
  Layer<float, backend::reference> ref(m.config, m.params());
  const index_t T = 37, d_in = p.D.d_in, d = p.D.d;
  const View<const float, 2> x = make_view(p.x.data(), T, d_in);
  std::vector<float> yg(std::size_t(T * d)), yr(yg.size()), dy(yg.size());
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (float& e : dy) e = normal(rng);
  const auto cg = gpu.forward(x, make_view(yg.data(), T, d));
  const auto cr = ref.forward(x, make_view(yr.data(), T, d));
  const double ey = rel(yg, yr);
  expect(ey <= 1e-4, what + ": forward y relative error " + std::to_string(ey));

  // Every gradient, overwrite then accumulate onto a known start of 0.5.
  HostGrads hg(m, T, d_in), hr(m, T, d_in);
  for (GradMode mode : {GradMode::overwrite, GradMode::accumulate}) {
    const char* mname = mode == GradMode::overwrite ? "overwrite" : "accumulate";
    if (mode == GradMode::accumulate) {
      hg.fill(0.5f);
      hr.fill(0.5f);
    }
    gpu.backward(cg, make_view(static_cast<const float*>(dy.data()), T, d), hg.views, mode);
    ref.backward(cr, make_view(static_cast<const float*>(dy.data()), T, d), hr.views, mode);
    for (const auto& kv : hg.t) {
      const double e = rel(kv.second.data, hr.t.at(kv.first).data);
      expect(e <= 1e-3, what + " " + mname + ": grad." + kv.first + " relative error " + std::to_string(e));
    }
  }

  // A context that is no longer the latest forward's is refused.
  std::vector<float> y2(yg.size());
  const auto c2 = gpu.forward(x, make_view(y2.data(), T, d));
  (void)c2;
  std::string msg;
  try {
    gpu.backward(cg, make_view(static_cast<const float*>(dy.data()), T, d), hg.views, GradMode::overwrite);
  } catch (const radargate::error& e) {
    msg = e.what();
  }
  expect(msg.find("expected the context of the adapter's latest forward") != std::string::npos,
         what + ": a stale context: expected an error, found \"" + msg + "\"");
}

// --- training: CUDA against the reference backend --------------------------------------------------

void agreement(const Problem& p) {
  const std::string what = std::string("training ") + to_string(p.cfg.variant) + " " + train::to_string(p.loss);
  const Model<float> init = p.model();
  Model<float> mr = init, mg = init;
  Layer<float, backend::reference> ref(mr.config, mr.params());
  train::CudaLayer<float> gpu(mg, p.trained);
  const train::TrainerOptions o = sgd_options(p);
  train::Trainer<float, decltype(ref)> tr(mr, ref, p.trained, o);
  train::Trainer<float, train::CudaLayer<float>> tg(mg, gpu, p.trained, o);
  const train::Dataset<float> data = p.data();
  for (int e = 1; e <= 3; ++e) {
    const double lr = tr.run_epoch(data).loss, lg = tg.run_epoch(data).loss;
    const double el = std::abs(lg - lr) / std::max(std::abs(lr), 1e-6);
    expect(el <= 1e-3, what + ": epoch " + std::to_string(e) + " loss " + std::to_string(lg) + " (cuda) vs " +
                           std::to_string(lr) + " (reference)");
  }
  for (const std::string& n : p.trained) {
    const std::vector<float> a = flat(mg, n), b = flat(mr, n), s = flat(init, n);
    std::vector<float> delta(b.size());
    for (std::size_t i = 0; i < b.size(); ++i) delta[i] = b[i] - s[i];
    const double e = rel(a, b, &delta);
    expect(e <= 2e-2, what + ": " + n + ": |cuda - reference| / |reference update| = " + std::to_string(e));
    expect(rel(b, s) > 1e-4, what + ": " + n + " did not change in training");
  }
  const train::Evaluation er = tr.evaluate(data), eg = tg.evaluate(data);
  expect(std::abs(er.loss - eg.loss) <= 1e-3 * std::max(1.0, std::abs(er.loss)),
         what + ": evaluate loss " + std::to_string(eg.loss) + " (cuda) vs " + std::to_string(er.loss));
  std::printf("%s %s\n", failures ? "    " : "ok  ", what.c_str());
}

// --- resume and allocation -------------------------------------------------------------------------

std::size_t free_device_bytes() {
  std::size_t free = 0, total = 0;
  rggpu::cuda_ok(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return free;
}

train::TrainerOptions adamw_options(const Problem& p) {
  train::TrainerOptions o = sgd_options(p);
  o.optimizer = train::OptimizerOptions{};  // AdamW: its moments are part of the state
  o.schedule.kind = train::ScheduleKind::cosine;
  o.schedule.lr = 0.01;
  o.schedule.warmup = 3;
  o.schedule.total = 4 * train::steps_per_epoch(p.T, o.batch);
  return o;
}

/// 4 epochs never stopped, into `m`; returns the epoch losses. Checks the allocations after the
/// first step: the adapter's own count must not move after step 1; free device memory (everything
/// on the device, cuBLAS and the lazily loaded kernels of the runtime included) is compared from
/// the end of the first epoch and its evaluation, when every path a step takes (full and short
/// batches) has run once.
std::vector<double> uninterrupted(const Problem& p, const std::string& what, Model<float>& m) {
  const train::TrainerOptions o = adamw_options(p);
  const train::Dataset<float> data = p.data();
  train::CudaLayer<float> g(m, p.trained);
  train::Trainer<float, train::CudaLayer<float>> tr(m, g, p.trained, o);
  std::size_t allocs = 0, free0 = 0;
  bool late_alloc = false;
  std::vector<double> losses;
  for (int e = 0; e < 4; ++e) {
    losses.push_back(tr.run_epoch(data, [&](const train::StepInfo& s) {
                         if (s.global_step == 1)
                           allocs = g.device_allocations();
                         else if (g.device_allocations() != allocs)
                           late_alloc = true;
                       }).loss);
    (void)tr.evaluate(data);
    if (e == 0) free0 = free_device_bytes();
  }
  expect(allocs > 0 && !late_alloc && g.device_allocations() == allocs,
         what + ": the adapter allocated device memory after the first step (" + std::to_string(allocs) + " -> " +
             std::to_string(g.device_allocations()) + " allocations)");
  const std::size_t free1 = free_device_bytes();
  expect(free1 == free0, what + ": free device memory changed between the end of epoch 1 and of epoch 4: " +
                             std::to_string(free0) + " -> " + std::to_string(free1) + " bytes");
  return losses;
}

/// What train::save_state keeps: the trained values, the optimizer's state and the counters.
struct SavedState {
  std::vector<Tensor<float>> params;
  std::vector<std::vector<float>> states;
  std::int64_t steps = 0, epochs = 0;
};

/// 2 epochs from a fresh model, then the state carried into another fresh model, adapter and
/// trainer (as train::load_state and radargate train --resume do) and 2 more epochs, into `m`;
/// returns the losses of epochs 3 and 4.
std::vector<double> resumed(const Problem& p, Model<float>& m) {
  const train::TrainerOptions o = adamw_options(p);
  const train::Dataset<float> data = p.data();
  SavedState st;
  {
    Model<float> mb = p.model();
    train::CudaLayer<float> gb(mb, p.trained);
    train::Trainer<float, train::CudaLayer<float>> tb(mb, gb, p.trained, o);
    for (int e = 0; e < 2; ++e) tb.run_epoch(data);
    for (const std::string& n : tb.trained()) st.params.push_back(mb.tensors.at(n));
    for (std::size_t k = 0; k < tb.optimizer().state_count(); ++k)
      for (std::size_t i = 0; i < tb.optimizer().slots().size(); ++i) st.states.push_back(tb.optimizer().state(k, i));
    st.steps = tb.optimizer().steps();
    st.epochs = tb.epochs_done();
  }
  train::CudaLayer<float> gc(m, p.trained);
  train::Trainer<float, train::CudaLayer<float>> tc(m, gc, p.trained, o);
  for (std::size_t i = 0; i < tc.trained().size(); ++i) {
    std::vector<float>& dst = m.tensors.at(tc.trained()[i]).data;  // in place: the optimizer holds its address
    std::copy(st.params[i].data.begin(), st.params[i].data.end(), dst.begin());
  }
  const std::size_t nslots = tc.optimizer().slots().size();
  for (std::size_t k = 0; k < tc.optimizer().state_count(); ++k)
    for (std::size_t i = 0; i < nslots; ++i) tc.optimizer().state(k, i) = st.states[k * nslots + i];
  tc.optimizer().set_steps(st.steps);
  tc.set_epochs_done(st.epochs);
  gc.weights_changed();
  std::vector<double> losses;
  for (int e = 0; e < 2; ++e) losses.push_back(tc.run_epoch(data).loss);
  return losses;
}

void resume_and_allocation(const Problem& p) {
  const std::string what = std::string("resume ") + to_string(p.cfg.variant);
  Model<float> ma = p.model(), mc = p.model();
  const std::vector<double> la = uninterrupted(p, what, ma), lc = resumed(p, mc);
  expect(lc[0] == la[2] && lc[1] == la[3], what + ": resumed epoch losses " + std::to_string(lc[0]) + ", " +
                                               std::to_string(lc[1]) + " differ from uninterrupted " +
                                               std::to_string(la[2]) + ", " + std::to_string(la[3]));
  for (const std::string& n : p.trained) {
    const std::vector<float>&a = ma.tensors.at(n).data, &c = mc.tensors.at(n).data;
    expect(a.size() == c.size() && std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) == 0,
           what + ": " + n + " after resume differs from the uninterrupted run (relative " + std::to_string(rel(c, a)) +
               ")");
  }
  std::printf("%s %s\n", failures ? "    " : "ok  ", what.c_str());
}

}  // namespace

int main() {
  if (rggpu::device_count() == 0) {
    std::printf("skipped: no GPU\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  const Dims D{24, 20, 4, 4, 3, 8};
  const std::vector<std::string> gate = {"map.M",      "angle.Wx",   "angle.Wv",   "angle.Wc",  "angle.U",
                                         "angle.bias", "stretch.Wg", "stretch.bg", "stretch.ws"};
  try {
    Problem rg = make_problem(Variant::radargate, D, train::LossKind::cross_entropy, {}, 21);
    const Model<float> m = rg.model();
    for (const std::string& n : gate)
      if (m.has(n)) rg.trained.push_back(n);
    const Problem sm = make_problem(Variant::softmax, D, train::LossKind::mse, {"lora.A", "lora.B", "stretch.Wg"}, 22);
    adapter_calls(rg);
    adapter_calls(sm);
    agreement(rg);
    agreement(sm);
    resume_and_allocation(rg);
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAIL exception: %s\n", e.what());
  }
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
