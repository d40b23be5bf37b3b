// radargate import-peft -- a model file of many layers from LoRA adapters written by Hugging Face
// PEFT, one layer per adapted module, one expert per adapter (radargate/io/peft.hpp, docs/PEFT.md).
#include <cstdio>
#include <string>
#include <vector>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate/io/peft.hpp"

namespace radargate {
namespace cli {

namespace {
// The steps of cmd_import_peft.

void declare_options(OptionParser& o) {
  o.required("--adapter", "DIR",
             "a PEFT adapter directory (adapter_config.json, adapter_model.safetensors);\n"
             "repeat it for more adapters: one expert each, in this order");
  o.required("--variant", "V", "sum | uniform | static | softmax | topk | stretch_only | rotation_only | radargate");
  o.optional("--base", "PATH",
             "the base model: a directory with model.safetensors, or with shards and\n"
             "model.safetensors.index.json, or one safetensors file (default: no base)");
  o.optional("--modules", "REGEX",
             "import only modules whose name contains a match (ECMAScript regex);\n"
             "default: every module (each adapter must adapt each imported module)");
  o.optional("--dtype", "T", "F32 | F16 | BF16 | F64 of the written tensors (default F32)");
  o.optional("--seed", "S", "seed of the gate and angle parameters (default 0)");
  o.optional("--angle-rank", "K", "angle generator rank k of rotating variants (default 4, as init)");
  o.required("--output", "FILE", "the model file to write (whole or not at all)");
  o.flag("--quiet", "no progress lines");
  o.epilog(
      "example:\n"
      "  radargate import-peft --adapter math_lora --adapter code_lora --variant radargate --base llama-dir \\\n"
      "                        --modules 'q_proj|v_proj' --output experts.safetensors\n"
      "  radargate info --model experts.safetensors");
}

// --adapter may repeat, which OptionParser refuses: the parser sees the first one only. Collects
// every --adapter's directory into dirs, and the arguments for the parser into rest.
void split_adapters(int argc, char** argv, std::vector<std::string>& dirs, std::vector<char*>& rest) {
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool split = i > 0 && arg == "--adapter" && i + 1 < argc;
    if (split || (i > 0 && arg.rfind("--adapter=", 0) == 0)) {
      dirs.push_back(split ? std::string(argv[i + 1]) : arg.substr(10));
      if (dirs.size() == 1) {
        rest.push_back(argv[i]);
        if (split) rest.push_back(argv[i + 1]);
      }
      if (split) ++i;
    } else {
      rest.push_back(argv[i]);
    }
  }
}

io::peft::ImportOptions import_options(OptionParser& o) {
  io::peft::ImportOptions opt;
  try {
    opt.config = LayerConfig::make(parse_variant(o.str("--variant")));
    opt.dtype = io::parse_float_dtype(o.str("--dtype", "F32"), "option --dtype");
  } catch (const radargate::error& e) {
    o.fail(e.what());
  }
  opt.modules = o.str("--modules", "");
  opt.seed = std::uint64_t(o.integer("--seed", 0, std::numeric_limits<long long>::max(), 0));
  if (o.has("--angle-rank") && !opt.config.rotation)
    o.fail("option --angle-rank: variant '" + std::string(to_string(opt.config.variant)) + "' does not rotate");
  opt.angle_rank = index_t(o.integer("--angle-rank", 1, 1 << 16, 4));
  return opt;
}

std::vector<io::peft::Adapter> read_adapters(const std::vector<std::string>& dirs, bool quiet) {
  std::vector<io::peft::Adapter> adapters;
  for (const std::string& d : dirs) {
    adapters.push_back(io::peft::read_adapter(d));
    const io::peft::Adapter& a = adapters.back();
    if (!quiet)
      std::printf("adapter %s: %zu modules, r %lld, lora_alpha %g%s%s, %s\n", d.c_str(), a.modules.size(),
                  (long long)a.r, a.lora_alpha, a.use_rslora ? ", rsLoRA" : "",
                  a.fan_in_fan_out ? ", fan_in_fan_out" : "", io::to_string(a.modules.front().dtype));
  }
  return adapters;
}

/// The "radargate.import" metadata: the rules, the adapters, the base and the seed.
std::string provenance(const std::vector<io::peft::Adapter>& adapters, const io::peft::BaseModel* base,
                       const io::peft::ImportOptions& opt) {
  nlohmann::ordered_json prov;
  prov["peft_rules"] = io::peft::rules_version;
  prov["adapters"] = nlohmann::ordered_json::array();
  for (const io::peft::Adapter& a : adapters)
    prov["adapters"].push_back(
        {{"dir", a.dir}, {"r", a.r}, {"lora_alpha", a.lora_alpha}, {"use_rslora", a.use_rslora}});
  if (base) prov["base"] = base->path();
  prov["seed"] = opt.seed;
  return prov.dump();
}
}  // namespace

int cmd_import_peft(int argc, char** argv) {
  OptionParser o("import-peft",
                 "Builds a model file from LoRA adapters saved by Hugging Face PEFT (save_pretrained): one layer per\n"
                 "adapted module, named as the base model names it, with one expert per adapter (lora.A, lora.B,\n"
                 "lora.scale = PEFT's scaling; smaller ranks zero-padded to the largest). With --base each layer\n"
                 "also gets the module's base weight and bias, so 'run' gives the adapted module's whole output;\n"
                 "with variant sum that is PEFT's output with every adapter's delta added. Gate and angle\n"
                 "parameters are initialised as 'init' does, layer j from seed + j. What PEFT can express and a\n"
                 "layer cannot represent exactly (DoRA, modules_to_save, embeddings, convolutions, trained\n"
                 "biases) is refused, and nothing is written.");
  declare_options(o);
  std::vector<std::string> dirs;
  std::vector<char*> rest;
  split_adapters(argc, argv, dirs, rest);
  if (!o.parse(int(rest.size()), rest.data())) return 0;
  for (const std::string& d : dirs)
    if (d.empty()) o.fail("option --adapter: expected a directory, found ''");
  const io::peft::ImportOptions opt = import_options(o);
  const bool quiet = o.has("--quiet");
  const std::string output = o.str("--output");

  const std::vector<io::peft::Adapter> adapters = read_adapters(dirs, quiet);
  std::unique_ptr<io::peft::BaseModel> base;
  if (o.has("--base")) base = std::make_unique<io::peft::BaseModel>(io::peft::BaseModel::open(o.str("--base")));
  io::peft::ImportResult res = io::peft::import_adapters(adapters, base.get(), opt, [&](const std::string& line) {
    if (!quiet) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
  });
  res.writer.set_metadata("radargate.import", provenance(adapters, base.get(), opt));
  res.writer.write_atomic(output);
  std::printf("wrote %s: %zu layers, variant %s, %zu experts, %s\n", output.c_str(), res.layers.size(),
              to_string(opt.config.variant), adapters.size(), io::to_string(opt.dtype));
  return 0;
}

}  // namespace cli
}  // namespace radargate
