// radargate/io/peft.hpp -- LoRA adapters written by Hugging Face PEFT (save_pretrained), and base
// models in Hugging Face layout, imported as a file of many RadarGate layers (docs/PEFT.md).
//
// An adapter directory holds adapter_config.json and adapter_model.safetensors with, per adapted
// module m (named as the base model names it),
//
//   base_model.model.<m>.lora_A.weight [r, d_in]      base_model.model.<m>.lora_B.weight [d, r]
//
// and PEFT's forward of that module is  y = W0 x + b0 + scaling * B A x  with
//
//   scaling = lora_alpha / r            (use_rslora: lora_alpha / sqrt(r))
//
// where r and lora_alpha come from rank_pattern / alpha_pattern when a key matches the module.
// The matching rule is PEFT 0.13.2's (peft/tuners/lora/model.py, _create_and_replace):
//
//   keys = [*rank_pattern, *alpha_pattern]             (in the order of adapter_config.json)
//   key  = first k in keys with re.match(rf".*\.{k}$", m), else m itself
//   r    = rank_pattern.get(key, r);  alpha = alpha_pattern.get(key, lora_alpha)
//
// N adapters of one module become one layer of N experts: lora.A [N, R, d_in], lora.B [N, d, R],
// lora.scale [N] = scaling_i, with R the largest rank and smaller adapters zero-padded (zero rows of
// A_i, zero columns of B_i: B_i A_i is unchanged). With variant `sum` the layer computes
// W0 x + b0 + sum_i scaling_i B_i A_i x exactly. fan_in_fan_out (Conv1D bases such as GPT-2) changes
// only how the base weight is stored ([d_in, d], transposed on import); PEFT's LoRA forward is the
// same.
//
// Whatever PEFT can express and a layer cannot represent exactly is refused, with one error naming
// the adapter, the module and the reason: DoRA, modules_to_save, LoRA on embeddings or
// convolutions, bias other than "none", layer_replication, a peft_type other than LORA, and adapters
// whose modules or shapes disagree.
#pragma once

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "model_set.hpp"
#include "pattern.hpp"

namespace radargate {
namespace io {
namespace peft {

/// The PEFT release whose rules (scaling, pattern matching, file layout) this importer follows.
inline constexpr const char* rules_version = "0.13.2";

/// The prefix PEFT's save_pretrained puts before every module name.
inline constexpr const char* key_prefix = "base_model.model.";

/// One adapted module of one adapter, as PEFT computes it: delta(x) = scaling * B A x.
struct AdaptedModule {
  std::string name;          // as the base model names it, e.g. model.layers.0.self_attn.q_proj
  index_t r = 0;             // the rank PEFT uses for this module (r or rank_pattern)
  double alpha = 0;          // lora_alpha or alpha_pattern
  double scaling = 0;        // alpha / r, or alpha / sqrt(r) with use_rslora
  Tensor<double> A;          // [r, d_in]
  Tensor<double> B;          // [d, r]
  DType dtype = DType::F32;  // of the adapter file
};

struct Adapter {
  std::string dir;
  double lora_alpha = 0;
  index_t r = 0;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  std::vector<AdaptedModule> modules;  // in the file's order (the model's order)

  const AdaptedModule* find(const std::string& m) const {
    for (const AdaptedModule& a : modules)
      if (a.name == m) return &a;
    return nullptr;
  }
};

namespace detail {
using radargate::detail::fail;

inline bool is_dir(const std::string& p) {
  struct stat s {};
  return ::stat(p.c_str(), &s) == 0 && S_ISDIR(s.st_mode);
}
inline bool is_file(const std::string& p) {
  struct stat s {};
  return ::stat(p.c_str(), &s) == 0 && S_ISREG(s.st_mode);
}
inline bool exists(const std::string& p) {
  struct stat s {};
  return ::stat(p.c_str(), &s) == 0;
}
/// The largest JSON file (adapter_config.json, model.safetensors.index.json) read: PEFT writes
/// a few kilobytes, an index of a large model a few megabytes.
inline constexpr std::uint64_t max_json_bytes = std::uint64_t(64) << 20;

/// The text of a JSON file: a regular file of at most max_json_bytes, checked before reading.
inline std::string read_text(const std::string& path, const std::string& who) {
  using radargate::io::detail::printable;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(who, ": cannot open '", printable(path), "'");
  if (!S_ISREG(st.st_mode)) fail(who, ": '", printable(path), "': expected a regular file, found something else");
  if (std::uint64_t(st.st_size) > max_json_bytes)
    fail(who, ": '", printable(path), "': expected at most ", max_json_bytes, " bytes of JSON, found ", st.st_size);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(who, ": cannot open '", printable(path), "'");
  std::string text(std::size_t(st.st_size), '\0');
  in.read(&text[0], std::streamsize(text.size()));
  if (in.gcount() != std::streamsize(text.size()))
    fail(who, ": '", printable(path), "': expected ", text.size(), " bytes, read ", in.gcount());
  return text;
}
/// A JSON value for a message (bounded: the parser limited its depth), or "nothing".
template <class Json>
inline std::string shown(const Json* j) {
  return j ? radargate::io::detail::excerpt(j->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 96)
           : std::string("nothing");
}
inline std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

/// PEFT 0.13.2's pattern rule: the first key k (rank_pattern keys, then alpha_pattern keys) for
/// which Python's re.match(rf".*\.{k}$", module) succeeds; the module's own name when none does.
/// The key is pasted into the pattern as text, as PEFT does ("a|b" gives .*\.a|b$), and matched by
/// pattern::Regex, which reads Python's syntax in linear time (io/pattern.hpp).
class PatternKeys {
 public:
  /// Matching costs at most (sum of the compiled sizes) x (the module name's length) steps per
  /// module; keys whose compiled sizes add up to more than this are refused.
  static constexpr std::size_t max_total_program = 200000;

