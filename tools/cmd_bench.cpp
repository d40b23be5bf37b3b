// radargate bench -- times one layer call on a random model of any shape, with no file I/O.
//
//   median_s      median over --repeat timed calls of forward (or forward + backward)
//   gflops        essential FLOPs (radargate/flops.hpp) / median_s
//   peak_rss_mb   the process's peak resident memory (getrusage), model and inputs included;
//   base_rss_mb   the resident memory just before the first call, so peak - base is what the
//                 calls themselves needed
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_cuda.hpp"
#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate.hpp"
#include "radargate/cpu.hpp"
#include "radargate/flops.hpp"
#include "radargate/io/model_set.hpp"
#include "radargate/train.hpp"

namespace radargate {
namespace cli {
namespace {

struct BenchArgs {
  LayerConfig cfg;
  Dims D;
  index_t T = 0;
  bool backward = false, base = false, json = false, reference = false, f64 = false;
  bool train_step = false;         // time training steps: forward, mse loss, backward, AdamW update
  std::vector<std::string> train;  // the tensors a training step learns (empty: the default set)
  int threads = 1, repeat = 5, warmup = 1;
  std::uint64_t seed = 1;
  std::string model, layer;  // --model [--layer]: time a layer of a model file instead of a random one
  WeightStorage weights = WeightStorage::scalar;  // cpu backend: lora.A, lora.B in 16 bits (--dtype bf16 | f16)
};

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // kilobytes on Linux
}

// Resident memory now, from /proc/self/statm (pages).
double current_rss_mb() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long size = 0, resident = 0;
  const int n = std::fscanf(f, "%ld %ld", &size, &resident);
  std::fclose(f);
  return n == 2 ? double(resident) * 4096.0 / (1024.0 * 1024.0) : 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

const char* dtype_name(const BenchArgs& a) {
  return a.f64 ? "f64" : a.weights == WeightStorage::scalar ? "f32" : to_string(a.weights);
}

// The bytes of the weights one call reads: every tensor of the model but angle.Wv and angle.Wc
// (folded into rank-space caches at construction), lora.A and lora.B at their stored size.
template <class S>
double weight_bytes(const Model<S>& m, WeightStorage w) {
  double bytes = 0;
  for (const auto& kv : m.tensors) {
    if (kv.first == "angle.Wv" || kv.first == "angle.Wc") continue;
    const bool half = w != WeightStorage::scalar && (kv.first == "lora.A" || kv.first == "lora.B");
    bytes += double(kv.second.data.size()) * (half ? 2.0 : double(sizeof(S)));
  }
  return bytes;
}

// --bandwidth MIB: the read bandwidth of one core, summing a buffer of MIB MiB once per timed
// repetition (a buffer larger than the last-level cache measures memory; one that fits, read
// again and again, measures the cache).
int bench_bandwidth(double mib, int repeat, int warmup, bool json) {
  using clock = std::chrono::steady_clock;
  const std::size_t n = std::size_t(mib * 1024.0 * 1024.0 / 4.0);
  std::vector<std::uint32_t> buf(n);
  for (std::size_t i = 0; i < n; ++i) buf[i] = std::uint32_t(i * 2654435761u);
  std::vector<double> t;
  std::uint32_t checksum = 0;
  for (int it = 0; it < warmup + repeat; ++it) {
    const auto t0 = clock::now();
    std::uint32_t acc = 0;  // an integer sum: the compiler vectorises it, so the loads set the pace
    for (std::size_t i = 0; i < n; ++i) acc += buf[i];
    const auto t1 = clock::now();
    checksum ^= acc;
    if (it >= warmup) t.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  const double bytes = double(n) * 4.0, med = median(t), best = *std::min_element(t.begin(), t.end());
  if (json)
    std::printf(
        "{\"bandwidth\": true, \"bytes\": %.0f, \"repeat\": %d, \"median_s\": %.9g, \"min_s\": %.9g, "
        "\"median_gbs\": %.6g, \"best_gbs\": %.6g, \"checksum\": %u}\n",
        bytes, repeat, med, best, bytes / med * 1e-9, bytes / best * 1e-9, checksum);
  else
    std::printf(
        "radargate bench --bandwidth: one core read %.1f MiB in %.6f s (median of %d): %.2f GB/s (best %.2f GB/s)\n",
        mib, med, repeat, bytes / med * 1e-9, bytes / best * 1e-9);
  return 0;
}

// Fills `first`, then `second`, with standard normal values drawn from seed + 1.
template <class S>
void fill_normal(std::uint64_t seed, std::vector<S>& first, std::vector<S>& second) {
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (S& e : first) e = S(normal(rng));
  for (S& e : second) e = S(normal(rng));
}

// Points the gradients of x (dx, [T, d_in]) and of every parameter of `gm` into their buffers.
template <class S>
void bind_gradients(Gradients<S>& G, Model<S>& gm, S* dx, index_t T, index_t din) {
  G.x = make_view(dx, T, din);
  for_each_param(G, [&](const char* name, auto& v) {
    using V = std::decay_t<decltype(v)>;
    if (gm.has(name)) v = gm.tensors[name].template mutable_view<V::rank>();
  });
}

// The timed calls of bench_layer and what they leave: the times (after the warm-up), the memory
// and the checksum of the last output.
struct LayerRun {
  std::vector<double> total, fwd, bwd;
  double base_rss = 0, peak = 0, checksum = 0;
};

template <class S, class L>
void time_layer_calls(const BenchArgs& a, L& layer, View<const S, 2> xv, View<S, 2> yv, View<const S, 2> dyv,
                      Gradients<S>& G, LayerRun& r) {
  using clock = std::chrono::steady_clock;
  for (int it = 0; it < a.warmup + a.repeat; ++it) {
    const auto t0 = clock::now();
    auto ctx = layer.forward(xv, yv);
    const auto t1 = clock::now();
    if (a.backward) layer.backward(ctx, dyv, G, GradMode::overwrite);
    const auto t2 = clock::now();
    if (it < a.warmup) continue;
    r.fwd.push_back(std::chrono::duration<double>(t1 - t0).count());
    r.bwd.push_back(std::chrono::duration<double>(t2 - t1).count());
    r.total.push_back(std::chrono::duration<double>(t2 - t0).count());
  }
}

template <class S>
void print_layer_json(const BenchArgs& a, const Model<S>& m, const WorkCount& w, const LayerRun& r) {
  const double med = median(r.total);
  std::printf(
      "{\"variant\": \"%s\", \"backend\": \"%s\", \"gemm\": \"%s\", \"kernels\": \"%s\", \"dtype\": \"%s\", "
      "\"tokens\": %lld, \"experts\": %lld, "
      "\"d_in\": %lld, \"d\": %lld, \"rank\": %lld, \"angle_rank\": %lld, \"planes\": %lld, \"base\": %s, "
      "\"backward\": %s, \"threads\": %d, \"repeat\": %d, \"median_s\": %.9g, \"min_s\": %.9g, "
      "\"median_forward_s\": %.9g, \"median_backward_s\": %.9g, \"flops\": %.9g, \"gflops\": %.6g, "
      "\"bytes\": %.9g, \"weight_bytes\": %.9g, \"peak_rss_mb\": %.3f, \"base_rss_mb\": %.3f, \"checksum\": %.9g}\n",
      to_string(a.cfg.variant), a.reference ? "reference" : "cpu", a.reference ? "none" : cpu_gemm_route(),
      a.reference ? "none" : cpu_kernel_set(), dtype_name(a), (long long)a.T, (long long)a.D.N, (long long)a.D.d_in,
      (long long)a.D.d, (long long)a.D.r, (long long)a.D.k, (long long)a.D.P, a.base ? "true" : "false",
      a.backward ? "true" : "false", a.threads, a.repeat, med, *std::min_element(r.total.begin(), r.total.end()),
      median(r.fwd), a.backward ? median(r.bwd) : 0.0, w.flops, w.flops / med * 1e-9, w.elements * double(sizeof(S)),
      weight_bytes(m, a.reference ? WeightStorage::scalar : a.weights), r.peak, r.base_rss, r.checksum);
}

void print_layer_text(const BenchArgs& a, const WorkCount& w, const LayerRun& r) {
  const double med = median(r.total);
  std::printf(
      "radargate bench: variant %s, backend %s (GEMM: %s, kernels: %s), %s, T=%lld N=%lld d_in=%lld d=%lld r=%lld "
      "k=%lld P=%lld%s, "
      "%d thread%s\n",
      to_string(a.cfg.variant), a.reference ? "reference" : "cpu", a.reference ? "none" : cpu_gemm_route(),
      a.reference ? "none" : cpu_kernel_set(), dtype_name(a), (long long)a.T, (long long)a.D.N, (long long)a.D.d_in,
      (long long)a.D.d, (long long)a.D.r, (long long)a.D.k, (long long)a.D.P, a.base ? ", base" : "", a.threads,
      a.threads == 1 ? "" : "s");
  std::printf("  %s: median %.6f s over %d runs (min %.6f s)", a.backward ? "forward + backward" : "forward", med,
              a.repeat, *std::min_element(r.total.begin(), r.total.end()));
  if (a.backward) std::printf("  [forward %.6f s, backward %.6f s]", median(r.fwd), median(r.bwd));
  std::printf("\n  essential work: %.4g GFLOP -> %.2f GFLOP/s\n", w.flops * 1e-9, w.flops / med * 1e-9);
  std::printf("  memory: peak RSS %.1f MB (%.1f MB before the first call)\n", r.peak, r.base_rss);
}

template <class S, class L>
int bench_layer(const BenchArgs& a, const Model<S>& m, L& layer) {
  const index_t T = a.T, din = a.D.d_in, d = a.D.d;
  std::vector<S> x(std::size_t(T * din)), y(std::size_t(T * d)), dy(std::size_t(T * d)), dx(std::size_t(T * din));
  fill_normal(a.seed, x, dy);
  // gradient buffers: x and every parameter of the model
  Model<S> gm = m;
  Gradients<S> G;
  if (a.backward) bind_gradients(G, gm, dx.data(), T, din);
  LayerRun r;
  r.base_rss = current_rss_mb();
  time_layer_calls<S>(a, layer, make_view(static_cast<const S*>(x.data()), T, din), make_view(y.data(), T, d),
                      make_view(static_cast<const S*>(dy.data()), T, d), G, r);
  for (S e : y) r.checksum += double(e);
  const WorkCount w = essential_work(a.cfg, a.D, T, a.backward, a.base);
  r.peak = peak_rss_mb();
  if (a.json)
    print_layer_json(a, m, w, r);
  else
    print_layer_text(a, w, r);
  return 0;
}

// The tensors a --train-step learns: --train, or every gate and angle tensor of the model.
template <class S>
std::vector<std::string> train_step_names(const BenchArgs& a, const Model<S>& m) {
  std::vector<std::string> names = a.train;
  if (names.empty())
    for (const std::string& n : param_names())
      if (m.has(n) && n != "lora.A" && n != "lora.B" && n != "lora.scale" && n.rfind("base.", 0) != 0)
        names.push_back(n);
  if (names.empty())
    detail::fail("option --train-step: variant '", to_string(a.cfg.variant),
                 "' has no gate or angle tensors to train; name some with --train, e.g. --train lora.A,lora.B");
  for (const std::string& n : names)
    if (!m.has(n)) {
      std::string have;
      for (const std::string& k : param_names())
        if (m.has(k)) have += (have.empty() ? "" : ",") + k;
      detail::fail("option --train: '", n, "' is not a tensor of a '", to_string(a.cfg.variant),
                   "' model; expected some of ", have);
    }
  return names;
}

// The timed training steps of bench_train_step: the times (after the warm-up), the memory and the
// loss of the last step.
struct StepRun {
  std::vector<double> total;
  double base_rss = 0, peak = 0, loss = 0;
};

template <class S, class L>
void time_train_steps(const BenchArgs& a, train::Trainer<S, L>& tr, View<const S, 2> xv, View<const S, 2> tv,
                      StepRun& r) {
  using clock = std::chrono::steady_clock;
  for (int it = 0; it < a.warmup + a.repeat; ++it) {
    const auto t0 = clock::now();
    r.loss = tr.step(xv, tv, nullptr).loss;
    const auto t1 = clock::now();
    if (it >= a.warmup) r.total.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
}

void print_step_json(const BenchArgs& a, const WorkCount& w, const std::string& list, const StepRun& r) {
  const double med = median(r.total);
  std::printf(
      "{\"variant\": \"%s\", \"backend\": \"%s\", \"gemm\": \"%s\", \"dtype\": \"%s\", \"tokens\": %lld, "
      "\"experts\": %lld, \"d_in\": %lld, \"d\": %lld, \"rank\": %lld, \"angle_rank\": %lld, \"planes\": %lld, "
      "\"base\": %s, \"train_step\": true, \"optimizer\": \"adamw\", \"loss\": \"mse\", \"trained\": \"%s\", "
      "\"threads\": %d, \"repeat\": %d, \"median_s\": %.9g, \"min_s\": %.9g, \"flops\": %.9g, \"gflops\": %.6g, "
      "\"peak_rss_mb\": %.3f, \"base_rss_mb\": %.3f, \"last_loss\": %.9g}\n",
      to_string(a.cfg.variant), a.reference ? "reference" : "cpu", a.reference ? "none" : cpu_gemm_route(),
      a.f64 ? "f64" : "f32", (long long)a.T, (long long)a.D.N, (long long)a.D.d_in, (long long)a.D.d, (long long)a.D.r,
      (long long)a.D.k, (long long)a.D.P, a.base ? "true" : "false", list.c_str(), a.threads, a.repeat, med,
      *std::min_element(r.total.begin(), r.total.end()), w.flops, w.flops / med * 1e-9, r.peak, r.base_rss, r.loss);
}

void print_step_text(const BenchArgs& a, const std::string& list, const StepRun& r) {
  std::printf(
      "radargate bench: training step (forward, mse, backward, AdamW) of variant %s, backend %s (GEMM: %s), %s, "
      "T=%lld N=%lld d_in=%lld d=%lld r=%lld k=%lld P=%lld%s, %d thread%s\n  trained: %s\n",
      to_string(a.cfg.variant), a.reference ? "reference" : "cpu", a.reference ? "none" : cpu_gemm_route(),
      a.f64 ? "f64" : "f32", (long long)a.T, (long long)a.D.N, (long long)a.D.d_in, (long long)a.D.d, (long long)a.D.r,
      (long long)a.D.k, (long long)a.D.P, a.base ? ", base" : "", a.threads, a.threads == 1 ? "" : "s", list.c_str());
  std::printf("  step: median %.6f s over %d runs (min %.6f s), last loss %.6g\n", median(r.total), a.repeat,
              *std::min_element(r.total.begin(), r.total.end()), r.loss);
  std::printf("  memory: peak RSS %.1f MB (%.1f MB before the first step)\n", r.peak, r.base_rss);
}

// One timed call = one training step of radargate::train::Trainer on a batch of all T tokens:
// forward, the mse loss against random targets and dL/dy, backward of the trained tensors only,
// and the AdamW update (lr 1e-4, weight decay 0.01) in place, with weights_changed() on the cpu
// backend.
template <class S, class L>
int bench_train_step(const BenchArgs& a, Model<S>& m, L& layer) {
  const index_t T = a.T, din = a.D.d_in, d = a.D.d;
  const std::vector<std::string> names = train_step_names(a, m);
  std::vector<S> x(std::size_t(T * din)), target(std::size_t(T * d));
  fill_normal(a.seed, x, target);
  train::TrainerOptions o;
  o.loss = train::LossKind::mse;
  o.batch = std::max<index_t>(1, T);
  o.schedule = {train::ScheduleKind::constant, 1e-4, 0, 1};
  train::Trainer<S, L> tr(m, layer, names, o);
  StepRun r;
  r.base_rss = current_rss_mb();
  time_train_steps<S>(a, tr, make_view(static_cast<const S*>(x.data()), T, din),
                      make_view(static_cast<const S*>(target.data()), T, d), r);
  const WorkCount w = essential_work(a.cfg, a.D, T, true, a.base);
  r.peak = peak_rss_mb();
  std::string list;
  for (const std::string& n : names) list += (list.empty() ? "" : ",") + n;
  if (a.json)
    print_step_json(a, w, list, r);
  else
    print_step_text(a, list, r);
  return 0;
}

template <class S>
int bench_typed(const BenchArgs& a) {
  RandomModelOptions opt;
  opt.base = a.base;
  Model<S> m = a.model.empty() ? random_model<S>(a.cfg, a.D, a.seed, opt)
                               : io::load_layer<S>(io::SafetensorsFile::read(a.model), a.layer).model;
  if (a.reference) {
    Layer<S, backend::reference> layer(a.cfg, m.params());
    return a.train_step ? bench_train_step<S>(a, m, layer) : bench_layer<S>(a, m, layer);
  }
  CpuOptions o;
  o.threads = a.threads;
  o.weights = a.weights;
  Layer<S, backend::cpu> layer(a.cfg, m.params(), o);
  return a.train_step ? bench_train_step<S>(a, m, layer) : bench_layer<S>(a, m, layer);
}

void declare_options(OptionParser& o) {
  o.optional("--variant", "NAME", "sum | uniform | static | softmax | topk | stretch_only | rotation_only | radargate");
  o.optional("--tokens", "T", "tokens per call (required but with --bandwidth)");
  o.optional("--experts", "N", "number of LoRA experts");
  o.optional("--d-in", "D", "input width");
  o.optional("--d", "D", "output width");
  o.optional("--rank", "R", "LoRA rank r");
  o.optional("--angle-rank", "K", "angle generator rank k (rotating variants)");
  o.optional("--model", "FILE",
             "time a layer of this model file instead of a random model; then --variant,\n"
             "--experts, --d-in, --d, --rank, --angle-rank, --planes, --topk and --base come\n"
             "from the file and are not given (without --model they are required)");
  o.optional("--layer", "NAME",
             "with --model: the layer, for a file of many layers (required when it holds\n"
             "more than one)");
  o.optional("--planes", "P", "rotation planes, 1..floor(d/2) (default floor(d/2))");
  o.optional("--topk", "K", "experts a top-k gate selects (default 2)");
  o.flag("--backward", "time forward + backward (gradients of x and every parameter)");
  o.flag("--base", "include the frozen base W0 x + b0 (default: LoRA part only)");
  o.flag("--train-step",
         "time training steps instead: forward, mse loss, backward of the trained tensors,\n"
         "AdamW update (radargate::train; cpu and reference backends)");
  o.optional("--train", "LIST", "with --train-step: the tensors learned (default: all but lora.*, base.*)");
  o.optional("--backend", "NAME", "cpu | reference | cuda (default cpu)");
  o.optional("--threads", "N", "cpu backend threads (default 1)");
  o.optional("--dtype", "TYPE",
             "f32 | f64 | bf16 | f16; bf16 and f16: the cpu backend keeps lora.A and lora.B in\n"
             "16 bits (a --model file of F16 / BF16: so by default); with --backend cuda\n"
             "bf16 | f16 | f32 (default f32; cuda: bf16)");
  o.optional("--bandwidth", "MIB", "time nothing else: one core summing a buffer of MIB MiB, --repeat times");
  o.optional("--repeat", "N", "timed calls; the median is reported (default 5)");
  o.optional("--warmup", "N", "untimed calls first (default 1)");
  o.optional("--seed", "S", "model and input seed (default 1)");
  o.flag("--json", "print one JSON object instead of text");
  o.epilog(
      "example:\n"
      "  radargate bench --variant radargate --tokens 256 --experts 40 --d-in 4096 --d 4096 --rank 8 \\\n"
      "                  --angle-rank 8 --planes 2048 --backward --threads 2 --json");
}

const long long big = 1LL << 24;

// --bandwidth MIB: checks MIB and times the read bandwidth (bench_bandwidth).
int run_bandwidth(const OptionParser& o) {
  const double mib = o.number("--bandwidth");
  if (!(mib >= 1 && mib <= 65536))
    o.fail("option --bandwidth: expected 1 to 65536 MiB, found '" + o.str("--bandwidth") + "'");
  return bench_bandwidth(mib, int(o.integer("--repeat", 1, 1000000, 5)), int(o.integer("--warmup", 0, 1000000, 1)),
                         o.has("--json"));
}

// --model [--layer]: the variant, shape and base come from the file.
void read_model_file(const OptionParser& o, BenchArgs& a) {
  for (const char* opt :
       {"--variant", "--experts", "--d-in", "--d", "--rank", "--angle-rank", "--planes", "--topk", "--base"})
    if (o.has(opt)) o.fail(std::string("option ") + opt + ": comes from the --model file; leave it out");
  a.model = o.str("--model");
  a.layer = o.str("--layer", "");
  const io::LoadedModel<double> lm = io::load_layer<double>(io::SafetensorsFile::read(a.model), a.layer);
  a.cfg = lm.model.config;
  a.D = lm.dims;
  a.base = lm.model.has("base.W0");
}

// A random model: the variant, shape and base from the options.
void read_random_shape(const OptionParser& o, BenchArgs& a) {
  a.cfg = LayerConfig::make(parse_variant(o.str("--variant")));
  a.D.N = index_t(o.integer("--experts", 1, 1 << 16));
  a.D.d_in = index_t(o.integer("--d-in", 1, big));
  a.D.d = index_t(o.integer("--d", 1, big));
  a.D.r = index_t(o.integer("--rank", 1, 1 << 16));
  a.D.k = index_t(o.integer("--angle-rank", 1, 1 << 16));
  if (a.cfg.rotation && a.D.d < 2) o.fail("option --d: a rotating variant needs d >= 2");
  a.D.P = index_t(o.integer("--planes", 1, std::max<long long>(1, a.D.d / 2), std::max<long long>(1, a.D.d / 2)));
  a.cfg.topk = int(o.integer("--topk", 1, a.D.N, std::min<long long>(2, a.D.N)));
  a.base = o.has("--base");
}

// What is timed: --tokens, the layer, --backward, --json, --train-step [--train].
void read_what(const OptionParser& o, BenchArgs& a) {
  if (!o.has("--tokens")) o.fail("option --tokens is required");
  a.T = index_t(o.integer("--tokens", 0, big));
  if (o.has("--layer") && !o.has("--model")) o.fail("option --layer needs --model");
  if (o.has("--model"))
    read_model_file(o, a);
  else
    read_random_shape(o, a);
  a.backward = o.has("--backward");
  a.json = o.has("--json");
  a.train_step = o.has("--train-step");
  if (o.has("--train")) {
    if (!a.train_step) o.fail("option --train needs --train-step");
    a.train = o.list("--train");
  }
  if (a.train_step && a.backward) o.fail("option --backward: a --train-step already runs backward");
}

// --backend cuda: checks its options and times it (bench_cuda), in a build with CUDA.
int run_cuda(const OptionParser& o, const BenchArgs& a) {
  if (o.has("--model")) o.fail("option --model: --backend cuda times a random model; use cpu or reference");
  if (o.has("--threads")) o.fail("option --threads: only for --backend cpu");
  if (a.train_step) o.fail("option --train-step: for --backend cpu or reference");
  CudaBenchRequest q;
  q.cfg = a.cfg;
  q.D = a.D;
  q.T = a.T;
  q.backward = a.backward;
  q.base = a.base;
  q.json = a.json;
  q.dtype = o.str("--dtype", "bf16");
  if (q.dtype != "bf16" && q.dtype != "f16" && q.dtype != "f32")
    o.fail("option --dtype: expected bf16 | f16 | f32 with --backend cuda, found '" + q.dtype + "'");
  q.repeat = int(o.integer("--repeat", 1, 1000000, 5));
  q.warmup = int(o.integer("--warmup", 0, 1000000, 1));
  q.seed = std::uint64_t(o.integer("--seed", 0, (1LL << 62), 1));
#ifdef RADARGATE_WITH_CUDA
  return bench_cuda(q);
#else
  o.fail("option --backend: cuda needs a build with the CUDA toolkit (cmake -DRADARGATE_ENABLE_CUDA=ON)");
#endif
}

// --dtype of the cpu and reference backends (default: f32, or the 16-bit type of a --model file
// for the cpu backend), into a.f64 and a.weights.
void read_dtype(const OptionParser& o, BenchArgs& a) {
  std::string dtype = o.str("--dtype", "");
  if (dtype.empty() && !a.model.empty() && !a.reference) {  // a 16-bit file keeps 16-bit experts
    const io::DType ft = io::layer_dtype(io::SafetensorsFile::read(a.model), a.layer);
    dtype = ft == io::DType::BF16 ? "bf16" : ft == io::DType::F16 ? "f16" : "f32";
  }
  if (dtype.empty()) dtype = "f32";
  if (dtype != "f32" && dtype != "f64" && dtype != "bf16" && dtype != "f16")
    o.fail("option --dtype: expected f32 | f64 | bf16 | f16, found '" + dtype + "'");
  if (a.reference && (dtype == "bf16" || dtype == "f16"))
    o.fail("option --dtype: " + dtype + " weights are a cpu backend option; use --backend cpu");
  a.f64 = dtype == "f64";
  if (dtype == "bf16") a.weights = WeightStorage::bf16;
  if (dtype == "f16") a.weights = WeightStorage::f16;
}

// The cpu or reference backend: --threads, --dtype, --repeat, --warmup, --seed.
void read_cpu_run(const OptionParser& o, const std::string& backend, BenchArgs& a) {
  if (backend != "cpu" && backend != "reference")
    o.fail("option --backend: expected cpu | reference | cuda, found '" + backend + "'");
  a.reference = backend == "reference";
  a.threads = int(o.integer("--threads", 1, 1024, 1));
  if (a.reference && o.has("--threads")) o.fail("option --threads: only for --backend cpu");
  read_dtype(o, a);
  a.repeat = int(o.integer("--repeat", 1, 1000000, 5));
  a.warmup = int(o.integer("--warmup", 0, 1000000, 1));
  a.seed = std::uint64_t(o.integer("--seed", 0, (1LL << 62), 1));
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  OptionParser o("bench",
                 "Times one call of a layer (forward, or forward + backward of every gradient) on a random model and\n"
                 "random inputs, with no file I/O, and prints the median time, the essential GFLOP/s (FLOP count in\n"
                 "docs/PERFORMANCE.md) and the peak resident memory of the process. For the cpu backend it\n"
                 "also names how its matrix products run: 'eigen', or 'blas' in a build with\n"
                 "-DRADARGATE_USE_BLAS=ON (--json: \"gemm\"), and the SIMD kernel set it runs (--json: \"kernels\":\n"
                 "avx512bw, fma3<avx2>, sse2, neon64, scalar, ...; see docs/CPU_BACKEND.md).");
  declare_options(o);
  if (!o.parse(argc, argv)) return 0;
  if (o.has("--bandwidth")) return run_bandwidth(o);
  BenchArgs a;
  read_what(o, a);
  const std::string backend = o.str("--backend", "cpu");
  if (backend == "cuda") return run_cuda(o, a);
  read_cpu_run(o, backend, a);
  return a.f64 ? bench_typed<double>(a) : bench_typed<float>(a);
}

}  // namespace cli
}  // namespace radargate
