// radargate train -- learns chosen tensors of a model file on a data file (docs/TRAINING.md).
//
//   data  x [T, d_in] with y [T, d] (--loss mse) or label [T] (--loss cross_entropy)
//   step  seeded shuffle -> batch -> forward -> loss -> backward of the trained tensors -> clip ->
//         AdamW / SGD update with the scheduled learning rate
//   out   an ordinary model file (same seed, build, backend and thread count: same bytes), written whole
//         or not at all; optionally the optimizer state after every epoch (--state) to continue
//         from (--resume), and one JSON line per epoch (--log)
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate.hpp"
#include "radargate/cpu.hpp"
#include "radargate/io/model_file.hpp"
#include "radargate/io/model_set.hpp"
#include "radargate/train.hpp"
#include "radargate/train/state_io.hpp"
#include "train_cuda.hpp"

namespace radargate {
namespace cli {
namespace {

struct TrainArgs {
  std::string model, layer, data, output, val, log, state, resume;
  const io::SafetensorsFile* model_file = nullptr;  // --model, read once
  train::TrainerOptions opt;
  std::int64_t epochs = 10, stop_after = 0;
  std::vector<std::string> train;  // empty: the default set
  std::string backend = "cpu";     // reference | cpu | cuda
  int threads = 1;
};

// --- data ------------------------------------------------------------------------------------------

template <class S>
struct Data {
  Tensor<S> x, y;
  std::vector<std::int64_t> labels;
  train::Dataset<S> view() const {
    train::Dataset<S> d;
    d.x = x.template view<2>();
    if (!y.data.empty() || !y.shape.empty()) d.y = y.template view<2>();
    if (!labels.empty()) d.labels = labels.data();
    return d;
  }
};

/// Decodes an integer tensor of any integer dtype.
std::vector<std::int64_t> read_labels(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo& ti = f.info(name);
  const unsigned char* p = f.raw(name);
  const std::size_t n = std::size_t(ti.numel());
  std::vector<std::int64_t> out(n);
  auto le = [&](std::size_t i, int bytes) {
    std::uint64_t v = 0;
    for (int b = 0; b < bytes; ++b) v |= std::uint64_t(p[i * std::size_t(bytes) + std::size_t(b)]) << (8 * b);
    return v;
  };
  for (std::size_t i = 0; i < n; ++i) {
    switch (ti.dtype) {
      case io::DType::I64:
        out[i] = std::int64_t(le(i, 8));
        break;
      case io::DType::I32:
        out[i] = std::int32_t(std::uint32_t(le(i, 4)));
        break;
      case io::DType::I16:
        out[i] = std::int16_t(std::uint16_t(le(i, 2)));
        break;
      case io::DType::I8:
        out[i] = std::int8_t(std::uint8_t(le(i, 1)));
        break;
      case io::DType::U8:
        out[i] = std::int64_t(le(i, 1));
        break;
      case io::DType::U16:
        out[i] = std::int64_t(le(i, 2));
        break;
      case io::DType::U32:
        out[i] = std::int64_t(le(i, 4));
        break;
      case io::DType::U64: {
        const std::uint64_t v = le(i, 8);
        out[i] = v > std::uint64_t(INT64_MAX) ? -1 : std::int64_t(v);
        break;
      }
      default:
        f.fail_tensor(name, "expected an integer dtype (I64, I32, I16, I8, U8, ...) for class ids, found ",
                      io::to_string(ti.dtype));
    }
  }
  return out;
}

/// Reads and checks a data file against the model: names, dtypes, shapes, T, finite values,
/// label range. Every problem is one error naming the file, the tensor, the expected and the found.
template <class S>
Data<S> load_data(const std::string& path, const Dims& D, train::LossKind loss) {
  const io::SafetensorsFile f = io::SafetensorsFile::read(path);
  const bool mse = loss == train::LossKind::mse;
  const char* target = mse ? "y" : "label";
  for (const io::TensorInfo& t : f.tensors())
    if (t.name != "x" && t.name != target) {
      if (t.name == "y" || t.name == "label")
        f.fail_tensor(t.name, "not read by --loss ", train::to_string(loss), " (which reads x and ", target,
                      "); use --loss ", t.name == "y" ? "mse" : "cross_entropy", " or remove it");
      f.fail_tensor(t.name, "unknown name; expected x [T, d_in] and ", mse ? "y [T, d]" : "label [T]");
    }
  if (!f.has("x")) f.fail_tensor("x", "missing from the file (expected shape [T, ", D.d_in, "])");
  if (!f.has(target))
    f.fail_tensor(target, "missing from the file (--loss ", train::to_string(loss), " needs ",
                  mse ? "y [T, d]" : "label [T] class ids", ")");
  Data<S> d;
  const io::TensorInfo& xi = f.info("x");
  if (!io::is_floating(xi.dtype))
    f.fail_tensor("x", "expected a floating-point dtype (F64, F32, F16 or BF16), found ", io::to_string(xi.dtype));
  if (xi.shape.size() != 2 || xi.shape[1] != D.d_in)
    f.fail_tensor("x", "expected shape [T, ", D.d_in, "] (d_in of the model), found ", io::detail::shape_str(xi.shape));
  const index_t T = xi.shape[0];
  if (T == 0) f.fail_tensor("x", "no tokens (shape ", io::detail::shape_str(xi.shape), "): expected T >= 1");
  d.x = f.get<S>("x");
  io::detail::in_file(f.source(), [&] { io::require_finite("x", d.x); });
  if (mse) {
    const io::TensorInfo& yi = f.info("y");
    if (!io::is_floating(yi.dtype))
      f.fail_tensor("y", "expected a floating-point dtype (F64, F32, F16 or BF16), found ", io::to_string(yi.dtype));
    if (yi.shape.size() != 2 || yi.shape[0] != T || yi.shape[1] != D.d)
      f.fail_tensor("y", "expected shape [", T, ", ", D.d, "] (T of x, d of the model), found ",
                    io::detail::shape_str(yi.shape));
    d.y = f.get<S>("y");
    io::detail::in_file(f.source(), [&] { io::require_finite("y", d.y); });
  } else {
    const io::TensorInfo& li = f.info("label");
    if (li.shape.size() != 1 || li.shape[0] != T)
      f.fail_tensor("label", "expected shape [", T, "] (T of x), found ", io::detail::shape_str(li.shape));
    d.labels = read_labels(f, "label");
    for (std::size_t i = 0; i < d.labels.size(); ++i)
      if (d.labels[i] < 0 || d.labels[i] >= D.d)
        f.fail_tensor("label", "expected class ids in 0..", D.d - 1, " (d = ", D.d, " outputs), found ", d.labels[i],
                      " at index [", i, "]");
  }
  return d;
}

/// The tensors to train: --train, or every tensor of the model except the experts and the base.
template <class S>
std::vector<std::string> trained_names(const TrainArgs& a, const Model<S>& m) {
  std::vector<std::string> present;
  for (const std::string& n : param_names())
    if (m.has(n)) present.push_back(n);
  const LayerConfig& cfg = m.config;
  if (!a.train.empty()) {
    std::vector<std::string> out;
    for (const std::string& t : a.train) {
      bool ok = false;
      for (const std::string& n : present) ok = ok || n == t;
      if (!ok)
        detail::fail("option --train: '", t, "' is not a tensor of the model '", a.model, "' (variant '",
                     to_string(cfg.variant), "'); expected some of ", io::detail::join(present, ","));
      bool dup = false;
      for (const std::string& o : out) dup = dup || o == t;
      if (!dup) out.push_back(t);
    }
    return out;
  }
  std::vector<std::string> out;
  for (const std::string& n : present)
    if (n != "lora.A" && n != "lora.B" && n != "lora.scale" && n.rfind("base.", 0) != 0) out.push_back(n);
  if (out.empty())
    detail::fail("option --train: the model '", a.model, "' (variant '", to_string(cfg.variant),
                 "') has no gate or angle tensors, which is what is trained by default; name the tensors to train, "
                 "e.g. --train lora.A,lora.B");
  return out;
}

// --- progress ----------------------------------------------------------------------------------------

std::string clock_text(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

class Progress {
 public:
  Progress(std::int64_t epochs, std::int64_t steps_per_epoch, std::int64_t first_epoch)
      : tty_(isatty(fileno(stderr)) != 0),
        epochs_(epochs),
        spe_(steps_per_epoch),
        total_steps_((epochs - first_epoch + 1) * steps_per_epoch),
        start_(clock::now()),
        last_draw_(start_) {}

  void step(const train::StepInfo& s) {
    ++done_;
    tokens_ += double(s.tokens);
    if (!tty_) return;
    const auto now = clock::now();
    if (s.step != s.steps_in_epoch && std::chrono::duration<double>(now - last_draw_).count() < 0.1) return;
    last_draw_ = now;
    const double el = elapsed();
    const int width = 24;
    const int filled = int(double(width) * double(s.step) / double(s.steps_in_epoch));
    std::string bar(std::size_t(filled), '#');
    bar.append(std::size_t(width - filled), '.');
    std::fprintf(stderr, "\r\033[Kepoch %lld/%lld [%s] step %lld/%lld loss %.4g%s %.0f tok/s left %s",
                 (long long)s.epoch, (long long)epochs_, bar.c_str(), (long long)s.step, (long long)s.steps_in_epoch,
                 s.loss, val_.c_str(), tokens_ / std::max(el, 1e-9),
                 clock_text(el / double(done_) * double(total_steps_ - done_)).c_str());
    std::fflush(stderr);
  }
  void set_val(const std::string& v) { val_ = v; }
  /// The end-of-epoch line: on stdout (and, on a terminal, after clearing the bar).
  void epoch_line(const std::string& line) {
    if (tty_) std::fprintf(stderr, "\r\033[K");
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  void clear() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }
  double elapsed() const { return std::chrono::duration<double>(clock::now() - start_).count(); }
  double tokens() const { return tokens_; }

 private:
  using clock = std::chrono::steady_clock;
  bool tty_;
  std::int64_t epochs_, spe_, total_steps_, done_ = 0;
  double tokens_ = 0;
  clock::time_point start_, last_draw_;
  std::string val_;
};

// --- the run ---------------------------------------------------------------------------------------

/// Writes the trained model: a one-layer file as it came, or the whole file of many layers with the
/// trained layer replaced (every other layer as it was, in file order).
template <class S>
void write_output(const TrainArgs& a, const io::LoadedModel<S>& lm) {
  if (!a.model_file->metadata().count(io::layers_key)) return io::save_model(a.output, lm.model, lm.dtype);
  const io::ModelSet<S> set(std::make_shared<const io::SafetensorsFile>(*a.model_file));
  const std::string trained = set.select(a.layer).name;
  io::ModelSetWriter w;
  for (const io::ModelLayer<S>& l : set) w.add(l.name, l.name == trained ? lm.model : l.to_model(), l.dtype);
  w.write_atomic(a.output);
}

/// --resume: the state of a stopped run into `tr` (and the layer told its weights changed).
template <class S, class L>
void resume_run(const TrainArgs& a, train::Trainer<S, L>& tr, L& layer, const Data<S>& data) {
  train::load_state(io::SafetensorsFile::read(a.resume), tr, data.view());
  if constexpr (train::impl::has_weights_changed<L>::value) layer.weights_changed();
  if (tr.epochs_done() >= a.epochs)
    detail::fail("option --resume: the state '", a.resume, "' has ", tr.epochs_done(), " epochs done, and --epochs ",
                 a.epochs, " leaves none to run; raise --epochs");
}

/// The last epoch this run ends after: --epochs, or --stop-after; some must be left to run.
std::int64_t last_epoch(const TrainArgs& a, std::int64_t epochs_done) {
  const std::int64_t last = a.stop_after > 0 ? std::min(a.stop_after, a.epochs) : a.epochs;
  if (last <= epochs_done)
    detail::fail("option --stop-after: ", a.stop_after, " epochs are already done (from --resume '", a.resume, "')");
  return last;
}

using LogFile = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

/// --log, appended to when the run continues one (--resume), else written new; none without --log.
LogFile open_log(const TrainArgs& a, std::int64_t epochs_done) {
  LogFile log(nullptr, &std::fclose);
  if (!a.log.empty()) {
    log.reset(std::fopen(a.log.c_str(), epochs_done > 0 ? "a" : "w"));
    if (!log) detail::fail("option --log: cannot open '", a.log, "' for writing: ", io::detail::errno_text(errno));
  }
  return log;
}

/// The epochs of a run, each reported on stdout (Progress), in --log and saved to --state.
template <class S, class L>
struct EpochLoop {
  const TrainArgs& a;
  const train::TrainerOptions& o;
  train::Trainer<S, L>& tr;
  Progress& progress;
  std::FILE* log;
  train::Dataset<S> dv, vv;
  bool has_val;

  void run(std::int64_t last) {
    try {
      while (tr.epochs_done() < last) epoch();
    } catch (...) {
      progress.clear();
      throw;
    }
  }

  void epoch() {
    const double t0 = progress.elapsed(), tok0 = progress.tokens();
    const train::EpochResult r = tr.run_epoch(dv, [&](const train::StepInfo& s) { progress.step(s); });
    const double secs = progress.elapsed() - t0, tps = (progress.tokens() - tok0) / std::max(secs, 1e-9);
    nlohmann::json j;
    j["epoch"] = tr.epochs_done();
    j["steps"] = tr.optimizer().steps();
    j["train_loss"] = r.loss;
    j["lr"] = o.schedule.at(tr.optimizer().steps() - 1);
    char line[512];
    int n = std::snprintf(line, sizeof line, "epoch %lld/%lld: train loss %.6g", (long long)tr.epochs_done(),
                          (long long)a.epochs, r.loss);
    if (has_val) n += validate(j, line + n, sizeof line - std::size_t(n));
    j["tokens_per_s"] = tps;
    j["seconds"] = secs;
    std::snprintf(line + n, sizeof line - std::size_t(n), ", %.0f tokens/s, %.2f s", tps, secs);
    progress.epoch_line(line);
    if (log) {
      std::fprintf(log, "%s\n", j.dump().c_str());
      std::fflush(log);
    }
    if (!a.state.empty()) train::save_state(a.state, tr, dv);
  }

  /// The validation loss (and accuracy) into `j`, onto the epoch line at `line` (room for `size`
  /// bytes; returns the characters written) and onto the progress bar.
  int validate(nlohmann::json& j, char* line, std::size_t size) {
    const train::Evaluation ev = tr.evaluate(vv);
    j["val_loss"] = ev.loss;
    int n = std::snprintf(line, size, ", val loss %.6g", ev.loss);
    char v[64];
    if (o.loss == train::LossKind::cross_entropy) {
      j["val_accuracy"] = ev.accuracy;
      n += std::snprintf(line + n, size - std::size_t(n), " accuracy %.4f", ev.accuracy);
      std::snprintf(v, sizeof v, " val acc %.4f", ev.accuracy);
    } else {
      std::snprintf(v, sizeof v, " val loss %.4g", ev.loss);
    }
    progress.set_val(v);
    return n;
  }
};

/// An update can make a tensor non-finite without a later loss to show it.
template <class S>
void check_finite(const std::vector<std::string>& names, const Model<S>& m, std::int64_t epochs_done) {
  for (const std::string& n : names)
    for (const S& e : m.tensors.at(n).data)
      if (!std::isfinite(e))
        detail::fail("training diverged: tensor '", n, "' holds ", e, " after epoch ", epochs_done,
                     "; no output written; try a smaller --lr or --clip");
}

/// `names`: the tensors to train (trained_names); `backend`: how the first line names the backend.
template <class S, class L>
int train_with(const TrainArgs& a, io::LoadedModel<S>& lm, L& layer, const std::vector<std::string>& names,
               const Data<S>& data, const Data<S>* val, const std::string& backend) {
  train::TrainerOptions o = a.opt;
  const index_t T = data.x.shape[0];
  o.schedule.total = std::max<std::int64_t>(1, a.epochs * train::steps_per_epoch(T, o.batch));
  train::Trainer<S, L> tr(lm.model, layer, names, o);
  if (!a.resume.empty()) resume_run(a, tr, layer, data);
  const std::int64_t last = last_epoch(a, tr.epochs_done());
  const LogFile log = open_log(a, tr.epochs_done());
  const std::int64_t spe = train::steps_per_epoch(T, o.batch);
  std::printf("training %s (variant %s, %s, backend %s): %s on %lld tokens, %lld steps per epoch, epochs %lld..%lld\n",
              a.model.c_str(), to_string(lm.model.config.variant), io::to_string(lm.dtype), backend.c_str(),
              io::detail::join(names, ",").c_str(), (long long)T, (long long)spe, (long long)(tr.epochs_done() + 1),
              (long long)last);
  std::fflush(stdout);
  Progress progress(a.epochs, spe, tr.epochs_done() + 1);
  EpochLoop<S, L> loop{a, o, tr, progress, log.get(), data.view(), {}, val != nullptr};
  if (val) loop.vv = val->view();
  loop.run(last);
  check_finite(names, lm.model, tr.epochs_done());
  write_output(a, lm);
  std::printf("wrote %s (%s, %lld epochs done%s)\n", a.output.c_str(), io::to_string(lm.dtype),
              (long long)tr.epochs_done(), a.state.empty() ? "" : (", state in " + a.state).c_str());
  return 0;
}

template <class S>
int train_typed(const TrainArgs& a, const io::SafetensorsFile& model_file) {
  io::LoadedModel<S> lm = io::load_layer<S>(model_file, a.layer);
  if (a.backend == "cuda" && !std::is_same<S, float>::value)
    detail::fail("option --backend: cuda trains in float32, and the model '", a.model,
                 "' is F64; use --backend cpu or reference, or a model file of F32, F16 or BF16");
  const Data<S> data = load_data<S>(a.data, lm.dims, a.opt.loss);
  std::unique_ptr<Data<S>> val;
  if (!a.val.empty()) val = std::make_unique<Data<S>>(load_data<S>(a.val, lm.dims, a.opt.loss));
  const std::vector<std::string> names = trained_names(a, lm.model);
  if (a.backend == "cuda") {
#ifdef RADARGATE_WITH_CUDA
    if constexpr (std::is_same<S, float>::value) {
      const std::unique_ptr<CudaTrainLayer> layer = make_cuda_train_layer(lm.model, names);
      return train_with<S>(a, lm, *layer, names, data, val.get(), "cuda, " + layer->device_name() + ", float32");
    }
#endif
    // Unreachable: refused above (a build without CUDA, or an F64 model).
    detail::fail("option --backend: cuda needs a build with the CUDA toolkit and a float32 model");
  }
  if (a.backend == "cpu") {
    CpuOptions co;
    co.threads = a.threads;
    Layer<S, backend::cpu> layer(lm.model.config, lm.model.params(), co);
    return train_with<S>(a, lm, layer, names, data, val.get(),
                         "cpu, " + std::to_string(a.threads) + " thread" + (a.threads == 1 ? "" : "s"));
  }
  Layer<S, backend::reference> layer(lm.model.config, lm.model.params());
  return train_with<S>(a, lm, layer, names, data, val.get(), "reference");
}

void declare_options(OptionParser& o) {
  o.required("--model", "FILE", "model file to start from (see 'radargate init')");
  o.optional("--layer", "NAME",
             "the layer to train, in a file of many layers (required there; 'radargate info'\n"
             "lists them); the output is the whole file with that layer trained");
  o.required("--data", "FILE",
             "training data: x [T, d_in] with y [T, d] (mse) or label [T] integer class ids\n"
             "in 0..d-1 (cross_entropy)");
  o.required("--output", "FILE", "trained model file (written whole or not at all)");
  o.optional("--val", "FILE", "validation data, same form: its loss (and accuracy) is reported after every epoch");
  o.optional("--epochs", "E", "passes over the data (default 10)");
  o.optional("--batch", "B", "tokens per step (default 32)");
  o.optional("--lr", "X", "learning rate (default 1e-3)");
  o.optional("--weight-decay", "X", "adamw: decoupled weight decay (default 0.01); sgd: L2 term (default 0)");
  o.optional("--optimizer", "NAME", "adamw | sgd (default adamw; betas 0.9, 0.999, eps 1e-8 as torch.optim.AdamW)");
  o.optional("--momentum", "X", "sgd: momentum (default 0.9)");
  o.optional("--schedule", "NAME", "constant | cosine: the learning rate after the warm-up (default constant)");
  o.optional("--warmup", "N", "steps of linear warm-up from lr/N to lr (default 0)");
  o.optional("--clip", "X", "clip the gradients to this global norm (default 0: no clipping)");
  o.optional("--loss", "NAME", "mse | cross_entropy over the layer's d outputs (default mse)");
  o.optional("--train", "LIST",
             "comma-separated tensor names to learn (default: every tensor of the model except\n"
             "lora.A, lora.B, lora.scale and base.*: the experts and the base stay frozen)");
  o.optional("--seed", "S", "shuffle seed (default 0)");
  o.optional("--backend", "NAME",
             "reference | cpu | cuda (default cpu); cuda: the CUDA backend in float32 (a model\n"
             "file of F32, F16 or BF16), in a build with the CUDA toolkit");
  o.optional("--threads", "N", "with --backend cpu: threads (default 1)");
  o.optional("--log", "FILE",
             "write one JSON object per epoch (epoch, steps, train_loss, val_loss, val_accuracy,\n"
             "lr, tokens_per_s, seconds) to this file");
  o.optional("--state", "FILE",
             "write the training state (trained values, optimizer state, counters) here after\n"
             "every epoch, to continue with --resume");
  o.optional("--resume", "FILE",
             "continue the run whose --state this is (same model, data and settings): the\n"
             "result has the same bytes as a run that was never stopped");
  o.optional("--stop-after", "K",
             "end after epoch K of --epochs (the schedule still spans --epochs), writing\n"
             "--output and --state; continue later with --resume");
  o.epilog(
      "examples:\n"
      "  radargate train --model m.safetensors --data train.safetensors --val test.safetensors \\\n"
      "                  --output trained.safetensors --loss cross_entropy --epochs 20 --lr 0.01 --schedule cosine\n"
      "  radargate train --model one_expert.safetensors --data task.safetensors --output expert.safetensors \\\n"
      "                  --train lora.A,lora.B --loss cross_entropy");
}

/// The files of the run and its length: --model .. --resume, --epochs, --stop-after.
void read_files(const OptionParser& o, TrainArgs& a) {
  a.model = o.str("--model");
  if (o.has("--layer")) a.layer = o.str("--layer");
  a.data = o.str("--data");
  a.output = o.str("--output");
  a.val = o.str("--val", "");
  a.log = o.str("--log", "");
  a.state = o.str("--state", "");
  a.resume = o.str("--resume", "");
  a.epochs = o.integer("--epochs", 1, 1000000000, 10);
  a.stop_after = o.integer("--stop-after", 1, 1000000000, 0);
  if (a.stop_after > a.epochs)
    o.fail("option --stop-after: expected at most --epochs (" + std::to_string(a.epochs) + "), found " +
           std::to_string(a.stop_after));
}

/// The optimizer and its schedule: --batch, --optimizer, --momentum, --weight-decay, --lr,
/// --schedule, --warmup, --clip.
void read_optimizer(const OptionParser& o, train::TrainerOptions& t) {
  t.batch = index_t(o.integer("--batch", 1, 1 << 24, 32));
  const std::string opt_name = o.str("--optimizer", "adamw");
  if (opt_name != "adamw" && opt_name != "sgd")
    o.fail("option --optimizer: expected adamw | sgd, found '" + opt_name + "'");
  t.optimizer.kind = train::parse_optimizer(opt_name);
  const bool sgd = t.optimizer.kind == train::OptimizerKind::sgd;
  if (o.has("--momentum") && !sgd) o.fail("option --momentum: only for --optimizer sgd");
  t.optimizer.momentum = sgd ? o.number("--momentum", 0.9) : 0.0;
  if (t.optimizer.momentum < 0) o.fail("option --momentum: expected a number >= 0, found " + o.str("--momentum"));
  t.optimizer.weight_decay = o.number("--weight-decay", sgd ? 0.0 : 0.01);
  if (t.optimizer.weight_decay < 0)
    o.fail("option --weight-decay: expected a number >= 0, found " + o.str("--weight-decay"));
  t.schedule.lr = o.number("--lr", 1e-3);
  if (t.schedule.lr <= 0) o.fail("option --lr: expected a number > 0, found " + o.str("--lr"));
  const std::string sched = o.str("--schedule", "constant");
  if (sched != "constant" && sched != "cosine")
    o.fail("option --schedule: expected constant | cosine, found '" + sched + "'");
  t.schedule.kind = train::parse_schedule(sched);
  t.schedule.warmup = o.integer("--warmup", 0, 1000000000, 0);
  t.clip = o.number("--clip", 0.0);
  if (t.clip < 0) o.fail("option --clip: expected a number >= 0 (0: off), found " + o.str("--clip"));
}

/// --backend and --threads.
void read_backend(const OptionParser& o, TrainArgs& a) {
  a.backend = o.str("--backend", "cpu");
  if (a.backend != "reference" && a.backend != "cpu" && a.backend != "cuda")
    o.fail("option --backend: expected reference | cpu | cuda, found '" + a.backend + "'");
#ifndef RADARGATE_WITH_CUDA
  if (a.backend == "cuda")
    o.fail("option --backend: cuda needs a build with the CUDA toolkit (cmake -DRADARGATE_ENABLE_CUDA=ON)");
#endif
  if (o.has("--threads") && a.backend != "cpu") o.fail("option --threads needs --backend cpu");
  a.threads = int(o.integer("--threads", 1, 1024, 1));
}

/// No file of the run may be another: --output is none of the inputs, --state and --log are none
/// of the others.
void check_distinct_files(const OptionParser& o, const TrainArgs& a) {
  const std::string& out = a.output;
  for (const std::string* in : {&a.model, &a.data, &a.val, &a.resume})
    if (!in->empty() && *in == out) o.fail("option --output: '" + out + "' is also an input; choose another file");
  if (!a.state.empty() && (a.state == out || a.state == a.model || a.state == a.data || a.state == a.val))
    o.fail("option --state: '" + a.state + "' is also another file of this run; choose another file");
  if (!a.log.empty() &&
      (a.log == out || a.log == a.model || a.log == a.data || a.log == a.val || a.log == a.state || a.log == a.resume))
    o.fail("option --log: '" + a.log + "' is also another file of this run; choose another file");
}

}  // namespace

int cmd_train(int argc, char** argv) {
  OptionParser o("train",
                 "Learns the tensors named by --train of the model in --model on the data in --data, and writes the\n"
                 "trained model to --output (an ordinary model file; same seed, build, --backend and --threads give\n"
                 "the same bytes, on the same device for cuda). Each epoch visits the tokens in a shuffled order\n"
                 "fixed by --seed and the epoch number; each step runs forward, the loss, backward of the trained\n"
                 "tensors only, clipping, and the optimizer. Progress is a bar on a terminal and one line per epoch\n"
                 "otherwise. On any error nothing is written to --output.");
  declare_options(o);
  if (!o.parse(argc, argv)) return 0;
  TrainArgs a;
  read_files(o, a);
  read_optimizer(o, a.opt);
  const std::string loss = o.str("--loss", "mse");
  if (loss != "mse" && loss != "cross_entropy")
    o.fail("option --loss: expected mse | cross_entropy, found '" + loss + "'");
  a.opt.loss = train::parse_loss(loss);
  if (o.has("--train")) a.train = o.list("--train");
  a.opt.seed = std::uint64_t(o.integer("--seed", 0, (1LL << 62), 0));
  read_backend(o, a);
  check_distinct_files(o, a);
  const io::SafetensorsFile model_file = io::SafetensorsFile::read(a.model);
  a.model_file = &model_file;
  const io::DType dtype = io::load_layer<double>(model_file, a.layer).dtype;
  if (dtype == io::DType::F64) return train_typed<double>(a, model_file);
  return train_typed<float>(a, model_file);
}

}  // namespace cli
}  // namespace radargate
