// Compares the eight variants on the same experts and the same tokens: how far each moves the
// output away from plain LoRA addition, and the size of the gradients it sends back.
#include <radargate.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

using namespace radargate;

namespace {
double norm(const std::vector<double>& a) {
  double s = 0;
  for (double e : a) s += e * e;
  return std::sqrt(s);
}
double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s / (norm(a) * norm(b));
}
}  // namespace

int main() {
  const index_t T = 16, d_in = 64, d = 64, N = 8, r = 4, k = 4, P = 32;
  // One full radargate model; every variant reads the subset of its tensors that it needs, so the
  // experts (lora.A, lora.B, lora.scale) are shared by all rows of the table.
  const LayerConfig full = LayerConfig::make(Variant::radargate);
  RandomModelOptions opt;
  opt.base = false;  // compare the LoRA part alone
  Model<double> m = random_model<double>(full, Dims{d_in, d, N, r, k, P}, 2024, opt);
  LayerConfig lin = LayerConfig::make(Variant::softmax);
  Model<double> gates = random_model<double>(lin, Dims{d_in, d, N, r, 0, 0}, 7, opt);
  m.tensors["stretch.bg"] = gates.tensors.at("stretch.bg");

  std::vector<double> x(T * d_in), dy(T * d);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> nd;
  for (double& e : x) e = nd(rng);
  for (double& e : dy) e = nd(rng);

  std::printf("%-14s %-8s %-8s %-13s %9s %9s %11s %11s\n", "variant", "rotation", "gate", "normalize", "|y|",
              "cos(y,sum)", "|dL/dx|", "|dL/dB|");
  std::vector<double> y_sum;
  for (Variant v : all_variants) {
    Model<double> mv;
    mv.config = LayerConfig::make(v);
    for (auto& kv : m.tensors)
      if (param_need(mv.config, kv.first) != Need::unused) mv.tensors.insert(kv);
    Layer<double> layer(mv.config, mv.params());
    std::vector<double> y(T * d), dx(T * d_in), dB(N * d * r);
    Gradients<double> g;
    g.x = make_view(dx.data(), T, d_in);
    g.lora_B = make_view(dB.data(), N, d, r);
    auto ctx = layer.forward(make_view(static_cast<const double*>(x.data()), T, d_in), make_view(y.data(), T, d));
    layer.backward(ctx, make_view(static_cast<const double*>(dy.data()), T, d), g);
    if (v == Variant::sum) y_sum = y;
    const LayerConfig& c = mv.config;
    std::printf("%-14s %-8s %-8s %-13s %9.4f %9.4f %11.4f %11.4f\n", to_string(v), c.rotation ? "on" : "off",
                to_string(c.gate), c.has_logits() ? to_string(c.normalize) : "-", norm(y), cosine(y, y_sum), norm(dx),
                norm(dB));
  }
  std::printf(
      "\n%ld tokens, d_in = d = %ld, N = %ld experts of rank %ld, angle rank %ld, %ld planes; reference backend, "
      "float64.\n",
      long(T), long(d), long(N), long(r), long(k), long(P));
  return 0;
}
