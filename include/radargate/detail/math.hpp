// radargate/detail/math.hpp -- the per-element maths, written once for every backend.
//
// Plane rotation of the pair (a, b) by angle alpha (c = cos alpha, s = sin alpha):
//   rotate:    (a, b) -> (c a - s b,  s a + c b)
//   transpose: (a, b) -> (c a + s b, -s a + c b)          (the gradient of rotate w.r.t. (a, b))
//   d/dalpha:  dL/dalpha = -du_a vt_b + du_b vt_a          (vt = rotated pair, du = dL/dvt)
// Angle bound:  none: alpha = p              pi_tanh: alpha = pi tanh(p),  dalpha/dp = pi (1 - tanh^2 p)
// Plane m:      adjacent: (2m, 2m+1)         half: (m, m + floor(d/2))
// Normalisations of N logits l (already divided by tau):
//   softmax       g_j = exp(l_j - max) / sum
//   sigmoid       g_j = 1 / (1 + exp(-l_j))
//   topk_softmax  softmax over the K largest logits (ties: lower index wins), 0 elsewhere
//   identity      g_j = l_j
// and their vector-Jacobian products dl = J^T dg:
//   softmax / topk_softmax   dl_j = g_j (dg_j - sum_k g_k dg_k)      (g_k = 0 outside the top K)
//   sigmoid                  dl_j = g_j (1 - g_j) dg_j
//   identity                 dl_j = dg_j
//
// Pair slots (the fused kernels' unit of work): slot m in [0, ceil(d/2)) holds the coordinates
//   adjacent: (2m, 2m+1)        half: (m, m + floor(d/2)) for m < floor(d/2), (d-1, none) for odd d
// so every coordinate lies in exactly one slot; slots m < P are the rotation planes, the rest pass
// through (angle 0).
// sin(pi t), cos(pi t): t = n + r with n the nearest integer and |r| <= 1/2, then
//   sin(pi t) = (-1)^n sin(pi r),  cos(pi t) = (-1)^n cos(pi r)
// with odd / even polynomials in r (absolute error about 2e-7 in float): only + and *, so host and
// device compute the same numbers. With alpha = bound(p):
//   pi_tanh: alpha = pi t, t = tanh(p), dalpha/dp = pi (1 - t^2)      none: t = p / pi, dalpha/dp = 1
//
// Everything here is RG_HOST_DEVICE and allocation-free, so the reference loop, the vectorised
// CPU loop and the CUDA kernels call the same code, and the GPU maths is tested on the CPU.
#pragma once

#include <cmath>

#include "../config.hpp"
#include "../layer_config.hpp"

