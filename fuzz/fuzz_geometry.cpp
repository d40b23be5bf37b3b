// libFuzzer harness: the geometry inputs, as `radargate cone` reads them: a safetensors file with
// V [B, d, N] and y [B, d], then cone and hull membership of every problem. A verdict must agree
// with its certificate (check_certificate) and must never be "inside" with a non-finite residual.
#include <cmath>

#include "fuzz_common.hpp"
#include "radargate/geometry.hpp"
#include "radargate/io/model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace g = radargate::geometry;
  fuzz::expect_errors_only([&] {
    const auto f = radargate::io::SafetensorsFile::from_bytes(fuzz::bytes(data, size), "fuzz.safetensors");
    if (!f.has("V") || !f.has("y")) return;
    const auto V = f.get<double>("V");
    const auto Y = f.get<double>("y");
    if (V.shape.size() != 3 || V.shape[0] > 16 || V.shape[1] > 16 || V.shape[2] > 16) return;
    radargate::io::detail::in_file(f.source(), [&] {
      radargate::io::require_finite("V", V);
      radargate::io::require_finite("y", Y);
    });
    g::MembershipOptions opt;
    opt.threads = 1;
    for (g::Set set : {g::Set::cone, g::Set::hull}) {
      const auto ms = g::membership_batch(set, V.view<3>(), Y.view<2>(), opt, "V", "y");
      for (std::size_t b = 0; b < ms.size(); ++b) {
        const g::Membership& m = ms[b];
        if (m.inside() && !std::isfinite(m.distance)) std::abort();
        if (m.verdict == g::Verdict::undetermined) continue;
        const auto Vb = V.view<3>()[radargate::index_t(b)];
        const auto yb = Y.view<2>()[radargate::index_t(b)];
        if (!g::check_certificate(Vb, yb, m, opt).ok) std::abort();
      }
    }
  });
  return 0;
}
