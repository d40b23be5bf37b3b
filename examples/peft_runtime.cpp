// A small ML runtime that includes the radargate headers: it runs a Llama-style causal LM (token
// embedding, RMSNorm, rotary self-attention with grouped key/value heads, SwiGLU MLP, logits) from
// its Hugging Face safetensors weights, and runs every projection that a RadarGate model file holds
// (e.g. from `radargate import-peft --base`) through a RadarGate layer instead of its base weight.
//
//   radargate_peft_runtime --base DIR --layers M.safetensors [--expect LOGITS.safetensors] [--ids 1,2,3]
//
// DIR holds config.json and model.safetensors. --expect names a file with ids [T] and logits
// [T, vocab] (transformers + PEFT's output, e.g. tests/peft/fixtures/llama_logits.safetensors): the
// program compares its logits with them and exits 1 beyond float32 rounding. It then prints, for
// each RadarGate layer, how far the layer's LoRA part left the cone of its experts' outputs on the
// tokens it saw (radargate/geometry): with variant sum it never does; a radargate gate can.
//
// The maths follows transformers' LlamaForCausalLM (eager attention):
//   h = embed[ids];  per layer:  h += o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),
//   n = rmsnorm(h) * w_in;  h += down_proj(silu(gate_proj(m)) * up_proj(m)), m = rmsnorm(h) * w_post;
//   logits = lm_head(rmsnorm(h) * w_final)
//   rmsnorm(x) = x / sqrt(mean(x^2) + eps);  rope rotates (x[i], x[i + hd/2]) by pos * theta^(-2i/hd).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "radargate.hpp"
#include "radargate/geometry.hpp"
#include "radargate/io/model_set.hpp"

using namespace radargate;
namespace io = radargate::io;

namespace {

using Mat = Tensor<float>;  // row major [rows, cols]

Mat zeros(index_t r, index_t c) { return make_tensor<float>({r, c}); }

/// y = x W^T, W [out, in] (as nn.Linear), accumulated in double.
Mat linear(const Mat& x, const Mat& W) {
  const index_t T = x.shape[0], in = x.shape[1], out = W.shape[0];
  Mat y = zeros(T, out);
  for (index_t t = 0; t < T; ++t)
    for (index_t o = 0; o < out; ++o) {
      double s = 0;
      for (index_t i = 0; i < in; ++i) s += double(x.data[size_t(t * in + i)]) * double(W.data[size_t(o * in + i)]);
      y.data[size_t(t * out + o)] = float(s);
    }
  return y;
}

Mat rmsnorm(const Mat& x, const Mat& w, double eps) {
  const index_t T = x.shape[0], d = x.shape[1];
  Mat y = zeros(T, d);
  for (index_t t = 0; t < T; ++t) {
    double ss = 0;
    for (index_t i = 0; i < d; ++i) ss += double(x.data[size_t(t * d + i)]) * double(x.data[size_t(t * d + i)]);
    const float r = float(1.0 / std::sqrt(float(ss / double(d)) + eps));
    for (index_t i = 0; i < d; ++i) y.data[size_t(t * d + i)] = w.data[size_t(i)] * (x.data[size_t(t * d + i)] * r);
  }
  return y;
}

struct Config {
  index_t vocab, hidden, inter, layers, heads, kv_heads, head_dim;
  double eps, theta;
};

class Runtime {
 public:
  Runtime(const std::string& dir, const std::string& layers_file)
      : weights_(io::SafetensorsFile::read(dir + "/model.safetensors")), set_(io::ModelSet<float>::open(layers_file)) {
    std::ifstream in(dir + "/config.json");
    if (!in) detail::fail("cannot open '", dir, "/config.json'");
    const nlohmann::json j = nlohmann::json::parse(in);
    c_.vocab = j.at("vocab_size");
    c_.hidden = j.at("hidden_size");
    c_.inter = j.at("intermediate_size");
    c_.layers = j.at("num_hidden_layers");
    c_.heads = j.at("num_attention_heads");
    c_.kv_heads = j.value("num_key_value_heads", c_.heads);
    c_.head_dim = c_.hidden / c_.heads;
    c_.eps = j.at("rms_norm_eps");
    c_.theta = j.value("rope_theta", 10000.0);
    // One RadarGate layer per module the model file holds, over its tensors in place.
    for (const io::ModelLayer<float>& l : set_) {
      if (!weights_.has(l.name + ".weight"))
        detail::fail("layer '", l.name, "': the base model has no module of that name");
      adapted_.emplace(l.name, std::make_unique<Layer<float>>(l.config, l.params));
    }
  }

