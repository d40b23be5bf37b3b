// radargate._core.membership: batched cone / hull membership with certificates, as
// `radargate cone` computes it (radargate/geometry/cone.hpp).
#include "radargate/geometry.hpp"
#include "binding.hpp"

namespace radargate {
namespace python {
namespace {

template <class S>
nb::object to_numpy(std::vector<S>&& data, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<S>(std::move(data));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<S>*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, S>(heap->data(), shape, owner));
}

/// V [B, d, N], y [B, d] float64 -> (lambda [B, N], residual [B], inside [B] u8 (1 inside,
/// 0 outside, 2 undetermined), certificate [B, d], offset [B]).
nb::tuple membership(const InArray& V, const InArray& y, bool hull, double tol, double dual_tol, int threads) {
  const View<const double, 3> v = in_view<double, 3>(V, "V");
  const View<const double, 2> yv = in_view<double, 2>(y, "y");
  if (!(tol > 0)) value_fail("tol: expected a number > 0, found " + std::to_string(tol));
  if (!(dual_tol >= 0)) value_fail("dual_tol: expected a number >= 0, found " + std::to_string(dual_tol));
  if (threads < 0) value_fail("threads: expected an integer >= 0, found " + std::to_string(threads));
  geometry::MembershipOptions mo;
  mo.tol = tol;
  mo.dual_tol = dual_tol;
  mo.threads = threads;
  std::vector<geometry::Membership> ms;
  {
    nb::gil_scoped_release unlocked;
    ms = geometry::membership_batch(hull ? geometry::Set::hull : geometry::Set::cone, v, yv, mo, "V", "y");
  }
  const size_t B = size_t(v.shape[0]), d = size_t(v.shape[1]), N = size_t(v.shape[2]);
  std::vector<double> lambda(B * N), residual(B), cert(B * d, 0.0), offset(B, 0.0);
  std::vector<std::uint8_t> inside(B);
  for (size_t b = 0; b < B; ++b) {
    const geometry::Membership& m = ms[b];
    for (size_t j = 0; j < N; ++j) lambda[b * N + j] = m.lambda[j];
    residual[b] = m.distance;
    inside[b] = m.inside() ? 1 : m.outside() ? 0 : 2;
    if (m.outside()) {
      for (size_t i = 0; i < d; ++i) cert[b * d + i] = m.direction[i];
      offset[b] = m.offset;
    }
  }
  return nb::make_tuple(to_numpy(std::move(lambda), {B, N}), to_numpy(std::move(residual), {B}),
                        to_numpy(std::move(inside), {B}), to_numpy(std::move(cert), {B, d}),
                        to_numpy(std::move(offset), {B}));
}

}  // namespace

void bind_geometry(nb::module_& m) {
  m.def("membership", &membership, nb::arg("V"), nb::arg("y"), nb::arg("hull"), nb::arg("tol"), nb::arg("dual_tol"),
        nb::arg("threads"));
}

}  // namespace python
}  // namespace radargate
