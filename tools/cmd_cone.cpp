// radargate cone -- batched cone (or hull) membership with certificates.
//
//   input   V [B, d, N], y [B, d]     (any floating dtype; computed in double)
//   output  lambda [B, N]  F64   the best combination: >= 0 (--hull: sums to 1)
//           residual [B]   F64   ||V lambda - y||: the distance to the cone (hull)
//           inside [B]     U8    1 inside, 0 outside, 2 undetermined (no certificate verified)
//           certificate [B, d] F64  outside: the unit separating direction w
//                                   (cone: v_j . w <= dual_tol ||v_j|| and w . y > tol ||y||;
//                                    hull: the hyperplane normal, w . v_j <= offset < w . y);
//                                   inside: zeros (lambda is the certificate)
//           offset [B]     F64   --hull only: the hyperplane offset b = max_j w . v_j (0 inside)
//
// Every verdict comes from a certificate re-checked against V and y (radargate/geometry/cone.hpp).
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate.hpp"
#include "radargate/geometry.hpp"
#include "radargate/io/model_file.hpp"

namespace radargate {
namespace cli {
namespace {
// The steps of cmd_cone.

void declare_options(OptionParser& o) {
  o.required("--input", "FILE", "V [B, d, N] and y [B, d] (F64, F32, F16 or BF16; nothing else)");
  o.required("--output", "FILE",
             "lambda [B, N], residual [B], inside [B] (U8), certificate [B, d]\n"
             "(and offset [B] with --hull); written whole or not at all");
  o.flag("--hull", "test the convex hull instead of the cone");
  o.optional("--tol", "X",
             "relative tolerance of the verdicts (default 1e-9): inside when\n"
             "||V lambda - y|| <= X * scale, outside when the certificate's margin > X * scale");
  o.optional("--dual-tol", "X", "cone certificates: largest accepted v_j . w / ||v_j|| (default 1e-9)");
  o.optional("--threads", "N", "worker threads (default: one per hardware thread)");
  o.epilog(
      "scale is ||y|| for the cone and max(||y||, max_j ||v_j||) for the hull.\n\n"
      "example:\n"
      "  radargate cone --input problems.safetensors --output answers.safetensors --hull");
}

geometry::MembershipOptions membership_options(OptionParser& o) {
  geometry::MembershipOptions mo;
  mo.tol = o.number("--tol", mo.tol);
  mo.dual_tol = o.number("--dual-tol", mo.dual_tol);
  if (!(mo.tol > 0)) o.fail("option --tol: expected a number > 0, found '" + o.str("--tol") + "'");
  if (!(mo.dual_tol >= 0)) o.fail("option --dual-tol: expected a number >= 0, found '" + o.str("--dual-tol") + "'");
  mo.threads = int(o.integer("--threads", 1, 1024, std::max(1u, std::thread::hardware_concurrency())));
  return mo;
}

/// The batch of the input file: V [B, d, N] and y [B, d], checked finite.
struct Problems {
  Tensor<double> V, Y;
  index_t B = 0, d = 0, N = 0;
};

Problems read_problems(const std::string& input) {
  const io::SafetensorsFile f = io::SafetensorsFile::read(input);
  for (const io::TensorInfo& t : f.tensors())
    if (t.name != "V" && t.name != "y") f.fail_tensor(t.name, "unknown input name; expected V [B, d, N] and y [B, d]");
  if (!f.has("V")) f.fail_tensor("V", "missing from the file (expected shape [B, d, N])");
  if (!f.has("y")) f.fail_tensor("y", "missing from the file (expected shape [B, d])");
  Problems p;
  p.V = f.get<double>("V");
  p.Y = f.get<double>("y");
  const Tensor<double>& V = p.V;
  const Tensor<double>& Y = p.Y;
  if (V.shape.size() != 3) f.fail_tensor("V", "expected shape [B, d, N], found ", io::detail::shape_str(V.shape));
  const index_t B = V.shape[0], d = V.shape[1], N = V.shape[2];
  if (B < 1 || d < 1 || N < 1)
    f.fail_tensor("V", "expected a non-empty batch [B, d, N] with B, d, N >= 1, found ",
                  io::detail::shape_str(V.shape));
  if (Y.shape.size() != 2 || Y.shape[0] != B || Y.shape[1] != d)
    f.fail_tensor("y", "expected shape [", B, ", ", d, "] (B and d from V), found ", io::detail::shape_str(Y.shape));
  io::detail::in_file(f.source(), [&] {
    io::require_finite("V", V);
    io::require_finite("y", Y);
  });
  p.B = B;
  p.d = d;
  p.N = N;
  return p;
}

/// Writes the answers to `output` and prints the summary line.
void write_answers(const std::string& output, const Problems& p, bool hull, const geometry::MembershipOptions& mo,
                   const std::vector<geometry::Membership>& ms) {
  const index_t B = p.B, d = p.d, N = p.N;
  const std::size_t nB = std::size_t(B);
  std::vector<double> lambda(nB * std::size_t(N)), residual(nB), cert(nB * std::size_t(d), 0.0), offset(nB, 0.0);
  std::vector<unsigned char> inside(nB);
  index_t counts[3] = {0, 0, 0};
  for (index_t b = 0; b < B; ++b) {
    const geometry::Membership& m = ms[b];
    for (index_t j = 0; j < N; ++j) lambda[size_t(b * N + j)] = m.lambda[size_t(j)];
    residual[size_t(b)] = m.distance;
    inside[size_t(b)] = m.inside() ? 1 : m.outside() ? 0 : 2;
    ++counts[inside[size_t(b)] == 1 ? 0 : inside[size_t(b)] == 0 ? 1 : 2];
    if (m.outside()) {
      for (index_t i = 0; i < d; ++i) cert[size_t(b * d + i)] = m.direction[size_t(i)];
      offset[size_t(b)] = m.offset;
    }
  }
  io::SafetensorsWriter w;
  w.add("lambda", lambda.data(), {B, N}, io::DType::F64);
  w.add("residual", residual.data(), {B}, io::DType::F64);
  w.add_raw("inside", io::DType::U8, {B}, inside);
  w.add("certificate", cert.data(), {B, d}, io::DType::F64);
  if (hull) w.add("offset", offset.data(), {B}, io::DType::F64);
  nlohmann::json meta = {{"set", hull ? "hull" : "cone"}, {"tol", mo.tol}, {"dual_tol", mo.dual_tol}};
  w.set_metadata("radargate.geometry", meta.dump());
  w.write_atomic(output);
  clean_stale_temps("cone", output);
  std::printf("wrote %s: %lld problems (%s, d = %lld, N = %lld): %lld inside, %lld outside, %lld undetermined\n",
              one_line(output).c_str(), (long long)B, hull ? "hull" : "cone", (long long)d, (long long)N,
              (long long)counts[0], (long long)counts[1], (long long)counts[2]);
}
}  // namespace

int cmd_cone(int argc, char** argv) {
  OptionParser o("cone",
                 "For each problem b of a batch, decides whether y[b] lies in the cone {V[b] lambda : lambda >= 0}\n"
                 "(or, with --hull, in the convex hull: also sum lambda = 1), and writes the nearest combination,\n"
                 "the distance and a certificate that proves the answer. Every answer is re-checked from its\n"
                 "certificate before it is written; 'undetermined' (2) means no certificate verified.");
  declare_options(o);
  if (!o.parse(argc, argv)) return 0;
  const std::string input = o.str("--input"), output = o.str("--output");
  const bool hull = o.has("--hull");
  const geometry::MembershipOptions mo = membership_options(o);

  o.refuse_same_file("--output", {"--input"});
  const Problems p = read_problems(input);
  const geometry::Set set = hull ? geometry::Set::hull : geometry::Set::cone;
  const std::vector<geometry::Membership> ms =
      geometry::membership_batch(set, p.V.view<3>(), p.Y.view<2>(), mo, "V", "y");
  write_answers(output, p, hull, mo, ms);
  return 0;
}

}  // namespace cli
}  // namespace radargate
