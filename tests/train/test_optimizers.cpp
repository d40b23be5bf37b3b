// AdamW and SGD: one step worked out by hand, the state's behaviour, and clipping by global norm.
// (The comparison with torch.optim over 100 steps is tests/train/check_torch_optim.py.)
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "radargate/train.hpp"

using namespace radargate;

TEST_CASE("AdamW: the first two steps by hand", "[train][optimizer]") {
  train::OptimizerOptions o;
  o.weight_decay = 0.1;
  train::Optimizer<double> opt(o);
  std::vector<double> p = {1.0, -2.0}, g = {0.5, -0.25};
  opt.add("w", p.data(), g.data(), 2);
  const double lr = 0.01;
  // Step 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2 -> p = p (1 - lr wd) - lr g / (|g| + eps')
  std::vector<double> want(2), m(2), v(2);
  for (int e = 0; e < 2; ++e) {
    m[e] = 0.1 * g[e];
    v[e] = 0.001 * g[e] * g[e];
    want[e] = p[e] * (1 - lr * 0.1) - (lr / 0.1) * m[e] / (std::sqrt(v[e]) / std::sqrt(0.001) + 1e-8);
  }
  opt.step(lr);
  CHECK(opt.steps() == 1);
  for (int e = 0; e < 2; ++e) CHECK(p[e] == Approx(want[e]).epsilon(1e-15));
  CHECK(p[0] == Approx(1.0 * 0.999 - 0.01).epsilon(1e-7));
  // Step 2 with another gradient.
  g = {-1.0, 2.0};
  const double bc1 = 1 - 0.9 * 0.9, bc2 = 1 - 0.999 * 0.999;
  for (int e = 0; e < 2; ++e) {
    m[e] = 0.9 * m[e] + 0.1 * g[e];
    v[e] = 0.999 * v[e] + 0.001 * g[e] * g[e];
    want[e] = want[e] * (1 - lr * 0.1) - (lr / bc1) * m[e] / (std::sqrt(v[e]) / std::sqrt(bc2) + 1e-8);
  }
  opt.step(lr);
  for (int e = 0; e < 2; ++e) CHECK(p[e] == Approx(want[e]).epsilon(1e-14));
  CHECK(opt.state(0, 0)[1] == Approx(m[1]).epsilon(1e-15));
  CHECK(opt.state(1, 0)[1] == Approx(v[1]).epsilon(1e-15));
}

TEST_CASE("SGD: plain, momentum (first step copies), Nesterov, weight decay", "[train][optimizer]") {
  std::vector<double> g = {1.0, -3.0};
  {
    train::OptimizerOptions o;
    o.kind = train::OptimizerKind::sgd;
    o.weight_decay = 0;
    train::Optimizer<double> opt(o);
    std::vector<double> p = {0.0, 1.0};
    opt.add("w", p.data(), g.data(), 2);
    opt.step(0.5);
    CHECK(p[0] == -0.5);
    CHECK(p[1] == 2.5);
  }
  {
    train::OptimizerOptions o;
    o.kind = train::OptimizerKind::sgd;
    o.weight_decay = 0.5;
    o.momentum = 0.9;
    train::Optimizer<double> opt(o);
    std::vector<double> p = {2.0};
    std::vector<double> g1 = {1.0};
    opt.add("w", p.data(), g1.data(), 1);
    opt.step(0.1);  // d = 1 + 0.5*2 = 2, b = 2, p = 2 - 0.2 = 1.8
    CHECK(p[0] == Approx(1.8));
    opt.step(0.1);  // d = 1 + 0.9 = 1.9, b = 0.9*2 + 1.9 = 3.7, p = 1.8 - 0.37
    CHECK(p[0] == Approx(1.43));
  }
  {
    train::OptimizerOptions o;
    o.kind = train::OptimizerKind::sgd;
    o.weight_decay = 0;
    o.momentum = 0.5;
    o.nesterov = true;
    train::Optimizer<double> opt(o);
    std::vector<double> p = {0.0}, g1 = {1.0};
    opt.add("w", p.data(), g1.data(), 1);
    opt.step(1.0);  // b = 1, d = 1 + 0.5 = 1.5
    CHECK(p[0] == -1.5);
    opt.step(1.0);  // b = 0.5 + 1 = 1.5, d = 1 + 0.75 = 1.75
    CHECK(p[0] == -3.25);
  }
  train::OptimizerOptions bad;
  bad.kind = train::OptimizerKind::sgd;
  bad.nesterov = true;
  CHECK_THROWS_WITH(
      train::Optimizer<double>(bad),
      "optimizer option nesterov: needs momentum > 0 and dampening = 0, found momentum 0 and dampening 0");
  bad.nesterov = false;
  bad.beta1 = 1.0;
  CHECK_THROWS_WITH(train::Optimizer<double>(bad), "optimizer option beta1: expected a number in [0, 1), found 1");
}

TEST_CASE("clip_grad_norm: the norm of the norms, scaled as torch does", "[train][optimizer]") {
  std::vector<double> a = {3.0, 0.0}, b = {4.0}, pa(2), pb(1);
  std::vector<train::Slot<double>> slots = {{"a", pa.data(), a.data(), 2, {2}}, {"b", pb.data(), b.data(), 1, {1}}};
  CHECK(train::clip_grad_norm(slots, 10.0) == 5.0);
  CHECK(a[0] == 3.0);  // under the limit: unchanged
  CHECK(train::clip_grad_norm(slots, 1.0) == 5.0);
  const double c = 1.0 / (5.0 + 1e-6);
  CHECK(a[0] == Approx(3.0 * c).epsilon(1e-15));
  CHECK(b[0] == Approx(4.0 * c).epsilon(1e-15));
  CHECK(train::global_grad_norm(slots) == Approx(1.0).epsilon(1e-6));
  b[0] = std::nan("");
  CHECK(std::isnan(train::clip_grad_norm(slots, 1.0)));
}

TEST_CASE("shuffled_order: a permutation, a function of (seed, epoch) only", "[train][shuffle]") {
  std::vector<index_t> p(100), q(100), r(100);
  train::shuffled_order(p, 7, 1);
  train::shuffled_order(q, 7, 1);
  train::shuffled_order(r, 7, 2);
  CHECK(p == q);
  CHECK(p != r);
  std::vector<int> seen(100, 0);
  for (index_t e : p) seen[std::size_t(e)]++;
  for (int s : seen) CHECK(s == 1);
}
