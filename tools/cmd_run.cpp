// radargate run -- forward (and backward) of a model file on an input file.
//
//   y      = layer(x)                                  always
//   grad.x = dL/dx,  grad.<p> = dL/dp  for L = <dy, y>  with --backward
//
// The computation runs in the model file's dtype: F64 in double, F32 in float, F16 and BF16 in
// float with the outputs written back in F16 / BF16; the cpu backend then keeps lora.A and lora.B in
// the file's 16 bits (CpuOptions::weights).
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate.hpp"
#include "radargate/cpu.hpp"
#include "radargate/io/model_file.hpp"
#include "radargate/io/model_set.hpp"

namespace radargate {
namespace cli {
namespace {

struct RunArgs {
  std::string model, input, output;
  std::string layer;  // --layer: a layer of a file of many layers
  bool backward = false;
  std::vector<std::string> grads;  // empty: every gradient
  bool cpu = true;                 // backend: the fused cpu backend (false: the reference)
  int threads = 1;
};

/// The gradients to compute: "x" and the parameter names present in the model, or the --grads list.
std::vector<std::string> gradient_names(const RunArgs& a, const std::set<std::string>& present, const LayerConfig& cfg,
                                        const std::string& model_path) {
  std::vector<std::string> all = {"x"};
  for (const std::string& n : param_names())
    if (present.count(n)) all.push_back(n);
  if (a.grads.empty()) return all;
  std::vector<std::string> out;
  for (const std::string& g : a.grads) {
    bool dup = false;
    for (const std::string& o : out) dup = dup || o == g;
    if (dup) continue;
    bool ok = false;
    for (const std::string& n : all) ok = ok || n == g;
    if (!ok)
      detail::fail("option --grads: '", g, "' is not an input or a parameter of the model '", model_path,
                   "' (variant '", to_string(cfg.variant), "'); expected some of ", io::detail::join(all, ","));
    out.push_back(g);
  }
  return out;
}

template <class S, class L>
int run_layer(const RunArgs& a, const io::LoadedModel<S>& lm, const io::Activations<S>& in, io::DType dtype,
              const std::vector<std::string>& wanted, const L& layer);

template <class S>
int run_typed(const RunArgs& a, const io::SafetensorsFile& model_file, io::DType dtype) {
  const io::LoadedModel<S> lm = io::load_layer<S>(model_file, a.layer);
  const io::SafetensorsFile in_file = io::SafetensorsFile::read(a.input);
  const io::Activations<S> in = io::load_activations<S>(in_file, lm.dims, dtype, a.backward);
  std::set<std::string> present;
  for (const auto& kv : lm.model.tensors) present.insert(kv.first);
  const std::vector<std::string> wanted =
      a.backward ? gradient_names(a, present, lm.model.config, a.model) : std::vector<std::string>{};

  if (a.cpu) {
    CpuOptions opt;
    opt.threads = a.threads;
    // an F16 / BF16 file: its lora.A and lora.B stay 16-bit in the layer (exactly the file's values)
    if (dtype == io::DType::BF16) opt.weights = WeightStorage::bf16;
    if (dtype == io::DType::F16) opt.weights = WeightStorage::f16;
    const Layer<S, backend::cpu> layer(lm.model.config, lm.model.params(), opt);
    return run_layer<S>(a, lm, in, dtype, wanted, layer);
  }
  const Layer<S, backend::reference> layer(lm.model.config, lm.model.params());
  return run_layer<S>(a, lm, in, dtype, wanted, layer);
}

template <class S, class L>
int run_layer(const RunArgs& a, const io::LoadedModel<S>& lm, const io::Activations<S>& in, io::DType dtype,
              const std::vector<std::string>& wanted, const L& layer) {
  const index_t T = in.x.shape[0];
  Tensor<S> y = make_tensor<S>({T, lm.dims.d});
  const auto ctx = layer.forward(in.x.template view<2>(), y.template mutable_view<2>());
  require_finite_output("y", y);

  io::SafetensorsWriter out;
  out.add("y", y, dtype);
  if (a.backward) {
    std::map<std::string, Tensor<S>> grads;
    Gradients<S> g;
    auto want = [&](const std::string& n) {
      for (const std::string& w : wanted)
        if (w == n) return true;
      return false;
    };
    if (want("x")) {
      grads["x"] = make_tensor<S>(in.x.shape);
      g.x = grads["x"].template mutable_view<2>();
    }
    for_each_param(g, [&](const char* name, auto& view) {
      if (!want(name)) return;
      Tensor<S>& t = grads[name] = make_tensor<S>(lm.model.tensors.at(name).shape);
      view = t.template mutable_view<std::decay_t<decltype(view)>::rank>();
    });
    layer.backward(ctx, in.dy.template view<2>(), g, GradMode::overwrite);
    for (const auto& kv : grads) require_finite_output("grad." + kv.first, kv.second);
    if (want("x")) out.add("grad.x", grads["x"], dtype);
    for (const std::string& n : param_names())
      if (grads.count(n)) out.add("grad." + n, grads[n], dtype);
  }
  out.write_atomic(a.output);
  clean_stale_temps("run", a.output);
  std::printf("wrote %s: y [%lld, %lld]%s (%s, variant %s, backend %s)\n", one_line(a.output).c_str(), (long long)T,
              (long long)lm.dims.d, a.backward ? (" and " + std::to_string(wanted.size()) + " gradients").c_str() : "",
              io::to_string(dtype), to_string(lm.model.config.variant), a.cpu ? "cpu" : "reference");
  return 0;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  OptionParser o("run",
                 "Computes y = layer(x) for the model in --model and the tokens in --input, and writes y to --output.\n"
                 "With --backward it also writes the gradient of L = sum(dy * y) with respect to x and to every\n"
                 "parameter in the model (or only those named by --grads). Everything is computed in the model\n"
                 "file's dtype (F16 and BF16 in float, written back in F16 / BF16; the cpu backend then keeps\n"
                 "lora.A and lora.B in 16 bits, as in the file).");
  o.required("--model", "FILE", "model file (safetensors with a radargate.config entry; see 'radargate init')");
  o.required("--input", "FILE", "input file: x [T, d_in], and dy [T, d] for --backward, in the model's dtype");
  o.required("--output", "FILE",
             "output file: y [T, d], grad.x [T, d_in], grad.<parameter> ...\n"
             "(written whole or not at all)");
  o.optional("--layer", "NAME",
             "the layer to run, for a file of many layers (required when it holds more\n"
             "than one; 'radargate info' lists them)");
  o.flag("--backward", "also compute gradients, for dL/dy = dy");
  o.optional("--grads", "LIST",
             "with --backward: only these gradients, comma separated, e.g. x,lora.A,angle.U\n"
             "(default: x and every parameter in the model)");
  o.optional("--backend", "NAME",
             "cpu | reference: the fused, vectorised cpu backend or the plain reference\n"
             "code, kept for checking (default cpu)");
  o.optional("--threads", "N", "with --backend cpu: threads (default 1)");
  o.epilog(
      "examples:\n"
      "  radargate init --variant radargate --d-in 16 --d 16 --experts 4 --rank 4 --seed 1 \\\n"
      "                 --output model.safetensors --write-input input.safetensors --tokens 8\n"
      "  radargate run --model model.safetensors --input input.safetensors --output out.safetensors --backward");
  if (!o.parse(argc, argv)) return 0;
  RunArgs a;
  a.model = o.str("--model");
  a.input = o.str("--input");
  a.output = o.str("--output");
  a.layer = o.str("--layer", "");
  a.backward = o.has("--backward");
  const std::string backend = o.str("--backend", "cpu");
  if (backend != "reference" && backend != "cpu")
    o.fail("option --backend: expected cpu | reference, found '" + one_line(backend) + "'");
  a.cpu = backend == "cpu";
  if (o.has("--threads") && !a.cpu) o.fail("option --threads needs --backend cpu");
  a.threads = int(o.integer("--threads", 1, 1024, 1));
  if (o.has("--grads")) {
    if (!a.backward) o.fail("option --grads needs --backward");
    a.grads = o.list("--grads");
  }
  o.refuse_same_file("--output", {"--model", "--input"});
  const io::SafetensorsFile model_file = io::SafetensorsFile::read(a.model);
  const io::DType dtype = io::layer_dtype(model_file, a.layer);
  if (dtype == io::DType::F64) return run_typed<double>(a, model_file, dtype);
  return run_typed<float>(a, model_file, dtype);
}

}  // namespace cli
}  // namespace radargate
