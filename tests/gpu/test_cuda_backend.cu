// The CUDA backend against the reference backend (float64, on the same storage-rounded parameters
// and inputs): every variant, every gradient (all at once, one at a time, overwrite and
// accumulate), several shapes including ragged ones (odd d, r and k not multiples of 16, T not a
// multiple of 16, P < d/2), both tile shapes, and float32 / bf16 / fp16 storage. Also: outputs are
// fully written (buffers are poisoned with NaN first), runs are bit-identical, bad arguments throw.
//
// Exit code 0: all passed; 1: a failure; 77: no GPU (reported by ctest as skipped).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/testing.hpp"
#include "gpu_support.hpp"

using namespace radargate;
using rggpu::DeviceArray;

namespace {

int failures = 0, checks = 0;

template <class S>
struct Tol;
template <>
struct Tol<float> {
  static double rel() { return 2e-4; }
  static const char* name() { return "f32"; }
};
template <>
struct Tol<__nv_bfloat16> {
  static double rel() { return 4e-2; }
  static const char* name() { return "bf16"; }
};
template <>
struct Tol<__half> {
  static double rel() { return 1e-2; }
  static const char* name() { return "f16"; }
};

/// ||got - ref|| / max(||ref||, floor); NaN anywhere gives infinity.
double rel_norm_err(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  const double floor = 1e-6 * std::sqrt(double(ref.size()) + 1.0);
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

std::map<std::string, double> worst;

/// grad.map.M sums dz_ti . w_tj over tokens and then takes differences through the map softmax's
/// Jacobian (m_ij (dm_ij - sum_k m_ik dm_ik)): with 16-bit operands that cancellation costs about
/// two bits more than the other gradients, seen up to 1.2e-1 in bf16 (and under 1e-2 in fp16 on
/// the same case), so bf16 gets a wider bound for it.
template <class S>
double label_scale(const std::string& label) {
  return std::is_same<S, __nv_bfloat16>::value && label == "grad.map.M" ? 4.0 : 1.0;
}

template <class S>
void expect_close(const std::string& what, const std::string& label, const std::vector<double>& got,
                  const std::vector<double>& ref, double scale = 1.0) {
  scale *= label_scale<S>(label);
  ++checks;
  const double e = rel_norm_err(got, ref);
  const std::string key = std::string(Tol<S>::name()) + " " + label;
  worst[key] = std::max(worst[key], e);
  if (!(e <= Tol<S>::rel() * scale)) {
    ++failures;
    std::printf("FAIL %s [%s] %s: relative error %.3e > %.1e\n", what.c_str(), Tol<S>::name(), label.c_str(), e,
                Tol<S>::rel() * scale);
  }
}

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

template <class S>
bool bit_equal(const std::vector<S>& a, const std::vector<S>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(S)) == 0);
}

std::vector<std::string> grad_names(const Model<double>& m) {
  std::vector<std::string> n;
  for (const auto& kv : m.tensors) n.push_back(kv.first);
  return n;
}

/// Reference gradients (float64) by name, "x" included.
std::map<std::string, std::vector<double>> reference_grads(const Model<double>& m, const std::vector<double>& x,
                                                           const std::vector<double>& dy, index_t T,
                                                           std::vector<double>& y) {
  Layer<double> ref(m.config, m.params());
  const Dims D = ref.dims();
  y.assign(std::size_t(T * D.d), 0.0);
  auto ctx = ref.forward(make_view(x.data(), T, D.d_in), make_view(y.data(), T, D.d));
  rgtest::GradStore<double> gs(m, T, D.d_in);
  ref.backward(ctx, make_view(dy.data(), T, D.d), gs.views);
  std::map<std::string, std::vector<double>> out;
  out["x"] = gs.x;
  for (auto& kv : gs.t) out[kv.first] = kv.second.data;
  return out;
}

std::set<std::uint64_t>& zero_gate_seeds() {
  static std::set<std::uint64_t> s;
  return s;
}

