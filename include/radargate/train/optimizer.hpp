// radargate/train/optimizer.hpp -- AdamW and SGD with momentum over flat parameter buffers, with
// the update formulas of torch.optim (PyTorch 1.13), and clipping by global norm.
//
// AdamW (decoupled weight decay, bias correction), for step t = 1, 2, ...:
//
//   p   <- p * (1 - lr * wd)
//   m   <- m * beta1 + (1 - beta1) g
//   v   <- v * beta2 + (1 - beta2) g g
//   p   <- p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// SGD (coupled weight decay, momentum with dampening, optional Nesterov):
//
//   g'  = g + wd p
//   b   <- g'                              at t = 1
//   b   <- momentum b + (1 - dampening) g'  at t > 1          (momentum > 0 only)
//   p   <- p - lr (g' + momentum b)   (Nesterov)   or   p - lr b   (or p - lr g' without momentum)
//
// Clipping by global norm (torch.nn.utils.clip_grad_norm_):
//
//   n = || (||g_1||, ||g_2||, ...) ||_2      every g_j <- g_j * min(1, max_norm / (n + 1e-6))
//
// The optimizer holds no pointer it did not get from the caller apart from its own state
// buffers, which are sized once by add(); step() allocates nothing.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../view.hpp"

namespace radargate {
namespace train {

enum class OptimizerKind { adamw, sgd };

inline const char* to_string(OptimizerKind k) { return k == OptimizerKind::adamw ? "adamw" : "sgd"; }
inline OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "adamw") return OptimizerKind::adamw;
  if (s == "sgd") return OptimizerKind::sgd;
  detail::fail("optimizer: expected adamw | sgd, found '", s, "'");
}

/// Hyper-parameters of both optimizers; the learning rate is passed to each step (see Schedule).
/// Defaults are torch.optim's: AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2) and
/// SGD(momentum=0, dampening=0, weight_decay=0, nesterov=False); `weight_decay` is shared, so
/// set it explicitly for SGD.
struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::adamw;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
  double weight_decay = 1e-2;                     // AdamW: decoupled; SGD: added to the gradient
  double momentum = 0.0, dampening = 0.0;         // SGD
  bool nesterov = false;                          // SGD

  /// Throws radargate::error naming a value out of range.
  void validate() const {
    auto bad = [](const char* n, double v, const char* want) {
      detail::fail("optimizer option ", n, ": expected ", want, ", found ", v);
    };
    if (!(beta1 >= 0 && beta1 < 1)) bad("beta1", beta1, "a number in [0, 1)");
    if (!(beta2 >= 0 && beta2 < 1)) bad("beta2", beta2, "a number in [0, 1)");
    if (!(eps >= 0) || !std::isfinite(eps)) bad("eps", eps, "a finite number >= 0");
    if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) bad("weight_decay", weight_decay, "a finite number >= 0");
    if (!(momentum >= 0) || !std::isfinite(momentum)) bad("momentum", momentum, "a finite number >= 0");
    if (!std::isfinite(dampening)) bad("dampening", dampening, "a finite number");
    if (nesterov && (momentum <= 0 || dampening != 0))
      detail::fail("optimizer option nesterov: needs momentum > 0 and dampening = 0, found momentum ", momentum,
                   " and dampening ", dampening);
  }
};

/// One parameter tensor the optimizer updates: its values and its gradient, both `size`
/// contiguous elements owned by the caller.
template <class S>
struct Slot {
  std::string name;
  S* param = nullptr;
  S* grad = nullptr;
  std::size_t size = 0;
  std::vector<index_t> shape;
};

template <class S>
class Optimizer {
  static_assert(std::is_floating_point<S>::value, "radargate::train::Optimizer: S must be float or double");

 public:
  explicit Optimizer(const OptimizerOptions& o = {}) : opt_(o) { opt_.validate(); }

  const OptimizerOptions& options() const { return opt_; }

  /// Registers a parameter; its state buffers (zero) are allocated here, never in step().
  void add(const std::string& name, S* param, S* grad, std::size_t size, std::vector<index_t> shape = {}) {
    for (const Slot<S>& s : slots_)
      if (s.name == name) detail::fail("optimizer: parameter '", name, "' added twice");
    if (shape.empty()) shape = {index_t(size)};
    slots_.push_back(Slot<S>{name, param, grad, size, std::move(shape)});
    state1_.emplace_back(size, S(0));
    if (opt_.kind == OptimizerKind::adamw) state2_.emplace_back(size, S(0));
  }

  /// Points a registered parameter at other memory (same size), e.g. after the caller moved it.
  void rebind(std::size_t i, S* param, S* grad) {
    slots_.at(i).param = param;
    slots_.at(i).grad = grad;
  }