  /// The logits [T, vocab] of a token sequence.
  Mat forward(const std::vector<index_t>& ids) {
    const index_t T = index_t(ids.size()), H = c_.hidden, hd = c_.head_dim;
    const Mat E = w("model.embed_tokens.weight");
    Mat h = zeros(T, H);
    for (index_t t = 0; t < T; ++t)
      for (index_t i = 0; i < H; ++i) h.data[size_t(t * H + i)] = E.data[size_t(ids[size_t(t)] * H + i)];
    for (index_t L = 0; L < c_.layers; ++L) {
      const std::string p = "model.layers." + std::to_string(L) + ".";
      const Mat n = rmsnorm(h, w(p + "input_layernorm.weight"), c_.eps);
      Mat q = proj(p + "self_attn.q_proj", n), k = proj(p + "self_attn.k_proj", n), v = proj(p + "self_attn.v_proj", n);
      rope(q, c_.heads);
      rope(k, c_.kv_heads);
      Mat a = zeros(T, c_.heads * hd);
      const index_t group = c_.heads / c_.kv_heads;
      const float inv = float(1.0 / std::sqrt(double(hd)));
      std::vector<float> s(static_cast<size_t>(T));
      for (index_t head = 0; head < c_.heads; ++head) {
        const index_t kvh = head / group;
        for (index_t t = 0; t < T; ++t) {
          float mx = -INFINITY;
          for (index_t u = 0; u <= t; ++u) {  // causal
            double dot = 0;
            for (index_t i = 0; i < hd; ++i)
              dot += double(q.data[size_t(t * c_.heads * hd + head * hd + i)]) *
                     double(k.data[size_t(u * c_.kv_heads * hd + kvh * hd + i)]);
            s[size_t(u)] = float(dot) * inv;
            mx = std::max(mx, s[size_t(u)]);
          }
          double z = 0;
          for (index_t u = 0; u <= t; ++u) z += std::exp(double(s[size_t(u)] - mx));
          for (index_t i = 0; i < hd; ++i) {
            double acc = 0;
            for (index_t u = 0; u <= t; ++u)
              acc +=
                  std::exp(double(s[size_t(u)] - mx)) / z * double(v.data[size_t(u * c_.kv_heads * hd + kvh * hd + i)]);
            a.data[size_t(t * c_.heads * hd + head * hd + i)] = float(acc);
          }
        }
      }
      add(h, proj(p + "self_attn.o_proj", a));
      const Mat m = rmsnorm(h, w(p + "post_attention_layernorm.weight"), c_.eps);
      Mat g = proj(p + "mlp.gate_proj", m);
      const Mat up = proj(p + "mlp.up_proj", m);
      for (std::size_t e = 0; e < g.data.size(); ++e)
        g.data[e] = g.data[e] / (1.0f + std::exp(-g.data[e])) * up.data[e];
      add(h, proj(p + "mlp.down_proj", g));
    }
    return linear(rmsnorm(h, w("model.norm.weight"), c_.eps), w("lm_head.weight"));
  }

  /// Every RadarGate layer's inputs seen so far: report how far its LoRA part left the experts' cone.
  void cone_report() const {
    std::printf("\n%-34s %-13s %6s %9s %14s %14s\n", "RadarGate layer", "variant", "tokens", "outside", "rel. dist p50",
                "rel. dist max");
    for (const io::ModelLayer<float>& l : set_) {
      const auto it = inputs_.find(l.name);
      if (it == inputs_.end()) continue;
      const Mat& x = it->second;
      const geometry::ExpansionReport r = geometry::expansion_report(*adapted_.at(l.name), x.view<2>());
      const auto& q = r.lora_cone.relative_distance_quantiles;
      std::printf("%-34s %-13s %6lld %4lld/%-4lld %14.4e %14.4e\n", l.name.c_str(), to_string(l.config.variant),
                  (long long)r.tokens, (long long)r.lora_cone.outside, (long long)r.tokens, q.size() > 1 ? q[1] : 0.0,
                  q.empty() ? 0.0 : q.back());
    }
  }

  std::size_t adapted() const { return adapted_.size(); }