template <class S>
void run_case(const rgtest::Case& c, TileShape tiles) {
  const std::string what = c.name() + (tiles == TileShape::small ? " tiles=small" : " tiles=large");
  const index_t T = c.tokens;
  Model<double> m = random_model<double>(c.cfg, c.dims, c.seed, c.opt);
  for (auto& kv : m.tensors) kv.second.data = rggpu::round_through<S>(kv.second.data);
  // Zero-initialised gate parameters (training from scratch): every g is exactly 0 under identity
  // normalisation, and the gate gradients must still flow.
  if (zero_gate_seeds().count(c.seed))
    for (const char* name : {"stretch.bg", "stretch.Wg"})
      if (m.has(name)) std::fill(m.tensors[name].data.begin(), m.tensors[name].data.end(), 0.0);
  const Dims D = validate(m.config, m.params());
  const std::vector<double> x =
      rggpu::round_through<S>(rgtest::random_vector<double>(std::size_t(T * D.d_in), c.seed + 7));
  const std::vector<double> dy =
      rggpu::round_through<S>(rgtest::random_vector<double>(std::size_t(T * D.d), c.seed + 9));
  std::vector<double> y_ref;
  const auto g_ref = reference_grads(m, x, dy, T, y_ref);

  rggpu::DeviceModel<S> dm(m);
  Layer<S, backend::cuda> layer(m.config, dm.params);
  // Small tiles may split the experts over blocks (as decoding does); large tiles never do.
  layer.set_tile_shape(tiles, tiles == TileShape::small);
  DeviceArray<S> xd(std::size_t(T * D.d_in)), yd(std::size_t(T * D.d)), dyd(std::size_t(T * D.d));
  xd.upload(rggpu::to_storage<S>(x));
  dyd.upload(rggpu::to_storage<S>(dy));
  const std::vector<S> poison(std::size_t(T * D.d), rggpu::from_f<S>(std::numeric_limits<double>::quiet_NaN()));
  if (yd.n) yd.upload(poison);
  DeviceArray<char> fws(layer.forward_workspace_bytes(T));
  const auto xv = make_view(static_cast<const S*>(xd.ptr), T, D.d_in);
  const auto yv = make_view(yd.ptr, T, D.d);
  const auto dyv = make_view(static_cast<const S*>(dyd.ptr), T, D.d);
  auto ctx = layer.forward(xv, yv, Workspace{fws.ptr, fws.n});
  rggpu::cuda_ok(cudaDeviceSynchronize(), "forward");
  const std::vector<S> y1 = yd.download();
  expect_close<S>(what, "y", rggpu::to_double(y1), y_ref);

  // Bit-identical on a second run.
  if (yd.n) yd.upload(poison);
  ctx = layer.forward(xv, yv, Workspace{fws.ptr, fws.n});
  rggpu::cuda_ok(cudaDeviceSynchronize(), "forward");
  expect(bit_equal(y1, yd.download()), what + ": forward is not bit-identical run to run");

  // Every gradient at once, overwrite, into NaN-poisoned buffers.
  const std::vector<std::string> names = grad_names(m);
  auto check_grads = [&](const std::vector<std::string>& want, bool with_x, const std::string& tag) {
    rggpu::DeviceGrads<S> gd(dm, want, with_x, T, D.d_in);
    gd.fill({std::numeric_limits<double>::quiet_NaN()});
    DeviceArray<char> bws(layer.backward_workspace_bytes(T, gd.views));
    layer.backward(ctx, dyv, gd.views, GradMode::overwrite, Workspace{bws.ptr, bws.n});
    rggpu::cuda_ok(cudaDeviceSynchronize(), "backward");
    if (with_x) expect_close<S>(what + tag, "grad.x", rggpu::to_double(gd.x.download()), g_ref.at("x"));
    for (const auto& kv : gd.t)
      expect_close<S>(what + tag, "grad." + kv.first, rggpu::to_double(kv.second.download()), g_ref.at(kv.first));
    return bws.n;
  };
  check_grads(names, true, "");

  // Deterministic backward, and accumulate mode.
  {
    rggpu::DeviceGrads<S> g1(dm, names, true, T, D.d_in), g2(dm, names, true, T, D.d_in);
    DeviceArray<char> bws(layer.backward_workspace_bytes(T, g1.views));
    layer.backward(ctx, dyv, g1.views, GradMode::overwrite, Workspace{bws.ptr, bws.n});
    layer.backward(ctx, dyv, g2.views, GradMode::overwrite, Workspace{bws.ptr, bws.n});
    rggpu::cuda_ok(cudaDeviceSynchronize(), "backward");
    bool same = bit_equal(g1.x.download(), g2.x.download());
    for (const auto& kv : g1.t) same = same && bit_equal(kv.second.download(), g2.t.at(kv.first).download());
    expect(same, what + ": backward is not bit-identical run to run");

    const std::vector<double> start = {0.25, -1.5, 3.0, 0.0, -0.125};
    g2.fill(start);
    layer.backward(ctx, dyv, g2.views, GradMode::accumulate, Workspace{bws.ptr, bws.n});
    rggpu::cuda_ok(cudaDeviceSynchronize(), "backward");
    auto shifted = [&](const std::vector<double>& ref) {
      std::vector<double> o(ref.size());
      for (std::size_t i = 0; i < ref.size(); ++i)
        o[i] = ref[i] + double(rggpu::to_f(rggpu::from_f<S>(start[i % start.size()])));
      return o;
    };
    // The start values are part of the reference, so the tolerance applies to the sum.
    expect_close<S>(what + " accumulate", "grad.x", rggpu::to_double(g2.x.download()), shifted(g_ref.at("x")), 2.0);
    for (const auto& kv : g2.t)
      expect_close<S>(what + " accumulate", "grad." + kv.first, rggpu::to_double(kv.second.download()),
                      shifted(g_ref.at(kv.first)), 2.0);
  }

  // One gradient at a time: each takes its own path through the backward passes.
  check_grads({}, true, " only x");
  for (const auto& n : names) check_grads({n}, false, " only " + n);
}