  PatternKeys(std::vector<std::string> keys, const std::string& who) : keys_(std::move(keys)) {
    std::size_t total = 0;
    for (const std::string& k : keys_) {
      try {
        compiled_.emplace_back(".*\\." + k + "$");
      } catch (const radargate::error& e) {
        fail(who, ": adapter_config.json: pattern key '", radargate::io::detail::excerpt(k, 96),
             "' is not a regular expression this importer reads (", e.what(), " of .*\\.KEY$)");
      }
      total += compiled_.back().program_size();
      if (total > max_total_program)
        fail(who, ": adapter_config.json: the rank_pattern and alpha_pattern keys compile to more than ",
             max_total_program, " matching steps in all (", keys_.size(), " keys): expected fewer or simpler keys");
    }
  }
  const std::string& key(const std::string& module) const {
    for (std::size_t i = 0; i < keys_.size(); ++i)
      if (compiled_[i].match_prefix(module)) return keys_[i];
    return module;
  }

 private:
  std::vector<std::string> keys_;
  std::vector<pattern::Regex> compiled_;
};

inline std::string pattern_key(const std::vector<std::string>& keys, const std::string& module,
                               const std::string& who) {
  return PatternKeys(keys, who).key(module);
}

inline bool json_truthy(const nlohmann::ordered_json& j) {
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_array() || j.is_object() || j.is_string()) return !j.empty();
  return true;
}
}  // namespace detail

namespace detail {
// The steps of adapter_from.

/// adapter_config.json, parsed and checked to be an object naming a LoRA adapter.
struct AdapterConfig {
  std::string who;  // "adapter '<dir>'", the start of every message
  nlohmann::ordered_json c;