namespace radargate {
namespace detail {

template <class T>
RG_HOST_DEVICE constexpr T pi() {
  return T(3.141592653589793238462643383279502884L);
}

/// Coordinates (a, b) of rotation plane m in a vector of length d.
RG_HOST_DEVICE RG_INLINE void plane_coords(Pairing pairing, index_t m, index_t d, index_t& a, index_t& b) {
  if (pairing == Pairing::adjacent) {
    a = 2 * m;
    b = 2 * m + 1;
  } else {
    a = m;
    b = m + d / 2;
  }
}

template <class T>
RG_HOST_DEVICE RG_INLINE void rotate_pair(T c, T s, T& a, T& b) {
  const T na = c * a - s * b;
  const T nb = s * a + c * b;
  a = na;
  b = nb;
}

template <class T>
RG_HOST_DEVICE RG_INLINE void rotate_pair_transpose(T c, T s, T& a, T& b) {
  const T na = c * a + s * b;
  const T nb = -s * a + c * b;
  a = na;
  b = nb;
}

/// dL/dalpha for one plane, from the rotated pair (vta, vtb) and dL/d(vta, vtb).
template <class T>
RG_HOST_DEVICE RG_INLINE T rotation_angle_grad(T du_a, T du_b, T vt_a, T vt_b) {
  return du_b * vt_a - du_a * vt_b;
}

template <class T>
RG_HOST_DEVICE RG_INLINE T bound_value(Bound b, T p) {
  using std::tanh;
  return b == Bound::pi_tanh ? pi<T>() * tanh(p) : p;
}

/// d bound(p) / dp.
template <class T>
RG_HOST_DEVICE RG_INLINE T bound_derivative(Bound b, T p) {
  using std::tanh;
  if (b == Bound::none) return T(1);
  const T t = tanh(p);
  return pi<T>() * (T(1) - t * t);
}

/// Same, given alpha = bound(p) (saves a tanh where alpha is already known).
template <class T>
RG_HOST_DEVICE RG_INLINE T bound_derivative_from_value(Bound b, T alpha) {
  if (b == Bound::none) return T(1);
  const T t = alpha / pi<T>();
  return pi<T>() * (T(1) - t * t);
}

template <class T>
RG_HOST_DEVICE RG_INLINE T sigmoid(T x) {
  using std::exp;
  // Stable for large |x|: never exponentiates a large positive number.
  if (x >= T(0)) return T(1) / (T(1) + exp(-x));
  const T e = exp(x);
  return e / (T(1) + e);
}

/// Softmax of l[0..n) in place, over entries where mask is null or mask[j] != 0 (others set to 0).
template <class T>
RG_HOST_DEVICE void softmax_masked(T* l, index_t n, const unsigned char* mask) {
  using std::exp;
  T mx = T(0);
  bool any = false;
  for (index_t j = 0; j < n; ++j)
    if (!mask || mask[j])
      if (!any || l[j] > mx) {
        mx = l[j];
        any = true;
      }
  T sum = T(0);
  for (index_t j = 0; j < n; ++j) {
    if (!mask || mask[j]) {
      l[j] = exp(l[j] - mx);
      sum += l[j];
    } else {
      l[j] = T(0);
    }
  }
  const T inv = T(1) / sum;
  for (index_t j = 0; j < n; ++j) l[j] *= inv;
}

/// Marks in sel[0..n) the K largest of l (ties: the lower index wins). O(n K), for small n.
template <class T>
RG_HOST_DEVICE void topk_select(const T* l, index_t n, index_t K, unsigned char* sel) {
  for (index_t j = 0; j < n; ++j) sel[j] = 0;
  for (index_t t = 0; t < K && t < n; ++t) {
    index_t best = -1;
    for (index_t j = 0; j < n; ++j)
      if (!sel[j] && (best < 0 || l[j] > l[best])) best = j;
    sel[best] = 1;
  }
}

/// g = normalize(l / tau). `l` holds raw logits on entry and the weights g on exit.
/// `sel` (n entries) receives the selection mask (all ones except for topk_softmax).
template <class T>
RG_HOST_DEVICE void normalize_forward(Normalize nz, index_t K, T tau, T* l, index_t n, unsigned char* sel) {
  const T inv_tau = T(1) / tau;
  for (index_t j = 0; j < n; ++j) l[j] *= inv_tau;
  switch (nz) {
    case Normalize::softmax:
      for (index_t j = 0; j < n; ++j) sel[j] = 1;
      softmax_masked(l, n, static_cast<const unsigned char*>(nullptr));
      break;
    case Normalize::topk_softmax:
      topk_select(l, n, K, sel);
      softmax_masked(l, n, sel);
      break;
    case Normalize::sigmoid:
      for (index_t j = 0; j < n; ++j) {
        sel[j] = 1;
        l[j] = sigmoid(l[j]);
      }
      break;
    case Normalize::identity:
      for (index_t j = 0; j < n; ++j) sel[j] = 1;
      break;
  }
}

/// dl = d(raw logits) from dg, given the weights g of the forward pass. In place: dg -> dl.
template <class T>
RG_HOST_DEVICE void normalize_backward(Normalize nz, T tau, const T* g, T* dg, index_t n) {
  const T inv_tau = T(1) / tau;
  switch (nz) {
    case Normalize::softmax:
    case Normalize::topk_softmax: {
      T dot = T(0);
      for (index_t j = 0; j < n; ++j) dot += g[j] * dg[j];
      for (index_t j = 0; j < n; ++j) dg[j] = g[j] * (dg[j] - dot) * inv_tau;
      break;
    }
    case Normalize::sigmoid:
      for (index_t j = 0; j < n; ++j) dg[j] = g[j] * (T(1) - g[j]) * dg[j] * inv_tau;
      break;
    case Normalize::identity:
      for (index_t j = 0; j < n; ++j) dg[j] *= inv_tau;
      break;
  }
}

/// Relational-map weights of expert i: m[j] for j in [0, N), m[i] = 0.
///   learned: softmax over j != i of M[i, j]      mean: 1 / (N - 1)      N == 1: all zero
/// `Mrow` points at row i of M with element stride `ms` (unused for mode mean).
template <class T>
RG_HOST_DEVICE void map_weights(MapMode mode, const T* Mrow, index_t ms, index_t i, index_t N, T* m) {
  using std::exp;
  if (N == 1) {
    m[0] = T(0);
    return;
  }
  if (mode == MapMode::mean) {
    for (index_t j = 0; j < N; ++j) m[j] = j == i ? T(0) : T(1) / T(N - 1);
    return;
  }
  T mx = T(0);
  bool any = false;
  for (index_t j = 0; j < N; ++j)
    if (j != i && (!any || Mrow[j * ms] > mx)) {
      mx = Mrow[j * ms];
      any = true;
    }
  T sum = T(0);
  for (index_t j = 0; j < N; ++j) {
    m[j] = j == i ? T(0) : exp(Mrow[j * ms] - mx);
    sum += m[j];
  }
  for (index_t j = 0; j < N; ++j) m[j] /= sum;
}

/// dM[i, :] from dm[j] = dL/dm_ij (learned mode): dM_ij = m_ij (dm_ij - sum_k m_ik dm_ik), dM_ii = 0.
/// In place: dm -> dM row.
template <class T>
RG_HOST_DEVICE void map_weights_backward(const T* m, T* dm, index_t i, index_t N) {
  T dot = T(0);
  for (index_t j = 0; j < N; ++j)
    if (j != i) dot += m[j] * dm[j];
  for (index_t j = 0; j < N; ++j) dm[j] = j == i ? T(0) : m[j] * (dm[j] - dot);
}

/// Coordinate of side e (0: a, 1: b) of pair slot m in a vector of length d, or -1 where that side
/// of the slot holds no coordinate (odd d). Slots m < P are the rotation planes (plane_coords);
/// the others pass through unchanged.
RG_HOST_DEVICE RG_INLINE index_t slot_coord(Pairing pairing, index_t m, int e, index_t d) {
  if (pairing == Pairing::adjacent) {
    const index_t c = 2 * m + e;
    return c < d ? c : -1;
  }
  const index_t h = d / 2;
  if (m < h) return m + e * h;
  return (e == 0 && m == h && (d & 1)) ? d - 1 : -1;
}

/// Number of pair slots, ceil(d / 2).
RG_HOST_DEVICE RG_INLINE index_t num_slots(index_t d) { return (d + 1) / 2; }

/// sin(pi r) and cos(pi r) for |r| <= 1/2 (fitted polynomials, absolute error about 2e-7).
RG_HOST_DEVICE RG_INLINE void sincospi_reduced(float r, float& s, float& c) {
  const float r2 = r * r;
  float ps = 0.0772201252788221f;
  ps = ps * r2 - 0.5980451720573355f;
  ps = ps * r2 + 2.5500313768938563f;
  ps = ps * r2 - 5.167706878899589f;
  ps = ps * r2 + 3.1415925800442226f;
  s = ps * r;
  float pc = 0.21969678321219563f;
  pc = pc * r2 - 1.3318801535583922f;
  pc = pc * r2 + 4.058411912966635f;
  pc = pc * r2 - 4.934792858615325f;
  c = pc * r2 + 0.9999999534662001f;
}

/// sin(pi t), cos(pi t) for |t| <= 1 (then n is -1, 0 or 1 and (-1)^n = 1 - 2|n|).
RG_HOST_DEVICE RG_INLINE void sincospi_unit(float t, float& s, float& c) {
  // Adding and subtracting 1.5 * 2^23 rounds a float to the nearest integer with two additions.
  const float magic = 12582912.0f;
  const float n = (t + magic) - magic;
  const float sign = 1.0f - 2.0f * (n < 0.0f ? -n : n);
  sincospi_reduced(t - n, s, c);
  s *= sign;
  c *= sign;
}

/// sin(pi t), cos(pi t) for |t| < 2^22 (beyond that a float carries no fraction of a half turn).
RG_HOST_DEVICE RG_INLINE void sincospi(float t, float& s, float& c) {
  const float magic = 12582912.0f;
  const float n = (t + magic) - magic;
  const float half = 0.5f * n;                        // k or k + 1/2
  const float par = half - ((half + magic) - magic);  // 0 for even n, +-1/2 for odd n
  const float sign = 1.0f - 4.0f * (par < 0.0f ? -par : par);
  sincospi_reduced(t - n, s, c);
  s *= sign;
  c *= sign;
}

/// tanh with the hardware approximation on the device (relative error below 2^-10.9, one
/// instruction) and std::tanh on the host. Used only where the storage type is 16-bit, whose own
/// rounding is coarser.
RG_HOST_DEVICE RG_INLINE float tanh_fast(float x) {
#if RG_ON_DEVICE
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  using std::tanh;
  return tanh(x);
#endif
}

/// sin(pi t), cos(pi t) for |t| <= 1 with the hardware approximations on the device (absolute
/// error about 5e-7 for arguments within a half turn) and sincospi_unit on the host. Used only where
/// the storage type is 16-bit.
RG_HOST_DEVICE RG_INLINE void sincospi_unit_fast(float t, float& s, float& c) {
#if RG_ON_DEVICE
  __sincosf(pi<float>() * t, &s, &c);
#else
  sincospi_unit(t, s, c);
#endif
}

/// cos and sin of alpha = bound(p), and dalpha/dp, in float for the fused kernels, with the bound
/// fixed at compile time (PiTanh: pi_tanh, else none). Fast selects tanh_fast and
/// sincospi_unit_fast.
template <bool Fast, bool PiTanh>
RG_HOST_DEVICE RG_INLINE void bounded_sincos(float p, float& c, float& s, float& dadp) {
  if (PiTanh) {
    using std::tanh;
    const float t = Fast ? tanh_fast(p) : tanh(p);
    if (Fast)
      sincospi_unit_fast(t, s, c);
    else
      sincospi_unit(t, s, c);
    dadp = pi<float>() * (1.0f - t * t);
  } else {
    // Reduce to a half turn first: t = n + r, then (-1)^n (sin, cos)(pi r).
    const float t = p * (1.0f / pi<float>());
    const float magic = 12582912.0f;
    const float n = (t + magic) - magic;
    const float half = 0.5f * n;
    const float par = half - ((half + magic) - magic);
    const float sign = 1.0f - 4.0f * (par < 0.0f ? -par : par);
    if (Fast)
      sincospi_unit_fast(t - n, s, c);
    else
      sincospi_reduced(t - n, s, c);
    s *= sign;
    c *= sign;
    dadp = 1.0f;
  }
}

/// The same with the bound chosen at run time.
template <bool Fast>
RG_HOST_DEVICE RG_INLINE void bound_sincos(Bound b, float p, float& c, float& s, float& dadp) {
  if (b == Bound::pi_tanh)
    bounded_sincos<Fast, true>(p, c, s, dadp);
  else
    bounded_sincos<Fast, false>(p, c, s, dadp);
}

}  // namespace detail
}  // namespace radargate