rgtest::Case make_case(Variant v, index_t N, index_t r, index_t d_in, index_t d, index_t k, index_t P, index_t T,
                       Pairing pairing, Bound bound, std::uint64_t seed) {
  rgtest::Case c;
  c.cfg = LayerConfig::make(v);
  c.cfg.pairing = pairing;
  c.cfg.bound = bound;
  c.cfg.topk = int(std::min<index_t>(3, N));
  c.dims = Dims{d_in, d, N, r, c.cfg.rotation ? k : 0, c.cfg.rotation ? P : 0};
  c.tokens = T;
  c.seed = seed;
  return c;
}

std::vector<rgtest::Case> gpu_cases() {
  std::vector<rgtest::Case> out = rgtest::variant_cases();
  for (auto& c : out) c.tokens = 5 + index_t(c.seed % 13);  // 5..17 tokens, some past one 16-token tile
  std::uint64_t seed = 9000;
  for (Variant v : all_variants) {
    out.push_back(make_case(v, 5, 20, 72, 150, 18, 60, 45, Pairing::half, Bound::pi_tanh, ++seed));
    out.push_back(make_case(v, 6, 16, 128, 256, 16, 128, 130, Pairing::adjacent, Bound::pi_tanh, ++seed));
    out.push_back(make_case(v, 3, 8, 40, 67, 5, 33, 17, Pairing::half, Bound::none, ++seed));
  }
  out.push_back(
      make_case(Variant::radargate, 8, 32, 256, 512, 32, 256, 200, Pairing::adjacent, Bound::pi_tanh, ++seed));
  out.push_back(make_case(Variant::radargate, 1, 16, 64, 64, 16, 32, 33, Pairing::adjacent, Bound::pi_tanh, ++seed));
  out.push_back(make_case(Variant::radargate, 7, 4, 33, 97, 3, 11, 70, Pairing::adjacent, Bound::none, ++seed));
  for (Variant v : {Variant::static_, Variant::softmax, Variant::radargate}) {
    rgtest::Case c = make_case(v, 4, 16, 48, 64, 16, 32, 40, Pairing::adjacent, Bound::pi_tanh, ++seed);
    c.cfg.normalize = Normalize::identity;
    zero_gate_seeds().insert(c.seed);
    out.push_back(c);
  }
  return out;
}