  AdapterConfig(const std::string& dir, const std::string& config_text)
      : who("adapter '" + radargate::io::detail::printable(dir) + "'"),
        c(radargate::io::detail::parse_json_checked<nlohmann::ordered_json>(config_text,
                                                                            who + ": adapter_config.json")) {
    if (!c.is_object()) fail(who, ": adapter_config.json: expected a JSON object, found ", c.type_name());
    if (const auto* t = field("peft_type"))
      if (!t->is_string() || t->get<std::string>() != "LORA")
        fail(who, ": adapter_config.json: peft_type: expected \"LORA\", found ", shown(t),
             " (only LoRA adapters import)");
  }
  /// The field, or null when absent or null.
  const nlohmann::ordered_json* field(const char* k) const {
    auto it = c.find(k);
    return it == c.end() || it->is_null() ? nullptr : &*it;
  }
  /// A boolean field; absent reads false.
  bool flag(const char* k) const {
    const auto* f = field(k);
    if (f && !f->is_boolean()) fail(who, ": adapter_config.json: '", k, "': expected true or false, found ", shown(f));
    return f && f->get<bool>();
  }
};

/// The adapter-wide fields: r, lora_alpha, use_rslora, fan_in_fan_out.
inline void read_adapter_fields(const AdapterConfig& cfg, Adapter& a) {
  const std::string& who = cfg.who;
  const auto* r = cfg.field("r");
  if (!r || !r->is_number_integer() || r->get<long long>() < 1)
    fail(who, ": adapter_config.json: 'r': expected an integer >= 1, found ", shown(r));
  a.r = index_t(r->get<long long>());
  const auto* al = cfg.field("lora_alpha");
  if (!al || !al->is_number()) fail(who, ": adapter_config.json: 'lora_alpha': expected a number, found ", shown(al));
  a.lora_alpha = al->get<double>();
  a.use_rslora = cfg.flag("use_rslora");
  a.fan_in_fan_out = cfg.flag("fan_in_fan_out");
}

/// The tensors of adapter_model.safetensors grouped by module.
struct TensorParts {
  std::vector<std::string> order;                                   // modules in file order
  std::map<std::string, std::map<std::string, std::string>> parts;  // module -> part -> tensor
  std::string first_module;
};

/// A tensor name split into module and part ("lora_A.weight", ...; "?" when no suffix is known).
inline void split_tensor_name(const std::string& rest, std::string& module, std::string& part) {
  static const char* const suffixes[] = {".lora_A.weight",
                                         ".lora_B.weight",
                                         ".lora_embedding_A",
                                         ".lora_embedding_B",
                                         ".lora_magnitude_vector",
                                         ".lora_magnitude_vector.weight",
                                         ".lora_A.bias",
                                         ".lora_B.bias",
                                         ".bias",
                                         ".weight"};
  for (const char* s : suffixes) {
    const std::string suf = s;
    if (rest.size() > suf.size() && rest.compare(rest.size() - suf.size(), suf.size(), suf) == 0) {
      module = rest.substr(0, rest.size() - suf.size());
      part = suf.substr(1);
      break;
    }
  }
  if (module.empty()) module = rest, part = "?";
}

inline TensorParts tensor_parts(const SafetensorsFile& f, const std::string& who) {
  TensorParts tp;
  for (const TensorInfo& t : f.tensors()) {
    const std::string& k = t.name;
    if (k.rfind(key_prefix, 0) != 0)
      fail(who, ": tensor '", radargate::io::detail::printable(k), "': expected a name starting with '", key_prefix,
           "' (as save_pretrained writes it)");
    const std::string rest = k.substr(std::string(key_prefix).size());
    std::string module, part;
    split_tensor_name(rest, module, part);
    if (!tp.parts.count(module)) tp.order.push_back(module);
    tp.parts[module][part] = k;
    if (tp.first_module.empty() && (part == "lora_A.weight" || part == "lora_embedding_A")) tp.first_module = module;
  }
  if (tp.first_module.empty() && !tp.order.empty()) tp.first_module = tp.order.front();
  return tp;
}

/// Refuses module `module` of the adapter `who`: "<who>: module '<module>': <why>".
inline void refuse_module(const std::string& who, const std::string& module, const std::string& why) {
  fail(who, ": module '", radargate::io::detail::printable(module), "': ", why);
}

/// The first module holding one of `names` (the first module when none does).
inline std::string module_holding(TensorParts& tp, std::initializer_list<const char*> names) {
  for (const std::string& o : tp.order)
    for (const char* n : names)
      if (tp.parts[o].count(n)) return o;
  return tp.first_module;
}

/// Configuration refusals: settings a LoRA layer cannot represent.
inline void refuse_config(const AdapterConfig& cfg, TensorParts& tp) {
  auto refuse = [&](const std::string& module, const std::string& why) { refuse_module(cfg.who, module, why); };
  if (cfg.flag("use_dora"))
    refuse(module_holding(tp, {"lora_magnitude_vector", "lora_magnitude_vector.weight"}),
           "use_dora is true: DoRA rescales each output column by a learned magnitude over ||W0 + BA||, which is "
           "not a sum of low-rank products; cannot be represented");
  if (const auto* mts = cfg.field("modules_to_save"))
    if (detail::json_truthy(*mts)) {
      const std::string m =
          mts->is_array() && !mts->empty() && (*mts)[0].is_string() ? (*mts)[0].get<std::string>() : shown(mts);
      refuse(m,
             "listed in modules_to_save: the adapter replaces this module's full weights, which a LoRA layer "
             "cannot represent");
    }
  if (const auto* b = cfg.field("bias"))
    if (!b->is_string() || b->get<std::string>() != "none")
      refuse(module_holding(tp, {"bias", "lora_B.bias", "lora_A.bias"}),
             "bias is " + shown(b) +
                 ", expected \"none\": the adapter trains bias vectors, which a LoRA layer "
                 "does not hold");
  if (cfg.flag("lora_bias"))
    refuse(tp.first_module, "lora_bias is true: lora_B has a bias, which a LoRA layer does not hold");
  if (const auto* lr = cfg.field("layer_replication"))
    if (detail::json_truthy(*lr))
      refuse(tp.first_module, "layer_replication is set: the adapter changes the base model's layers");
}

/// rank_pattern and alpha_pattern: their values, and every key in file order.
struct PatternFields {
  std::vector<std::string> keys;
  std::map<std::string, long long> rank_pattern;
  std::map<std::string, double> alpha_pattern;
};

inline PatternFields read_patterns(const AdapterConfig& cfg) {
  const std::string& who = cfg.who;
  PatternFields pf_out;
  for (const char* pf : {"rank_pattern", "alpha_pattern"}) {
    const auto* p = cfg.field(pf);
    if (!p) continue;
    if (!p->is_object()) fail(who, ": adapter_config.json: '", pf, "': expected an object, found ", shown(p));
    for (auto it = p->begin(); it != p->end(); ++it) {
      if (std::string(pf) == "rank_pattern") {
        if (!it->is_number_integer() || it->get<long long>() < 1)
          fail(who, ": adapter_config.json: rank_pattern '", radargate::io::detail::excerpt(it.key(), 96),
               "': expected an integer >= 1, found ", shown(&*it));
        pf_out.rank_pattern[it.key()] = it->get<long long>();
      } else {
        if (!it->is_number())
          fail(who, ": adapter_config.json: alpha_pattern '", radargate::io::detail::excerpt(it.key(), 96),
               "': expected a number, found ", shown(&*it));
        pf_out.alpha_pattern[it.key()] = it->get<double>();
      }
      pf_out.keys.push_back(it.key());
    }
  }
  return pf_out;
}

/// Refusals that explain a module before any other check of the file (an embedding adapter also
/// saves the embedding's base weights, which would otherwise read as a module saved whole).
inline void refuse_layers_first(const SafetensorsFile& f, TensorParts& tp, const std::string& who) {
  for (const std::string& m : tp.order) {
    const auto& p = tp.parts[m];
    if (p.count("lora_embedding_A") || p.count("lora_embedding_B"))
      refuse_module(who, m,
                    "LoRA on an embedding (lora_embedding_A/B): a table lookup, not a product with the input; cannot "
                    "be represented");
    if (p.count("lora_A.weight") && f.info(p.at("lora_A.weight")).shape.size() != 2)
      refuse_module(who, m,
                    "LoRA on a convolution (lora_A " +
                        radargate::io::detail::shape_str(f.info(p.at("lora_A.weight")).shape) +
                        "; a linear layer has lora_A [r, d_in]); cannot be represented");
  }
}

/// Module m's tensors are exactly lora_A.weight and lora_B.weight, nothing a LoRA layer lacks.
inline void check_module_parts(const std::string& who, const std::string& m,
                               const std::map<std::string, std::string>& p) {
  auto refuse = [&](const std::string& why) { refuse_module(who, m, why); };
  if (p.count("lora_embedding_A") || p.count("lora_embedding_B"))
    refuse(
        "LoRA on an embedding (lora_embedding_A/B): a table lookup, not a product with the input; cannot be "
        "represented");
  if (p.count("lora_magnitude_vector") || p.count("lora_magnitude_vector.weight"))
    refuse("holds lora_magnitude_vector (DoRA); cannot be represented");
  if (p.count("bias") || p.count("lora_A.bias") || p.count("lora_B.bias"))
    refuse("holds a bias tensor ('" +
           radargate::io::detail::printable(p.count("bias") ? p.at("bias") : p.begin()->second) +
           "'): the adapter trains biases, which a LoRA layer does not hold");
  if (!p.count("lora_A.weight") && !p.count("lora_B.weight"))
    refuse("holds '" + radargate::io::detail::printable(p.begin()->second) +
           "', which is no LoRA factor (a module saved whole, as "
           "modules_to_save does?); cannot be represented");
  if (!p.count("lora_A.weight")) refuse("lora_B.weight without lora_A.weight");
  if (!p.count("lora_B.weight")) refuse("lora_A.weight without lora_B.weight");
  for (const auto& kv : p)
    if (kv.first != "lora_A.weight" && kv.first != "lora_B.weight")
      refuse("unexpected tensor '" + radargate::io::detail::printable(kv.second) + "'");
}

/// Module m's factors ai, bi: two-dimensional, floating, of one dtype and one rank.
inline void check_factor_infos(const std::string& who, const std::string& m, const TensorInfo& ai,
                               const TensorInfo& bi) {
  auto refuse = [&](const std::string& why) { refuse_module(who, m, why); };
  if (ai.shape.size() != 2 || bi.shape.size() != 2)
    refuse("LoRA on a convolution (lora_A " + radargate::io::detail::shape_str(ai.shape) + ", lora_B " +
           radargate::io::detail::shape_str(bi.shape) +
           "; a linear layer has [r, d_in] and [d, r]); cannot "
           "be represented");
  for (const TensorInfo* t : {&ai, &bi})
    if (!is_floating(t->dtype))
      refuse("tensor '" + radargate::io::detail::printable(t->name) + "': expected F32, F16, BF16 or F64, found " +
             to_string(t->dtype));
  if (ai.dtype != bi.dtype)
    refuse(std::string("lora_A is ") + to_string(ai.dtype) + " but lora_B is " + to_string(bi.dtype));
  if (bi.shape[1] != ai.shape[0])
    refuse("lora_A " + radargate::io::detail::shape_str(ai.shape) + " and lora_B " +
           radargate::io::detail::shape_str(bi.shape) + " disagree on the rank");
}

/// Module m read from its checked factors ai, bi, with its rank and alpha after the patterns.
inline AdaptedModule adapted_module(const SafetensorsFile& f, const std::string& who, const std::string& m,
                                    const TensorInfo& ai, const TensorInfo& bi, const Adapter& a,
                                    const PatternKeys& patterns, const PatternFields& pf) {
  auto refuse = [&](const std::string& why) { refuse_module(who, m, why); };
  AdaptedModule am;
  am.name = m;
  const std::string key = patterns.key(m);
  const auto rp = pf.rank_pattern.find(key);
  const auto ap = pf.alpha_pattern.find(key);
  am.r = rp != pf.rank_pattern.end() ? index_t(rp->second) : a.r;
  am.alpha = ap != pf.alpha_pattern.end() ? ap->second : a.lora_alpha;
  if (ai.shape[0] != am.r)
    refuse(
        "lora_A has rank " + std::to_string(ai.shape[0]) +
        ", but adapter_config.json gives r = " + std::to_string(am.r) +
        (rp != pf.rank_pattern.end() ? " (rank_pattern '" + radargate::io::detail::excerpt(key, 96) + "')" : " ('r')"));
  if (ai.shape[0] < 1 || ai.shape[1] < 1 || bi.shape[0] < 1)
    refuse("empty LoRA factors " + radargate::io::detail::shape_str(ai.shape) + ", " +
           radargate::io::detail::shape_str(bi.shape));
  am.scaling = a.use_rslora ? am.alpha / std::sqrt(double(am.r)) : am.alpha / double(am.r);
  am.A = f.get<double>(ai.name);
  am.B = f.get<double>(bi.name);
  am.dtype = ai.dtype;
  try {
    require_finite(ai.name, am.A);
    require_finite(bi.name, am.B);
  } catch (const radargate::error& e) {
    refuse(e.what());
  }
  return am;
}

/// read_adapter's work once the files are found: `config_text` is adapter_config.json and
/// open_tensors() reads adapter_model.safetensors (after the configuration's first checks, so that
/// those errors come first).
inline Adapter adapter_from(const std::string& dir, const std::string& config_text,
                            const std::function<SafetensorsFile()>& open_tensors) {
  const AdapterConfig cfg(dir, config_text);
  const std::string& who = cfg.who;
  Adapter a;
  a.dir = dir;
  read_adapter_fields(cfg, a);

  // Open the tensors first, so configuration refusals can name a module.
  const SafetensorsFile f = open_tensors();
  TensorParts tp = tensor_parts(f, who);
  refuse_config(cfg, tp);
  PatternFields pf = read_patterns(cfg);
  const detail::PatternKeys patterns(std::move(pf.keys), who);

  refuse_layers_first(f, tp, who);
  for (const std::string& m : tp.order) {
    const auto& p = tp.parts[m];
    check_module_parts(who, m, p);
    const TensorInfo& ai = f.info(p.at("lora_A.weight"));
    const TensorInfo& bi = f.info(p.at("lora_B.weight"));
    check_factor_infos(who, m, ai, bi);
    a.modules.push_back(adapted_module(f, who, m, ai, bi, a, patterns, pf));
  }
  if (a.modules.empty()) fail(who, ": adapter_model.safetensors holds no LoRA factors");
  return a;
}
}  // namespace detail

/// Reads an adapter directory, applying PEFT's rules, and refuses what a layer cannot represent.
/// Every error starts with "adapter '<dir>': " and names the module when there is one.
inline Adapter read_adapter(const std::string& dir) {
  using detail::fail;
  const std::string who = "adapter '" + radargate::io::detail::printable(dir) + "'";
  if (!detail::is_dir(dir)) fail(who, ": expected a directory written by PEFT's save_pretrained, found none");
  const std::string cfg_path = detail::join_path(dir, "adapter_config.json");
  const std::string st_path = detail::join_path(dir, "adapter_model.safetensors");
  // Present but not a regular file (a FIFO, a device): the readers say so.
  if (!detail::exists(cfg_path)) fail(who, ": missing adapter_config.json");
  if (!detail::exists(st_path)) {
    if (detail::is_file(detail::join_path(dir, "adapter_model.bin")))
      fail(who,
           ": found adapter_model.bin (a pickle), expected adapter_model.safetensors (save_pretrained's default "
           "with safe_serialization=True)");
    fail(who, ": missing adapter_model.safetensors");
  }
  return detail::adapter_from(dir, detail::read_text(cfg_path, who), [&] { return SafetensorsFile::read(st_path); });
}

/// A base model in Hugging Face layout: one safetensors file, a directory with model.safetensors,
/// or a directory with shards and model.safetensors.index.json ("weight_map": tensor -> shard).
/// Shards are read when a tensor in them is first asked for.
class BaseModel {
 public:
  static BaseModel open(const std::string& path) {
    using detail::fail;
    BaseModel b;
    b.path_ = path;
    const std::string who = "base '" + radargate::io::detail::printable(path) + "'";
    std::string index;
    if (detail::is_dir(path)) {
      const std::string single = detail::join_path(path, "model.safetensors");
      const std::string idx = detail::join_path(path, "model.safetensors.index.json");
      if (detail::is_file(single)) {
        b.add_file(single);
        return b;
      }
      if (!detail::is_file(idx))
        fail(who, ": expected model.safetensors or model.safetensors.index.json in the directory, found neither");
      index = idx;
    } else if (detail::is_file(path)) {
      const std::string tail = ".index.json";
      if (path.size() > tail.size() && path.compare(path.size() - tail.size(), tail.size(), tail) == 0) {
        index = path;
      } else {
        b.add_file(path);
        return b;
      }
    } else {
      fail(who, ": no such file or directory");
    }
    const nlohmann::json j = radargate::io::detail::parse_json_checked(
        detail::read_text(index, who), who + ": '" + radargate::io::detail::printable(index) + "'");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(who, ": '", radargate::io::detail::printable(index),
           "': expected an object with \"weight_map\": {tensor: shard file}");
    const std::size_t slash = index.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : index.substr(0, slash);
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string())
        fail(who, ": '", radargate::io::detail::printable(index), "': weight_map '",
             radargate::io::detail::printable(it.key()), "': expected a file name, found ", detail::shown(&*it));
      const std::string shard = it->get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "." || shard == "..")
        fail(who, ": '", radargate::io::detail::printable(index), "': weight_map '",
             radargate::io::detail::printable(it.key()), "': expected a file name in the same directory, found '",
             radargate::io::detail::printable(shard), "'");
      b.where_[it.key()] = detail::join_path(dir, shard);
    }
    return b;
  }

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return where_.count(name) != 0; }

  /// The tensor, converted to double; checked finite.
  Tensor<double> get(const std::string& name) {
    auto it = where_.find(name);
    if (it == where_.end()) detail::fail("base '", path_, "': no tensor '", name, "'");
    auto f = files_.find(it->second);
    if (f == files_.end()) {
      if (!detail::is_file(it->second))
        detail::fail("base '", path_, "': shard '", it->second, "' (of tensor '", name, "') is missing");
      f = files_.emplace(it->second, std::make_shared<SafetensorsFile>(SafetensorsFile::read(it->second))).first;
    }
    if (!f->second->has(name))
      detail::fail("base '", path_, "': the index puts '", name, "' in '", it->second, "', which does not hold it");
    Tensor<double> t = f->second->get<double>(name);
    radargate::io::detail::in_file(it->second, [&] { require_finite(name, t); });
    return t;
  }
  /// The shape of a tensor (reads its shard).
  std::vector<index_t> shape(const std::string& name) {
    get_file(name);
    return files_.at(where_.at(name))->info(name).shape;
  }

 private:
  std::string path_;
  std::map<std::string, std::string> where_;  // tensor -> file
  std::map<std::string, std::shared_ptr<SafetensorsFile>> files_;

  void add_file(const std::string& file) {
    auto f = std::make_shared<SafetensorsFile>(SafetensorsFile::read(file));
    for (const TensorInfo& t : f->tensors()) where_[t.name] = file;
    files_[file] = f;
  }
  void get_file(const std::string& name) {
    auto it = where_.find(name);
    if (it == where_.end()) detail::fail("base '", path_, "': no tensor '", name, "'");
    if (!files_.count(it->second)) (void)get(name);
  }
};

