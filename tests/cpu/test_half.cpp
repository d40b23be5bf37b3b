// 16-bit expert weights in the cpu backend (CpuOptions::weights = bf16 or f16): the conversions
// against the safetensors reader's, and Layer<float, backend::cpu> with 16-bit lora.A and lora.B
// against the reference backend on the same rounded weights: y and every gradient, for every
// variant, for few tokens (the shrink that reads A once per block of tokens) and many (the
// shrink that widens A for a GEMM). tests/dispatch reruns this with each kernel set.
#include "cpu/cpu_test_util.hpp"
#include "radargate/io/safetensors.hpp"

using namespace rgtest;
using radargate::detail::bf16;
using radargate::detail::f16;

namespace {

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, sizeof a) == 0;
}

template <class H>
float io_widen(std::uint16_t h) {
  return std::is_same<H, bf16>::value ? io::bf16_to_float(h) : io::half_to_float(h);
}

// Every 16-bit pattern, widened one at a time and a vector at a time.
template <class H>
void check_widening() {
  constexpr index_t W = detail::simd::width<float>();
  std::vector<H> all(65536 + W);
  for (std::size_t i = 0; i < all.size(); ++i) all[i].bits = std::uint16_t(i);
  int bad = 0;
  alignas(64) float lanes[64];
  for (std::size_t i = 0; i < 65536; i += W) {
    detail::simd::load_w(all.data() + i).store_aligned(lanes);
    for (index_t l = 0; l < W; ++l) {
      const std::uint16_t h = std::uint16_t(i + l);
      const float want = io_widen<H>(h);
      if (!same_float(detail::to_float(all[i + l]), want) || !same_float(lanes[l], want)) {
        if (++bad < 5)
          UNSCOPED_INFO("pattern " << h << ": expected " << want << ", found " << detail::to_float(all[i + l])
                                   << " (scalar), " << lanes[l] << " (vector)");
      }
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("bf16 and f16 widen exactly, as the safetensors reader does", "[cpu][half]") {
  check_widening<bf16>();
  check_widening<f16>();
}

TEST_CASE("bf16 and f16 rounding matches the safetensors writer", "[cpu][half]") {
  std::mt19937 rng(5);
  std::vector<float> values = {0.0f,    -0.0f,   1.0f,     65504.0f, 65519.99f, 65520.0f,    1e-8f,      2.98e-8f,
                               6.1e-5f, 3.4e38f, -3.4e38f, INFINITY, -INFINITY, 1.00390625f, 1.01171875f};
  for (int i = 0; i < 200000; ++i) {
    std::uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, sizeof f);
    if (!std::isnan(f)) values.push_back(f);
    values.push_back(std::ldexp(float(rng() % 4096) / 4096.0f + 0.5f, int(rng() % 60) - 30));  // near the f16 range
  }
  int bad = 0;
  for (float f : values) {
    const std::uint16_t b = detail::to_bf16(f).bits, h = detail::to_f16(f).bits;
    if (b != io::float_to_bf16(f) || h != io::float_to_half(f))
      if (++bad < 5)
        UNSCOPED_INFO("value " << f << ": bf16 " << b << " vs " << io::float_to_bf16(f) << ", f16 " << h << " vs "
                               << io::float_to_half(f));
  }
  CHECK(bad == 0);
  CHECK(std::isnan(detail::to_float(detail::to_bf16(NAN))));
  CHECK(std::isnan(detail::to_float(detail::to_f16(NAN))));
}

TEST_CASE("16-bit expert weights equal the float path on the rounded weights, every variant", "[cpu][half]") {
  for (WeightStorage st : {WeightStorage::bf16, WeightStorage::f16})
    for (Variant v : all_variants) {
      DYNAMIC_SECTION(to_string(st) << " " << to_string(v)) {
        for (std::uint64_t seed = 1; seed <= 4; ++seed) {
          const Case c = random_case(v, seed);
          check_against_reference<float>(c, 1, seed % 2 ? 1 : 0, all_grads, false, st);
          check_against_reference<float>(c, 2, 1, all_grads, seed % 2 == 0, st);
        }
        Case c;  // a realistic width, few tokens (one per call) and many on one thread
        c.cfg = LayerConfig::make(v);
        c.cfg.topk = 3;
        c.D = Dims{70, 203, 6, 4, 5, 77};  // d_in, d, N, r, k, P
        c.opt.optional_tensors = true;
        c.T = 1;
        check_against_reference<float>(c, 1, 0, all_grads, false, st);
        c.T = 13;
        check_against_reference<float>(c, 1, 0, all_grads, false, st);
        check_against_reference<float>(c, 2, 1, all_grads, false, st);
      }
    }
}

TEST_CASE("16-bit expert weights: options, double refused, weights_changed rounds again", "[cpu][half]") {
  const LayerConfig cfg = LayerConfig::make(Variant::radargate);
  const Dims D{16, 24, 3, 2, 2, 12};
  Model<float> m = random_model<float>(cfg, D, 3);
  CpuOptions o;
  o.weights = WeightStorage::bf16;
  Layer<float, backend::cpu> half(cfg, m.params(), o);
  CHECK(half.options().weights == WeightStorage::bf16);

  const Model<double> md = random_model<double>(cfg, D, 3);
  try {
    Layer<double, backend::cpu> bad(cfg, md.params(), o);
    FAIL("a Layer<double> with bf16 weights was accepted");
  } catch (const radargate::error& e) {
    CHECK(std::string(e.what()) ==
          "cpu option 'weights': expected scalar for a Layer<double> (bf16 and f16 storage are for Layer<float>), "
          "found bf16");
  }

  // new values in the parameter memory reach the 16-bit copies at weights_changed()
  const index_t T = 2;
  const std::vector<float> x = random_vector<float>(std::size_t(T * D.d_in), 9);
  std::vector<float> y1(std::size_t(T * D.d)), y2(y1.size()), yf(y1.size());
  for (float& v : m.tensors.at("lora.B").data) v *= 2.0f;
  half.weights_changed();
  half.forward(make_view(x.data(), T, D.d_in), make_view(y1.data(), T, D.d));
  const Model<float> mr = rounded_experts(m, WeightStorage::bf16);
  Layer<float, backend::cpu> full(cfg, mr.params());
  full.forward(make_view(x.data(), T, D.d_in), make_view(yf.data(), T, D.d));
  CHECK(rel_err(y1, yf) <= 1e-5);
}
