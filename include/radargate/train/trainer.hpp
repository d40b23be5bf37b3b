// radargate/train/trainer.hpp -- mini-batch training of a layer on any backend, over any subset
// of its parameters.
//
//   Model<double> m = ...;                                   // owns the parameter memory
//   Layer<double, backend::cpu> layer(m.config, m.params()); // views into m
//   train::TrainerOptions o;  o.loss = train::LossKind::cross_entropy;  o.batch = 32;
//   o.schedule = {train::ScheduleKind::cosine, 1e-2, 10, epochs * train::steps_per_epoch(T, 32)};
//   train::Trainer<double, decltype(layer)> tr(m, layer, {"stretch.Wg", "angle.U"}, o);
//   for (int e = 0; e < epochs; ++e) tr.run_epoch(data);          // seeded shuffle per epoch
//
// One step: gather the batch's rows (in the epoch's shuffled order) -> forward -> loss and dL/dy
// -> backward for the trained tensors only -> clip by global norm -> optimizer update in place in
// the model's memory -> weights_changed() on backends that cache weights (cpu; train::CudaLayer of
// <radargate/train.cuh>, which keeps a device copy of the model). A step after the
// first allocates nothing: every buffer (batch rows, outputs, dL/dy, gradients, optimizer state,
// the permutation) is sized once, and on a backend with a workspace API (cpu, reference) the
// trainer keeps one Context, refilled in place, and one workspace for forward and backward.
//
// A loss or gradient norm that becomes NaN or Inf throws radargate::error naming the epoch and
// the step, before any update is applied from it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../model.hpp"
#include "../params.hpp"
#include "../workspace.hpp"
#include "loss.hpp"
#include "optimizer.hpp"
#include "schedule.hpp"