void bad_arguments() {
  rgtest::Case c = make_case(Variant::radargate, 3, 4, 8, 10, 4, 5, 4, Pairing::adjacent, Bound::pi_tanh, 77);
  Model<double> m = random_model<double>(c.cfg, c.dims, c.seed, c.opt);
  rggpu::DeviceModel<float> dm(m);
  Layer<float, backend::cuda> layer(m.config, dm.params);
  DeviceArray<float> xd(4 * 8), yd(4 * 10);
  auto throws = [&](auto&& f, const char* needle, const char* what) {
    ++checks;
    try {
      f();
    } catch (const radargate::error& e) {
      if (std::strstr(e.what(), needle)) return;
      ++failures;
      std::printf("FAIL %s: message \"%s\" lacks \"%s\"\n", what, e.what(), needle);
      return;
    }
    ++failures;
    std::printf("FAIL %s: no error\n", what);
  };
  DeviceArray<char> ws(layer.forward_workspace_bytes(4));
  throws(
      [&] {
        layer.forward(make_view(static_cast<const float*>(xd.ptr), 4, 8), make_view(yd.ptr, 4, 10),
                      Workspace{ws.ptr, 16});
      },
      "forward workspace: expected at least", "too small a workspace");
  std::vector<float> host_x(32);
  throws(
      [&] {
        layer.forward(make_view(static_cast<const float*>(host_x.data()), 4, 8), make_view(yd.ptr, 4, 10),
                      Workspace{ws.ptr, ws.n});
      },
      "tensor 'x': expected device memory", "host memory for x");
  throws(
      [&] {
        layer.forward(make_view(static_cast<const float*>(xd.ptr), 4, 7), make_view(yd.ptr, 4, 10),
                      Workspace{ws.ptr, ws.n});
      },
      "tensor 'x': expected shape", "wrong x shape");
  Params<float> p = dm.params;
  p.angle_U = View<const float, 2>{};
  throws([&] { Layer<float, backend::cuda> bad(m.config, p); }, "tensor 'angle.U': required", "missing angle.U");
}

}  // namespace

int main() {
  if (rggpu::device_count() == 0) {
    std::printf("skipped: no GPU\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (sm_%d%d, %d multiprocessors)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  try {
    const auto cases = gpu_cases();
    int n = 0;
    for (const auto& c : cases) {
      const int before = failures;
      for (TileShape t : {TileShape::small, TileShape::large}) {
        auto guarded = [&](auto tag, const char* type) {
          using S = decltype(tag);
          try {
            run_case<S>(c, t);
          } catch (const std::exception& e) {
            ++failures;
            std::printf("FAIL %s [%s]: exception: %s\n", c.name().c_str(), type, e.what());
          }
        };
        guarded(float{}, "f32");
        guarded(__nv_bfloat16{}, "bf16");
        guarded(__half{}, "f16");
      }
      ++n;
      std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", c.name().c_str());
      std::fflush(stdout);
    }
    std::printf("%d cases x 2 tile shapes x 3 storage types\n", n);
    bad_arguments();
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    ++failures;
  }
  std::printf("worst relative errors (norm-wise):\n");
  for (const auto& kv : worst) std::printf("  %-26s %.3e\n", kv.first.c_str(), kv.second);
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