 private:
  io::SafetensorsFile weights_;
  io::ModelSet<float> set_;
  Config c_{};
  std::map<std::string, std::unique_ptr<Layer<float>>> adapted_;
  std::map<std::string, Mat> inputs_;  // per RadarGate layer: every token it saw
  std::map<std::string, Mat> cache_;

  const Mat& w(const std::string& name) {
    auto it = cache_.find(name);
    if (it == cache_.end()) it = cache_.emplace(name, weights_.get<float>(name)).first;
    return it->second;
  }

  /// A projection: its RadarGate layer when the model file holds one, else the base weight.
  Mat proj(const std::string& module, const Mat& x) {
    auto it = adapted_.find(module);
    if (it == adapted_.end()) return linear(x, w(module + ".weight"));
    const Layer<float>& layer = *it->second;
    Mat y = zeros(x.shape[0], layer.dims().d);
    layer.forward(x.view<2>(), y.mutable_view<2>());
    Mat& seen = inputs_[module];
    if (seen.shape.empty()) seen.shape = {0, x.shape[1]};
    seen.data.insert(seen.data.end(), x.data.begin(), x.data.end());
    seen.shape[0] += x.shape[0];
    return y;
  }

  /// Rotary embedding (rotate_half form) of every head of x [T, nheads * hd], position = row.
  void rope(Mat& x, index_t nheads) const {
    const index_t T = x.shape[0], hd = c_.head_dim, half = hd / 2;
    for (index_t t = 0; t < T; ++t)
      for (index_t i = 0; i < half; ++i) {
        const float inv_freq = float(1.0 / std::pow(c_.theta, double(2 * i) / double(hd)));
        const float ang = float(t) * inv_freq;
        const float cs = std::cos(ang), sn = std::sin(ang);
        for (index_t head = 0; head < nheads; ++head) {
          float& a = x.data[size_t(t * nheads * hd + head * hd + i)];
          float& b = x.data[size_t(t * nheads * hd + head * hd + i + half)];
          const float a0 = a, b0 = b;
          a = a0 * cs - b0 * sn;
          b = b0 * cs + a0 * sn;
        }
      }
  }

  static void add(Mat& h, const Mat& d) {
    for (std::size_t e = 0; e < h.data.size(); ++e) h.data[e] += d.data[e];
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt;
  for (int i = 1; i + 1 < argc; i += 2) opt[argv[i]] = argv[i + 1];
  if (!opt.count("--base") || !opt.count("--layers")) {
    std::fprintf(stderr, "usage: %s --base DIR --layers M.safetensors [--expect LOGITS.safetensors] [--ids 1,2,3]\n",
                 argv[0]);
    return 2;
  }
  try {
    Runtime rt(opt["--base"], opt["--layers"]);
    std::vector<index_t> ids;
    Tensor<float> expect;
    if (opt.count("--expect")) {
      const io::SafetensorsFile f = io::SafetensorsFile::read(opt["--expect"]);
      for (float v : f.get<float>("ids").data) ids.push_back(index_t(v));
      expect = f.get<float>("logits");
    }
    if (opt.count("--ids")) {
      ids.clear();
      std::stringstream ss(opt["--ids"]);
      std::string item;
      while (std::getline(ss, item, ',')) ids.push_back(std::atoll(item.c_str()));
    }
    if (ids.empty()) detail::fail("no token ids: give --ids or --expect");
    const Tensor<float> logits = rt.forward(ids);
    std::printf("ran %zu tokens through the model, %zu projections as RadarGate layers; logits [%lld, %lld]\n",
                ids.size(), rt.adapted(), (long long)logits.shape[0], (long long)logits.shape[1]);
    int rc = 0;
    if (!expect.data.empty()) {
      if (expect.shape != logits.shape) detail::fail("--expect: logits shape differs");
      double err = 0, scale = 1;
      for (std::size_t e = 0; e < logits.data.size(); ++e) {
        err = std::max(err, std::fabs(double(logits.data[e]) - double(expect.data[e])));
        scale = std::max(scale, std::fabs(double(expect.data[e])));
      }
      // float32 rounding of a few dozen chained products and sums
      const double tol = 64 * 1.1920929e-7 * scale;
      std::printf("logits vs transformers + PEFT: max |difference| %.3e (max |logit| %.3f, tolerance %.3e): %s\n", err,
                  scale, tol, err <= tol ? "match" : "MISMATCH");
      rc = err <= tol ? 0 : 1;
    }
    rt.cone_report();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "radargate_peft_runtime: error: %s\n", e.what());
    return 1;
  }
}