namespace radargate {
namespace train {

/// A training or validation set over caller memory: x [T, d_in] with either y [T, d] (mse) or
/// labels [T] in 0..d-1 (cross_entropy).
template <class S>
struct Dataset {
  View<const S, 2> x;
  View<const S, 2> y;
  const std::int64_t* labels = nullptr;
  index_t size() const { return x.shape[0]; }
};

struct TrainerOptions {
  LossKind loss = LossKind::mse;
  OptimizerOptions optimizer;
  Schedule schedule;
  double clip = 0.0;       // max global gradient norm; 0: no clipping
  index_t batch = 32;      // tokens per step (the last step of an epoch may have fewer)
  std::uint64_t seed = 0;  // the shuffle of epoch e is a function of (seed, e) only
};

/// Steps in one epoch of T tokens with batches of B.
inline std::int64_t steps_per_epoch(index_t T, index_t B) { return B > 0 ? (T + B - 1) / B : 0; }

/// What a step reports to an epoch's callback.
struct StepInfo {
  std::int64_t epoch = 0;  // 1-based
  std::int64_t step = 0;   // 1-based within the epoch
  std::int64_t steps_in_epoch = 0;
  std::int64_t global_step = 0;  // steps taken so far, this one included
  double loss = 0, lr = 0, grad_norm = 0;
  index_t tokens = 0;  // in this step's batch
};

struct EpochResult {
  double loss = 0;  // token-weighted mean of the steps' losses
  std::int64_t steps = 0;
  index_t tokens = 0;
};

struct Evaluation {
  double loss = 0;
  double accuracy = 0;  // cross_entropy: share of tokens whose largest logit is the label
  index_t tokens = 0;
};

namespace impl {
template <class L, class = void>
struct has_weights_changed : std::false_type {};
template <class L>
struct has_weights_changed<L, std::void_t<decltype(std::declval<L&>().weights_changed())>> : std::true_type {};

/// Whether L takes a caller's context and workspace (forward(x, y, ctx, ws), backward(..., ws)).
template <class L, class S, class = void>
struct has_workspace : std::false_type {};
template <class L, class S>
struct has_workspace<
    L, S,
    std::void_t<typename L::Context, decltype(std::declval<const L&>().forward_workspace_bytes(index_t(0))),
                decltype(std::declval<const L&>().backward_workspace_bytes(index_t(0),
                                                                           std::declval<const Gradients<S>&>())),
                decltype(std::declval<const L&>().forward(std::declval<View<const S, 2>>(), std::declval<View<S, 2>>(),
                                                          std::declval<typename L::Context&>(), Workspace{})),
                decltype(std::declval<const L&>().backward(
                    std::declval<const typename L::Context&>(), std::declval<View<const S, 2>>(),
                    std::declval<const Gradients<S>&>(), GradMode::overwrite, Workspace{}))>> : std::true_type {};

template <class L, class S, bool = has_workspace<L, S>::value>
struct SavedContext {
  struct type {};
};
template <class L, class S>
struct SavedContext<L, S, true> {
  using type = typename L::Context;
};

/// SplitMix64: the shuffle's generator (fixed, so shuffles do not depend on the standard library).
inline std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace impl

/// Fills perm with 0..n-1 in the order of epoch `epoch` (Fisher-Yates driven by SplitMix64
/// seeded from (seed, epoch)).
inline void shuffled_order(std::vector<index_t>& perm, std::uint64_t seed, std::int64_t epoch) {
  const std::size_t n = perm.size();
  for (std::size_t i = 0; i < n; ++i) perm[i] = index_t(i);
  std::uint64_t s = seed * 0xD1B54A32D192ED03ull + std::uint64_t(epoch) * 0x8CB92BA72F3D8DD7ull + 0x1234567ull;
  for (std::size_t i = n; i > 1; --i) {
    // j in [0, i) (the modulo's bias is below i / 2^64).
    const std::size_t j = std::size_t(impl::splitmix64(s) % std::uint64_t(i));
    std::swap(perm[i - 1], perm[j]);
  }
}

namespace impl {
/// "nan", "inf" or "-inf" (a NaN's sign bit is not meaningful, so it is not printed).
inline const char* non_finite_name(double v) { return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }
}  // namespace impl

/// FNV-1a (64-bit) of a data set's values, x then y or the labels, in row order: the tag a saved
/// state carries so that a run is not resumed on other data.
template <class S>
std::uint64_t fingerprint(const Dataset<S>& data) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  auto eat = [&](const void* p, std::size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  };
  const index_t T = data.size();
  for (index_t t = 0; t < T; ++t)
    for (index_t j = 0; j < data.x.shape[1]; ++j) eat(&data.x(t, j), sizeof(S));
  if (data.y.present())
    for (index_t t = 0; t < T; ++t)
      for (index_t j = 0; j < data.y.shape[1]; ++j) eat(&data.y(t, j), sizeof(S));
  if (data.labels) eat(data.labels, std::size_t(T) * sizeof(std::int64_t));
  return h;
}

template <class S, class L>
class Trainer {
  static_assert(std::is_floating_point<S>::value, "radargate::train::Trainer: S must be float or double");