  const std::vector<Slot<S>>& slots() const { return slots_; }
  /// Steps taken so far (torch's state['step']).
  std::int64_t steps() const { return step_; }

  /// AdamW: exp_avg (state 0) and exp_avg_sq (state 1). SGD: momentum_buffer (state 0; it
  /// holds zeros until the first step with momentum > 0).
  std::size_t state_count() const { return opt_.kind == OptimizerKind::adamw ? 2 : 1; }
  const char* state_name(std::size_t k) const {
    if (opt_.kind == OptimizerKind::adamw) return k == 0 ? "exp_avg" : "exp_avg_sq";
    return "momentum_buffer";
  }
  std::vector<S>& state(std::size_t k, std::size_t slot) { return k == 0 ? state1_.at(slot) : state2_.at(slot); }
  const std::vector<S>& state(std::size_t k, std::size_t slot) const {
    return k == 0 ? state1_.at(slot) : state2_.at(slot);
  }
  /// Restores the step count (with the state buffers, from a saved state).
  void set_steps(std::int64_t s) {
    if (s < 0) detail::fail("optimizer: expected a step count >= 0, found ", s);
    step_ = s;
  }

  /// One update of every registered parameter with learning rate `lr`.
  void step(double lr) {
    ++step_;
    if (opt_.kind == OptimizerKind::adamw)
      adamw(lr);
    else
      sgd(lr);
  }

 private:
  OptimizerOptions opt_;
  std::vector<Slot<S>> slots_;
  std::vector<std::vector<S>> state1_, state2_;
  std::int64_t step_ = 0;

  void adamw(double lr) {
    const S decay = S(1.0 - lr * opt_.weight_decay);
    const S b1 = S(opt_.beta1), b2 = S(opt_.beta2), a1 = S(1.0 - opt_.beta1), a2 = S(1.0 - opt_.beta2);
    const double bc1 = 1.0 - std::pow(opt_.beta1, double(step_));
    const double bc2 = 1.0 - std::pow(opt_.beta2, double(step_));
    const S neg_step = S(-(lr / bc1));
    const S bc2_sqrt = S(std::sqrt(bc2));
    const S eps = S(opt_.eps);
    for (std::size_t j = 0; j < slots_.size(); ++j) {
      S* p = slots_[j].param;
      const S* g = slots_[j].grad;
      S* m = state1_[j].data();
      S* v = state2_[j].data();
      for (std::size_t e = 0, n = slots_[j].size; e < n; ++e) {
        p[e] = p[e] * decay;
        m[e] = m[e] * b1 + a1 * g[e];
        v[e] = v[e] * b2 + a2 * g[e] * g[e];
        const S denom = std::sqrt(v[e]) / bc2_sqrt + eps;
        p[e] = p[e] + neg_step * m[e] / denom;
      }
    }
  }

  void sgd(double lr) {
    const S wd = S(opt_.weight_decay), mom = S(opt_.momentum), keep = S(1.0 - opt_.dampening), neg_lr = S(-lr);
    const bool first = step_ == 1;
    for (std::size_t j = 0; j < slots_.size(); ++j) {
      S* p = slots_[j].param;
      const S* g = slots_[j].grad;
      S* b = state1_[j].data();
      for (std::size_t e = 0, n = slots_[j].size; e < n; ++e) {
        S dp = g[e];
        if (wd != S(0)) dp = dp + wd * p[e];
        if (mom != S(0)) {
          b[e] = first ? dp : b[e] * mom + keep * dp;
          dp = opt_.nesterov ? dp + mom * b[e] : b[e];
        }
        p[e] = p[e] + neg_lr * dp;
      }
    }
  }
};

/// The global 2-norm of a set of gradients, the norm of their per-tensor norms (accumulated in
/// double). Non-finite values give a non-finite norm.
template <class S>
double global_grad_norm(const std::vector<Slot<S>>& slots) {
  double total = 0;
  for (const Slot<S>& s : slots) {
    double sq = 0;
    for (std::size_t e = 0; e < s.size; ++e) sq += double(s.grad[e]) * double(s.grad[e]);
    const double n = std::sqrt(sq);
    total += n * n;
  }
  return std::sqrt(total);
}

/// Scales every gradient by min(1, max_norm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_
/// does, and returns the norm before clipping. max_norm <= 0 only measures.
template <class S>
double clip_grad_norm(const std::vector<Slot<S>>& slots, double max_norm) {
  const double norm = global_grad_norm(slots);
  if (max_norm <= 0 || !std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return norm;
  const S c = S(coef);
  for (const Slot<S>& s : slots)
    for (std::size_t e = 0; e < s.size; ++e) s.grad[e] = s.grad[e] * c;
  return norm;
}

}  // namespace train
}  // namespace radargate
