// radargate verify -- the expansion report of a model on a set of inputs.
//
// For every token x of the input file, with v_i the unrotated expert outputs, u_i the combined
// (rotated) ones and g the gate weights: is the LoRA part p = sum g_i u_i inside the cone and the
// convex hull of {v_i}, and is the weighted-sum point p_w = sum g_i v_i (what a plain weighted-sum
// gate with the same weights produces)? Every verdict rests on a re-checked certificate
// (radargate/geometry/expansion.hpp). Printed as a table, or as JSON with --json.
//
// Exit code 0 when the weighted-sum guarantee holds on every token it covers, 3 when it does not
// (the report is still printed), 1 on bad input, 2 on bad usage.
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate.hpp"
#include "radargate/geometry.hpp"
#include "radargate/io/model_file.hpp"
#include "radargate/io/model_set.hpp"

namespace radargate {
namespace cli {
namespace {

struct VerifyArgs {
  std::string model, input;
  std::string layer;  // --layer: a layer of a file of many layers
  bool json = false, per_token = false;
  geometry::ExpansionOptions opt;
};

nlohmann::json point_json(const geometry::PointGeometry& p) {
  return {{"verdict", geometry::to_string(p.verdict)},
          {"certificate", geometry::to_string(p.certificate)},
          {"distance", p.distance},
          {"relative_distance", p.relative_distance}};
}

nlohmann::json summary_json(const geometry::SetSummary& s) {
  return {{"inside", s.inside},
          {"outside", s.outside},
          {"undetermined", s.undetermined},
          {"fraction_inside", s.fraction_inside},
          {"fraction_outside", s.fraction_outside},
          {"distance_quantiles", s.distance_quantiles},
          {"relative_distance_quantiles", s.relative_distance_quantiles},
          {"max_distance", s.max_distance}};
}

nlohmann::json check_json(const geometry::GuaranteeCheck& c) {
  return {{"covered", c.covered}, {"violations", c.violations}, {"not_covered", c.not_covered}, {"passed", c.passed()}};
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

template <class S>
void print_table(const VerifyArgs& a, const geometry::ExpansionReport& r, io::DType dtype,
                 const Layer<S, backend::reference>& layer) {
  (void)layer;
  std::printf("model      %s (variant %s, rotation %s, %s)\n", one_line(a.model).c_str(), r.variant.c_str(),
              r.rotation ? "on" : "off", io::to_string(dtype));
  if (!a.layer.empty()) std::printf("layer      %s\n", one_line(a.layer).c_str());
  std::printf("input      %s: %lld tokens; N = %lld experts, d = %lld\n", one_line(a.input).c_str(),
              (long long)r.tokens, (long long)r.N, (long long)r.d);
  std::printf("tolerance  %g (relative to ||p|| for the cone, to max(||p||, max_i ||v_i||) for the hull)\n\n", r.tol);

  struct Row {
    const char* point;
    const char* set;
    const geometry::SetSummary* s;
  };
  const Row rows[] = {{"lora part     p   = sum g_i u_i", "cone", &r.lora_cone},
                      {"lora part     p   = sum g_i u_i", "hull", &r.lora_hull},
                      {"weighted sum  p_w = sum g_i v_i", "cone", &r.ws_cone},
                      {"weighted sum  p_w = sum g_i v_i", "hull", &r.ws_hull}};
  std::printf("%-32s %-4s %8s %8s %13s %9s\n", "point", "set", "inside", "outside", "undetermined", "outside");
  std::printf("%-32s %-4s %8s %8s %13s %9s\n", std::string(32, '-').c_str(), "----", "--------", "--------",
              "-------------", "---------");
  for (const Row& w : rows)
    std::printf("%-32s %-4s %8lld %8lld %13lld %8.1f%%\n", w.point, w.set, (long long)w.s->inside,
                (long long)w.s->outside, (long long)w.s->undetermined, 100.0 * w.s->fraction_outside);

  for (int rel = 0; rel < 2; ++rel) {
    std::printf("\n%-32s %-4s", rel ? "relative distance, quantile" : "distance to the set, quantile", "");
    for (double q : r.quantiles) std::printf(" %11s", fmt("%g", q).c_str());
    std::printf("\n");
    for (const Row& w : rows) {
      std::printf("%-32s %-4s", w.point, w.set);
      const std::vector<double>& v = rel ? w.s->relative_distance_quantiles : w.s->distance_quantiles;
      for (double x : v) std::printf(" %11s", fmt("%.4e", x).c_str());
      std::printf("\n");
    }
  }

  std::printf("\n");
  auto check_line = [](const char* what, const geometry::GuaranteeCheck& c) {
    std::printf("check  %-52s %lld covered, %lld violations, %lld not covered: %s\n", what, (long long)c.covered,
                (long long)c.violations, (long long)c.not_covered, c.passed() ? "passed" : "FAILED");
  };
  check_line("p_w in cone, on tokens with g >= 0:", r.ws_cone_check);
  check_line("p_w in hull, on tokens with g >= 0 and sum g = 1:", r.ws_hull_check);

  if (a.per_token) {
    std::printf("\n%6s %10s %9s | %-8s %11s | %-8s %11s | %-8s %-8s\n", "token", "sum g", "||p||", "p cone", "distance",
                "p hull", "distance", "p_w cone", "p_w hull");
    for (index_t t = 0; t < r.tokens; ++t) {
      const geometry::TokenExpansion& e = r.per_token[size_t(t)];
      std::printf("%6lld %10.6f %9.3e | %-8s %11.4e | %-8s %11.4e | %-8s %-8s\n", (long long)t, e.gate_sum, e.lora_norm,
                  geometry::to_string(e.lora_cone.verdict), e.lora_cone.distance,
                  geometry::to_string(e.lora_hull.verdict), e.lora_hull.distance,
                  geometry::to_string(e.ws_cone.verdict), geometry::to_string(e.ws_hull.verdict));
    }
  }
}

/// Token t of the report as JSON: its gate weights, v_i, u_i, the two points and their verdicts.
template <class S>
nlohmann::json token_json(const geometry::ExpansionReport& r, const Layer<S, backend::reference>& layer,
                          const typename Layer<S, backend::reference>::Context& ctx, index_t t) {
  const index_t N = r.N, d = r.d;
  const geometry::TokenExpansion& e = r.per_token[size_t(t)];
  const std::vector<double> v = geometry::expert_outputs(layer, ctx, t);
  const std::size_t nN = std::size_t(N), nd = std::size_t(d);
  std::vector<std::vector<double>> vv(nN), uu(nN);
  std::vector<double> g(nN), p(nd, 0.0), pw(nd, 0.0);
  for (index_t i = 0; i < N; ++i) {
    g[size_t(i)] = double(ctx.g[size_t(t * N + i)]);
    const bool computed = ctx.sel.empty() || ctx.sel[size_t(t * N + i)];
    for (index_t o = 0; o < d; ++o) {
      const double vi = v[size_t(i * d + o)];
      const double ui = computed ? double(ctx.u[size_t((t * N + i) * d + o)]) : vi;
      vv[size_t(i)].push_back(vi);
      uu[size_t(i)].push_back(ui);
      if (computed) p[size_t(o)] += g[size_t(i)] * ui;
      pw[size_t(o)] += g[size_t(i)] * vi;
    }
  }
  return {{"token", t},
          {"g", g},
          {"gate_sum", e.gate_sum},
          {"gate_nonnegative", e.gate_nonnegative},
          {"gate_normalized", e.gate_normalized},
          {"v", vv},
          {"u", uu},
          {"lora_point", p},
          {"weighted_sum_point", pw},
          {"lora_cone", point_json(e.lora_cone)},
          {"lora_hull", point_json(e.lora_hull)},
          {"weighted_sum_cone", point_json(e.ws_cone)},
          {"weighted_sum_hull", point_json(e.ws_hull)}};
}

/// The report as JSON (--json), with every token under --per-token.
template <class S>
nlohmann::json report_json(const VerifyArgs& a, const geometry::ExpansionReport& r, io::DType dtype,
                           const Layer<S, backend::reference>& layer,
                           const typename Layer<S, backend::reference>::Context& ctx) {
  nlohmann::json j;
  j["model"] = a.model;
  if (!a.layer.empty()) j["layer"] = a.layer;
  j["input"] = a.input;
  j["variant"] = r.variant;
  j["rotation"] = r.rotation;
  j["dtype"] = io::to_string(dtype);
  j["tokens"] = r.tokens;
  j["experts"] = r.N;
  j["d"] = r.d;
  j["tol"] = r.tol;
  j["quantiles"] = r.quantiles;
  j["sets"] = {{"lora_cone", summary_json(r.lora_cone)},
               {"lora_hull", summary_json(r.lora_hull)},
               {"weighted_sum_cone", summary_json(r.ws_cone)},
               {"weighted_sum_hull", summary_json(r.ws_hull)}};
  j["checks"] = {{"weighted_sum_in_cone", check_json(r.ws_cone_check)},
                 {"weighted_sum_in_hull", check_json(r.ws_hull_check)}};
  j["passed"] = r.passed();
  if (a.per_token) {
    nlohmann::json toks = nlohmann::json::array();
    for (index_t t = 0; t < r.tokens; ++t) toks.push_back(token_json(r, layer, ctx, t));
    j["per_token"] = toks;
  }
  return j;
}

template <class S>
int verify_typed(const VerifyArgs& a, const io::SafetensorsFile& model_file, io::DType dtype) {
  const io::LoadedModel<S> lm = io::load_layer<S>(model_file, a.layer);
  const io::SafetensorsFile in_file = io::SafetensorsFile::read(a.input);
  const io::Activations<S> in = io::load_activations<S>(in_file, lm.dims, dtype, false);
  const index_t T = in.x.shape[0];
  if (T < 1) in_file.fail_tensor("x", "expected at least one token, found shape ", io::detail::shape_str(in.x.shape));
  const Layer<S, backend::reference> layer(lm.model.config, lm.model.params());
  Tensor<S> y = make_tensor<S>({T, lm.dims.d});
  const auto ctx = layer.forward(in.x.template view<2>(), y.template mutable_view<2>());
  const geometry::ExpansionReport r = geometry::expansion_report(layer, ctx, a.opt);

  if (a.json)
    std::printf("%s\n", report_json(a, r, dtype, layer, ctx).dump(2).c_str());
  else
    print_table(a, r, dtype, layer);
  if (!r.passed()) {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "radargate verify: the weighted-sum check failed: %lld tokens not verified inside the cone, %lld not "
                 "inside the hull\n",
                 (long long)r.ws_cone_check.violations, (long long)r.ws_hull_check.violations);
    return 3;
  }
  return 0;
}

}  // namespace

int cmd_verify(int argc, char** argv) {
  OptionParser o("verify",
                 "The expansion report: for every token of --input, is the LoRA part of the output, p = sum g_i u_i,\n"
                 "inside the cone and the convex hull of the unrotated expert outputs {v_i}, and how far outside;\n"
                 "and the same for p_w = sum g_i v_i, the point a weighted-sum gate with the same weights gives,\n"
                 "which must be inside the cone when g >= 0 and inside the hull when also sum g = 1 (checked).\n"
                 "Every verdict rests on a certificate re-checked against the data.");
  o.required("--model", "FILE", "model file (see 'radargate init')");
  o.required("--input", "FILE", "input file: x [T, d_in] in the model's dtype (a dy entry is checked, not used)");
  o.optional("--layer", "NAME",
             "the layer to check, for a file of many layers (required when it holds more\n"
             "than one; 'radargate info' lists them)");
  o.flag("--json", "print JSON instead of a table");
  o.flag("--per-token", "also list every token (JSON: with g, v_i, u_i, p and p_w)");
  o.optional("--tol", "X", "relative tolerance of the verdicts (default 1e-9; at least 16 N eps of the model's dtype)");
  o.optional("--quantiles", "LIST",
             "distance quantiles to report, comma separated in [0, 1] (default 0,0.5,0.9,0.99,1)");
  o.optional("--threads", "N", "worker threads (default: one per hardware thread)");
  o.epilog(
      "exit code: 0 when the weighted-sum check passes, 3 when it fails (report still printed),\n"
      "1 on bad input, 2 on bad usage.\n\n"
      "example:\n"
      "  radargate init --variant radargate --d-in 16 --d 16 --experts 4 --rank 4 --seed 1 \\\n"
      "                 --output model.safetensors --write-input input.safetensors --tokens 64\n"
      "  radargate verify --model model.safetensors --input input.safetensors");
  if (!o.parse(argc, argv)) return 0;
  VerifyArgs a;
  a.model = o.str("--model");
  a.input = o.str("--input");
  a.layer = o.str("--layer", "");
  a.json = o.has("--json");
  a.per_token = o.has("--per-token");
  a.opt.membership.tol = o.number("--tol", a.opt.membership.tol);
  if (!(a.opt.membership.tol > 0)) o.fail("option --tol: expected a number > 0, found '" + o.str("--tol") + "'");
  a.opt.membership.threads = int(o.integer("--threads", 1, 1024, std::max(1u, std::thread::hardware_concurrency())));
  if (o.has("--quantiles")) {
    a.opt.quantiles.clear();
    for (const std::string& q : o.list("--quantiles")) {
      char* end = nullptr;
      const double x = std::strtod(q.c_str(), &end);
      if (*end != '\0' || !(x >= 0.0 && x <= 1.0))
        o.fail("option --quantiles: expected numbers in [0, 1], found '" + q + "'");
      a.opt.quantiles.push_back(x);
    }
  }
  const io::SafetensorsFile model_file = io::SafetensorsFile::read(a.model);
  const io::DType dtype = io::layer_dtype(model_file, a.layer);
  if (dtype == io::DType::F64) return verify_typed<double>(a, model_file, dtype);
  return verify_typed<float>(a, model_file, dtype);
}

}  // namespace cli
}  // namespace radargate