 public:
  /// `layer` must have been built over model.params(); `train` names the tensors to learn (each
  /// present in the model; the order does not matter, they are kept in file order).
  Trainer(Model<S>& model, L& layer, const std::vector<std::string>& train, const TrainerOptions& options)
      : model_(model), layer_(layer), opt_(options), optim_(options.optimizer) {
    opt_.schedule.validate();
    if (opt_.batch < 1) detail::fail("trainer: expected a batch size >= 1, found ", opt_.batch);
    if (!(opt_.clip >= 0) || !std::isfinite(opt_.clip))
      detail::fail("trainer: expected a clipping norm >= 0 (0: off), found ", opt_.clip);
    if (train.empty()) detail::fail("trainer: expected at least one tensor to train, found none");
    for (std::size_t i = 0; i < train.size(); ++i) {
      for (std::size_t j = 0; j < i; ++j)
        if (train[i] == train[j]) detail::fail("trainer: tensor '", train[i], "' named twice");
      if (!model_.has(train[i])) {
        std::string have;
        for (const std::string& n : param_names())
          if (model_.has(n)) have += (have.empty() ? "" : ",") + n;
        detail::fail("trainer: tensor '", train[i], "' is not in the model (variant '",
                     radargate::to_string(model_.config.variant), "'); expected some of ", have);
      }
    }
    D_ = layer_.dims();
    // Gradient buffers for the trained tensors, in file order.
    grads_.reserve(train.size());
    for (const std::string& n : param_names()) {
      bool wanted = false;
      for (const std::string& t : train) wanted = wanted || t == n;
      if (!wanted) continue;
      Tensor<S>& p = model_.tensors.at(n);
      grads_.push_back(make_tensor<S>(p.shape));
      names_.push_back(n);
    }
    for (std::size_t i = 0; i < names_.size(); ++i) {
      Tensor<S>& p = model_.tensors.at(names_[i]);
      optim_.add(names_[i], p.data.data(), grads_[i].data.data(), p.data.size(), p.shape);
    }
    for_each_param(gv_, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      for (std::size_t i = 0; i < names_.size(); ++i)
        if (names_[i] == name) v = grads_[i].template mutable_view<V::rank>();
    });
    const std::size_t B = std::size_t(opt_.batch);
    xb_.assign(B * std::size_t(D_.d_in), S(0));
    tb_.assign(B * std::size_t(D_.d), S(0));
    lb_.assign(B, 0);
    out_.assign(B * std::size_t(D_.d), S(0));
    dy_.assign(B * std::size_t(D_.d), S(0));
  }

  const TrainerOptions& options() const { return opt_; }
  const std::vector<std::string>& trained() const { return names_; }
  Optimizer<S>& optimizer() { return optim_; }
  const Optimizer<S>& optimizer() const { return optim_; }
  const Model<S>& model() const { return model_; }
  /// Epochs completed (run_epoch calls, or restored from a saved state).
  std::int64_t epochs_done() const { return epochs_done_; }
  void set_epochs_done(std::int64_t e) { epochs_done_ = e; }

  /// Checks a data set against the layer and the loss: widths, label range, finite values.
  void check(const Dataset<S>& data, const char* what = "data") const {
    if (data.x.shape[1] != D_.d_in)
      detail::fail(what, ": tensor 'x': expected shape [T, ", D_.d_in, "] (d_in of the model), found [",
                   data.x.shape[0], ", ", data.x.shape[1], "]");
    const index_t T = data.size();
    if (opt_.loss == LossKind::mse) {
      if (!data.y.present() && T > 0) detail::fail(what, ": loss mse needs targets y [T, d], found none");
      if (data.y.shape[0] != T || data.y.shape[1] != D_.d)
        detail::fail(what, ": tensor 'y': expected shape [", T, ", ", D_.d, "] (T of x, d of the model), found [",
                     data.y.shape[0], ", ", data.y.shape[1], "]");
    } else {
      if (!data.labels && T > 0) detail::fail(what, ": loss cross_entropy needs labels [T], found none");
      for (index_t t = 0; t < T; ++t)
        if (data.labels[t] < 0 || data.labels[t] >= D_.d)
          detail::fail(what, ": tensor 'label': expected class ids in 0..", D_.d - 1, " (d = ", D_.d, "), found ",
                       data.labels[t], " at index [", t, "]");
    }
    auto finite = [&](const View<const S, 2>& v, const char* name) {
      for (index_t t = 0; t < v.shape[0]; ++t)
        for (index_t j = 0; j < v.shape[1]; ++j)
          if (!std::isfinite(v(t, j)))
            detail::fail(what, ": tensor '", name, "': expected finite values, found ", v(t, j), " at index [", t, ", ",
                         j, "]");
    };
    finite(data.x, "x");
    if (opt_.loss == LossKind::mse) finite(data.y, "y");
  }

