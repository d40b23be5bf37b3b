// radargate/train/loss.hpp -- losses over the layer's d outputs and their gradients dL/dy.
//
//   mse:            L = 1/(T d) sum_t sum_j (y_tj - target_tj)^2
//                   dL/dy_tj = 2 (y_tj - target_tj) / (T d)
//   cross_entropy:  L = 1/T sum_t (logsumexp(y_t) - y_t[label_t])       (y_t are class logits)
//                   dL/dy_tj = (softmax(y_t)_j - [j = label_t]) / T
//
// The means are torch.nn.MSELoss() and torch.nn.CrossEntropyLoss() with their default 'mean'
// reduction. Sums run in double; nothing is allocated.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../error.hpp"
#include "../view.hpp"

namespace radargate {
namespace train {

enum class LossKind { mse, cross_entropy };

inline const char* to_string(LossKind k) { return k == LossKind::mse ? "mse" : "cross_entropy"; }
inline LossKind parse_loss(const std::string& s) {
  if (s == "mse") return LossKind::mse;
  if (s == "cross_entropy") return LossKind::cross_entropy;
  detail::fail("loss: expected mse | cross_entropy, found '", s, "'");
}

/// Mean squared error of y [T, d] against target [T, d]; writes dL/dy into dy [T, d] when dy is
/// present. Returns L (0 for T = 0).
template <class S>
double mse_loss(View<const S, 2> y, View<const S, 2> target, View<S, 2> dy) {
  const index_t T = y.shape[0], d = y.shape[1];
  if (T == 0) return 0.0;
  const double inv = 1.0 / (double(T) * double(d));
  const S two_inv = S(2.0 * inv);
  double sum = 0;
  for (index_t t = 0; t < T; ++t)
    for (index_t j = 0; j < d; ++j) {
      const S diff = y(t, j) - target(t, j);
      sum += double(diff) * double(diff);
      if (dy.present()) dy(t, j) = two_inv * diff;
    }
  return sum * inv;
}

/// Softmax cross-entropy of the logits y [T, d] against integer labels (T values in 0..d-1);
/// writes dL/dy into dy [T, d] when present and counts the tokens whose largest logit is the
/// label (ties: the lower index) into *correct when given. Returns L (0 for T = 0).
template <class S>
double cross_entropy_loss(View<const S, 2> y, const std::int64_t* labels, View<S, 2> dy,
                          std::int64_t* correct = nullptr) {
  const index_t T = y.shape[0], d = y.shape[1];
  if (T == 0) return 0.0;
  const double invT = 1.0 / double(T);
  double sum = 0;
  std::int64_t right = 0;
  for (index_t t = 0; t < T; ++t) {
    const std::int64_t label = labels[t];
    if (label < 0 || label >= d)
      detail::fail("cross_entropy: label ", label, " of token ", t, " is outside 0..", d - 1);
    index_t arg = 0;
    double mx = double(y(t, 0));
    for (index_t j = 1; j < d; ++j)
      if (double(y(t, j)) > mx) {
        mx = double(y(t, j));
        arg = j;
      }
    if (arg == label) ++right;
    double z = 0;
    for (index_t j = 0; j < d; ++j) z += std::exp(double(y(t, j)) - mx);
    const double lse = mx + std::log(z);
    sum += lse - double(y(t, index_t(label)));
    if (dy.present())
      for (index_t j = 0; j < d; ++j) {
        const double p = std::exp(double(y(t, j)) - lse);
        dy(t, j) = S((p - (j == label ? 1.0 : 0.0)) * invT);
      }
  }
  if (correct) *correct += right;
  return sum * invT;
}

}  // namespace train
}  // namespace radargate
