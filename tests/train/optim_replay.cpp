// Replays a recorded gradient sequence through radargate::train's optimizer, clipping and
// schedule, for tests/train/check_torch_optim.py (which feeds the same sequence to torch.optim).
//
//   optim_replay IN OUT
//
// IN (safetensors, F64): p0 [n0], p1 [n1] initial values; g0 [steps, n0], g1 [steps, n1] the
// gradient of each step; __metadata__ "options": JSON {"optimizer", "lr", "schedule", "warmup",
// "weight_decay", "beta1", "beta2", "eps", "momentum", "dampening", "nesterov", "clip"}.
// OUT: p0, p1 after every step, lr [steps] the rates used, and the optimizer state.
#include <cstdio>
#include <exception>
#include <nlohmann/json.hpp>

#include "radargate/io/safetensors.hpp"
#include "radargate/train.hpp"

using namespace radargate;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: optim_replay IN OUT\n");
    return 2;
  }
  try {
    const io::SafetensorsFile in = io::SafetensorsFile::read(argv[1]);
    const nlohmann::json j = nlohmann::json::parse(in.metadata().at("options"));
    train::OptimizerOptions o;
    o.kind = train::parse_optimizer(j.at("optimizer").get<std::string>());
    o.weight_decay = j.at("weight_decay").get<double>();
    o.beta1 = j.value("beta1", 0.9);
    o.beta2 = j.value("beta2", 0.999);
    o.eps = j.value("eps", 1e-8);
    o.momentum = j.value("momentum", 0.0);
    o.dampening = j.value("dampening", 0.0);
    o.nesterov = j.value("nesterov", false);
    Tensor<double> p0 = in.get<double>("p0"), p1 = in.get<double>("p1");
    const Tensor<double> g0 = in.get<double>("g0"), g1 = in.get<double>("g1");
    const index_t steps = g0.shape[0], n0 = p0.numel(), n1 = p1.numel();
    train::Schedule sched{train::parse_schedule(j.at("schedule").get<std::string>()), j.at("lr").get<double>(),
                          j.at("warmup").get<std::int64_t>(), std::int64_t(steps)};
    const double clip = j.at("clip").get<double>();
    std::vector<double> b0(static_cast<std::size_t>(n0)), b1(static_cast<std::size_t>(n1)),
        lrs(static_cast<std::size_t>(steps));
    train::Optimizer<double> opt(o);
    opt.add("p0", p0.data.data(), b0.data(), std::size_t(n0));
    opt.add("p1", p1.data.data(), b1.data(), std::size_t(n1));
    for (index_t s = 0; s < steps; ++s) {
      std::copy(g0.data.begin() + s * n0, g0.data.begin() + (s + 1) * n0, b0.begin());
      std::copy(g1.data.begin() + s * n1, g1.data.begin() + (s + 1) * n1, b1.begin());
      train::clip_grad_norm(opt.slots(), clip);
      lrs[std::size_t(s)] = sched.at(opt.steps());
      opt.step(lrs[std::size_t(s)]);
    }
    io::SafetensorsWriter w;
    w.add("p0", p0, io::DType::F64);
    w.add("p1", p1, io::DType::F64);
    w.add("lr", lrs.data(), {steps}, io::DType::F64);
    for (std::size_t k = 0; k < opt.state_count(); ++k) {
      w.add(std::string(opt.state_name(k)) + ".p0", opt.state(k, 0).data(), {n0}, io::DType::F64);
      w.add(std::string(opt.state_name(k)) + ".p1", opt.state(k, 1).data(), {n1}, io::DType::F64);
    }
    w.write_atomic(argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optim_replay: %s\n", e.what());
    return 1;
  }
  return 0;
}
