// radargate info -- what a model file holds: every layer with its variant, dtype, dimensions,
// tensor shapes and parameter count. Reads one-layer files and files of many layers
// (docs/FORMAT.md); every layer is validated as `run` would validate it.
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate/io/model_set.hpp"

namespace radargate {
namespace cli {

namespace {
// The steps of cmd_info.

nlohmann::ordered_json layer_json(const io::ModelLayer<double>& l) {
  nlohmann::ordered_json e;
  e["name"] = l.name;
  e["variant"] = to_string(l.config.variant);
  e["config"] = nlohmann::ordered_json::parse(io::config_to_json(l.config).dump());
  e["dtype"] = io::to_string(l.dtype);
  e["d_in"] = l.dims.d_in;
  e["d"] = l.dims.d;
  e["experts"] = l.dims.N;
  e["rank"] = l.dims.r;
  if (l.config.rotation) {
    e["angle_rank"] = l.dims.k;
    e["planes"] = l.dims.P;
  }
  e["base"] = l.params.base_W0.data != nullptr;
  nlohmann::ordered_json shapes = nlohmann::ordered_json::object();
  for (const std::string& p : l.tensors) shapes[p] = l.shapes.at(p);
  e["tensors"] = shapes;
  e["parameters"] = l.parameter_count();
  return e;
}

void print_json(const std::string& path, const io::ModelSet<double>& set, index_t total) {
  nlohmann::ordered_json j;
  j["model"] = path;
  j["named"] = set.named();
  j["parameters"] = total;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const io::ModelLayer<double>& l : set) layers.push_back(layer_json(l));
  j["layers"] = layers;
  nlohmann::ordered_json md = nlohmann::ordered_json::object();
  for (const auto& kv : set.file().metadata())
    if (kv.first != io::layers_key && kv.first != io::config_key) md[kv.first] = kv.second;
  j["metadata"] = md;
  std::printf("%s\n", j.dump(2).c_str());
}

void print_text(const std::string& path, const io::ModelSet<double>& set, index_t total) {
  std::printf("%s: %zu layer%s, %lld parameters%s\n", path.c_str(), set.size(), set.size() == 1 ? "" : "s",
              (long long)total, set.named() ? "" : " (a one-layer file)");
  for (const io::ModelLayer<double>& l : set) {
    std::printf("\nlayer %s\n", l.name.empty() ? "(unnamed)" : l.name.c_str());
    std::printf("  variant %s, %s, d_in %lld, d %lld, N %lld, r %lld", to_string(l.config.variant),
                io::to_string(l.dtype), (long long)l.dims.d_in, (long long)l.dims.d, (long long)l.dims.N,
                (long long)l.dims.r);
    if (l.config.rotation) std::printf(", k %lld, P %lld", (long long)l.dims.k, (long long)l.dims.P);
    std::printf(", %s, %lld parameters\n", l.params.base_W0.data ? "base" : "no base", (long long)l.parameter_count());
    std::printf("  config %s\n", io::config_to_json(l.config).dump().c_str());
    for (const std::string& p : l.tensors)
      std::printf("  %-12s %s\n", p.c_str(), io::detail::shape_str(l.shapes.at(p)).c_str());
  }
  for (const auto& kv : set.file().metadata())
    if (kv.first != io::layers_key && kv.first != io::config_key)
      std::printf("\nmetadata %s: %s\n", kv.first.c_str(), kv.second.c_str());
}
}  // namespace

int cmd_info(int argc, char** argv) {
  OptionParser o("info",
                 "Lists every layer of a model file: its name (the module it adapts), variant, dtype, dimensions\n"
                 "(d_in, d, N experts, rank r; k and P for rotating variants), the shape of every tensor and the\n"
                 "number of parameters. Every layer is validated as 'run' validates it.");
  o.required("--model", "FILE", "model file: one layer, or many named layers (e.g. from 'radargate import-peft')");
  o.flag("--json", "print one JSON object instead of text");
  o.epilog(
      "examples:\n"
      "  radargate info --model model.safetensors\n"
      "  radargate info --model imported.safetensors --json");
  if (!o.parse(argc, argv)) return 0;
  const std::string path = o.str("--model");
  const io::ModelSet<double> set = io::ModelSet<double>::open(path);

  index_t total = 0;
  for (const io::ModelLayer<double>& l : set) total += l.parameter_count();
  if (o.has("--json"))
    print_json(path, set, total);
  else
    print_text(path, set, total);
  return 0;
}

}  // namespace cli
}  // namespace radargate