  /// One pass over `data` in the shuffled order of the next epoch. `on_step(const StepInfo&)` is
  /// called after every step (progress display); pass [](const StepInfo&) {} for none.
  template <class F>
  EpochResult run_epoch(const Dataset<S>& data, F&& on_step) {
    const index_t T = data.size();
    if (T < 1) detail::fail("trainer: the training set is empty (T = 0)");
    if (perm_.size() != std::size_t(T)) perm_.assign(std::size_t(T), 0);
    const std::int64_t epoch = epochs_done_ + 1;
    shuffled_order(perm_, opt_.seed, epoch);
    const index_t B = opt_.batch;
    EpochResult r;
    r.steps = steps_per_epoch(T, B);
    double weighted = 0;
    for (std::int64_t s = 0; s < r.steps; ++s) {
      const index_t t0 = index_t(s) * B, n = std::min<index_t>(B, T - t0);
      gather(data, t0, n);
      StepInfo info;
      info.epoch = epoch;
      info.step = s + 1;
      info.steps_in_epoch = r.steps;
      info.tokens = n;
      step_buffers(n, info);
      weighted += info.loss * double(n);
      r.tokens += n;
      on_step(info);
    }
    r.loss = weighted / double(r.tokens);
    epochs_done_ = epoch;
    return r;
  }
  EpochResult run_epoch(const Dataset<S>& data) {
    return run_epoch(data, [](const StepInfo&) {});
  }

  /// One step on a batch given directly (x [B, d_in] with target [B, d] or labels [B], B <= batch).
  StepInfo step(View<const S, 2> x, View<const S, 2> target, const std::int64_t* labels) {
    const index_t n = x.shape[0];
    if (n < 1 || n > opt_.batch) detail::fail("trainer: expected a batch of 1..", opt_.batch, " tokens, found ", n);
    Dataset<S> d{x, target, labels};
    gather_rows(d, nullptr, 0, n);
    StepInfo info;
    info.epoch = epochs_done_ + 1;
    info.step = 1;
    info.steps_in_epoch = 1;
    info.tokens = n;
    step_buffers(n, info);
    return info;
  }

  /// Loss (and accuracy for cross_entropy) of the current parameters on `data`, in batches of
  /// the trainer's size, in data order. Changes nothing.
  Evaluation evaluate(const Dataset<S>& data) {
    Evaluation ev;
    const index_t T = data.size(), B = opt_.batch;
    double weighted = 0;
    std::int64_t correct = 0;
    for (index_t t0 = 0; t0 < T; t0 += B) {
      const index_t n = std::min<index_t>(B, T - t0);
      gather_rows(data, nullptr, t0, n);
      const View<S, 2> y = make_view(out_.data(), n, D_.d);
      forward(make_view(static_cast<const S*>(xb_.data()), n, D_.d_in), y);
      const View<S, 2> none;
      const double l = opt_.loss == LossKind::mse
                           ? mse_loss<S>(y, make_view(static_cast<const S*>(tb_.data()), n, D_.d), none)
                           : cross_entropy_loss<S>(y, lb_.data(), none, &correct);
      weighted += l * double(n);
      ev.tokens += n;
    }
    if (ev.tokens > 0) {
      ev.loss = weighted / double(ev.tokens);
      ev.accuracy = double(correct) / double(ev.tokens);
    }
    return ev;
  }

 private:
  Model<S>& model_;
  L& layer_;
  TrainerOptions opt_;
  Optimizer<S> optim_;
  Dims D_;
  std::vector<std::string> names_;
  std::vector<Tensor<S>> grads_;
  Gradients<S> gv_;
  std::vector<S> xb_, tb_, out_, dy_;
  std::vector<std::int64_t> lb_;
  std::vector<index_t> perm_;
  std::int64_t epochs_done_ = 0;
  static constexpr bool kWorkspace = impl::has_workspace<L, S>::value;
  typename impl::SavedContext<L, S>::type ctx_;  // with a workspace API: refilled by every forward
  std::vector<unsigned char> ws_;                // the workspace of forward and backward