struct ImportOptions {
  LayerConfig config = LayerConfig::make(Variant::sum);
  std::string modules;       // ECMAScript regex searched in each module name; empty: every module
  DType dtype = DType::F32;  // of the written tensors
  std::uint64_t seed = 0;    // layer j's gate and angle parameters: init's, from seed + j
  index_t angle_rank = 4;    // k of rotating variants (init's default)
};

struct ImportResult {
  std::vector<std::string> layers;  // written, in order
  ModelSetWriter writer;            // ready to write
};

namespace detail {
// The steps of import_adapters.

/// Throws unless every adapter stores the base weights the same way (fan_in_fan_out).
inline void check_fan_in_fan_out(const std::vector<Adapter>& adapters) {
  const Adapter& a0 = adapters.front();
  for (const Adapter& a : adapters)
    if (a.fan_in_fan_out != a0.fan_in_fan_out)
      fail("adapter '", a.dir, "': module '", a.modules.front().name, "': fan_in_fan_out is ",
           a.fan_in_fan_out ? "true" : "false", " but adapter '", a0.dir, "' says ",
           a0.fan_in_fan_out ? "true" : "false", ": they disagree on how the base stores its weights");
}

/// The modules to import: those matching opt.modules, in the first adapter's order, then any others.
inline std::vector<std::string> selected_modules(const std::vector<Adapter>& adapters, const ImportOptions& opt) {
  std::regex select;
  if (!opt.modules.empty()) {
    try {
      select = std::regex(opt.modules, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      fail("option --modules: '", opt.modules, "' is not a regular expression: ", e.what());
    }
  }
  auto wanted = [&](const std::string& m) { return opt.modules.empty() || std::regex_search(m, select); };
  std::vector<std::string> modules;
  std::set<std::string> seen;
  for (const Adapter& a : adapters)
    for (const AdaptedModule& m : a.modules)
      if (wanted(m.name) && seen.insert(m.name).second) modules.push_back(m.name);
  if (modules.empty())
    fail("option --modules: '", opt.modules, "' matches none of the adapted modules (e.g. '",
         adapters.front().modules.front().name, "')");
  return modules;
}

/// A module as every adapter adapts it: the first adapter's factors and the largest rank.
struct ModuleShape {
  const AdaptedModule* first = nullptr;
  const Adapter* first_owner = nullptr;
  index_t R = 0;
};

/// Throws unless every adapter adapts module `name` with the same d_in and d.
inline ModuleShape module_shape(const std::vector<Adapter>& adapters, const std::string& name) {
  ModuleShape ms;
  for (const Adapter& a : adapters) {
    const AdaptedModule* m = a.find(name);
    if (!m) {
      const Adapter& has = ms.first_owner ? *ms.first_owner : *[&] {
        for (const Adapter& b : adapters)
          if (b.find(name)) return &b;
        return &a;
      }();
      fail("adapter '", a.dir, "': module '", name, "': not adapted here, but adapter '", has.dir,
           "' adapts it; every adapter must adapt every imported module (choose modules with --modules)");
    }
    if (!ms.first) {
      ms.first = m;
      ms.first_owner = &a;
    } else if (m->A.shape[1] != ms.first->A.shape[1] || m->B.shape[0] != ms.first->B.shape[0]) {
      fail("adapter '", a.dir, "': module '", name, "': shape d_in ", m->A.shape[1], ", d ", m->B.shape[0],
           " disagrees with adapter '", ms.first_owner->dir, "' (d_in ", ms.first->A.shape[1], ", d ",
           ms.first->B.shape[0], ")");
    }
    ms.R = std::max(ms.R, m->r);
  }
  return ms;
}

/// The layer's dimensions: one expert per adapter, at the largest rank.
inline Dims module_dims(const ModuleShape& ms, const std::string& name, std::size_t experts, const ImportOptions& opt) {
  Dims D;
  D.N = index_t(experts);
  D.r = ms.R;
  D.d_in = ms.first->A.shape[1];
  D.d = ms.first->B.shape[0];
  if (opt.config.rotation) {
    if (D.d < 2)
      fail("adapter '", ms.first_owner->dir, "': module '", name, "': variant '", to_string(opt.config.variant),
           "' rotates pairs of outputs, but the module has d = ", D.d);
    D.k = opt.angle_rank;
    D.P = D.d / 2;
  }
  return D;
}

/// lora.A, lora.B and lora.scale of m from the adapters' factors (zero-padded to rank R).
inline void stack_experts(const std::vector<Adapter>& adapters, const std::string& name, const Dims& D, index_t R,
                          Model<double>& m) {
  Tensor<double> A = make_tensor<double>({D.N, R, D.d_in}), B = make_tensor<double>({D.N, D.d, R});
  Tensor<double> s = make_tensor<double>({D.N});
  for (std::size_t i = 0; i < adapters.size(); ++i) {
    const AdaptedModule& am = *adapters[i].find(name);
    for (index_t q = 0; q < am.r; ++q)
      for (index_t c = 0; c < D.d_in; ++c)
        A.data[std::size_t((index_t(i) * R + q) * D.d_in + c)] = am.A.data[std::size_t(q * D.d_in + c)];
    for (index_t o = 0; o < D.d; ++o)
      for (index_t q = 0; q < am.r; ++q)
        B.data[std::size_t((index_t(i) * D.d + o) * R + q)] = am.B.data[std::size_t(o * am.r + q)];
    s.data[i] = am.scaling;
  }
  m.tensors["lora.A"] = std::move(A);
  m.tensors["lora.B"] = std::move(B);
  m.tensors["lora.scale"] = std::move(s);
}

/// base.W0 (and base.b0 where the base has a bias) of module `name` from the base model.
inline void add_base(BaseModel& base, bool fan_in_fan_out, const ModuleShape& ms, const std::string& name,
                     const Dims& D, Model<double>& m) {
  const std::string wn = name + ".weight", bn = name + ".bias";
  if (!base.has(wn))
    fail("adapter '", ms.first_owner->dir, "': module '", name, "': the base '", base.path(), "' has no tensor '", wn,
         "'");
  Tensor<double> W = base.get(wn);
  const std::vector<index_t> want =
      fan_in_fan_out ? std::vector<index_t>{D.d_in, D.d} : std::vector<index_t>{D.d, D.d_in};
  if (W.shape != want)
    fail("adapter '", ms.first_owner->dir, "': module '", name, "': base weight '", wn, "' has shape ",
         radargate::io::detail::shape_str(W.shape), ", expected ", radargate::io::detail::shape_str(want),
         fan_in_fan_out ? " ([d_in, d]: fan_in_fan_out)" : " ([d, d_in] from lora_B and lora_A)");
  if (fan_in_fan_out) {
    Tensor<double> T = make_tensor<double>({D.d, D.d_in});
    for (index_t o = 0; o < D.d; ++o)
      for (index_t c = 0; c < D.d_in; ++c) T.data[std::size_t(o * D.d_in + c)] = W.data[std::size_t(c * D.d + o)];
    W = std::move(T);
  }
  m.tensors["base.W0"] = std::move(W);
  if (base.has(bn)) {
    Tensor<double> b = base.get(bn);
    if (b.shape != std::vector<index_t>{D.d})
      fail("adapter '", ms.first_owner->dir, "': module '", name, "': base bias '", bn, "' has shape ",
           radargate::io::detail::shape_str(b.shape), ", expected [", D.d, "]");
    m.tensors["base.b0"] = std::move(b);
  }
}

/// The progress line of layer j (of `layers`): its dimensions, each adapter's scaling, its base tensors.
inline std::string layer_line(const std::vector<Adapter>& adapters, const std::string& name, std::size_t j,
                              std::size_t layers, const Dims& D, const Model<double>& m, bool base) {
  std::string line = "layer " + std::to_string(j + 1) + "/" + std::to_string(layers) + " " + name + ": d_in " +
                     std::to_string(D.d_in) + ", d " + std::to_string(D.d) + ", N " + std::to_string(D.N) + ", r " +
                     std::to_string(D.r) + ", scaling";
  for (const Adapter& a : adapters) {
    std::ostringstream os;
    os.precision(6);
    os << " " << a.find(name)->scaling;
    line += os.str();
  }
  return line + (base ? (m.has("base.b0") ? ", base W0 b0" : ", base W0") : "");
}
}  // namespace detail

/// Builds the layers of a model file from adapters (and a base model). `progress` (may be empty)
/// is called with one line per layer. Nothing is written: the caller writes result.writer.
inline ImportResult import_adapters(const std::vector<Adapter>& adapters, BaseModel* base, const ImportOptions& opt,
                                    const std::function<void(const std::string&)>& progress = {}) {
  using detail::fail;
  if (adapters.empty()) fail("import-peft: expected at least one adapter, found none");
  detail::check_fan_in_fan_out(adapters);
  const std::vector<std::string> modules = detail::selected_modules(adapters, opt);

  ImportResult res;
  for (std::size_t j = 0; j < modules.size(); ++j) {
    const std::string& name = modules[j];
    const detail::ModuleShape ms = detail::module_shape(adapters, name);
    const Dims D = detail::module_dims(ms, name, adapters.size(), opt);
    LayerConfig cfg = opt.config;
    if (cfg.normalize == Normalize::topk_softmax && cfg.topk > D.N) cfg.topk = int(D.N);
    RandomModelOptions ro;
    ro.base = false;
    Model<double> m = random_model<double>(cfg, D, opt.seed + j, ro);
    detail::stack_experts(adapters, name, D, ms.R, m);
    if (base) detail::add_base(*base, adapters.front().fan_in_fan_out, ms, name, D, m);
    res.writer.add(name, m, opt.dtype);
    res.layers.push_back(name);
    if (progress) progress(detail::layer_line(adapters, name, j, modules.size(), D, m, base != nullptr));
  }
  return res;
}

}  // namespace peft
}  // namespace io
}  // namespace radargate
