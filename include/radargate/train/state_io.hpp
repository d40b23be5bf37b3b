// radargate/train/state_io.hpp -- a trainer's state in a safetensors file, so that a run stopped
// after any epoch and resumed gives the same bytes as the run that was never stopped.
//
// Tensors (in the trainer's dtype, F64 for double and F32 for float, so the values are exact):
//
//   param.<name>                 the current values of each trained tensor
//   exp_avg.<name>, exp_avg_sq.<name>    AdamW's moments      (optimizer adamw)
//   momentum_buffer.<name>                SGD's momentum buffer (optimizer sgd)
//
// __metadata__["radargate.train_state"] is a JSON object with the step and epoch counts and every
// setting the continuation depends on (optimizer and its hyper-parameters, loss, schedule, batch,
// seed, trained tensors, dtype, training-set size and an FNV-1a hash of its values). Loading checks each against the
// trainer it is loaded into and names the first that differs. Needs radargate::io (nlohmann/json).
#pragma once

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../io/safetensors.hpp"
#include "trainer.hpp"

namespace radargate {
namespace train {

inline constexpr const char* state_key = "radargate.train_state";

/// The settings a continuation must share with the run that wrote the state.
template <class S, class L>
nlohmann::json state_settings(const Trainer<S, L>& tr, const Dataset<S>& data) {
  const TrainerOptions& o = tr.options();
  const OptimizerOptions& q = o.optimizer;
  nlohmann::json j;
  j["optimizer"] = to_string(q.kind);
  if (q.kind == OptimizerKind::adamw) {
    j["beta1"] = q.beta1;
    j["beta2"] = q.beta2;
    j["eps"] = q.eps;
  } else {
    j["momentum"] = q.momentum;
    j["dampening"] = q.dampening;
    j["nesterov"] = q.nesterov;
  }
  j["weight_decay"] = q.weight_decay;
  j["loss"] = to_string(o.loss);
  j["schedule"] = to_string(o.schedule.kind);
  j["lr"] = o.schedule.lr;
  j["warmup"] = o.schedule.warmup;
  j["total_steps"] = o.schedule.total;
  j["clip"] = o.clip;
  j["batch"] = o.batch;
  j["seed"] = o.seed;
  j["train"] = tr.trained();
  j["dtype"] = sizeof(S) == 8 ? "F64" : "F32";
  j["train_tokens"] = data.size();
  char fp[24];
  std::snprintf(fp, sizeof fp, "%016llx", (unsigned long long)fingerprint(data));
  j["train_data_fnv1a"] = fp;
  return j;
}

/// The state file's image: see the top of this header. `extra` adds metadata entries.
template <class S, class L>
io::SafetensorsWriter state_writer(const Trainer<S, L>& tr, const Dataset<S>& data,
                                   const std::map<std::string, std::string>& extra = {}) {
  const io::DType dt = sizeof(S) == 8 ? io::DType::F64 : io::DType::F32;
  const Optimizer<S>& opt = tr.optimizer();
  io::SafetensorsWriter w;
  for (std::size_t i = 0; i < opt.slots().size(); ++i) {
    const Slot<S>& s = opt.slots()[i];
    w.add("param." + s.name, s.param, s.shape, dt);
  }
  for (std::size_t k = 0; k < opt.state_count(); ++k)
    for (std::size_t i = 0; i < opt.slots().size(); ++i) {
      const Slot<S>& s = opt.slots()[i];
      w.add(std::string(opt.state_name(k)) + "." + s.name, opt.state(k, i).data(), s.shape, dt);
    }
  nlohmann::json meta = state_settings(tr, data);
  meta["step"] = opt.steps();
  meta["epoch"] = tr.epochs_done();
  w.set_metadata(state_key, meta.dump());
  for (const auto& kv : extra) w.set_metadata(kv.first, kv.second);
  return w;
}

template <class S, class L>
void save_state(const std::string& path, const Trainer<S, L>& tr, const Dataset<S>& data) {
  state_writer(tr, data).write_atomic(path);
}

/// Restores a state into `tr`: the trained tensors' values (in the model's memory), the optimizer
/// state, the step and epoch counts. Every setting must match this trainer's; the first that does
/// not is named. Call the layer's weights_changed() afterwards on backends that cache weights.
template <class S, class L>
void load_state(const io::SafetensorsFile& f, Trainer<S, L>& tr, const Dataset<S>& data) {
  auto it = f.metadata().find(state_key);
  if (it == f.metadata().end())
    f.fail_file("missing __metadata__ entry '", state_key,
                "'; not a training state written by 'radargate train --state'?");
  const nlohmann::json meta = io::detail::in_file(f.source(), [&] {
    return io::detail::parse_json_checked(it->second, std::string("__metadata__ '") + state_key + "'");
  });
  if (!meta.is_object()) f.fail_file("__metadata__ '", state_key, "': expected a JSON object");
  const nlohmann::json want = state_settings(tr, data);
  for (auto kv = want.begin(); kv != want.end(); ++kv) {
    if (!meta.contains(kv.key()))
      f.fail_file("training state: setting '", kv.key(), "' is missing (this run has ", io::detail::excerpt(kv.value()),
                  ")");
    if (meta[kv.key()] != kv.value())
      f.fail_file("training state: setting '", kv.key(), "' was ", io::detail::excerpt(meta[kv.key()]),
                  " in the saved run, this run has ", io::detail::excerpt(kv.value()),
                  "; resume with the same settings");
  }
  for (const char* key : {"step", "epoch"})
    if (!meta.contains(key) || !meta[key].is_number_integer() || meta[key].template get<std::int64_t>() < 0)
      f.fail_file("training state: expected a non-negative integer '", key, "'");
  const std::int64_t step = meta["step"].template get<std::int64_t>(),
                     epoch = meta["epoch"].template get<std::int64_t>();
  const io::DType dt = sizeof(S) == 8 ? io::DType::F64 : io::DType::F32;
  Optimizer<S>& opt = tr.optimizer();
  // Everything is read and checked before anything is changed.
  std::vector<Tensor<S>> params, states;
  auto read = [&](const std::string& name, const Slot<S>& s) {
    if (!f.has(name)) f.fail_tensor(name, "missing from the training state");
    const io::TensorInfo& ti = f.info(name);
    if (ti.shape != s.shape)
      f.fail_tensor(name, "expected shape ", io::detail::shape_str(s.shape), " (the model's '", s.name, "'), found ",
                    io::detail::shape_str(ti.shape));
    return f.get<S>(name, dt);
  };
  for (const Slot<S>& s : opt.slots()) params.push_back(read("param." + s.name, s));
  for (std::size_t k = 0; k < opt.state_count(); ++k)
    for (const Slot<S>& s : opt.slots()) states.push_back(read(std::string(opt.state_name(k)) + "." + s.name, s));
  const std::size_t expected = opt.slots().size() * (1 + opt.state_count());
  if (f.tensors().size() != expected)
    f.fail_file("training state: expected ", expected, " tensors for ", opt.slots().size(), " trained tensors, found ",
                f.tensors().size());
  for (std::size_t i = 0; i < opt.slots().size(); ++i) {
    const Slot<S>& s = opt.slots()[i];
    std::copy(params[i].data.begin(), params[i].data.end(), s.param);
  }
  for (std::size_t k = 0; k < opt.state_count(); ++k)
    for (std::size_t i = 0; i < opt.slots().size(); ++i) opt.state(k, i) = states[k * opt.slots().size() + i].data;
  opt.set_steps(step);
  tr.set_epochs_done(epoch);
}

}  // namespace train
}  // namespace radargate