  Workspace workspace(std::size_t bytes) {
    if (ws_.size() < bytes) ws_.resize(bytes);
    return Workspace{ws_.data(), ws_.size()};
  }

  // forward into the trainer's context (or, without a workspace API, the layer's own call).
  auto forward(View<const S, 2> x, View<S, 2> y) {
    if constexpr (kWorkspace) {
      layer_.forward(x, y, ctx_, workspace(layer_.forward_workspace_bytes(x.shape[0])));
      return std::ref(ctx_);
    } else {
      return layer_.forward(x, y);
    }
  }
  template <class C>
  void backward(const C& ctx, View<const S, 2> dy) {
    if constexpr (kWorkspace)
      layer_.backward(ctx, dy, gv_, GradMode::overwrite, workspace(layer_.backward_workspace_bytes(dy.shape[0], gv_)));
    else
      layer_.backward(ctx, dy, gv_, GradMode::overwrite);
  }

  template <class C>
  static const C& unwrap(const C& c) {
    return c;
  }
  template <class C>
  static const C& unwrap(const std::reference_wrapper<C>& c) {
    return c.get();
  }

  void gather(const Dataset<S>& data, index_t t0, index_t n) { gather_rows(data, perm_.data(), t0, n); }

  // Copies rows order[t0 .. t0+n) (or t0.. t0+n when order is null) of x and the targets into
  // the batch buffers.
  void gather_rows(const Dataset<S>& data, const index_t* order, index_t t0, index_t n) {
    for (index_t b = 0; b < n; ++b) {
      const index_t t = order ? order[t0 + b] : t0 + b;
      for (index_t j = 0; j < D_.d_in; ++j) xb_[std::size_t(b * D_.d_in + j)] = data.x(t, j);
      if (opt_.loss == LossKind::mse) {
        for (index_t j = 0; j < D_.d; ++j) tb_[std::size_t(b * D_.d + j)] = data.y(t, j);
      } else {
        lb_[std::size_t(b)] = data.labels[t];
      }
    }
  }

  void step_buffers(index_t n, StepInfo& info) {
    const View<const S, 2> x = make_view(static_cast<const S*>(xb_.data()), n, D_.d_in);
    const View<S, 2> y = make_view(out_.data(), n, D_.d);
    const View<S, 2> dy = make_view(dy_.data(), n, D_.d);
    const auto ctx = forward(x, y);
    info.loss = opt_.loss == LossKind::mse ? mse_loss<S>(y, make_view(static_cast<const S*>(tb_.data()), n, D_.d), dy)
                                           : cross_entropy_loss<S>(y, lb_.data(), dy);
    if (!std::isfinite(info.loss))
      detail::fail("training diverged: the loss became ", impl::non_finite_name(info.loss), " at epoch ", info.epoch,
                   ", step ", info.step, " of ", info.steps_in_epoch, " (global step ", optim_.steps() + 1,
                   "); try a smaller learning rate or --clip");
    backward(unwrap(ctx), make_view(static_cast<const S*>(dy_.data()), n, D_.d));
    info.grad_norm = clip_grad_norm(optim_.slots(), opt_.clip);
    if (!std::isfinite(info.grad_norm))
      detail::fail("training diverged: the gradient norm became ", impl::non_finite_name(info.grad_norm), " at epoch ",
                   info.epoch, ", step ", info.step, " of ", info.steps_in_epoch, " (global step ", optim_.steps() + 1,
                   "); try a smaller learning rate or --clip");
    info.lr = opt_.schedule.at(optim_.steps());
    optim_.step(info.lr);
    info.global_step = optim_.steps();
    if constexpr (impl::has_weights_changed<L>::value) layer_.weights_changed();
  }
};

}  // namespace train
}  // namespace radargate
