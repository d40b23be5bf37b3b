// radargate init -- writes a random model of any variant (and, on request, a matching random
// input file), so the tool can be tried with no other software.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate.hpp"
#include "radargate/checked.hpp"
#include "radargate/io/model_file.hpp"

namespace radargate {
namespace cli {
namespace {

/// Parses an enumerated option value with the library's parser, reporting it as bad usage.
template <class E, class Parse>
E enum_option(const OptionParser& o, const std::string& name, Parse parse) {
  const std::string v = o.str(name);
  try {
    return parse(v);
  } catch (const radargate::error& e) {
    // "config field 'x': expected one of a | b, found "c"" -> "option --x: expected one of ..."
    std::string what = e.what();
    const std::size_t colon = what.find("': ");
    o.fail("option " + name + ": " + (colon == std::string::npos ? what : what.substr(colon + 3)));
  }
}

void declare_options(OptionParser& o) {
  o.required("--variant", "V", "sum | uniform | static | softmax | topk | stretch_only | rotation_only | radargate");
  o.required("--d-in", "N", "input width d_in");
  o.required("--d", "N", "output width d");
  o.required("--experts", "N", "number of LoRA experts N");
  o.required("--rank", "R", "LoRA rank r");
  o.optional("--angle-rank", "K", "rank k of the angle generator (rotating variants; default 4)");
  o.optional("--planes", "P", "number of rotation planes, 1..floor(d/2) (rotating variants; default floor(d/2))");
  o.optional("--map", "M", "learned | mean (rotating variants; default learned)");
  o.optional("--bound", "B", "none | pi_tanh (rotating variants; default pi_tanh)");
  o.optional("--pairing", "P", "adjacent | half (rotating variants; default adjacent)");
  o.optional("--normalize", "F",
             "softmax | sigmoid | topk_softmax | identity (gates with logits; default per variant)");
  o.optional("--tau", "X", "gate temperature > 0 (gates with logits; default 1)");
  o.optional("--topk", "K", "experts kept by topk_softmax, 1..N (default 2)");
  o.optional("--dtype", "T", "F32 | F64 | F16 | BF16 (default F32)");
  o.flag("--no-base", "leave out the frozen base layer (base.W0, base.b0)");
  o.optional("--seed", "S", "random seed (default 0)");
  o.required("--output", "FILE", "model file to write");
  o.optional("--write-input", "FILE", "also write a random input file x [T, d_in], dy [T, d] for this model");
  o.optional("--tokens", "T", "number of tokens T in the --write-input file (default 8)");
  o.epilog(
      "example:\n"
      "  radargate init --variant radargate --d-in 16 --d 16 --experts 4 --rank 4 --seed 1 \\\n"
      "                 --output model.safetensors --write-input input.safetensors --tokens 8");
}

const long long big = 1 << 24;

/// The variant, the dimensions and the rotation options; refuses options the variant does not read.
LayerConfig read_layer(const OptionParser& o, Dims& D) {
  LayerConfig cfg = LayerConfig::make(enum_option<Variant>(o, "--variant", parse_variant));
  D.d_in = o.integer("--d-in", 1, big);
  D.d = o.integer("--d", 1, big);
  D.N = o.integer("--experts", 1, 1 << 16);
  D.r = o.integer("--rank", 1, big);
  const std::string variant = to_string(cfg.variant);
  for (const char* opt : {"--angle-rank", "--planes", "--map", "--bound", "--pairing"})
    if (!cfg.rotation && o.has(opt))
      o.fail(std::string("option ") + opt + ": variant '" + variant +
             "' does not rotate (only rotation_only and radargate do)");
  for (const char* opt : {"--normalize", "--tau", "--topk"})
    if (!cfg.has_logits() && o.has(opt))
      o.fail(std::string("option ") + opt + ": variant '" + variant + "' has a gate without logits (" +
             to_string(cfg.gate) + ")");
  if (cfg.rotation) {
    if (D.d < 2)
      o.fail("option --d: variant '" + variant + "' rotates pairs of coordinates, expected d >= 2, found " +
             std::to_string(D.d));
    D.k = o.integer("--angle-rank", 1, big, 4);
    D.P = o.integer("--planes", 1, D.d / 2, D.d / 2);
    if (o.has("--map")) cfg.map = enum_option<MapMode>(o, "--map", parse_map_mode);
    if (o.has("--bound")) cfg.bound = enum_option<Bound>(o, "--bound", parse_bound);
    if (o.has("--pairing")) cfg.pairing = enum_option<Pairing>(o, "--pairing", parse_pairing);
  }
  return cfg;
}

/// The gate options: --normalize, --tau, --topk.
void read_gate(const OptionParser& o, const Dims& D, LayerConfig& cfg) {
  if (o.has("--normalize")) cfg.normalize = enum_option<Normalize>(o, "--normalize", parse_normalize);
  if (o.has("--tau")) {
    cfg.tau = o.number("--tau");
    if (!std::isnormal(cfg.tau) || cfg.tau < 0 || cfg.tau > 1e300)
      o.fail("option --tau: expected a normal number in [2.2250738585072014e-308, 1e300], found '" + o.str("--tau") +
             "'");
  }
  if (o.has("--topk")) {
    if (cfg.normalize != Normalize::topk_softmax)
      o.fail("option --topk: only read by normalize topk_softmax, but variant '" + std::string(to_string(cfg.variant)) +
             "' normalizes with " + to_string(cfg.normalize) + " (add --normalize topk_softmax)");
    cfg.topk = int(o.integer("--topk", 1, D.N));
  } else if (cfg.normalize == Normalize::topk_softmax && cfg.has_logits() && cfg.topk > D.N) {
    cfg.topk = int(D.N);  // the default 2 with a single expert
  }
}

// The memory the command needs, checked before anything is allocated: the model in double (it
// is drawn in double) and two copies of its file image (the tensors, then the file), and the
// same for the input file (T tokens, when written).
void check_memory(const LayerConfig& cfg, const Dims& D, io::DType dtype, bool base, bool write_input, index_t T) {
  const std::uint64_t ds = io::dtype_size(dtype);
  std::uint64_t params = 0, need = 0;
  bool fits = true;
  for (const std::string& name : param_names()) {
    const Need nd = param_need(cfg, name);
    if (nd == Need::unused) continue;
    if (nd == Need::optional && name.rfind("base.", 0) == 0 && !base) continue;
    index_t n = 0;
    fits = fits && checked::numel(param_shape(name, D), n) && checked::add(params, std::uint64_t(n), params);
  }
  fits = fits && checked::add_product(need, params, 8 + 2 * ds);
  if (write_input) {
    std::uint64_t per_token = 0;
    fits = fits && checked::add(std::uint64_t(D.d_in), std::uint64_t(D.d), per_token) &&
           checked::add_product(need, std::uint64_t(T) * per_token, 8 + 2 * ds);
  }
  const std::uint64_t limit = io::detail::memory_limit();
  if (!fits || need > limit)
    detail::fail("expected a model that fits in memory (at most ", limit,
                 " bytes: the physical memory or this process's limit), found one that needs ",
                 fits ? std::to_string(need) + " bytes (" + std::to_string(params) + " parameters in double and " +
                            io::to_string(dtype) + ")"
                      : std::string("more than 2^64 bytes (its parameter count overflows)"));
}

/// The random input file x [T, d_in], dy [T, d], serialized for `path`.
std::unique_ptr<io::PendingFile> input_file(const std::string& path, std::uint64_t seed, index_t T, const Dims& D,
                                            io::DType dtype) {
  // An independent stream, so the model does not change with --write-input.
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<double> normal(0.0, 1.0);
  Tensor<double> x = make_tensor<double>({T, D.d_in}), dy = make_tensor<double>({T, D.d});
  for (double& e : x.data) e = normal(rng);
  for (double& e : dy.data) e = normal(rng);
  io::SafetensorsWriter w;
  w.add("x", x, dtype);
  w.add("dy", dy, dtype);
  return std::make_unique<io::PendingFile>(path, w.serialize());
}

/// The line that reports the written model.
void print_model(const std::string& output, const Model<double>& m, const Dims& D, io::DType dtype) {
  index_t count = 0;
  for (const auto& kv : m.tensors) count += kv.second.numel();
  std::printf("wrote %s: variant %s, d_in %lld, d %lld, N %lld, r %lld", one_line(output).c_str(),
              to_string(m.config.variant), (long long)D.d_in, (long long)D.d, (long long)D.N, (long long)D.r);
  if (m.config.rotation) std::printf(", k %lld, P %lld", (long long)D.k, (long long)D.P);
  std::printf(", %s, %zu tensors, %lld parameters\n", io::to_string(dtype), m.tensors.size(), (long long)count);
}

}  // namespace

int cmd_init(int argc, char** argv) {
  OptionParser o("init",
                 "Writes a random model of any variant to --output: every tensor the variant requires and every\n"
                 "optional one it reads, scaled so activations are of order one. With --write-input it also\n"
                 "writes a random input file (x [T, d_in] and dy [T, d]) for 'radargate run'.");
  declare_options(o);
  if (!o.parse(argc, argv)) return 0;

  Dims D;
  LayerConfig cfg = read_layer(o, D);
  read_gate(o, D, cfg);
  const io::DType dtype = [&] {
    try {
      return io::parse_float_dtype(o.str("--dtype", "F32"), "option --dtype");
    } catch (const radargate::error& e) {
      o.fail(e.what());
    }
  }();
  const std::uint64_t seed = std::uint64_t(o.integer("--seed", 0, std::numeric_limits<long long>::max(), 0));
  const std::string output = o.str("--output");
  if (o.has("--tokens") && !o.has("--write-input")) o.fail("option --tokens needs --write-input");
  const index_t T = o.integer("--tokens", 1, big, 8);

  RandomModelOptions opt;
  opt.base = !o.has("--no-base");
  o.refuse_same_file("--write-input", {"--output"});
  check_memory(cfg, D, dtype, opt.base, o.has("--write-input"), T);

  const Model<double> m = random_model<double>(cfg, D, seed, opt);
  io::PendingFile model_file(output, io::model_writer(m, dtype).serialize());
  std::unique_ptr<io::PendingFile> input;
  if (o.has("--write-input")) input = input_file(o.str("--write-input"), seed, T, D, dtype);
  // Both files are complete on disk before either is renamed into place; a failure before this
  // point leaves both destinations as they were.
  model_file.commit();
  if (input) input->commit();
  clean_stale_temps("init", output);
  if (input) clean_stale_temps("init", o.str("--write-input"));
  print_model(output, m, D, dtype);
  if (o.has("--write-input"))
    std::printf("wrote %s: x [%lld, %lld], dy [%lld, %lld]\n", one_line(o.str("--write-input")).c_str(), (long long)T,
                (long long)D.d_in, (long long)T, (long long)D.d);
  return 0;
}

}  // namespace cli
}  // namespace radargate
